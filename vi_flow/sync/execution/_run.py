"""Blocking ``Run`` and ``Job`` over :class:`~vi_flow.execution.AsyncRun` and
:class:`~vi_flow.execution.AsyncJob`; a run's stream is parsed in the caller's thread.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Generator, Iterator, Sequence

from ..._portal import Portal
from ...execution import AsyncJob, AsyncRun, ExecuteResult
from ...execution._loop import TimeoutArg
from ...execution._results import ToolResultsArg
from ...execution._stream import event_batches
from ...models.common import Condition
from ...models.events import FlowCompleted, RunTrace, StepTrace, StreamEvent, ToolCall
from ...models.runs import Run as RunModel

__all__ = ["Job", "Run"]


# Events of other iterators cross the portal in batches of up to this many: large enough
# that a fast stream costs few round trips, while a slow one still delivers each event as
# it arrives.
_BATCH = 1024


def iterate_events(portal: Portal, events: AsyncIterator[StreamEvent]) -> Iterator[StreamEvent]:
    """Iterate a fresh async event iterator from blocking code.

    A run's stream runs in the caller's thread (:meth:`Portal.drive`): only the bytes of
    each chunk read cross from the portal; the events are parsed and built here, where
    they are used, a chunk's list at a time.
    """
    batches = event_batches(events)
    if batches is None:
        return portal.iterate(lambda: events, batch=_BATCH)
    return _flatten(portal.drive(batches))


def _flatten(
    batches: Generator[list[StreamEvent], None, None],
) -> Generator[StreamEvent, None, None]:
    with contextlib.closing(batches):  # a break or close() here closes the stream there
        for batch in batches:
            yield from batch
            if batch and type(batch[-1]) is FlowCompleted:
                return  # the run's end: nothing follows, and a close() may come meanwhile


class Run:
    """A previous execution, blocking: inspect it, follow its events, cancel it.

    Attributes:
        execution_id: The run id.
    """

    def __init__(self, run: AsyncRun, portal: Portal) -> None:
        self._run = run
        self._portal = portal
        self.execution_id = run.execution_id

    def __repr__(self) -> str:
        return f"{type(self).__name__}(execution_id={self.execution_id!r})"

    def get(self) -> RunModel:
        """Return the run as stored. See :meth:`AsyncRun.get`."""
        return self._portal.call(self._run.get)

    def status(self) -> Condition:
        """Return the run's current condition."""
        return self._portal.call(self._run.status)

    def trace(self) -> RunTrace:
        """Return per-step timing and tokens (and snapshots when traced)."""
        return self._portal.call(self._run.trace)

    def step_trace(self, step_id: str) -> StepTrace:
        """Return the trace of one step."""
        return self._portal.call(self._run.step_trace, step_id)

    def events(
        self, *, after: int | None = None, timeout: TimeoutArg = None
    ) -> Iterator[StreamEvent]:
        """Iterate the run's events, replayed from ``after`` then live to ``FlowCompleted``."""
        return iterate_events(self._portal, self._run.events(after=after, timeout=timeout))

    def cancel(self) -> RunModel:
        """Cancel the run and return it."""
        return self._portal.call(self._run.cancel)

    def submit_tool_results(
        self, tool_results: ToolResultsArg, *, tool_calls: Sequence[ToolCall] | None = None
    ) -> list[str]:
        """Answer a paused run's tool calls without waiting. See :meth:`AsyncRun.submit_tool_results`."""
        return self._portal.call(self._run.submit_tool_results, tool_results, tool_calls=tool_calls)


class Job(Run):
    """A run submitted with ``Flow.execute_async``, blocking.

    Attributes:
        execution_id: The run id, available at once.
    """

    def __init__(self, job: AsyncJob, portal: Portal) -> None:
        super().__init__(job, portal)
        self._job = job

    def wait(self, *, timeout: float | None = None, poll_interval: float = 1.0) -> Condition:
        """Poll until the run ends and return its final condition.

        Raises:
            TaskTimeoutError: The run had not ended after ``timeout`` seconds.
        """
        return self._portal.call(self._job.wait, timeout=timeout, poll_interval=poll_interval)

    def result(self, *, timeout: float | None = None, poll_interval: float = 1.0) -> ExecuteResult:
        """Wait for the run and return its output. See :meth:`AsyncJob.result`."""
        return self._portal.call(self._job.result, timeout=timeout, poll_interval=poll_interval)
