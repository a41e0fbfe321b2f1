"""Which local user a loopback connection comes from (Linux: ``/proc/net/tcp``).

A sign-in link travels on the browser's command line, which every local user can read
(``/proc/PID/cmdline``): another user on the machine could trade its code first (QA AJ).
The code is therefore bound to the user whose connection asked for it, when that
connection came over loopback, and only a connection of the same user trades it. The
kernel's socket table names the owner of each end of a local TCP connection.
"""

from __future__ import annotations

import ipaddress
import struct

from aiohttp import web

__all__ = ["loopback_peer_uid"]


def loopback_peer_uid(request: web.Request) -> int | None:
    """The uid owning the client's end of ``request``'s connection, when it is a TCP
    connection over loopback whose end this host's socket table shows; else ``None``."""
    transport = request.transport
    if transport is None:
        return None
    peer, ours = transport.get_extra_info("peername"), transport.get_extra_info("sockname")
    if not isinstance(peer, tuple) or not isinstance(ours, tuple):
        return None  # a Unix socket, or a closed connection
    try:
        address = ipaddress.ip_address(peer[0])
    except ValueError:
        return None
    mapped = getattr(address, "ipv4_mapped", None)
    if not (address.is_loopback or (mapped is not None and mapped.is_loopback)):
        return None
    table = "/proc/net/tcp6" if address.version == 6 else "/proc/net/tcp"
    wanted = (_entry(peer[0], peer[1]), _entry(ours[0], ours[1]))
    try:
        with open(table, encoding="ascii") as lines:
            next(lines, None)  # the header
            for line in lines:
                fields = line.split()
                if len(fields) > 7 and (fields[1], fields[2]) == wanted:
                    return int(fields[7])
    except (OSError, ValueError):
        return None
    return None


def _entry(host: str, port: int) -> str:
    """``host:port`` as the kernel's table writes it: the address in 32-bit words of the
    host's byte order, each as 8 hex digits, then the port as 4."""
    packed = ipaddress.ip_address(host.split("%")[0]).packed
    words = struct.unpack(f"={len(packed) // 4}I", packed)
    return "".join(f"{word:08X}" for word in words) + f":{port:04X}"
