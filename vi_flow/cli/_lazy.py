"""Click groups whose subcommands are imported only when one of them runs.

A :class:`LazyGroup` knows each subcommand by ``"module:attribute"`` and a one-line help,
so ``--help`` lists them without importing anything. It also suggests the closest
command when a name is mistyped, and turns every error a command raises into one line
and a stable exit code (see :mod:`vi_flow.cli._failures`).
"""

from __future__ import annotations

import importlib
from typing import Any

import click

__all__ = ["LazyGroup"]


class LazyGroup(click.Group):
    """A click group with lazily imported subcommands.

    Args:
        lazy: Subcommand name -> ``("package.module:attribute", "one-line help")``.
        **kwargs: Passed to :class:`click.Group`.
    """

    def __init__(
        self, *args: Any, lazy: dict[str, tuple[str, str]] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        """Every subcommand name, eager and lazy, sorted."""
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        """Return a subcommand, importing its module on first use."""
        if cmd_name in self.lazy and cmd_name not in self.commands:
            target, _ = self.lazy[cmd_name]
            module, _, attr = target.partition(":")
            command = getattr(importlib.import_module(module), attr)
            self.add_command(command, cmd_name)
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """List subcommands with their one-line help, importing none of the lazy ones."""
        rows: list[tuple[str, str]] = []
        for name in self.list_commands(ctx):
            if name in self.commands:
                command = self.commands[name]
                if command.hidden:
                    continue
                rows.append((name, command.get_short_help_str(formatter.width)))
            else:
                rows.append((name, self.lazy[name][1]))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        """Find the subcommand; a mistyped name fails with exit 2 and a suggestion."""
        name = args[0]
        if self.get_command(ctx, name) is None and not ctx.resilient_parsing:
            import difflib  # only for a misspelt name: not loaded at start

            close = difflib.get_close_matches(name, self.list_commands(ctx), n=1, cutoff=0.5)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            ctx.fail(f"No such command {name!r}.{hint} See '{ctx.command_path} --help'.")
        return super().resolve_command(ctx, args)

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        """Parse the arguments; under ``--json`` a parse error is reported as JSON too."""
        from ._failures import ARGV_JSON, JsonUsageError, asks_json

        asked = asks_json(args)  # now: parsing consumes the list
        try:
            ctx = super().make_context(info_name, args, parent=parent, **extra)
        except click.ClickException as exc:
            asked = asked or bool(parent and parent.find_root().meta.get(ARGV_JSON))
            raise JsonUsageError(exc) if asked else exc from None
        return ctx

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        """Note ``--json`` on the root's command line before any option is handled: the
        eager ``--version`` answers in JSON too."""
        from ._failures import ARGV_JSON, asks_json

        if ctx.parent is None and asks_json(args):
            ctx.meta[ARGV_JSON] = True
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        """Run the subcommand; turn what it raises into one line and an exit code."""
        from ._failures import run_guarded

        return run_guarded(ctx, lambda: super(LazyGroup, self).invoke(ctx))
