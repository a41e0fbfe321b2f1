"""Upload a directory to a task over SFTP, honouring ignore files, never escaping the target.

Files are chosen by :func:`collect_files`: a walk of the source directory that skips what
``.gitignore`` and ``.flowignore`` (at its root) exclude, plus ``.git/``. Symbolic links
are never followed out of the source: a link to a file inside it is sent as that file's
content, anything else (links leaving the source, links to directories) is skipped and
reported. :func:`upload_files` writes each file under ``target_dir`` only: relative paths
with ``..`` or an absolute path are refused, and so is writing through a symbolic link
that already exists on the remote side. Local reads run in a worker thread.
"""

from __future__ import annotations

import os
import posixpath
import re
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import anyio.to_thread
import attrs

from .._errors import ViFlowError

if TYPE_CHECKING:
    import asyncssh

__all__ = [
    "IgnoreRules",
    "UploadError",
    "UploadResult",
    "check_target_dir",
    "collect_files",
    "progress_bar",
    "remote_path",
    "upload_files",
]

IGNORE_FILES = (".gitignore", ".flowignore")
_CHUNK = 256 * 1024


class UploadError(ViFlowError):
    """An upload was refused because it would write outside its target directory."""


@attrs.frozen
class UploadResult:
    """What an upload sent.

    Attributes:
        target_dir: The remote directory written to.
        files: Number of files sent.
        bytes: Bytes sent.
        skipped: Source paths left out because they are symbolic links that leave the
            source directory or point to directories.
    """

    target_dir: str
    files: int
    bytes: int
    skipped: list[str] = attrs.Factory(list)


def _segment_regex(pattern: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
            continue
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[" and "]" in pattern[i + 1 :]:
            end = pattern.index("]", i + 1)
            body = pattern[i + 1 : end].replace("\\", "\\\\")
            out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
            i = end
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


@attrs.frozen
class _Rule:
    regex: re.Pattern[str]
    negate: bool
    dir_only: bool


def _parse_rule(line: str) -> _Rule | None:
    line = line.rstrip("\n").rstrip()
    if not line or line.startswith("#"):
        return None
    negate = line.startswith("!")
    if negate or line.startswith("\\"):
        line = line[1:]
    dir_only = line.endswith("/")
    line = line.strip("/") if dir_only else line
    anchored = "/" in line.lstrip("/") or line.startswith("/")
    body = _segment_regex(line.lstrip("/"))
    prefix = "" if anchored else "(?:.*/)?"
    return _Rule(re.compile(f"^{prefix}{body}$"), negate, dir_only)


class IgnoreRules:
    """A small ``.gitignore`` matcher: ``*``, ``?``, ``[...]``, ``**``, ``!``, ``/`` anchors,
    trailing ``/`` for directories; the last matching rule wins.

    Args:
        lines: The pattern lines, in file order.
    """

    def __init__(self, lines: Iterable[str] = ()) -> None:
        self._rules = [r for r in map(_parse_rule, lines) if r is not None]

    @classmethod
    def from_directory(cls, root: Path) -> IgnoreRules:
        """Read ``.gitignore`` and ``.flowignore`` at ``root`` (blocking)."""
        lines = [".git/"]
        for name in IGNORE_FILES:
            file = root / name
            if file.is_file():
                lines += file.read_text(encoding="utf-8", errors="replace").splitlines()
        return cls(lines)

    def ignored(self, relative: str, *, is_dir: bool) -> bool:
        """Whether the POSIX path ``relative`` (from the root) is excluded."""
        result = False
        for rule in self._rules:
            if rule.dir_only and not is_dir:
                continue
            if rule.regex.match(relative):
                result = not rule.negate
        return result


def collect_files(source: Path) -> tuple[list[tuple[str, Path]], list[str]]:
    """Walk ``source`` and return ``(relative POSIX path, local file)`` pairs and skipped links.

    Blocking: call it in a worker thread.
    """
    root = source.resolve(strict=True)
    if not root.is_dir():
        raise NotADirectoryError(f"source_dir is not a directory: {source}")
    rules = IgnoreRules.from_directory(root)
    files: list[tuple[str, Path]] = []
    skipped: list[str] = []
    _walk(root, root, "", rules, files, skipped)
    return files, skipped


def _walk(
    root: Path,
    directory: Path,
    prefix: str,
    rules: IgnoreRules,
    files: list[tuple[str, Path]],
    skipped: list[str],
) -> None:
    with os.scandir(directory) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            relative = prefix + entry.name
            if entry.is_symlink():
                _add_link(root, Path(entry.path), relative, rules, files, skipped)
            elif entry.is_dir(follow_symlinks=False):
                if not rules.ignored(relative, is_dir=True):
                    _walk(root, Path(entry.path), relative + "/", rules, files, skipped)
            elif entry.is_file(follow_symlinks=False) and not rules.ignored(relative, is_dir=False):
                files.append((relative, Path(entry.path)))


def _add_link(
    root: Path,
    link: Path,
    relative: str,
    rules: IgnoreRules,
    files: list[tuple[str, Path]],
    skipped: list[str],
) -> None:
    if rules.ignored(relative, is_dir=False):
        return
    resolved = link.resolve()
    if resolved.is_file() and resolved.is_relative_to(root):
        files.append((relative, resolved))
    else:
        skipped.append(relative)


def remote_path(target_dir: str, relative: str) -> str:
    """Join a relative POSIX path under ``target_dir``, refusing any escape.

    Raises:
        UploadError: ``relative`` is absolute, empty, or has ``.``/``..`` parts.
    """
    parts = relative.split("/")
    if relative.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise UploadError(f"refusing to upload {relative!r}: not a plain relative path")
    return posixpath.join(target_dir, *parts)


WORKSPACE = "/workspace"
"""The task's working directory as the SFTP server shows it."""


def check_target_dir(target_dir: str) -> str:
    """Validate and normalise the remote target directory; relative ones are in ``/workspace``.

    Raises:
        UploadError: It is empty or contains ``..``.
    """
    if not target_dir or ".." in target_dir.split("/"):
        raise UploadError(f"refusing target_dir {target_dir!r}: it must not contain '..'")
    return posixpath.normpath(posixpath.join(WORKSPACE, target_dir))


Progress = Callable[[int], None]


async def upload_files(
    sftp: asyncssh.SFTPClient,
    files: list[tuple[str, Path]],
    target_dir: str,
    *,
    progress: Progress | None = None,
) -> tuple[int, int]:
    """Write ``files`` under ``target_dir`` over SFTP; return (files, bytes) sent.

    Raises:
        UploadError: A path escapes ``target_dir`` or an existing remote entry on the
            way is a symbolic link.
    """
    target = check_target_dir(target_dir)
    plan = [(remote_path(target, rel), local) for rel, local in files]
    made: set[str] = set()
    await _ensure_dir(sftp, target, made, nested=False)
    sent = 0
    for remote, local in plan:
        await _ensure_parents(sftp, target, posixpath.dirname(remote), made)
        await _refuse_link(sftp, remote)
        sent += await _send_file(sftp, local, remote, progress)
    return len(plan), sent


async def _ensure_parents(sftp: asyncssh.SFTPClient, top: str, parent: str, made: set[str]) -> None:
    relative = posixpath.relpath(parent, top)
    if relative == ".":
        return
    current = top
    for part in relative.split("/"):
        current = posixpath.join(current, part)
        await _ensure_dir(sftp, current, made, nested=True)


async def _ensure_dir(
    sftp: asyncssh.SFTPClient, directory: str, made: set[str], *, nested: bool
) -> None:
    """Make ``directory`` (its parents too unless ``nested``); refuse a symbolic link,
    the target directory included (a task could point ``code`` anywhere)."""
    import asyncssh

    if directory in made:
        return
    try:
        attrs_ = await sftp.lstat(directory)
    except asyncssh.SFTPNoSuchFile:
        if nested:
            await sftp.mkdir(directory)
        else:
            await sftp.makedirs(directory, exist_ok=True)
    else:
        if attrs_.type == asyncssh.FILEXFER_TYPE_SYMLINK:
            raise UploadError(f"refusing to write through the remote symbolic link {directory}")
    made.add(directory)


async def _refuse_link(sftp: asyncssh.SFTPClient, remote: str) -> None:
    import asyncssh

    try:
        attrs_ = await sftp.lstat(remote)
    except asyncssh.SFTPNoSuchFile:
        return
    if attrs_.type == asyncssh.FILEXFER_TYPE_SYMLINK:
        raise UploadError(f"refusing to write through the remote symbolic link {remote}")


async def _send_file(
    sftp: asyncssh.SFTPClient, local: Path, remote: str, progress: Progress | None
) -> int:
    sent = 0
    handle = await anyio.to_thread.run_sync(local.open, "rb")
    try:
        async with sftp.open(remote, "wb") as out:
            while chunk := await anyio.to_thread.run_sync(handle.read, _CHUNK):
                await out.write(chunk)
                sent += len(chunk)
                if progress is not None:
                    progress(len(chunk))
    finally:
        handle.close()
    return sent


def progress_bar(total: int) -> tuple[Callable[[int], None], Callable[[], None]] | None:
    """Return (advance, stop) of a rich progress bar on a terminal; ``None`` elsewhere."""
    if not sys.stderr.isatty():
        return None
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    bar = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    task = bar.add_task("uploading", total=total)
    bar.start()
    return (lambda n: bar.advance(task, n)), bar.stop
