"""The blocking Client: same behaviour as AsyncClient over the portal."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time

import pytest

import vi_flow
from vi_flow import ClientState, ClientStateError, FlowNotFoundError

SPEC = {"name": "sync", "blocks": [{"block": "template", "id": "a"}]}


def test_crud_and_pages() -> None:
    with vi_flow.Client() as client:
        made = [client.flows.create({**SPEC, "name": f"f{i}"}).flow_id for i in range(5)]
        first = client.flows.list(pagination={"page_size": 2})
        assert [f.flow_id for f in first.items] == made[:-3:-1] and first.next_page
        assert [len(page.items) for page in client.flows.list(pagination={"page_size": 2})] == [
            2,
            2,
            1,
        ]
        assert [
            f.flow_id for f in client.flows.list(pagination={"page_size": 2}).all_items()
        ] == made[::-1]  # newest first
        client.flows.delete(made[0])
        with pytest.raises(FlowNotFoundError, match=made[0]):
            client.flows.get(made[0])


def test_close_is_idempotent_and_final() -> None:
    client = vi_flow.Client()
    client.flows.list()
    client.close()
    client.close()
    assert client.state is ClientState.CLOSED
    with pytest.raises(ClientStateError):
        client.flows.list()


def test_works_inside_a_running_event_loop() -> None:
    async def notebook_cell() -> str:
        with vi_flow.Client() as client:
            return client.flows.create(SPEC).spec.name

    assert asyncio.run(notebook_cell()) == "sync"


def test_sync_paginator_moves_a_page_per_round_trip() -> None:
    with vi_flow.Client() as client:
        for i in range(6):
            client.flows.create({**SPEC, "name": f"f{i}"})
        calls = 0
        real_call = client._portal.call

        def counting_call(*args: object, **kwargs: object) -> object:
            nonlocal calls
            calls += 1
            return real_call(*args, **kwargs)  # type: ignore[arg-type]

        client._portal.call = counting_call  # type: ignore[method-assign]
        items = list(client.flows.list(pagination={"page_size": 3}).all_items())
    assert len(items) == 6
    assert calls == 1  # the first page; the rest stream through one iterate()


def test_two_clients_on_threads_share_one_home() -> None:
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            with vi_flow.Client() as client:
                for i in range(3):
                    client.flows.create({**SPEC, "name": f"t{n}-{i}"})
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    with vi_flow.Client() as client:
        assert len(list(client.flows.list().all_items())) == 9


def test_pagination_positionally_and_conditions_in_any_case() -> None:
    with vi_flow.Client() as client:
        flow = client.flows.create({"name": "p", "blocks": []})
        client.flows.create({"name": "q", "blocks": []})
        assert len(client.flows.list(vi_flow.PaginationParams(page_size=1)).items) == 1
        assert len(client.flows.list({"page_size": 1}).items) == 1
        run = client.flow(flow.flow_id).execute()
        listed = client.runs.list(vi_flow.PaginationParams(page_size=50), condition="succeeded")
        assert [r.run_id for r in listed.items] == [run.execution_id]
        with pytest.raises(ValueError, match="got 'finished'"):
            client.runs.list(condition="finished")


def test_a_close_under_streaming_threads_gives_each_a_client_state_error(
    capfd: pytest.CaptureFixture[str],
) -> None:
    slow = {"name": "slow", "blocks": [
        {"block": "emit", "id": "e", "settings": {"count": 200, "interval": 0.05}}]}  # fmt: skip
    client = vi_flow.Client()
    flow_id = client.flows.create(slow).flow_id
    errors: list[BaseException] = []
    streaming = [threading.Event() for _ in range(4)]

    def stream(seen: threading.Event) -> None:
        try:
            for _ in client.flow(flow_id).events():
                seen.set()
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=stream, args=(seen,)) for seen in streaming]
    for thread in threads:
        thread.start()
    assert all(seen.wait(20) for seen in streaming)
    client.close()
    for thread in threads:
        thread.join(20)
    assert [type(error) for error in errors] == [ClientStateError] * 4, errors
    err = capfd.readouterr().err
    assert "asynchronous generator" not in err and "Traceback" not in err, err


@pytest.mark.parametrize("transport", ["ssh", "http"])
def test_a_close_under_a_following_thread_gives_it_a_client_state_error(
    monkeypatch: pytest.MonkeyPatch, transport: str
) -> None:
    # QA: a follow_logs() whose client was closed by another thread mostly ended as if
    # the task's log were complete, with no error: the caller could not tell it from
    # the task's end.
    monkeypatch.setenv("VI_FLOW_LOG_TRANSPORT", transport)
    client = vi_flow.Client()
    task = client.run("for i in $(seq 1 400); do echo line $i; sleep 0.05; done")
    lines: list[str] = []
    outcome: list[BaseException | None] = []
    following = threading.Event()

    def follow() -> None:
        try:
            for line in task.follow_logs():
                lines.append(line)
                following.set()
            outcome.append(None)
        except Exception as exc:
            outcome.append(exc)

    thread = threading.Thread(target=follow)
    thread.start()
    try:
        assert following.wait(20)
        client.close()
        thread.join(20)
        assert len(outcome) == 1 and type(outcome[0]) is ClientStateError, (outcome, len(lines))
        assert len(lines) < 400
    finally:
        with vi_flow.Client() as other:
            other.cancel(task.task_id)


def test_a_close_right_after_the_runs_last_event_ends_the_iteration_quietly(
    capfd: pytest.CaptureFixture[str],
) -> None:
    # QA: a reader that had the run's FlowCompleted got ClientStateError from a close()
    # that came before its stream's clean-up, and stderr got "generator didn't stop
    # after athrow()" tracebacks
    with vi_flow.Client() as setup:
        spec = {"name": "one", "blocks": [{"block": "template", "id": "a", "settings": {
            "template": "x"}}]}  # fmt: skip
        flow_id = setup.flows.create(spec).flow_id
        run_id = setup.flow(flow_id).execute().execution_id
    outcomes = []
    for _ in range(10):
        client = vi_flow.Client()
        last = threading.Event()
        seen: list[str] = []

        def read(
            client: vi_flow.Client = client, last: threading.Event = last, seen: list[str] = seen
        ) -> None:
            try:
                for event in client.flow(flow_id).run(run_id).events():
                    seen.append(type(event).__name__)
                    if seen[-1] == "FlowCompleted":
                        last.set()
                outcomes.append("ended")
            except Exception as exc:
                outcomes.append(type(exc).__name__)
            last.set()

        reader = threading.Thread(target=read)
        reader.start()
        assert last.wait(20)
        client.close()
        reader.join(20)
    assert outcomes == ["ended"] * 10
    err = capfd.readouterr().err
    assert "athrow" not in err and "Traceback" not in err, err


_LOOPS_ONE_AFTER_ANOTHER = """
import asyncio, gc, vi_flow
client = vi_flow.AsyncClient()
async def count():
    return len((await client.flows.list()).items)
print([asyncio.run(count()) for _ in range(3)])
asyncio.run(client.aclose())
gc.collect()
"""


def test_an_async_client_used_by_loops_one_after_another_leaves_no_unclosed_session() -> None:
    # QA: each asyncio.run() (a notebook's cells, a script's steps) left its loop's
    # session behind, and aclose() did not close them: "Unclosed client session" and
    # "Unclosed connector" on stderr when they were collected. As a user runs it: in a
    # process of its own (its server in-process, as this test's environment says), with
    # Python's default warnings.
    # QA again: their sockets were left to the collector ("ResourceWarning: unclosed
    # transport", under -W default as pytest runs a user's tests).
    code = _LOOPS_ONE_AFTER_ANOTHER
    argv = [sys.executable, "-W", "default", "-c", code]
    ran = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert (ran.returncode, ran.stdout) == (0, "[0, 0, 0]\n"), ran.stderr
    assert "Unclosed" not in ran.stderr and "unclosed" not in ran.stderr, ran.stderr


def test_one_async_client_serves_two_event_loops_at_once() -> None:
    # Found by QA: its lock was an asyncio.Lock shared by every loop; two loops calling
    # at once made one raise "bound to a different event loop" and the other wait for ever.
    client = vi_flow.AsyncClient()
    answers: dict[int, object] = {}
    closed = threading.Event()

    async def calls(n: int) -> None:
        pages = asyncio.gather(*(client.flows.list() for _ in range(5)), return_exceptions=True)
        answers[n] = await asyncio.wait_for(pages, 20)
        await asyncio.to_thread(closed.wait, 30)  # the loop runs on until the client closed

    threads = [threading.Thread(target=asyncio.run, args=(calls(n),)) for n in range(2)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while len(answers) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    asyncio.run(client.aclose())  # closes each loop's session on that loop
    closed.set()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads)
    assert sorted(answers) == [0, 1]
    for pages in answers.values():
        assert isinstance(pages, list)
        assert [type(page).__name__ for page in pages] == ["Page"] * 5, pages


def test_with_options_gives_a_blocking_client_on_the_same_connections() -> None:
    # Found by QA: the blocking client had no with_options ("method for method").
    client = vi_flow.Client()
    quick = client.with_options(timeout=5.0, max_retries=0)
    assert isinstance(quick, vi_flow.Client)
    assert quick.async_client.http.connection is client.async_client.http.connection
    created = quick.flows.create({**SPEC, "name": "quick"})
    quick.close()  # the original's: nothing closes
    assert client.flows.get(created.flow_id).flow_id == created.flow_id
    client.close()
    with pytest.raises(ClientStateError):
        quick.flows.list()


_DROPPED_UNCLOSED = """
import gc, threading, vi_flow
def count():
    return len(vi_flow.Client().flows.list().items)  # never closed
print(count())
gc.collect()
with vi_flow.Client() as client:
    flow = client.flow("nothing")  # closed by `with`: no word
del client, flow
gc.collect()
print(sum(t.name == "vi-flow-portal" for t in threading.enumerate()))
"""


def test_a_client_dropped_unclosed_says_so_under_python_default_warnings() -> None:
    # QA: each Client dropped without close() kept its thread and three sockets until
    # the process exited, without a word (20 such clients: 41 threads). Under -W
    # default, as pytest runs a user's tests, it is now a ResourceWarning that says how
    # to close it; the thread stays (a handle it gave out may still be in use).
    argv = [sys.executable, "-W", "default", "-c", _DROPPED_UNCLOSED]
    ran = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.splitlines() == ["0", "1"], ran.stdout
    warned = [line for line in ran.stderr.splitlines() if "ResourceWarning: unclosed" in line]
    assert len(warned) == 1, ran.stderr
    assert "unclosed Client(base_url=" in warned[0] and "close()" in warned[0], warned


def test_a_client_whose_making_was_interrupted_is_collected_quietly() -> None:
    # Ctrl-C while Client() started its portal left an object without its async
    # client; collecting it raised AttributeError in __del__ ("Exception ignored")
    import gc

    half_made = object.__new__(vi_flow.Client)
    half_made._owner = True
    del half_made
    gc.collect()  # an error in __del__ fails this test (pytest's unraisable hook)
