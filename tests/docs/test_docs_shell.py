"""Every ```bash block in docs/*.md runs, page by page, as ``bash -euo pipefail``.

A page's blocks run in order as one script, in an empty working directory, as a fresh
user (``pages.user_env``: a private ``HOME`` with nothing configured, so the CLI starts
the embedded server, as the pages say). Around them:

* a block titled with a file name, ```yaml title="spec.yaml", is that file of the
  working directory, written before the commands run;
* a page that talks to ``http://127.0.0.1:8000/v1``, where ``vi-flow serve`` listens by
  default, gets that server (in the user's default home), on a free port put in place
  of 8000;
* a block that runs ``vi-flow serve`` would hold the foreground until stopped: a test of
  its own runs it in the background and checks the line the page shows under it;
* a block titled "not run" opts out (installing packages, ``sudo``); the test keeps
  their number small.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from .pages import (
    Block,
    all_blocks,
    blocks,
    free_port,
    home_server_stopped,
    page_id,
    serving,
    user_env,
)

#: The set-up commands of index.md and the README (they install and run the whole suite),
#: the README's development commands, and production.md's ``sudo cat`` block.
MAX_NOT_RUN = 5
SERVER = "127.0.0.1:8000"
FILE_TITLE = re.compile(r'title="(?P<name>[\w.-]+\.\w+)"')


def _is_serve(block: Block) -> bool:
    return block.code.startswith("vi-flow serve ")


def _page_blocks(page: Path) -> list[Block]:
    return [b for b in blocks(page, "bash") if b.runs and not _is_serve(b)]


def _pages() -> list[Path]:
    return sorted({b.page for b in all_blocks("bash") if _page_blocks(b.page)})


def _serve_blocks() -> list[Block]:
    return [b for b in all_blocks("bash") if b.runs and _is_serve(b)]


def _write_files(page: Path, work: Path) -> None:
    for block in blocks(page):
        if match := FILE_TITLE.search(block.info):
            (work / match["name"]).write_text(block.code, encoding="utf-8")


def test_docs_have_bash_blocks_and_few_opt_outs() -> None:
    assert len(_pages()) >= 3
    assert _serve_blocks()
    skipped = [b.where for b in all_blocks("bash") if not b.runs]
    assert len(skipped) <= MAX_NOT_RUN, skipped


@pytest.mark.timeout(120)
@pytest.mark.parametrize("page", _pages(), ids=page_id)
def test_page_commands_run(page: Path, tmp_path: Path) -> None:
    script = "\n".join(f"# ---- {b.where}\n{b.code}" for b in _page_blocks(page))
    env = user_env(tmp_path)
    if re.search(r"\bjq\b", script) and not shutil.which("jq", path=env["PATH"]):
        pytest.skip(f"{page_id(page)} pipes into jq, which is not installed")
    work = tmp_path / "work"
    work.mkdir()
    _write_files(page, work)
    with contextlib.ExitStack() as stack:
        stack.enter_context(home_server_stopped(env))
        if SERVER in script:
            port = free_port()
            stack.enter_context(serving(["vi-flow", "serve", "--port", str(port)], env, work))
            script = script.replace(SERVER, f"127.0.0.1:{port}")
        proc = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script], cwd=work, env=env,
            capture_output=True, text=True, timeout=110, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}\n--- script ---\n{script}"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("block", _serve_blocks(), ids=lambda b: b.where)
def test_serve_block_prints_what_the_page_shows(block: Block, tmp_path: Path) -> None:
    home, port = re.search(r"--home (\S+)", block.code), re.search(r"--port (\d+)", block.code)
    assert home and port, f"{block.where}: show --home and --port, the test replaces them"
    state = tmp_path / "state"
    text = block.code.replace(home[1], str(state))
    text = re.sub(rf"\b{port[1]}\b", str(free_port()), text)
    commands = [line for line in text.splitlines() if not line.startswith("#")]
    shown = [line.removeprefix("# ") for line in text.splitlines() if line.startswith("#")]
    assert len(commands) == 1, f"{block.where}: one command, then the line it prints"
    env = user_env(tmp_path)
    with serving(["bash", "-c", f"exec {commands[0]}"], env, tmp_path) as first:
        assert [first] == shown[:1]
        # what the page says the home holds
        assert (state / "state.db").is_file()
        assert (state / "admin-token").stat().st_mode & 0o777 == 0o600
