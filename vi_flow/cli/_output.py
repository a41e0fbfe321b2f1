"""How commands print: one JSON document (or NDJSON lines) with ``--json``, rich tables otherwise.

JSON output is the wire form of the models (camelCase, the same as the HTTP API), so
``vi-flow flows list --json | jq '.[].flowId'`` and the API documentation agree.
"""

from __future__ import annotations

import functools
import itertools
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timezone
from typing import Any, Literal, TypeVar

import click

from ..models.loglines import LinePiece
from ._failures import JSON_WANTED
from ._state import state

__all__ = [
    "Order",
    "duration",
    "emit_json",
    "emit_ndjson",
    "first",
    "json_option",
    "kv_table",
    "line_end",
    "log_line",
    "log_record",
    "order_option",
    "preview",
    "table",
    "terminal_safe",
    "wants_json",
    "when",
]

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")
Order = Literal["newest", "oldest"]
"""What ``--order`` gives a list command (the SDK's ``order=``)."""


def json_option(func: F) -> F:
    """Add ``--json`` (print one JSON document instead of a table) to a command."""
    return click.option(
        "--json",
        "as_json",
        is_flag=True,
        is_eager=True,  # known before any other option can fail, so that error is JSON too
        callback=_remember_json,
        help="Print JSON (NDJSON when following) instead of a table; errors too, on stderr.",
    )(func)


def order_option(func: F) -> F:
    """Add ``--order newest|oldest`` (newest first by default) and ``--oldest`` to a list command.

    The command receives one ``order`` argument, ``"newest"`` or ``"oldest"``.
    """

    @functools.wraps(func)
    def run(*args: Any, order: str | None, oldest: bool, **kwargs: Any) -> Any:
        if oldest and order == "newest":
            raise click.UsageError("--oldest and --order newest contradict each other")
        return func(*args, order="oldest" if oldest else (order or "newest"), **kwargs)

    with_order = click.option(
        "--order",
        type=click.Choice(["newest", "oldest"], case_sensitive=False),
        help="Which end of the list comes first  [default: newest]",
    )(run)
    return click.option("--oldest", is_flag=True, help="Oldest first (--order oldest).")(with_order)  # type: ignore[return-value]


def _remember_json(ctx: click.Context, _: click.Parameter, value: bool) -> bool:
    if value:
        ctx.find_root().meta[JSON_WANTED] = True
    return value


def wants_json(as_json: bool) -> bool:
    """Whether to print JSON: the command's ``--json`` or the global one."""
    return as_json or state().json


def _encode(obj: Any, *, indent: bool) -> str:
    import orjson

    from ..models import to_wire

    option = orjson.OPT_INDENT_2 if indent else 0
    text = orjson.dumps(to_wire(obj), option=option | orjson.OPT_NON_STR_KEYS).decode()
    if state().interactive:  # JSON escapes C0 controls, not C1 ones, which a terminal reads
        text = _C1.sub(lambda found: f"\\u{ord(found.group()):04x}", text)  # (U+009B: CSI)
    return text


_C1 = re.compile("[\x80-\x9f]")


def emit_json(obj: Any) -> None:
    """Print a model, a list of models or plain data as one indented JSON document."""
    click.echo(_encode(obj, indent=True))


def emit_done(as_json: bool, data: dict[str, Any], text: str) -> None:
    """Say what a command did: ``data`` as JSON under ``--json``, else ``text``."""
    if wants_json(as_json):
        emit_json(data)
    else:
        click.echo(text)


def emit_ndjson(obj: Any) -> None:
    """Print one compact JSON line and flush (for following streams)."""
    sys.stdout.write(_encode(obj, indent=False) + "\n")
    sys.stdout.flush()


def first(items: Iterable[T], limit: int, what: str) -> list[T]:
    """The first ``limit`` of ``items``; when there are more, a line on stderr says so
    (stdout keeps only the list, JSON or table)."""
    taken = list(itertools.islice(items, limit + 1))
    if len(taken) > limit:
        click.echo(f"(the first {limit} {what}; there are more: --limit N shows N)", err=True)
    return taken[:limit]


def table(
    columns: Sequence[str], rows: Iterable[Sequence[Any]], *, title: str | None = None
) -> None:
    """Print a rich table (the first column, ids, never wraps); piped: tab-separated lines."""
    cells = [["" if v is None else terminal_safe(str(v)) for v in row] for row in rows]
    if not cells:
        click.echo("(none)", err=True)
        return
    if _piped():
        _plain([list(columns), *cells])
        return
    from rich.table import Table
    from rich.text import Text

    grid = Table(title=title, title_justify="left", header_style="bold")
    for i, name in enumerate(columns):
        grid.add_column(name, no_wrap=i == 0, overflow="fold")
    for row in cells:
        grid.add_row(*map(Text, row))  # Text: never read as markup ("[/]" would raise)
    state().console.print(grid)


def _piped() -> bool:
    """Output goes to a pipe or file, and nobody forced colour (``--color always``)."""
    cli = state()
    return not cli.interactive and cli.color != "always"


def _plain(lines: Iterable[Sequence[str]]) -> None:
    """Tab-separated lines, uncut, for pipes (``cut -f1``, ``awk``): no box drawing."""
    for cells in lines:
        click.echo("\t".join(c.replace("\t", " ").replace("\n", " ") for c in cells))


def kv_table(pairs: Iterable[tuple[str, Any]], *, title: str | None = None) -> None:
    """Print ``name: value`` pairs as a two-column table without a header; piped: tab-separated."""
    shown = [(k, terminal_safe(str(v))) for k, v in pairs if v is not None and v != ""]
    if _piped():
        _plain(shown)
        return
    from rich.table import Table
    from rich.text import Text

    grid = Table(title=title, title_justify="left", show_header=False)
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    for key, value in shown:
        grid.add_row(key, Text(value))
    state().console.print(grid)


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def terminal_safe(text: str) -> str:
    """``text`` with its control characters written out (``\\x1b``), tab and newline
    kept: names, outputs and errors come from users and models, and an escape sequence
    in one could clear the screen, retitle the window or hide a link on a terminal.
    (A task's log lines keep their colours: :func:`log_line`.)"""
    return _CONTROL.sub(lambda found: f"\\x{ord(found.group()):02x}", text)


_SGR = r"\x1b\[[0-9;:]*m"
_RESET = "\x1b[0m"
_LOG_CONTROL = re.compile(rf"({_SGR})|[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
"""In a task's log line: a colour or style (SGR) sequence, or another control character
(tab and the ``\\r`` of a progress bar are neither)."""


def log_line(*, err: bool = False) -> Callable[[str], str]:
    """How a task's log lines are written to stdout (stderr with ``err``).

    To a pipe or file: as the task wrote them (its text: decoded as UTF-8). To a terminal: their colours kept
    (dropped when colour is off: ``--color never``, ``NO_COLOR``, a dumb terminal), tab
    and ``\\r`` kept, and every other control character written out (``\\x1b]52;``): a
    task is untrusted, and an escape sequence could write the clipboard, retitle the
    window, move the cursor over earlier lines or hide a link. A line with a colour
    ends with a reset, so no style (``\\x1b[8m`` hides text) outlives it.
    """
    cli = state()
    terminal = sys.stderr.isatty() if err else cli.interactive
    if not terminal and cli.color != "always":
        return lambda line: line
    colour = cli.use_color is not False

    def safe(found: re.Match[str]) -> str:
        if found.group(1) is not None:
            return found.group(1) if colour else ""
        return f"\\x{ord(found.group()):02x}"

    def shown(line: str) -> str:
        text = _LOG_CONTROL.sub(safe, line)
        return text + _RESET if "\x1b" in text else text  # only SGR kept an escape

    return shown


def line_end(line: str) -> str:
    """What to write after a followed log line: a newline, or nothing after a piece of a
    line not ended yet (:class:`~vi_flow.models.loglines.LinePiece`: a progress bar's
    redraw, which ends with ``\\r``, or 256 KiB of a longer line), so that the next piece
    goes on where it stopped, as on the task's own terminal."""
    return "" if isinstance(line, LinePiece) else "\n"


def log_record(task_id: str, line: str, **more: object) -> dict[str, object]:
    """One followed line as an NDJSON record; a piece says so (``"piece": true``)."""
    record: dict[str, object] = {"taskId": task_id, **more, "line": line}
    if isinstance(line, LinePiece):
        record["piece"] = True
    return record


def when(ms: int | None) -> str:
    """Format milliseconds since the epoch as a UTC time that says so (``...Z``), or ``-``:
    QA: unmarked, it read as local time, and ``--since`` (local unless it names a zone)
    given a time copied from a table missed hours of lines."""
    if not ms:
        return "-"
    try:
        moment = datetime.fromtimestamp(ms / 1000, tz=timezone.utc)
    except (ValueError, OverflowError, OSError):  # QA: year 10000 ended every list
        return f"{ms} ms since the epoch"
    return moment.strftime("%Y-%m-%d %H:%M:%SZ")


def iso_time(text: str) -> datetime:
    """An ISO 8601 time as typed, ``Z`` for UTC included (Python 3.10 reads no ``Z``, and
    only 3 or 6 digits of a second's fraction: any number of them is read here).

    Raises:
        ValueError: It is not one.
    """
    if text[-1:] in ("z", "Z"):
        text = text[:-1] + "+00:00"
    if sys.version_info < (3, 11):
        text = re.sub(r"(?<=:\d\d)[.,](\d+)", lambda m: "." + m[1][:6].ljust(6, "0"), text)
    return datetime.fromisoformat(text)


def duration(ms: float | None) -> str:
    """Format a duration in milliseconds (``850ms``, ``3.2s``, ``4m05s``)."""
    if ms is None:
        return "-"
    if ms < 1000:
        return f"{ms:.0f}ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s"


def preview(value: Any, width: int = 60) -> str:
    """Return a one-line preview of an output value, cut to ``width`` characters."""
    if value is None:
        return ""
    if isinstance(value, str):
        text = value
    else:
        import orjson

        from ..models import to_wire

        try:
            text = orjson.dumps(to_wire(value)).decode()
        except TypeError:
            text = repr(value)
    text = terminal_safe(" ".join(text.split()))
    return text if len(text) <= width else text[: width - 1] + "…"
