"""Walking a tree a task shapes: bounded descriptors, no link followed, no way elsewhere."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vi_flow.server import trees
from vi_flow.server.trees import TreeMoved, Walk

from ..another_user import as_another_user, shared_with_another_user


def _chain(root: Path, depth: int) -> list[Path]:
    """``root/a/a/...`` (``depth`` levels); the directories, top down."""
    levels = [root / ("a/" * level) for level in range(1, depth + 1)]
    levels[-1].mkdir(parents=True)
    return levels


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_walk_holds_a_bounded_number_of_descriptors(tmp_path: Path) -> None:
    depth = trees.HELD * 3
    levels = _chain(tmp_path / "root", depth)
    (levels[-1] / "f").write_text("x")
    (levels[trees.HELD] / "out").symlink_to(tmp_path)
    most = [0]
    top = os.open(tmp_path / "root", os.O_RDONLY | os.O_DIRECTORY)
    try:
        before = _open_fds()

        def count(fd: int) -> None:  # called with each directory just opened
            most[0] = max(most[0], _open_fds() - before)

        walk = Walk(top, prepare=count, strict=True)
        found = [walk.path(e.name) for e in walk if not e.walked]
        assert _open_fds() == before
    finally:
        os.close(top)
    assert set(found) == {"a/" * (trees.HELD + 1) + "out", "a/" * depth + "f"}
    assert most[0] == trees.HELD + 1


@pytest.mark.parametrize("strict", [True, False])
def test_a_walk_refuses_to_go_up_into_a_directory_moved_meanwhile(
    tmp_path: Path, strict: bool
) -> None:
    # A parent whose descriptor was closed is opened again as ".." of its child: once
    # the task moved the child elsewhere, that is another directory, never walked.
    levels = _chain(tmp_path / "root", trees.HELD + 8)
    (tmp_path / "root" / "keep").write_text("x")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    bottom = os.stat(levels[-1]).st_ino

    def move(fd: int) -> None:  # at the bottom: level 2 (closed by now) goes elsewhere
        if os.fstat(fd).st_ino == bottom:
            os.rename(levels[1], elsewhere / "moved")

    top = os.open(tmp_path / "root", os.O_RDONLY | os.O_DIRECTORY)
    try:
        before = _open_fds()
        walk = Walk(top, prepare=move, strict=strict)
        if strict:
            with pytest.raises(TreeMoved):
                list(walk)
        else:  # it ends there: "keep" is met only if it came before "a"
            assert {e.name for e in walk if not e.walked} <= {"keep"}
        assert _open_fds() == before
    finally:
        os.close(top)


def test_a_server_that_is_not_root_removes_directories_a_task_made_unreadable() -> None:
    # QA: `mkdir -p a/b; chmod 000 a` in a task's files, or in a volume, and a server
    # that is not root could not open `a` to make it writable: a pruned task's files
    # and a deleted volume stayed on disk for ever, with a warning in the log only
    def make_and_remove(root: Path) -> bool:
        (root / "a" / "b").mkdir(parents=True)
        (root / "a" / "b" / "f").write_text("x")
        (root / "no-read").mkdir()
        (root / "no-read").chmod(0o300)
        (root / "a").chmod(0o000)
        root.chmod(0o000)  # the top too (a volume's own directory, chmod-ed by its task)
        return trees.remove_tree(root) and not root.exists()

    with shared_with_another_user("vi-flow-trees-") as shared:  # its tree is made in it
        assert as_another_user(lambda: make_and_remove(shared / "task"))
