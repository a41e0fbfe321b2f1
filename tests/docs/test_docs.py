"""Every ```python block in docs/*.md runs, page by page, against a real server.

A page's blocks run in order as one script (later blocks use what earlier ones made),
in a subprocess with a private home and config dir, so the docs cannot drift from the
code. A block with top-level ``await`` runs as a notebook cell would, on an event loop
of its own. Pages whose flows use an ``llm`` block run against ``vi-flow serve
--llm-base-url`` pointed at a scripted model (``fake_model``), as the pages describe;
the others use the embedded server. A block opts out with an explicit title,
```python title="not run" (an interactive shell); the test keeps their number small.
"""

from __future__ import annotations

import ast
import contextlib
import inspect
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .fake_model import fake_model
from .pages import Block, all_blocks, blocks, home_server_stopped, page_id, serving, user_env

MAX_NOT_RUN = 1


def _pages() -> list[Path]:
    return sorted({b.page for b in all_blocks("python") if b.runs})


def _source(block: Block) -> str:
    """A block as script text; one with top-level ``await`` gets an event loop to run on."""
    flags = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
    code = compile(block.code, block.where, "exec", flags=flags, dont_inherit=True)
    if not code.co_flags & inspect.CO_COROUTINE:
        return block.code
    return (
        "import ast as _ast, asyncio as _asyncio\n"
        f"_cell = compile({block.code!r}, {block.where!r}, 'exec', flags=_ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)\n"
        "_asyncio.run(eval(_cell))\n"
    )


def _script(page: Path) -> str:
    parts = [f"# ---- {b.where}\n{_source(b)}" for b in blocks(page, "python") if b.runs]
    return "\n".join(parts)


@contextlib.contextmanager
def _server(script: str, root: Path, env: dict[str, str]) -> Iterator[dict[str, str]]:
    """The client settings a page's script needs: none, or those of a server with a model."""
    if '"block": "llm"' not in script:
        yield {}
        return
    home = root / "server"
    with fake_model() as model_url:
        argv = [sys.executable, "-m", "vi_flow.cli", "serve", "--port", "0", "--home", str(home)]
        with serving([*argv, "--llm-base-url", model_url], env, root) as line:
            match = re.search(r"http://\S+/v1", line)
            assert match, line
            token = (home / "admin-token").read_text(encoding="utf-8").strip()
            yield {"VI_FLOW_BASE_URL": match[0], "VI_FLOW_API_KEY": token}


def test_docs_have_python_blocks_and_few_opt_outs() -> None:
    assert len(_pages()) >= 8
    skipped = [b.where for b in all_blocks("python") if not b.runs]
    assert len(skipped) <= MAX_NOT_RUN, skipped


@pytest.mark.timeout(120)
@pytest.mark.parametrize("page", _pages(), ids=page_id)
def test_page_code_runs(page: Path, tmp_path: Path) -> None:
    script = _script(page)
    path = tmp_path / f"doc_{page.stem.replace('-', '_')}.py"
    path.write_text(script, encoding="utf-8")
    env = user_env(tmp_path) | {"PYTHONWARNINGS": "error::DeprecationWarning"}
    with home_server_stopped(env), _server(script, tmp_path, env) as settings:
        proc = subprocess.run(
            [sys.executable, str(path)],
            cwd=tmp_path,
            env=env | settings,
            capture_output=True,
            text=True,
            timeout=110,
            stdin=subprocess.DEVNULL,
        )
    numbered = "\n".join(f"{i:4} {line}" for i, line in enumerate(script.splitlines(), 1))
    assert proc.returncode == 0, f"{proc.stderr}\n--- script ---\n{numbered}"
