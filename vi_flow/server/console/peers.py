"""Who a loopback connection comes from (Linux: ``/proc/net/tcp``, ``/proc/PID/fd``).

A sign-in link travels on the browser's command line, which every local user can read
(``/proc/PID/cmdline``): another user on the machine could trade its code first (QA AJ).
The code is therefore bound to who asked for it, when that connection came over
loopback, and only a connection of the same one trades it: the local user (the kernel's
socket table names the owner of each end of a local TCP connection), and whether it is
one of this server's sandboxed tasks, which run as the server's user on the host's
network (QA AM: a task traded the owner's code). A task is a process in a PID namespace
of its own that descends from this server; the user's browser is neither (a browser
in a Flatpak sandbox has a namespace of its own, but does not descend from the server).
"""

from __future__ import annotations

import ipaddress
import os
import struct

from aiohttp import web

__all__ = ["loopback_peer"]


def loopback_peer(request: web.Request) -> str | None:
    """Who holds the client's end of ``request``'s connection, when it is a TCP connection
    over loopback whose end this host's socket table shows: ``uid=N``, and for one of this
    server's sandboxed tasks its PID namespace too; else ``None``."""
    found = _loopback_socket(request)
    if found is None:
        return None
    uid, inode = found
    sandbox = _task_namespace(inode, uid)
    return f"uid={uid}" if sandbox is None else f"uid={uid},task={sandbox}"


def _loopback_socket(request: web.Request) -> tuple[int, str] | None:
    """The uid and socket inode of the client's end of ``request``'s connection."""
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
                if len(fields) > 9 and (fields[1], fields[2]) == wanted:
                    return int(fields[7]), fields[9]
    except (OSError, ValueError):
        return None
    return None


def _entry(host: str, port: int) -> str:
    """``host:port`` as the kernel's table writes it: the address in 32-bit words of the
    host's byte order, each as 8 hex digits, then the port as 4."""
    packed = ipaddress.ip_address(host.split("%")[0]).packed
    words = struct.unpack(f"={len(packed) // 4}I", packed)
    return "".join(f"{word:08X}" for word in words) + f":{port:04X}"


def _task_namespace(inode: str, uid: int) -> str | None:
    """The PID namespace of the process holding socket ``inode`` when it is not this
    server's and the process descends from this server (a sandboxed task or session);
    else ``None``. Only processes of ``uid`` are looked at."""
    ours = _namespace(os.getpid())
    holder = _holder(f"socket:[{inode}]", uid)
    if holder is None:
        # A process that made itself undumpable (prctl) hides its descriptors from a server
        # that is not root: while one of the server's own descends from it, a socket no
        # readable process holds may be that one's, so it is not taken for the user's.
        return "hidden" if _hidden_descendant() else None
    theirs = _namespace(holder)
    if theirs is not None and theirs != ours and _descends(holder, os.getpid()):
        return theirs.removeprefix("pid:")
    return None


def _holder(link: str, uid: int) -> int | None:
    """The process of ``uid`` one of whose descriptors is ``link`` (``socket:[N]``)."""
    with os.scandir("/proc") as entries:
        for entry in entries:
            if not entry.name.isdigit():
                continue
            try:
                if entry.stat().st_uid != uid:
                    continue
                with os.scandir(f"/proc/{entry.name}/fd") as fds:
                    if any(_readlink(fd.path) == link for fd in fds):
                        return int(entry.name)
            except OSError:  # it ended meanwhile, or it is not ours to read
                continue
    return None


def _hidden_descendant() -> bool:
    """Whether a process descending from this server hides its descriptors from it."""
    server = os.getpid()
    with os.scandir("/proc") as entries:
        for entry in entries:
            if not entry.name.isdigit() or int(entry.name) == server:
                continue
            try:
                os.listdir(f"/proc/{entry.name}/fd")
            except PermissionError:
                if _descends(int(entry.name), server):
                    return True
            except OSError:
                continue
    return False


def _namespace(pid: int) -> str | None:
    return _readlink(f"/proc/{pid}/ns/pid")


def _readlink(path: str) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None


def _descends(pid: int, ancestor: int) -> bool:
    """Whether ``pid``'s chain of parents (``PPid`` in ``/proc/PID/status``) holds
    ``ancestor``."""
    for _ in range(4096):  # a chain is never that long: a bound, not a rule
        if pid == ancestor:
            return True
        if pid <= 1:
            return False
        try:
            with open(f"/proc/{pid}/status", encoding="utf-8", errors="replace") as status:
                pid = next(int(line.split()[1]) for line in status if line.startswith("PPid:"))
        except (OSError, StopIteration, ValueError, IndexError):
            return False
    return False
