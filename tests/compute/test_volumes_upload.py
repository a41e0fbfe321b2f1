"""Volumes and code upload against the embedded local server, plus the ignore-file matcher."""

from __future__ import annotations

import logging
import os
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import vi_flow
from vi_flow import ConflictError, UnprocessableEntityError
from vi_flow.compute import IgnoreRules, UploadError
from vi_flow.compute._upload import collect_files, remote_path

pytestmark = pytest.mark.anyio


@pytest.fixture
async def client() -> AsyncIterator[vi_flow.AsyncClient]:
    async with vi_flow.AsyncClient() as c:
        yield c


def test_ignore_rules_follow_gitignore() -> None:
    rules = IgnoreRules(["# comment", "*.log", "!keep.log", "build/", "/top.txt", "docs/**/*.md"])
    assert rules.ignored("a.log", is_dir=False)
    assert rules.ignored("deep/b.log", is_dir=False)
    assert not rules.ignored("keep.log", is_dir=False)
    assert rules.ignored("build", is_dir=True)
    assert rules.ignored("src/build", is_dir=True)
    assert not rules.ignored("build", is_dir=False)
    assert rules.ignored("top.txt", is_dir=False)
    assert not rules.ignored("sub/top.txt", is_dir=False)
    assert rules.ignored("docs/a/b/c.md", is_dir=False)
    assert rules.ignored("docs/c.md", is_dir=False)
    assert not rules.ignored("main.py", is_dir=False)


def test_remote_path_refuses_escapes() -> None:
    assert remote_path("/workspace", "a/b.py") == "/workspace/a/b.py"
    for bad in ("../x", "a/../../x", "/etc/passwd", "a//b", "./a"):
        with pytest.raises(UploadError):
            remote_path("/workspace", bad)


def _source_tree(root: Path, outside: Path) -> None:
    (root / "sub").mkdir(parents=True)
    (root / "build").mkdir()
    (root / "main.py").write_text("print('hi')\n")
    (root / "sub" / "data.txt").write_text("data\n")
    (root / "build" / "out.bin").write_bytes(b"\0" * 10)
    (root / "debug.log").write_text("noise\n")
    (root / "keep.log").write_text("kept\n")
    (root / "secret.env").write_text("TOKEN=x\n")
    (root / ".gitignore").write_text("*.log\n!keep.log\nbuild/\n")
    (root / ".flowignore").write_text("secret.env\n")
    (outside / "private.txt").write_text("outside\n")
    os.symlink(outside / "private.txt", root / "escape.txt")
    os.symlink(outside, root / "escape_dir")
    os.symlink(root / "main.py", root / "alias.py")


def test_collect_files_skips_ignored_and_escaping_links(tmp_path: Path) -> None:
    root, outside = tmp_path / "src", tmp_path / "outside"
    outside.mkdir()
    _source_tree(root, outside)
    files, skipped = collect_files(root)
    names = sorted(rel for rel, _ in files)
    assert names == [".flowignore", ".gitignore", "alias.py", "keep.log", "main.py", "sub/data.txt"]
    assert sorted(skipped) == ["escape.txt", "escape_dir"]


async def test_upload_code_to_task(client: vi_flow.AsyncClient, tmp_path: Path) -> None:
    root, outside = tmp_path / "src", tmp_path / "outside"
    outside.mkdir()
    _source_tree(root, outside)
    task = await client.run("sleep 60", wait=True)
    try:
        result = await client.upload_code_to_task(task.task_id, source_dir=root)
        assert result.files == 6 and sorted(result.skipped) == ["escape.txt", "escape_dir"]
        listing = await task.shell("cd /workspace 2>/dev/null || true; find . -type f | sort")
        assert "./sub/data.txt" in listing.stdout and "./main.py" in listing.stdout
        assert "debug.log" not in listing.stdout and "secret.env" not in listing.stdout
        assert "private.txt" not in listing.stdout
        # a set-UID file failed the whole upload halfway (QA AV): it goes, without the bit
        (root / "tool").write_text("#!/bin/sh\n")
        (root / "tool").chmod(0o4755)
        again = await client.upload_code_to_task(task.task_id, source_dir=root)
        assert again.files == 7
        mode = await task.shell("stat -c %a /workspace/tool 2>/dev/null || stat -c %a tool")
        assert mode.stdout.strip() == "755", mode
    finally:
        await task.cancel(force=True)


async def test_upload_refuses_dotdot_target_and_remote_symlinks(
    client: vi_flow.AsyncClient, tmp_path: Path
) -> None:
    marker = f"vi-flow-upload-{uuid.uuid4().hex}.txt"
    root = tmp_path / "src"
    (root / "evil").mkdir(parents=True)
    (root / "evil" / marker).write_text("should not land outside\n")
    task = await client.run("sleep 60", wait=True)
    try:
        with pytest.raises(UploadError, match=r"\.\."):
            await client.upload_code_to_task(
                task.task_id, source_dir=root, target_dir="/workspace/../x"
            )
        await client.upload_code_to_task(task.task_id, source_dir=tmp_path / "src", target_dir="up")
        link = await task.shell(f"mkdir -p up2 && ln -s {tmp_path} up2/evil && echo ok")
        assert link.stdout == "ok\n"
        with pytest.raises(UploadError, match="symbolic link"):
            await client.upload_code_to_task(task.task_id, source_dir=root, target_dir="up2")
        assert not (tmp_path / marker).exists()
        # The target directory itself made a link out of the task (issue 11: `code`).
        await task.shell("ln -s ../../.. code && ln -s ../../../admin-token token")
        with pytest.raises(UploadError, match="symbolic link"):
            await client.upload_code_to_task(task.task_id, source_dir=root, target_dir="code")
        workdir = Path((await client.tasks.ssh_endpoint(task.task_id)).workdir)
        assert not (workdir.parents[2] / "evil").exists()  # nothing landed in the home
    finally:
        await task.cancel(force=True)


async def test_upload_refuses_a_workspace_that_is_itself_a_link(
    client: vi_flow.AsyncClient, tmp_path: Path
) -> None:
    # QA AI: a task that made its workspace a link to /tmp got its uploads answered with
    # success, and the files went to the upload session's private /tmp.
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "main.py").write_text("print('hi')\n")
    task = await client.run("sleep 60", wait=True)
    try:
        moved = await task.shell("cd .. && mv workspace away && ln -s /tmp workspace && echo ok")
        assert moved.stdout == "ok\n", moved
        with pytest.raises(UploadError, match=r"symbolic link /workspace$"):
            await client.upload_code_to_task(task.task_id, source_dir=tmp_path / "src")
    finally:
        await task.cancel(force=True)


async def test_volume_names_and_conflicts(client: vi_flow.AsyncClient) -> None:
    for bad in ("a/b", "..", "x..y/..", "../up"):
        with pytest.raises(UnprocessableEntityError, match="name"):
            await client.create_volume(1, name=bad)
    # QA AB: the client said "between 1 and 9223372036854775807", and 100000 then got 422
    for size in (0, 65_537):
        with pytest.raises(ValueError, match=f"size_gb: must be between 1 and 65536, got {size}"):
            await client.create_volume(size, name="sized")
    assert (await client.create_volume(65_536, name="sized")).size_gb == 65_536
    volume = await client.create_volume(1, name="datasets", interface="file")
    assert volume.name == "datasets"
    assert "datasets" in [v.name for v in await client.list_volumes()]
    task = await client.run("sleep 60", mounts={"/data": "volume://datasets"}, wait=True)
    try:
        with pytest.raises(ConflictError, match=task.task_id):
            await client.delete_volume(volume.volume_id)
    finally:
        await task.cancel(force=True)
    await client.delete_volume(volume.volume_id)
    assert "datasets" not in [v.name for v in await client.list_volumes()]


async def test_a_dot_id_is_refused_not_sent_to_another_route(client: vi_flow.AsyncClient) -> None:
    # QA: ".." went into the URL as it was, and the URL read it as the parent:
    # POST /v1/tasks/../volumes is POST /v1/volumes, so every call made a volume.
    await client.create_volume(1, name="dots", interface="file")
    before = await client.list_volumes()
    for bad in ("..", "."):
        with pytest.raises(ValueError, match=f"no id is '{re.escape(bad)}'"):
            await client.mount_volume("dots", bad)
        with pytest.raises(ValueError, match="no id is"):
            await client.runs.get(bad)
    assert await client.list_volumes() == before


async def test_mount_volume_on_running_task_and_bad_mounts(client: vi_flow.AsyncClient) -> None:
    await client.create_volume(1, name="extra", interface="file")
    task = await client.run("sleep 60", wait=True)
    try:
        assert await client.mount_volume("extra", task.task_id, mount_point="/extra")
        seen = await task.shell("test -d extra && echo visible")
        assert seen.stdout == "visible\n"
        # New sessions see the variable too, holding the same directory as the mount path.
        probe = 'echo x > "$VI_FLOW_VOLUME_EXTRA/f" && cat extra/f'
        assert (await task.shell(probe)).stdout == "x\n"
    finally:
        await task.cancel(force=True)
    with pytest.raises(ValueError, match="volume://"):
        await client.run("true", mounts={"/data": "s3://bucket/x"})


async def test_a_mount_a_server_not_root_cannot_make_in_running_processes_is_logged(
    client: vi_flow.AsyncClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # QA AJ: the docs promise a line in the server's log for each such mount; none came.
    monkeypatch.setattr(
        "vi_flow.server.providers.local.provider.late_mounts_supported", lambda: False
    )
    volume = await client.create_volume(1, name="later", interface="file")
    task = await client.run("sleep 60", wait=True)
    try:
        with caplog.at_level(logging.WARNING, logger="vi_flow"):
            assert await client.mount_volume("later", task.task_id, mount_point="/later")
        said = f"{task.task_id}: volume {volume.path} reaches the sessions opened from now on"
        assert said in caplog.text, caplog.text
        seen = await task.shell("test -d later && echo visible")
        assert seen.stdout == "visible\n"  # as the docs say: the new session sees it
    finally:
        await task.cancel(force=True)


def test_a_target_dir_no_upload_may_use_is_a_value_error_saying_why() -> None:
    from vi_flow.compute._upload import check_target_dir

    with pytest.raises(UploadError, match="must not be empty") as empty:
        check_target_dir("")
    assert isinstance(empty.value, ValueError)  # an argument to fix: the CLI exits 2
    with pytest.raises(ValueError, match=r"must not contain '\.\.'"):
        check_target_dir("../..")
    assert check_target_dir(".") == "/workspace"
