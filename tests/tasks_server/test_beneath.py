"""Host-side writes into a task directory never go through a link the task planted."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vi_flow.server.beneath import (
    LinkInTheWay,
    append_beneath,
    link_beneath,
    makedirs_beneath,
    open_beneath,
)


@pytest.fixture
def task(tmp_path: Path) -> tuple[Path, Path]:
    """A task directory whose workspace holds links to ``outside``, and ``outside``."""
    root, outside = tmp_path / "task", tmp_path / "outside"
    (root / "workspace").mkdir(parents=True)
    outside.mkdir()
    (root / "workspace" / "v").symlink_to(outside)
    (root / "logs").symlink_to(outside)  # logs/ itself replaced by a link
    return root, outside


def test_nothing_is_made_through_a_link(task: tuple[Path, Path]) -> None:
    root, outside = task
    workspace = root / "workspace"
    with pytest.raises(LinkInTheWay):
        makedirs_beneath(root, workspace / "v" / "deeper")
    with pytest.raises(LinkInTheWay):
        link_beneath(root, workspace / "v" / "pwned", outside)
    with pytest.raises(LinkInTheWay):
        append_beneath(root, root / "logs" / "stderr.log", "[vi-flow] line")
    with pytest.raises(LinkInTheWay):
        open_beneath(root, workspace / "v", os.O_RDONLY)  # the link itself is no file
    assert list(outside.iterdir()) == []


def test_real_directories_are_made_and_linked(task: tuple[Path, Path]) -> None:
    root, outside = task
    target = root / "workspace" / "a" / "b" / "vol"
    assert link_beneath(root, target, outside) is True
    assert os.readlink(target) == str(outside)
    assert link_beneath(root, target, outside) is False  # already that link
    with pytest.raises(FileExistsError):
        link_beneath(root, target, root)
    (root / "logs").unlink()
    makedirs_beneath(root, root / "logs")
    append_beneath(root, root / "logs" / "stderr.log", "one\n")
    append_beneath(root, root / "logs" / "stderr.log", "two")
    assert (root / "logs" / "stderr.log").read_text() == "one\ntwo\n"
