"""Code upload: nested ignore files, git's view inside a repository, one tar stream for
the whole tree (SFTP where the task has no tar), and the real path it landed at."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import vi_flow
from vi_flow.compute._ignore import collect_files

pytestmark = pytest.mark.anyio


@pytest.fixture
async def client() -> AsyncIterator[vi_flow.AsyncClient]:
    async with vi_flow.AsyncClient() as c:
        yield c


def _tree(root: Path) -> None:
    for name, text in {
        "main.py": "print('hi')\n",
        ".gitignore": "*.log\n",
        "app.log": "noise\n",
        "sub/.gitignore": "secret.txt\n!keep.log\n",
        "sub/secret.txt": "s3cret\n",
        "sub/keep.log": "kept\n",
        "sub/code.py": "x = 1\n",
        "sub/deeper/secret.txt": "also ignored (the pattern has no slash)\n",
        "data/.flowignore": "*.bin\n",
        "data/big.bin": "0" * 100,
        "data/small.csv": "a,b\n",
        ".git/config": "not a repo, but never sent\n",
    }.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


EXPECTED = [
    ".gitignore",
    "data/.flowignore",
    "data/small.csv",
    "main.py",
    "sub/.gitignore",
    "sub/code.py",
    "sub/keep.log",
]


def test_nested_ignore_files_apply_to_their_subtree(tmp_path: Path) -> None:
    _tree(tmp_path / "p")
    files, skipped = collect_files(tmp_path / "p")
    assert sorted(rel for rel, _ in files) == EXPECTED and skipped == []


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_inside_a_git_repository_git_decides(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    _tree(root)
    shutil.rmtree(root / ".git")
    git = ["git", "-c", "user.email=t@example.org", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q"], cwd=root, check=True)
    (root / ".git" / "info" / "exclude").write_text("main.py\n")  # git's own rule
    subprocess.run([*git, "add", "sub/code.py"], cwd=root, check=True)
    files, _ = collect_files(root)
    assert sorted(rel for rel, _ in files) == [e for e in EXPECTED if e != "main.py"]
    # A subdirectory of a repository: its files, relative to it.
    files, _ = collect_files(root / "sub")
    assert sorted(rel for rel, _ in files) == [".gitignore", "code.py", "keep.log"]


async def test_a_tree_goes_as_one_stream_and_the_real_path_is_reported(
    client: vi_flow.AsyncClient, tmp_path: Path
) -> None:
    root = tmp_path / "many"
    for i in range(2000):
        path = root / f"d{i % 20}" / f"f{i}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{i}\n")
    task = await client.run("sleep 60", wait=True)
    try:
        started = time.perf_counter()
        result = await client.upload_code_to_task(task.task_id, source_dir=root, target_dir="code")
        took = time.perf_counter() - started
        assert result.files == 2000 and result.target_dir == "/workspace/code"
        assert result.path == str(Path(task.data.workdir) / "code")
        assert (Path(result.path) / "d7" / "f1007.txt").read_text() == "1007\n"
        counted = await task.shell("find code -type f | wc -l")
        assert counted.stdout.strip() == "2000"
        print(f"\n2,000 files uploaded in {took:.2f} s")  # noqa: T201
        assert took < 5.0  # file by file over SFTP this took ~8 s
    finally:
        await task.cancel(force=True)


async def test_without_a_shell_in_the_task_it_falls_back_to_sftp(
    client: vi_flow.AsyncClient, tmp_path: Path
) -> None:
    _tree(tmp_path / "p")
    sleep = shutil.which("sleep") or "/bin/sleep"
    task = await client.run([sleep, "60"], env={"PATH": "/nonexistent"}, wait=True)
    try:
        result = await client.upload_code_to_task(task.task_id, source_dir=tmp_path / "p")
        assert result.files == len(EXPECTED)
        workdir = Path(task.data.workdir)
        assert (workdir / "sub" / "code.py").read_text() == "x = 1\n"
        assert not (workdir / "sub" / "secret.txt").exists()
        assert (await task.shell("sh -c true")).exit_status == 127  # so no tar stream here
    finally:
        await task.cancel(force=True)
