"""Which files of a directory an upload sends: git's view, or nested ignore files.

Inside a git work tree (and with ``git`` installed) the files are the ones
``git ls-files --cached --others --exclude-standard`` lists: tracked files and new ones
that no ignore rule of git's excludes (nested ``.gitignore`` files, ``.git/info/exclude``,
the global excludes file). Elsewhere the directory is walked and every ``.gitignore`` on
the way applies to its own subtree, as git applies them. Either way, ``.flowignore`` files
(same syntax, any directory) leave out more, and ``.git/`` is never sent. Patterns are
matched by :mod:`pathspec` (gitignore semantics: a deeper file and a later line win).

Symbolic links are never followed out of the source: a link to a file inside it is sent
as that file's content; anything else (links leaving the source, links to directories)
is skipped and reported. Everything here blocks: call it in a worker thread.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

import pathspec

__all__ = ["FLOW_IGNORE", "GIT_IGNORE", "IgnoreRules", "collect_files", "git_files"]

GIT_IGNORE = ".gitignore"
FLOW_IGNORE = ".flowignore"

Files = list[tuple[str, Path]]


class IgnoreRules:
    """The patterns of one ignore file (``.gitignore`` syntax), matched with pathspec.

    Args:
        lines: The pattern lines, in file order.
    """

    def __init__(self, lines: Iterable[str] = ()) -> None:
        self._spec = pathspec.GitIgnoreSpec.from_lines(list(lines))

    @classmethod
    def from_directory(
        cls, root: Path, names: Iterable[str] = (GIT_IGNORE, FLOW_IGNORE)
    ) -> IgnoreRules:
        """Read the ignore files ``names`` found in ``root`` (not below it)."""
        lines: list[str] = []
        for name in names:
            file = root / name
            if file.is_file():
                lines += file.read_text(encoding="utf-8", errors="replace").splitlines()
        return cls(lines)

    def decision(self, relative: str, *, is_dir: bool) -> bool | None:
        """``True`` (ignored) or ``False`` (re-included by ``!``) from the last matching
        line; ``None`` when no line matches ``relative`` (a POSIX path from the file's
        directory)."""
        include: bool | None = self._spec.check_file(relative + "/" if is_dir else relative).include
        return include

    def ignored(self, relative: str, *, is_dir: bool) -> bool:
        """Whether the POSIX path ``relative`` (from the root) is excluded."""
        return self.decision(relative, is_dir=is_dir) is True


class _Nested:
    """The ignore files of every directory seen so far; deeper ones decide last."""

    def __init__(self, root: Path, names: tuple[str, ...]) -> None:
        self._root = root
        self._names = names
        self._rules: dict[str, IgnoreRules | None] = {}

    def _rules_of(self, prefix: str) -> IgnoreRules | None:
        if prefix not in self._rules:
            directory = self._root / prefix if prefix else self._root
            found = [n for n in self._names if (directory / n).is_file()]
            self._rules[prefix] = IgnoreRules.from_directory(directory, found) if found else None
        return self._rules[prefix]

    def ignored(self, relative: str, *, is_dir: bool) -> bool:
        parts = relative.split("/")
        result: bool | None = None
        for depth in range(len(parts)):
            prefix = "".join(p + "/" for p in parts[:depth])
            rules = self._rules_of(prefix)
            if rules is not None:
                decided = rules.decision(relative[len(prefix) :], is_dir=is_dir)
                result = decided if decided is not None else result
        return result is True


def git_files(root: Path) -> list[str] | None:
    """The files git would commit below ``root`` (relative POSIX paths), or ``None`` when
    ``root`` is not in a git work tree or git is not installed."""
    git = shutil.which("git")
    if git is None:
        return None
    argv = [git, "ls-files", "-z", "--cached", "--others", "--exclude-standard"]
    try:
        listed = subprocess.run(argv, cwd=root, capture_output=True, check=True, timeout=120)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError):
        return None
    return sorted({p for p in listed.stdout.decode("utf-8", "surrogateescape").split("\0") if p})


def collect_files(source: Path) -> tuple[Files, list[str]]:
    """``(relative POSIX path, local file)`` pairs to send, and the links left out.

    Raises:
        NotADirectoryError: ``source`` is not a directory.
    """
    root = source.resolve(strict=True)
    if not root.is_dir():
        raise NotADirectoryError(f"source_dir is not a directory: {source}")
    files: Files = []
    skipped: list[str] = []
    listed = git_files(root)
    if listed is None:
        _walk(root, root, "", _Nested(root, (GIT_IGNORE, FLOW_IGNORE)), files, skipped)
        return files, skipped
    flow = _Nested(root, (FLOW_IGNORE,))
    for relative in listed:
        if not _in_ignored_dir(flow, relative) and not flow.ignored(relative, is_dir=False):
            _add(root, root / relative, relative, files, skipped)
    return files, skipped


def _in_ignored_dir(rules: _Nested, relative: str) -> bool:
    parts = relative.split("/")[:-1]
    return any(rules.ignored("/".join(parts[: i + 1]), is_dir=True) for i in range(len(parts)))


def _walk(
    root: Path, directory: Path, prefix: str, rules: _Nested, files: Files, skipped: list[str]
) -> None:
    with os.scandir(directory) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            relative = prefix + entry.name
            is_dir = entry.is_dir(follow_symlinks=False)
            if (is_dir and entry.name == ".git") or rules.ignored(relative, is_dir=is_dir):
                continue
            if is_dir:
                _walk(root, Path(entry.path), relative + "/", rules, files, skipped)
            else:
                _add(root, Path(entry.path), relative, files, skipped)


def _add(root: Path, path: Path, relative: str, files: Files, skipped: list[str]) -> None:
    """Add a regular file, or the file inside ``root`` a link points to; skip the rest."""
    if path.is_symlink():
        resolved = path.resolve()
        if resolved.is_file() and resolved.is_relative_to(root):
            files.append((relative, resolved))
        else:
            skipped.append(relative)
    elif path.is_file():  # not a socket, a FIFO, a deleted tracked file or a submodule
        files.append((relative, path))
