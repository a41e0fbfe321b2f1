"""Every ```python block in docs/*.md runs, page by page, against the local server.

A page's blocks run in order as one script (later blocks use what earlier ones made),
in a subprocess with a private ``VI_FLOW_HOME`` and config dir, so the docs cannot drift
from the code. A block opts out with an explicit title, ```python title="not run"
(interactive shells and the like); the test keeps their number small.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[2] / "docs"
FENCE = re.compile(r"^```python(?P<info>[^\n]*)\n(?P<body>.*?)^```\s*$", re.M | re.S)
NOT_RUN = 'title="not run"'
MAX_NOT_RUN = 8


def _blocks(page: Path) -> list[tuple[int, str, bool]]:
    """Return ``(line, code, runs)`` for every python block of a page."""
    text = page.read_text(encoding="utf-8")
    found = []
    for match in FENCE.finditer(text):
        line = text.count("\n", 0, match.start()) + 2
        found.append((line, match["body"], NOT_RUN not in match["info"]))
    return found


def _pages() -> list[Path]:
    return sorted(p for p in DOCS.rglob("*.md") if any(run for *_, run in _blocks(p)))


def _script(page: Path) -> str:
    parts = []
    for line, code, runs in _blocks(page):
        if runs:
            parts.append(f"# ---- {page.name}:{line}\n{code}")
    return "\n".join(parts)


def test_docs_have_python_blocks_and_few_opt_outs() -> None:
    assert len(_pages()) >= 8
    skipped = [
        f"{p.relative_to(DOCS)}:{line}"
        for p in DOCS.rglob("*.md")
        for line, _, runs in _blocks(p)
        if not runs
    ]
    assert len(skipped) <= MAX_NOT_RUN, skipped


@pytest.mark.timeout(120)
@pytest.mark.parametrize("page", _pages(), ids=lambda p: str(p.relative_to(DOCS)))
def test_page_code_runs(page: Path, tmp_path: Path) -> None:
    script = _script(page)
    path = tmp_path / f"doc_{page.stem.replace('-', '_')}.py"
    path.write_text(script, encoding="utf-8")
    env = {
        **os.environ,
        "VI_FLOW_HOME": str(tmp_path / "home"),
        "VI_FLOW_CONFIG_DIR": str(tmp_path / "config"),
        "PYTHONWARNINGS": "error::DeprecationWarning",
    }
    for name in ("VI_FLOW_BASE_URL", "VI_FLOW_API_KEY", "VI_FLOW_ORGANIZATION_ID"):
        env.pop(name, None)
    proc = subprocess.run(
        [sys.executable, str(path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=110,
        stdin=subprocess.DEVNULL,
    )
    numbered = "\n".join(f"{i:4} {line}" for i, line in enumerate(script.splitlines(), 1))
    assert proc.returncode == 0, f"{proc.stderr}\n--- script ---\n{numbered}"


def test_getting_started_shell_block_runs(tmp_path: Path) -> None:
    """The shell walk-through of the getting-started page, run by bash as written."""
    text = (DOCS / "index.md").read_text(encoding="utf-8")
    block = next(b for b in re.findall(r"```bash\n(.*?)```", text, re.S) if "hello.yaml" in b)
    env = {
        **os.environ,
        "VI_FLOW_HOME": str(tmp_path / "home"),
        "VI_FLOW_CONFIG_DIR": str(tmp_path / "config"),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    proc = subprocess.run(
        ["bash", "-e", "-c", block], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "Hello, world!" in proc.stdout
