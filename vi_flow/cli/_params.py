"""Option types that refuse what no command can use, naming the option.

Counts and sizes stop at 2**53 - 1, the largest integer JSON carries exactly (past it
a ``--limit`` crashed a slice and a ``--cpus`` the request's encoder); floats must be
finite and at most a billion (seconds, hours or a price: a ``--interval inf`` overflowed
the sleep, a ``--idle-timeout nan`` was taken as a timeout). A home is never an empty
path (``--home ''`` made the working directory the home).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

__all__ = [
    "FLOAT_MAX", "INT_MAX", "BoundedInt", "FiniteFloat", "HomeDir", "int_range", "status_option",
]  # fmt: skip

F = TypeVar("F", bound=Callable[..., Any])

INT_MAX = 2**53 - 1
FLOAT_MAX = 1_000_000_000


class BoundedInt(click.IntRange):
    """An integer in a range, never past :data:`INT_MAX` either way (the help shows the
    range given)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        return _checked(self, super().convert(value, param, ctx), value, param, ctx, INT_MAX)


class FiniteFloat(click.FloatRange):
    """A float in a range: no NaN, no infinity, nothing past :data:`FLOAT_MAX` either way.

    With no bounds given, the help says ``FLOAT`` and no range (click would write
    ``FLOAT RANGE ... [x<=None]``).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.min is None and self.max is None:
            self.name = "float"

    def _describe_range(self) -> str:
        if self.min is None and self.max is None:
            return ""  # click's help leaves an empty range out
        return super()._describe_range()

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        return _checked(self, super().convert(value, param, ctx), value, param, ctx, FLOAT_MAX)


def _checked(
    kind: click.IntRange | click.FloatRange,
    number: float,
    value: Any,
    param: click.Parameter | None,
    ctx: click.Context | None,
    limit: int,
) -> float:
    if not math.isfinite(number):  # NaN passes every range check, -inf one with no min
        kind.fail(f"{value!r} is not a finite number.", param, ctx)
    if abs(number) > limit:
        kind.fail(f"{value!r} is too large (at most {limit}).", param, ctx)
    return number


def int_range(min: int, max: int | None = None) -> click.IntRange:
    """An integer from ``min`` (to ``max``), at most :data:`INT_MAX`."""
    return BoundedInt(min, max)


class HomeDir(click.Path):
    """A home directory's path: not a file, and not empty or blank."""

    def __init__(self) -> None:
        super().__init__(file_okay=False, path_type=Path)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and not value.strip():
            self.fail(
                "an empty path names no home (it would be the working directory).", param, ctx
            )
        return super().convert(value, param, ctx)


def status_option(statuses: list[str]) -> Callable[[F], F]:
    """``-s/--status``, repeatable, one of ``statuses`` in any case (a list's filter);
    the command gets them as ``statuses``."""
    choice = click.Choice(statuses, case_sensitive=False)
    return click.option(
        "-s", "--status", "statuses", multiple=True, type=choice, help="Only these; repeatable."
    )
