"""A volume mounted into a running sandboxed task reaches its processes (server run as root).

A sandbox is a mount namespace made when the task starts; a later bind on the host never
enters it. So the volume is mounted *inside* that namespace: a short helper process
clones the volume's directory as a detached mount (``open_tree(OPEN_TREE_CLONE)``, in the
server's namespace, where the volume is visible), joins the task's mount namespace
(``setns``, which a multithreaded server cannot do itself) and attaches the clone at the
volume's usual path there (``move_mount``), ``nosuid`` and ``nodev`` as every mount of the
sandbox (``mount_setattr``, Linux 5.12). The mount exists only in the task's
namespace: nothing is mounted on the host, and it disappears with the sandbox, even if
the server is killed. The helper walks the target path without following links
(``O_NOFOLLOW``), so a link the task planted cannot move the mount elsewhere.

Both calls need ``CAP_SYS_ADMIN`` over the server's own mount namespace: without root,
a volume mounted into a running task reaches the SSH sessions opened afterwards only.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

__all__ = ["late_mounts_supported", "mount_into"]

# Run as ``python -I -S -c _HELPER <pid> <source> <target>``: single-threaded, so setns works.
_HELPER = r"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
OPEN_TREE, MOVE_MOUNT, MOUNT_SETATTR = 428, 429, 442
CLONE, CLOEXEC, RECURSIVE, EMPTY_PATH, EMPTY_FROM, EMPTY_TO = 1, 0o2000000, 0x8000, 0x1000, 4, 0x40
NOSUID_NODEV = 0x2 | 0x4  # MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV
def check(result, what):
    if result < 0:
        err = ctypes.get_errno()
        sys.exit(f"{what}: {os.strerror(err)}")
    return result
pid, source, target = sys.argv[1:4]
tree = check(libc.syscall(OPEN_TREE, -100, source.encode(), CLONE | CLOEXEC | RECURSIVE), "open_tree")
attr = (ctypes.c_uint64 * 4)(NOSUID_NODEV, 0, 0, 0)  # struct mount_attr: set, clear, propagation, userns
check(libc.syscall(MOUNT_SETATTR, tree, b"", EMPTY_PATH | RECURSIVE, attr, 32), "mount_setattr")
check(libc.setns(os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY), 0x20000), "setns")
here = os.open("/", os.O_PATH | os.O_DIRECTORY)
try:
    for name in [part for part in target.split("/") if part]:
        try:
            os.mkdir(name, 0o755, dir_fd=here)
        except FileExistsError:
            pass
        here = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=here)
except OSError as exc:  # a link or a file the task put on the way
    sys.exit(f"{target} in the task: {exc.strerror}")
check(libc.syscall(MOVE_MOUNT, tree, b"", here, b"", EMPTY_FROM | EMPTY_TO), "move_mount")
"""


def late_mounts_supported() -> bool:
    """Whether the server may mount into a running sandbox (it runs as root)."""
    return os.geteuid() == 0


def _sandbox_init(bwrap_pid: int) -> int:
    """The first process inside the sandbox: bubblewrap's child (blocking).

    Raises:
        OSError: The sandbox is gone.
    """
    path = Path(f"/proc/{bwrap_pid}/task/{bwrap_pid}/children")
    children = path.read_text(encoding="ascii").split()
    if not children:
        raise OSError(f"the sandbox of process {bwrap_pid} has ended")
    return int(children[0])


async def mount_into(bwrap_pid: int, source: Path, target: Path) -> None:
    """Mount ``source`` at ``target`` in the running sandbox whose ``bwrap`` is ``bwrap_pid``.

    Raises:
        OSError: The sandbox is gone, or a system call was refused (its name and error).
    """
    init = await asyncio.to_thread(_sandbox_init, bwrap_pid)
    helper = await asyncio.create_subprocess_exec(
        sys.executable,
        "-I",
        "-S",
        "-c",
        _HELPER,
        str(init),
        str(source),
        str(target),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await helper.communicate()
    if helper.returncode != 0:
        raise OSError(err.decode(errors="replace").strip() or f"status {helper.returncode}")
