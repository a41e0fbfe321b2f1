"""Showing a run's events: a live table of steps on a terminal, plain lines when piped, NDJSON.

:class:`RunView` takes events one by one (``view.add(event)``). On a terminal it redraws a
rich table (step, block, state, duration, output preview) with tool calls and the latest
log line under it; piped, it prints one plain line per meaningful event; with ``--json``
every event is one JSON line ``{"event": type, ...data}``.
"""

from __future__ import annotations

import collections
from contextlib import AbstractContextManager
from types import TracebackType
from typing import TYPE_CHECKING, Any

import attrs
import click

from ._output import duration, emit_ndjson, preview, terminal_safe

if TYPE_CHECKING:
    from rich.console import Console, RenderableType
    from rich.live import Live
    from rich.text import Text

    from ..models.events import FlowCompleted, StreamEvent

__all__ = ["RunView", "event_json"]

_STATE_STYLE = {
    "running": "cyan",
    "done": "green",
    "failed": "red",
    "paused": "yellow",
}


@attrs.define
class _Step:
    step_id: str
    block: str
    state: str = "running"
    duration_ms: int | None = None
    detail: str = ""


def event_json(event: StreamEvent) -> dict[str, Any]:
    """Return an event as one JSON object: ``{"event": type, ...its camelCase data}``."""
    import orjson

    from ..models.events import event_to_wire

    name, data = event_to_wire(event)
    return {"event": name, **orjson.loads(data)}


class RunView(AbstractContextManager["RunView"]):
    """Render a run's events for a human (live or plain) or a program (NDJSON).

    Args:
        console: Where to draw.
        mode: ``"live"`` (a terminal), ``"plain"`` (piped) or ``"json"``.
        title: Shown above the live table.
    """

    def __init__(self, console: Console, *, mode: str, title: str = "") -> None:
        self.console = console
        self.mode = mode
        self.title = title
        self.run_id: str | None = None
        self.final: FlowCompleted | None = None
        self.steps: dict[str, _Step] = {}
        self.log_tail: collections.deque[str] = collections.deque(maxlen=8)
        self._live: Live | None = None

    def __enter__(self) -> RunView:
        if self.mode == "live":
            from rich.live import Live

            self._live = Live(self._render(), console=self.console, refresh_per_second=8)
            self._live.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._live is not None:
            self._live.update(self._render())
            self._live.__exit__(exc_type, exc, tb)
            self._live = None

    def add(self, event: StreamEvent) -> None:
        """Take one event: update the table, or print its line."""
        if self.mode == "json":
            self._track(event)
            emit_ndjson(event_json(event))
            return
        line = self._track(event)
        if self._live is not None:
            self._live.update(self._render())
        elif line:
            click.echo(line)

    def _track(self, event: StreamEvent) -> str | None:
        """Update the step table from an event; return its plain-text line, if any."""
        from ..models import events as ev

        if isinstance(event, ev.RunStarted):
            self.run_id = event.execution_id
            return f"run {event.execution_id} started (flow {event.flow_id}, {event.flow_version})"
        if isinstance(event, ev.StepStarted):
            self.steps[event.step_id] = _Step(event.step_id, event.block)
            return f"step {event.step_id} ({event.block}) started"
        if isinstance(event, ev.LogLine):
            return self._on_log(event)
        if isinstance(event, (ev.StepCompleted, ev.StepFailed, ev.ToolCallsRequired)):
            return self._on_step_end(event)
        if isinstance(event, ev.FlowCompleted):
            return self._on_completed(event)
        return None

    def _step(self, step_id: str, block: str = "") -> _Step:
        return self.steps.setdefault(step_id, _Step(step_id, block))

    def _on_log(self, event: Any) -> str:
        self._step(event.step_id).detail = preview(event.line, 70)
        prefix = "!" if event.stream == "stderr" else "|"
        line = f"  {event.step_id} {prefix} {event.line}"
        self.log_tail.append(line)
        return line

    def _on_step_end(self, event: Any) -> str:
        from ..models import events as ev

        step = self._step(event.step_id, getattr(event, "block", ""))
        if isinstance(event, ev.StepCompleted):
            step.state, step.duration_ms = "done", event.duration_ms
            step.detail = preview(event.output)
            return f"step {event.step_id} done in {duration(event.duration_ms)}: {step.detail}"
        if isinstance(event, ev.StepFailed):
            step.state, step.detail = "failed", terminal_safe(event.error)
            return f"step {event.step_id} failed: {step.detail}"
        calls = ", ".join(
            f"{terminal_safe(c.function.name)}({preview(c.function.arguments, 40)})"
            for c in event.tool_calls
        )
        step.state, step.detail = "paused", f"tool calls: {calls}"
        return f"step {event.step_id} asks for tool calls: {calls}"

    def _on_completed(self, event: FlowCompleted) -> str:
        self.final = event
        status = event.status.value
        if event.error:
            error = terminal_safe(event.error)
            return f"run {event.execution_id} {status} in {duration(event.duration_ms)}: {error}"
        return f"run {event.execution_id} {status} in {duration(event.duration_ms)}: " + preview(
            event.output, 200
        )

    def _render(self) -> RenderableType:
        from rich.table import Table
        from rich.text import Text  # never markup: step ids, outputs and errors are data

        title = self.title or (f"run {self.run_id}" if self.run_id else "starting…")
        grid = Table(title=Text(terminal_safe(title)), title_justify="left",
                     header_style="bold", expand=False)  # fmt: skip
        for name in ("STEP", "BLOCK", "STATE", "TIME", "OUTPUT"):
            grid.add_column(name, no_wrap=name != "OUTPUT", overflow="ellipsis")
        for step in self.steps.values():
            grid.add_row(
                Text(terminal_safe(step.step_id)),
                Text(terminal_safe(step.block)),
                Text(step.state, style=_STATE_STYLE.get(step.state, "")),
                duration(step.duration_ms) if step.duration_ms is not None else "",
                Text(preview(step.detail, 60)),
            )
        if self.final is not None:
            grid.caption = self._caption(self.final)
        if not self.log_tail:
            return grid
        from rich.console import Group

        tail = "\n".join(map(terminal_safe, self.log_tail))  # escapes would upset the redraw
        return Group(grid, Text(tail, style="dim"))

    @staticmethod
    def _caption(final: FlowCompleted) -> Text:
        from rich.text import Text

        colour = "green" if final.status.value == "Succeeded" else "red"
        caption = Text.assemble((final.status.value, colour), f" in {duration(final.duration_ms)}")
        return caption.append(f" - {terminal_safe(final.error)}" if final.error else "")
