"""Helpers for the real-cluster provider suites (Slurm, Ray): an update sink that tests
wait on, and the skip-or-fail rule for a cluster that is not there."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable

import pytest

from vi_flow.models.tasks import TaskStatus
from vi_flow.server.providers.base import TaskUpdate

TIME_LIMIT_MESSAGE = (
    "stopped after exceeding max_run_time of {limit} s (killed by SIGTERM (signal 15))"
)
"""What every provider says of a task its time limit stopped (``limit`` in seconds)."""


class Updates:
    """The update sink: records every update and lets a test wait for one.

    Args:
        within: Seconds ``wait`` waits before it fails the test.
    """

    def __init__(self, within: float) -> None:
        self.within = within
        self.items: list[TaskUpdate] = []

    async def __call__(self, update: TaskUpdate) -> None:
        self.items.append(update)

    def of(self, task_id: str) -> list[TaskUpdate]:
        return [u for u in self.items if u.task_id == task_id]

    async def wait(self, task_id: str, *statuses: TaskStatus) -> TaskUpdate:
        """Wait until the task has an update in one of ``statuses``; return the first."""
        return await self._polled(
            task_id,
            lambda updates: next((u for u in updates if u.status in statuses), None),
            f"never reached {statuses}",
        )

    async def latest(self, task_id: str, check: Callable[[TaskUpdate], bool]) -> TaskUpdate:
        """Wait until the task's latest update passes ``check`` and return it."""
        return await self._polled(
            task_id,
            lambda updates: updates[-1] if updates and check(updates[-1]) else None,
            "no update passed the check",
        )

    async def _polled(
        self,
        task_id: str,
        find: Callable[[list[TaskUpdate]], TaskUpdate | None],
        failure: str,
    ) -> TaskUpdate:
        """Poll the task's updates until ``find`` picks one, ``within`` seconds at most."""
        deadline = time.monotonic() + self.within
        while time.monotonic() < deadline:
            found = find(self.of(task_id))
            if found is not None:
                return found
            await asyncio.sleep(0.02)
        raise AssertionError(f"{task_id} {failure}: {self.of(task_id)}")


def unavailable(require_var: str, reason: str, how_to: str) -> None:
    """Skip with ``how_to``; fail instead where ``require_var=1`` (CI never skips)."""
    if os.environ.get(require_var) == "1":
        pytest.fail(f"{require_var}=1 but {reason}", pytrace=False)
    pytest.skip(f"{reason}; {how_to}")
