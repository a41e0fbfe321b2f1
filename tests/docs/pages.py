"""What the docs tests share: the code blocks of the pages, and ``vi-flow serve`` run aside.

A block is a fenced code block whose fence starts a line (```python, ```bash, ...);
one titled ``title="not run"`` opts out of the tests (the title shows on the site too).
:func:`serving` runs a ``vi-flow serve`` command in the background for as long as a test
needs a long-running server, and checks that it stops cleanly on ``SIGTERM``.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import site
import socket
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import NamedTuple

from ..localserver.kit import stop_server

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
#: Every page whose code blocks the tests run: the docs site and the README.
PAGES = (*sorted(DOCS.rglob("*.md")), ROOT / "README.md")
FENCE = re.compile(r"^```(?P<lang>\w+)(?P<info>[^\n]*)\n(?P<body>.*?)^```\s*$", re.M | re.S)
NOT_RUN = 'title="not run"'


class Block(NamedTuple):
    """One fenced code block of a page."""

    page: Path
    line: int  # of the block's first line of code
    lang: str
    info: str  # what follows the language on the fence line
    code: str

    @property
    def runs(self) -> bool:
        """Whether the docs tests run it (it is not titled "not run")."""
        return NOT_RUN not in self.info

    @property
    def where(self) -> str:
        """``page.md:line``, relative to the repository."""
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path, lang: str | None = None) -> list[Block]:
    """Every block of a page (of one language when ``lang`` is given), in order."""
    text = page.read_text(encoding="utf-8")
    found = []
    for match in FENCE.finditer(text):
        if lang in (None, match["lang"]):
            line = text.count("\n", 0, match.start()) + 2
            found.append(Block(page, line, match["lang"], match["info"], match["body"]))
    return found


def all_blocks(lang: str) -> list[Block]:
    """Every block of one language on every page."""
    return [b for page in PAGES for b in blocks(page, lang)]


def page_id(page: Path) -> str:
    """A page's name as a test id: its path in the repository."""
    return str(page.relative_to(ROOT))


def user_env(root: Path) -> dict[str, str]:
    """The environment of a fresh user whose home is ``root/user``, with nothing configured.

    ``VI_FLOW_HOME`` and ``VI_FLOW_CONFIG_DIR`` are the Linux defaults under that home (the
    paths the pages show, such as ``~/.local/share/vi-flow``); ``PATH`` starts with this
    interpreter's scripts, so ``vi-flow`` is the one under test.
    """
    home = root / "user"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VI_FLOW_", "XDG_"))}
    env |= {
        "HOME": str(home),
        # packages installed with `pip install --user` stay importable under the new HOME
        "PYTHONUSERBASE": site.getuserbase(),
        "VI_FLOW_HOME": str(home / ".local" / "share" / "vi-flow"),
        "VI_FLOW_CONFIG_DIR": str(home / ".config" / "vi-flow"),
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
    }
    return env


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def serving(argv: list[str], env: Mapping[str, str], cwd: Path) -> Iterator[str]:
    """Run a ``vi-flow serve`` command in the background; yield the line it prints once bound.

    The start-up log lines before it are skipped.

    On exit the server gets ``SIGTERM`` and must stop cleanly (exit status 0).
    """
    proc = subprocess.Popen(
        argv, cwd=cwd, env=dict(env), stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stderr is not None
    try:
        first = proc.stderr.readline().rstrip("\n")
        while first and "vi-flow server listening on" not in first:  # log lines come first
            first = proc.stderr.readline().rstrip("\n")
        if not first:
            raise AssertionError(f"{argv} exited {proc.wait()} without printing a line")
        yield first
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            _, rest = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, rest = proc.communicate()
    assert proc.returncode == 0, f"{argv} did not stop cleanly on SIGTERM: {rest}"


@contextlib.contextmanager
def home_server_stopped(env: Mapping[str, str]) -> Iterator[None]:
    """Stop, afterwards, the background server the page's code started in the user's home."""
    try:
        yield
    finally:
        stop_server(Path(env["VI_FLOW_HOME"]))
