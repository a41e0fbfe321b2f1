"""``vi-flow runs resume RUN --tool-result CALL_ID=JSON``, and its prompt on a terminal."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import select
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

import vi_flow
from vi_flow.models.events import ToolCallsRequired

from .conftest import Invoker
from .test_flows_runs import TOOL_SPEC
from .test_subprocess import _cli, served

__all__ = ["served"]


def _paused(client: vi_flow.Client, flow_id: str) -> tuple[vi_flow.Job, str]:
    """Start a job that pauses on its tool call; return it and the call id."""
    job = client.flow(flow_id).execute_async(parameters={"city": "Lima"})
    for event in client.flow(flow_id).run(job.execution_id).events():
        if isinstance(event, ToolCallsRequired):
            return job, event.tool_calls[0].id
    raise AssertionError("the run never paused")


@pytest.fixture
def paused(vf: Invoker, tmp_path: Path) -> Iterator[tuple[vi_flow.Job, str]]:
    spec = tmp_path / "tool.yaml"
    spec.write_text(TOOL_SPEC)
    flow_id = vf("flows", "create", "-f", str(spec)).stdout.strip()
    with vi_flow.Client() as client:
        job, call_id = _paused(client, flow_id)
        yield job, call_id
        job.cancel()


def test_resume_answers_a_call_by_id(vf: Invoker, paused: tuple[vi_flow.Job, str]) -> None:
    job, call_id = paused
    result = vf("runs", "resume", job.execution_id, "-t", f'{call_id}={{"summary": "sunny"}}')
    assert result.exit_code == 0, result.stderr
    assert result.stdout == f"{job.execution_id}: answered {call_id}\n"
    assert job.result().output == "Lima: sunny"


def test_bad_json_or_unknown_call_is_named_and_nothing_is_sent(
    vf: Invoker, paused: tuple[vi_flow.Job, str]
) -> None:
    job, call_id = paused
    bad = vf("runs", "resume", job.execution_id, "--tool-result", f"{call_id}=sunny")
    assert bad.exit_code == 2
    assert call_id in bad.stderr and "not JSON" in bad.stderr
    no_id = vf("runs", "resume", job.execution_id, "--tool-result", '={"a": 1}', "--json")
    assert no_id.exit_code == 2 and "CALL_ID=JSON" in json.loads(no_id.stderr)["error"]["message"]
    unknown = vf("runs", "resume", job.execution_id, "--tool-result", 'call_nope="x"')
    assert unknown.exit_code == 5 and "call_nope" in unknown.stderr  # the server's 409
    assert job.status() == "Running"  # still paused, still answerable
    answered = vf(
        "runs", "resume", job.execution_id, "-t", f'{call_id}={{"summary": "ok"}}', "--json"
    )
    assert json.loads(answered.stdout) == {"runId": job.execution_id, "accepted": [call_id]}
    assert job.result().output == "Lima: ok"


def test_without_results_and_without_a_terminal_it_is_a_usage_error_naming_the_calls(
    vf: Invoker, paused: tuple[vi_flow.Job, str]
) -> None:
    job, call_id = paused
    result = vf("runs", "resume", job.execution_id)
    assert result.exit_code == 2 and "--tool-result" in result.stderr
    assert f"{call_id} (" in result.stderr  # which calls to answer
    assert vf("runs", "resume", "run_x").exit_code == 4  # no such run


def _read_until(fd: int, text: str, timeout: float = 30) -> str:
    seen = b""
    deadline = time.monotonic() + timeout
    while text.encode() not in seen:
        assert time.monotonic() < deadline, seen.decode(errors="replace")
        if select.select([fd], [], [], 0.5)[0]:
            try:
                seen += os.read(fd, 4096)
            except OSError:  # the process closed the terminal
                break
    return seen.decode(errors="replace")


def _until_sleeping(pid: int) -> None:
    """Wait until the process ``pid`` (one thread at its prompt) sleeps in a read."""
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "S":
        assert time.monotonic() < deadline, "the prompt never waited for input"
        time.sleep(0.01)
    time.sleep(0.05)


@contextlib.contextmanager
def _resume_on_a_terminal(
    served: tuple[str, str, subprocess.Popen[str]],
) -> Iterator[tuple[vi_flow.Job, str, int, subprocess.Popen[bytes]]]:
    """A paused run and ``vi-flow runs resume`` of it on a pseudo-terminal: the job (its
    client open until the end), its call's id, the terminal's side to read and type on,
    and the process (killed after)."""
    base, token, _ = served
    env = {**os.environ, "VI_FLOW_BASE_URL": base, "VI_FLOW_API_KEY": token}
    with vi_flow.Client(base_url=base, api_key=token) as client:
        flow_id = client.flows.create(yaml.safe_load(TOOL_SPEC)).flow_id
        job, call_id = _paused(client, flow_id)
        leader, follower = pty.openpty()
        proc = subprocess.Popen(
            [*_cli(), "runs", "resume", job.execution_id],
            stdin=follower, stdout=follower, stderr=follower, env=env,
        )  # fmt: skip
        os.close(follower)
        try:
            yield job, call_id, leader, proc
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            os.close(leader)


def test_on_a_terminal_each_pending_call_is_asked_for(
    served: tuple[str, str, subprocess.Popen[str]],
) -> None:
    with _resume_on_a_terminal(served) as (job, call_id, leader, proc):
        shown = _read_until(leader, "(JSON)")
        assert call_id in shown and "get_weather" in shown
        os.write(leader, b"not json\n")
        assert "not JSON" in _read_until(leader, "(JSON)")
        os.write(leader, b'{"summary": "rainy"}\n')
        assert f"answered {call_id}" in _read_until(leader, "answered")
        assert proc.wait(timeout=30) == 0
        assert job.result().output == "Lima: rainy"


def test_ctrl_c_at_the_prompt_exits_130_and_answers_nothing(
    served: tuple[str, str, subprocess.Popen[str]],
) -> None:
    with _resume_on_a_terminal(served) as (job, _, leader, proc):
        _read_until(leader, "(JSON)")
        # A user reads the prompt first: a SIGINT between its write and the read that
        # follows it (both in C, in `input()`) is handled before the read starts, which
        # it then never interrupts (CPython's own race; once in ten sent at once under
        # load). Wait until the prompt's read sleeps.
        _until_sleeping(proc.pid)
        proc.send_signal(signal.SIGINT)  # what Ctrl-C on the terminal sends
        assert proc.wait(timeout=30) == 130
        assert job.status() == "Running"  # still paused, still answerable
        job.cancel()
