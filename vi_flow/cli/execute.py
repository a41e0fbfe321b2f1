"""``vi-flow execute FLOW_ID``: run a flow, optionally showing its steps live.

The command always follows the run's event stream, so it knows the run id from the first
event: Ctrl-C asks the server to cancel that run before exiting with 130.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, cast

import click

from ._failures import EXIT_FAILURE, EXIT_INTERRUPTED, CommandFailed, json_wanted
from ._live import RunView
from ._output import emit_json, json_option, terminal_safe, wants_json
from ._state import CliState, state

if TYPE_CHECKING:
    from ..execution import SyncToolHandler, Version
    from ..models.events import StreamEvent, ToolCall, ToolResult

__all__ = ["execute", "follow_run", "parse_params", "parse_version"]


def parse_params(
    values: Iterable[str], *, option: str = "--param", example: str = "city=Oslo"
) -> dict[str, Any]:
    """Turn ``KEY=VALUE`` strings into a dict; a VALUE that is valid JSON is decoded.

    Raises:
        click.BadParameter: An item without ``=`` or with an empty key (names the item).
    """
    import orjson

    params: dict[str, Any] = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(
                f"{item!r} is not KEY=VALUE (for example {option} {example})",
                param_hint=f"'{option}'",
            )
        try:
            params[key.strip()] = orjson.loads(raw)
        except orjson.JSONDecodeError:
            params[key.strip()] = raw
    return params


def parse_version(value: str) -> Version:
    """Accept ``draft``, ``production`` or a positive version number.

    Raises:
        click.BadParameter: Anything else.
    """
    if value in ("draft", "production"):
        return cast("Version", value)
    if value.isdigit() and int(value) > 0:
        return int(value)
    raise click.BadParameter(
        f"{value!r} is not 'draft', 'production' or a positive number", param_hint="'--version'"
    )


def answer_tools(answers: dict[str, Any], *, say: bool = True) -> SyncToolHandler:
    """A tool handler answering each call from ``answers`` (tool name -> output);
    ``say``: note on stderr each call it had no answer for."""

    def handler(calls: list[ToolCall]) -> list[ToolResult]:
        return [_answer(call, answers, say) for call in calls]

    return handler


def _answer(call: ToolCall, answers: dict[str, Any], say: bool) -> ToolResult:
    from ..models.events import ToolResult

    name = call.function.name
    if name in answers:
        return ToolResult(tool_call_id=call.id, output=answers[name])
    hint = f"no answer given for tool {name!r}; run with --tool-result {name}=VALUE"
    if say:  # the run's failure may come steps later, naming another step (QA AO)
        click.echo(f"note: {hint} (answered with an error)", err=True)
    return ToolResult(tool_call_id=call.id, output=hint, is_error=True)


def _mode(cli: CliState, as_json: bool, stream: bool) -> str:
    if wants_json(as_json):
        return "json" if stream else "quiet"
    if not stream:
        return "quiet"
    return "live" if cli.interactive else "plain"


def follow_run(
    cli: CliState, events: Iterator[StreamEvent], view: RunView, *, cancel: bool = True
) -> None:
    """Feed ``events`` to ``view``; on Ctrl-C exit 130, cancelling the run when ``cancel``
    (under ``--json``, what happened is the one JSON error on stderr: QA AO found the
    plain lines there, or nothing)."""
    try:
        with view:
            for event in events:
                view.add(event)
    except KeyboardInterrupt:
        as_json, run_id = json_wanted(), view.run_id
        said = "interrupted"
        if cancel and run_id is not None:
            if not as_json:
                click.echo(f"\ncancelling run {run_id}…", err=True)
            cli.client().runs.cancel(run_id)
            said = f"run {run_id} cancelled"
        elif run_id is not None:
            said = f"interrupted; run {run_id} goes on"
        if as_json:
            raise CommandFailed(said, exit_code=EXIT_INTERRUPTED) from None
        click.echo(said if cancel and run_id is not None else f"\n{said}", err=True)
        raise click.exceptions.Exit(EXIT_INTERRUPTED) from None


def _finish(view: RunView, as_json: bool, mode: str) -> None:
    """Print the final output (non-stream modes) and fail when the run did not succeed."""
    final = view.final
    if final is None:
        raise CommandFailed(f"the event stream of run {view.run_id} ended early")
    succeeded = final.status.value == "Succeeded"
    if mode == "quiet" and wants_json(as_json) and succeeded:
        from ._live import event_json

        emit_json(event_json(final))
    elif mode == "quiet" and final.output is not None and succeeded:
        out = final.output
        if isinstance(out, str):  # a terminal shows its escapes as text; a pipe gets it exact
            click.echo(terminal_safe(out) if state().interactive else out, color=True)
        else:
            emit_json(out)
    if not succeeded:  # the error alone, on stderr (JSON under --json): stdout stays empty
        where = f" at step {final.failed_step!r}" if final.failed_step else ""
        where += f" ({final.error_code})" if final.error_code else ""
        raise CommandFailed(
            f"run {final.execution_id} {final.status.value}{where}: {final.error or 'no message'}",
            exit_code=EXIT_FAILURE,
            hint=f"'vi-flow runs get {final.execution_id}' shows its history",
            code="RUN_FAILED",
        )


@click.command()
@click.argument("flow_id")
@click.option("-m", "--message", help="The user message the flow starts with.")
@click.option(
    "-p",
    "--param",
    "params",
    multiple=True,
    metavar="KEY=VALUE",
    help="A flow input; repeatable. VALUE is parsed as JSON when it is JSON.",
)
@click.option(
    "--version",
    "version",
    default="draft",
    show_default=True,
    help="draft, production, or a published version number.",
)
@click.option(
    "--stream",
    is_flag=True,
    help="Show steps as they run (a live table on a terminal, lines when piped).",
)
@click.option("--trace", is_flag=True, help="Record each step's input and output.")
@click.option(
    "-t",
    "--tool-result",
    "tool_results",
    multiple=True,
    metavar="TOOL=VALUE",
    help="Answer every call of tool TOOL with VALUE (JSON when it is JSON); repeatable.",
)
@json_option
def execute(
    flow_id: str,
    message: str | None,
    params: tuple[str, ...],
    version: str,
    stream: bool,
    trace: bool,
    tool_results: tuple[str, ...],
    as_json: bool,
) -> None:
    """Execute a flow and print its output.

    Ctrl-C cancels the run on the server. Client-side tool calls are answered from
    --tool-result; a call of a tool without one gets an error result naming the option,
    so the run never waits for an answer that cannot come.
    """
    parameters = parse_params(params)
    answers = parse_params(
        tool_results, option="--tool-result", example="get_weather='{\"temp_c\": 21}'"
    )
    chosen = parse_version(version)
    cli = state()
    mode = _mode(cli, as_json, stream)
    events = (
        cli.client()
        .flow(flow_id)
        .events(
            message=message,
            parameters=parameters,
            version=chosen,
            trace=trace,
            tool_handler=answer_tools(answers, say=not wants_json(as_json)),
            # the run ends with this command: a Ctrl-C before the first event (no run id
            # yet to cancel by) or a killed terminal leaves the server to cancel it
            cancel_on_disconnect=True,
        )
    )
    view = (
        _QuietView(cli, silent=wants_json(as_json))
        if mode == "quiet"
        else RunView(cli.console, mode=mode, title=flow_id)
    )
    follow_run(cli, events, view)
    _finish(view, as_json, mode)


class _QuietView(RunView):
    """Track the run without printing; a spinner on stderr while on a terminal."""

    def __init__(self, cli: CliState, *, silent: bool = False) -> None:
        super().__init__(cli.err_console, mode="plain")
        self._status: Any = None
        self._spin = cli.interactive and not silent
        self._silent = silent  # under --json, stderr holds the one JSON error, if any

    def __enter__(self) -> RunView:
        if self._spin:
            self._status = self.console.status("running…")
            self._status.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._status is not None:
            self._status.__exit__(*exc)

    def add(self, event: StreamEvent) -> None:
        """Track the event; print nothing but tool-call requests (they need an answer)."""
        from ..models.events import ToolCallsRequired

        line = self._track(event)
        if isinstance(event, ToolCallsRequired) and line and not self._silent:
            click.echo(line, err=True)
        if self._status is not None and line:
            from rich.text import Text  # never markup: "[/]" in an output raised MarkupError

            self._status.update(Text(terminal_safe(line[:80])))
