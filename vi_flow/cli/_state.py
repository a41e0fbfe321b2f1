"""What one ``vi-flow`` invocation shares between its commands: options, consoles, the client.

The root command stores a :class:`CliState` on the click context; commands reach it with
:func:`state`. The sync :class:`vi_flow.Client` is created on first use (so ``--help`` and
``config`` never start a server) and closed when the invocation ends.
"""

from __future__ import annotations

import functools
import os
import sys
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from rich.console import Console

    from .. import Client

__all__ = ["CliState", "state"]


class CliState:
    """Global options and lazily built resources of one invocation.

    Args:
        base_url: ``--base-url`` given on the command line (or ``None``: settings decide,
            ``VI_FLOW_BASE_URL`` among them).
        api_key: ``--api-key`` (never printed).
        color: ``auto``, ``always`` or ``never``.
        debug: Whether to print tracebacks.
        json: Global ``--json``: every command prints JSON.
    """

    def __init__(
        self,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        color: str = "auto",
        debug: bool = False,
        json: bool = False,
    ) -> None:
        self.base_url = base_url
        self.api_key = api_key
        self.color = color
        self.debug = debug
        self.json = json
        self._client: Client | None = None
        self._console: Console | None = None
        self._err_console: Console | None = None

    @property
    def interactive(self) -> bool:
        """Whether stdout is a terminal: live views and progress bars only then."""
        return sys.stdout.isatty()

    @property
    def use_color(self) -> bool | None:
        """``True``/``False`` when forced by ``--color``, ``None`` for auto (click's view);
        ``NO_COLOR`` and a dumb terminal (``TERM=dumb``, as rich's tables see it) are off."""
        if self.color == "always":
            return True
        if self.color == "never" or os.environ.get("NO_COLOR"):
            return False
        if os.environ.get("TERM", "").lower() in ("dumb", "unknown"):
            return False
        return None

    def _make_console(self, *, stderr: bool) -> Console:
        kwargs: dict[str, Any] = {"stderr": stderr, "highlight": False}
        stream = sys.stderr if stderr else sys.stdout
        if not stream.isatty() and not os.environ.get("COLUMNS"):
            kwargs["width"] = 200  # piped: do not wrap tables at 80 columns
        if self.color == "always":
            kwargs.update(force_terminal=True, no_color=False)
        elif self.color == "never":
            kwargs.update(no_color=True, color_system=None)
        return _console_class()(**kwargs)

    @property
    def console(self) -> Console:
        """The rich console on stdout (colour per ``--color`` and ``NO_COLOR``)."""
        if self._console is None:
            self._console = self._make_console(stderr=False)
        return self._console

    @property
    def err_console(self) -> Console:
        """The rich console on stderr, for progress and notes that must not pollute stdout."""
        if self._err_console is None:
            self._err_console = self._make_console(stderr=True)
        return self._err_console

    def client(self) -> Client:
        """Return this invocation's sync client, creating it on first use."""
        if self._client is None:
            from .. import Client

            kwargs: dict[str, Any] = {}
            if self.base_url:
                kwargs["base_url"] = self.base_url
            if self.api_key:
                kwargs["api_key"] = self.api_key
            # One command, a few calls: skip importing aiohttp unless a stream needs it.
            kwargs["http_transport"] = os.environ.get("VI_FLOW_HTTP_TRANSPORT") or "stdlib"
            try:
                self._client = Client(**kwargs)
            except ValueError as exc:  # a bad setting (base URL, timeout, config file)
                raise click.UsageError(str(exc)) from None
        return self._client

    def close(self) -> None:
        """Close the client if one was created."""
        if self._client is not None:
            client, self._client = self._client, None
            client.close()


@functools.cache
def _console_class() -> type[Console]:
    from rich.console import Console

    class _Console(Console):
        def on_broken_pipe(self) -> None:
            """The reader went away (``vi-flow demo | head -3``): rich would exit 1 with
            SystemExit; the command's guard ends quietly with 0, as for any command."""
            self.quiet = True
            raise BrokenPipeError

    return _Console


def state() -> CliState:
    """Return the current invocation's :class:`CliState`."""
    ctx = click.get_current_context()
    obj = ctx.find_object(CliState)
    if obj is None:  # a command invoked on its own (tests), without the root group
        obj = CliState()
        ctx.find_root().obj = obj
        ctx.find_root().call_on_close(obj.close)
    return obj
