"""The sync bridge: calls, batched iteration, cancellation, closing, threads and fork."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import random
import signal
import subprocess
import sys
import threading
import time
import warnings
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import CancelledError
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from vi_flow import _portal as portal_module
from vi_flow._errors import ClientStateError
from vi_flow._hop import Awaiter
from vi_flow._portal import Portal, _Call

pytestmark = pytest.mark.timeout(10)


@pytest.fixture
def portal() -> Iterator[Portal]:
    p = Portal()
    yield p
    p.close()


async def double(x: int, *, plus: int = 0) -> int:
    await anyio.lowlevel.checkpoint()
    return 2 * x + plus


async def numbers(n: int) -> AsyncIterator[int]:
    for i in range(n):
        yield i


class Boom(Exception):
    pass


def interrupt_when(started: threading.Event, elsewhere: bool = False) -> threading.Thread:
    """Send a real SIGINT once the async side has started: to the main thread, or
    ``elsewhere``, to a thread of the program's own (this one), as the kernel may for a
    signal sent to the process (never to the loop's threads: they block it)."""
    main = threading.main_thread().ident
    assert main is not None

    def fire() -> None:
        if started.wait(5):
            signal.pthread_kill(threading.get_ident() if elsewhere else main, signal.SIGINT)

    firing = threading.Thread(target=fire, daemon=True)
    firing.start()
    return firing


def sleeper(started: threading.Event, cancelled: threading.Event) -> Callable[[], Awaitable[None]]:
    """A coroutine function that sets ``started``, sleeps, and sets ``cancelled`` if cancelled."""

    async def forever() -> None:
        started.set()
        try:
            await anyio.sleep(30)
        except anyio.get_cancelled_exc_class():
            cancelled.set()
            raise

    return forever


@pytest.fixture
def sigint_raises() -> Iterator[None]:
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


# -- call -------------------------------------------------------------------------------


def test_call_returns_the_result(portal: Portal) -> None:
    assert portal.call(double, 20, plus=2) == 42


def test_call_runs_on_another_thread_with_a_running_loop(portal: Portal) -> None:
    async def where() -> tuple[int, str]:
        return threading.get_ident(), type(asyncio.get_running_loop()).__module__

    ident, loop_module = portal.call(where)
    assert ident != threading.get_ident()
    assert loop_module.startswith("asyncio")


def test_call_reuses_one_thread(portal: Portal) -> None:
    async def ident() -> int:
        return threading.get_ident()

    assert len({portal.call(ident) for _ in range(5)}) == 1


def test_call_raises_the_exception_with_its_type(portal: Portal) -> None:
    async def fail() -> None:
        raise Boom("bad value 7")

    with pytest.raises(Boom, match="bad value 7"):
        portal.call(fail)


def test_a_failed_call_logs_no_unretrieved_task_exception(
    portal: Portal, caplog: pytest.LogCaptureFixture
) -> None:
    # The exception goes to the caller; the task on the loop must not keep it as its own.
    async def fail() -> None:
        raise Boom("bad value 7")

    for _ in range(3):
        with pytest.raises(Boom):
            portal.call(fail)
    gc.collect()
    assert portal.call(double, 1) == 2
    assert "never retrieved" not in caplog.text


def test_a_result_is_freed_without_the_cycle_collector(portal: Portal) -> None:
    class Result:
        pass

    async def make() -> Result:
        return Result()

    gc.disable()
    try:
        got = weakref.ref(portal.call(make))
        portal.call(double, 1)  # the loop has left the first call's task behind
        assert got() is None
    finally:
        gc.enable()


def test_a_call_cancelled_before_the_loop_starts_it_never_runs() -> None:
    # Ctrl-C may reach the loop (as a cancel) before the call it queued is started.
    ran: list[int] = []

    async def work() -> None:
        ran.append(1)

    call = _Call(work)

    async def cancel_then_start() -> None:
        call.cancel()
        call.start(set())
        await asyncio.sleep(0)

    asyncio.run(cancel_then_start())
    assert ran == [] and call.done()
    with pytest.raises(CancelledError):
        call.result()


def test_a_call_cancelled_before_its_first_step_never_runs_and_settles() -> None:
    # Ctrl-C may reach the loop after the call's task exists but before it ran at all.
    ran: list[int] = []
    running: set[_Call[Any]] = set()

    async def work() -> None:
        ran.append(1)

    call = _Call(work)

    async def start_then_cancel() -> None:
        call.start(running)
        call.cancel()
        await asyncio.sleep(0)
        await asyncio.sleep(0)

    asyncio.run(start_then_cancel())
    assert ran == [] and call.done() and not running


def test_closing_settles_a_call_whose_task_never_ran(monkeypatch: pytest.MonkeyPatch) -> None:
    # A task cancelled (by the loop's shutdown) before its first step runs no code at all:
    # its caller must still be answered.
    p = Portal()
    p.call(double, 1)
    started = threading.Event()
    real_start = _Call.start

    def start_then_stop(self: _Call[Any], running: set[_Call[Any]]) -> None:
        real_start(self, running)
        assert self._task is not None
        self._task.cancel()  # as the shutdown would, before the first step
        self._task = None
        started.set()

    monkeypatch.setattr(_Call, "start", start_then_stop)
    monkeypatch.setattr(_Call, "_run", _never_entered)
    outcome: list[BaseException] = []

    def caller() -> None:
        try:
            p.call(double, 2)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=caller)
    thread.start()
    assert started.wait(5)
    monkeypatch.undo()
    p.close()
    thread.join(5)
    assert not thread.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], ClientStateError)


async def _never_entered(self: _Call[Any]) -> None:
    raise AssertionError("a cancelled task's coroutine ran")


def test_call_from_threads_at_once(portal: Portal) -> None:
    results: list[int] = []

    def worker(i: int) -> None:
        results.append(portal.call(double, i))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [2 * i for i in range(8)]


def test_64_threads_each_get_their_own_answers(portal: Portal) -> None:
    # Calls from many threads share the loop's wake-ups; none may get another's answer.
    wrong: list[tuple[int, int]] = []

    def worker(i: int) -> None:
        for j in range(50):
            got = portal.call(double, i * 1000 + j)
            if got != 2 * (i * 1000 + j):
                wrong.append((i, got))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert wrong == [] and not any(t.is_alive() for t in threads)


def test_without_eventfd_calls_wake_the_loop_with_call_soon_threadsafe(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # macOS and Windows have no eventfd: the portal falls back to the loop's own wake-up.
    monkeypatch.delattr(os, "eventfd", raising=False)
    p = Portal()
    results: list[int] = []

    def worker(i: int) -> None:
        results.extend(p.call(double, i) for _ in range(20))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert p._wake_fd is None
    assert sorted(set(results)) == [2 * i for i in range(8)] and len(results) == 160
    p.close()
    with pytest.raises(ClientStateError, match="closed"):
        p.call(double, 1)


def wait_until_asleep(portal: Portal) -> None:
    deadline = time.monotonic() + 5
    while not portal._asleep:
        assert time.monotonic() < deadline, "the portal's loop never went to wait"
        time.sleep(0.001)


def test_a_call_wakes_a_loop_that_waits_with_nothing_to_do(portal: Portal) -> None:
    assert portal.call(double, 1) == 2
    wait_until_asleep(portal)
    time.sleep(0.2)  # deep in its wait: no timer is due, nothing else will wake it
    done = threading.Event()
    caller = threading.Thread(target=lambda: (portal.call(double, 2), done.set()))
    caller.start()
    assert done.wait(5), "the call never woke the portal's loop"
    caller.join()


def test_a_call_queued_while_the_loop_is_busy_runs_without_a_wake_up(portal: Portal) -> None:
    # No wake-up is written for a call queued while the loop is awake: the loop must
    # find it before it waits, or the call would wait for ever.
    got: list[int] = []
    caller = threading.Thread(target=lambda: got.append(portal.call(double, 5)))

    async def busy() -> None:
        caller.start()
        deadline = time.monotonic() + 5
        while not portal._inbox and time.monotonic() < deadline:
            time.sleep(0.001)  # the loop stays busy until the call is queued

    portal.call(busy)
    caller.join(5)
    assert got == [10]


def test_calls_racing_the_loop_to_sleep_are_never_stranded(portal: Portal) -> None:
    # Each call ends at once, so the loop keeps going to wait just as the next call
    # comes; a call queued after it looked and before it slept would wait for ever.
    counts = [0] * 8

    def worker(i: int) -> None:
        rng = random.Random(i)
        for _ in range(300):
            portal.call(double, i)
            counts[i] += 1
            if rng.random() < 0.5:
                time.sleep(rng.random() / 5000)  # 0 to 0.2 ms

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert counts == [300] * 8 and not any(t.is_alive() for t in threads)


def test_close_while_many_threads_call_leaves_none_waiting() -> None:
    portal = Portal()
    outcomes: list[str] = []

    def calls() -> None:
        for _ in range(200):
            portal.call(double, 1)

    def worker() -> None:
        try:
            calls()
        except ClientStateError:
            outcomes.append("closed")
        else:
            outcomes.append("done")

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    time.sleep(0.05)
    portal.close()
    for t in threads:
        t.join(10)
    assert not any(t.is_alive() for t in threads)
    assert len(outcomes) == 16


def test_ctrl_c_during_call_cancels_the_async_work(portal: Portal, sigint_raises: None) -> None:
    started, cancelled = threading.Event(), threading.Event()
    forever = sleeper(started, cancelled)

    interrupt_when(started)
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        portal.call(forever)
    assert cancelled.is_set()
    assert time.monotonic() - t0 < 5
    assert portal.call(double, 1) == 2  # the portal still works


def test_ctrl_c_while_the_call_is_spawned_still_cancels_it(
    portal: Portal, monkeypatch: pytest.MonkeyPatch
) -> None:
    started, cancelled = threading.Event(), threading.Event()
    forever = sleeper(started, cancelled)

    portal.call(double, 1)
    spawn = Portal._submit

    def spawn_then_interrupt(self: Portal, *args: Any, **kwargs: Any) -> Any:
        monkeypatch.undo()  # only the first spawn is interrupted
        spawn(self, *args, **kwargs)
        started.wait(5)
        raise KeyboardInterrupt  # before the caller holds the task's future

    monkeypatch.setattr(Portal, "_submit", spawn_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        portal.call(forever)
    assert cancelled.is_set()


def interrupt_next_wake_up(portal: Portal, monkeypatch: pytest.MonkeyPatch) -> None:
    """Start ``portal``; then raise KeyboardInterrupt where the next call wakes its loop."""
    portal.call(double, 1)
    loop = portal._loop
    assert loop is not None
    wait_until_asleep(portal)  # an awake loop is not woken: it drains before it waits

    def interrupted(*args: Any) -> Any:
        monkeypatch.undo()
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "call_soon_threadsafe", interrupted)
    monkeypatch.setattr(os, "eventfd_write", interrupted, raising=False)


def test_ctrl_c_while_waking_the_loop_leaves_the_portal_working(
    portal: Portal, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Ctrl-C between "a wake-up is pending" and the wake-up itself must not leave later
    # calls queued behind a wake-up that never comes; the interrupted call never runs.
    ran: list[int] = []

    async def work() -> None:
        ran.append(1)

    interrupt_next_wake_up(portal, monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        portal.call(work)
    assert portal.call(double, 3) == 6
    assert ran == []


def test_ctrl_c_delivered_to_another_thread_still_interrupts_the_call(
    portal: Portal, sigint_raises: None
) -> None:
    # The main thread waits on a lock the kernel's signal never wakes; it must still
    # notice the pending KeyboardInterrupt (the CLI hung on Ctrl-C this way).
    started, cancelled = threading.Event(), threading.Event()
    forever = sleeper(started, cancelled)

    portal.call(double, 1)
    interrupt_when(started, elsewhere=True)
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        portal.call(forever)
    assert time.monotonic() - t0 < 2
    assert cancelled.is_set()
    assert portal.call(double, 2) == 4


def test_ctrl_c_delivered_to_another_thread_still_interrupts_iteration(
    portal: Portal, sigint_raises: None
) -> None:
    started, closed = threading.Event(), threading.Event()
    portal.call(double, 1)
    interrupt_when(started, elsewhere=True)
    got: list[int] = []
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        got.extend(portal.iterate(lambda: _closing_stream(closed, started)))
    assert time.monotonic() - t0 < 2
    assert got == [0]
    assert closed.is_set()


def _blocks_sigint() -> bool:
    return signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, [])


def test_the_loop_thread_and_the_threads_it_starts_block_sigint(portal: Portal) -> None:
    # The kernel may hand a Ctrl-C sent to the process to any thread not blocking it; in
    # the loop's, Python's handler waits for the main thread's next bytecode, and a main
    # thread blocked in a read of its own (a prompt) would never run it.
    async def on_the_loop() -> tuple[bool, bool]:
        return _blocks_sigint(), await asyncio.to_thread(_blocks_sigint)

    assert portal.call(on_the_loop) == (True, True)  # its thread; a worker (DNS lookups)
    assert not _blocks_sigint()  # the caller's mask is left as it was


def test_ctrl_c_while_starting_an_iteration_leaves_the_portal_working(
    portal: Portal, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Ctrl-C while the iterator's pump wakes the loop: the pump is stopped, and later
    # calls are not left queued behind a wake-up that never comes.
    interrupt_next_wake_up(portal, monkeypatch)
    closed = threading.Event()
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        next(portal.iterate(lambda: _closing_stream(closed)))
    assert portal.call(double, 3) == 6
    assert time.monotonic() - t0 < 2
    assert not portal._pumps


def test_ctrl_c_before_the_call_is_queued_returns_at_once(
    portal: Portal, monkeypatch: pytest.MonkeyPatch
) -> None:
    portal.call(double, 1)

    def interrupted(self: Portal, *args: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(Portal, "_submit", interrupted)
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        portal.call(double, 2)
    assert time.monotonic() - t0 < 1  # no wait for a cleanup of what never ran
    monkeypatch.undo()
    assert portal.call(double, 2) == 4


def test_ctrl_c_just_as_the_call_ends_returns_at_once(
    portal: Portal, monkeypatch: pytest.MonkeyPatch
) -> None:
    portal.call(double, 1)

    def interrupted_after_the_wait(self: _Call[Any]) -> Any:
        self._lock.acquire()  # the call ended and its caller took the lock...
        raise KeyboardInterrupt  # ...when Ctrl-C struck, before it let go of it

    monkeypatch.setattr(_Call, "result", interrupted_after_the_wait)
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        portal.call(double, 2)
    assert time.monotonic() - t0 < 1  # it waited for its grace period (5 s) before
    monkeypatch.undo()
    assert portal.call(double, 2) == 4


def _loop_threads() -> int:
    return sum(thread.name == "vi-flow-portal" for thread in threading.enumerate())


def test_ctrl_c_as_the_loop_thread_starts_leaves_a_portal_that_works_and_closes(
    monkeypatch: pytest.MonkeyPatch, sigint_raises: None
) -> None:
    """A CLI hit by Ctrl-C just as its loop's thread started (~0.15 s in) printed
    "interrupted", then hung at exit until a second Ctrl-C: the portal had no record of
    that thread, so nothing stopped it."""
    real = portal_module.start_blocking_portal

    @contextmanager
    def struck(*args: Any, **kwargs: Any) -> Iterator[Any]:
        with real(*args, **kwargs) as started:  # the loop's thread is up...
            signal.pthread_kill(threading.get_ident(), signal.SIGINT)  # ...and Ctrl-C strikes
            yield started

    before = _loop_threads()
    monkeypatch.setattr(portal_module, "start_blocking_portal", struck)
    portal = Portal()
    with pytest.raises(KeyboardInterrupt):
        portal.call(double, 1)
    monkeypatch.undo()
    assert _loop_threads() == before + 1
    assert portal.call(double, 2) == 4  # the same thread: started once
    assert _loop_threads() == before + 1
    portal.close()
    assert _loop_threads() == before


def test_works_inside_a_running_event_loop(portal: Portal) -> None:
    async def main() -> list[int]:
        first = portal.call(double, 21)
        return [first, *portal.iterate(lambda: numbers(3))]

    assert asyncio.run(main()) == [42, 0, 1, 2]


# -- iterate ----------------------------------------------------------------------------


def test_iterate_yields_every_item_in_order(portal: Portal) -> None:
    assert list(portal.iterate(lambda: numbers(1000))) == list(range(1000))


def test_iterate_moves_fast_streams_in_batches(portal: Portal) -> None:
    produced = 0

    async def counted(n: int) -> AsyncIterator[int]:
        nonlocal produced
        for i in range(n):
            produced += 1
            yield i

    # Items produced between two observations travel in the same round trip.
    seen_at: list[int] = [produced for _ in portal.iterate(lambda: counted(1000), batch=100)]
    round_trips = len(set(seen_at))
    assert len(seen_at) == 1000
    assert round_trips <= 20


def test_iterate_respects_the_batch_size(portal: Portal) -> None:
    produced = 0

    async def counted() -> AsyncIterator[int]:
        nonlocal produced
        for i in range(50):
            produced += 1
            yield i

    ahead = [produced - i for i, _ in enumerate(portal.iterate(counted, batch=10))]
    assert max(ahead) <= 11  # one batch, plus at most one item fetched ahead


def test_iterate_delivers_slow_items_at_once(portal: Portal) -> None:
    async def slow() -> AsyncIterator[str]:
        yield "first"
        await anyio.sleep(0.5)
        yield "second"

    t0 = time.monotonic()
    arrivals = [(item, time.monotonic() - t0) for item in portal.iterate(slow)]
    assert [item for item, _ in arrivals] == ["first", "second"]
    assert arrivals[0][1] < 0.3
    assert arrivals[1][1] >= 0.5


def test_iterate_accepts_an_async_iterable(portal: Portal) -> None:
    class Pages:
        def __aiter__(self) -> AsyncIterator[int]:
            return numbers(3)

    assert list(portal.iterate(Pages)) == [0, 1, 2]


def test_iterate_raises_after_the_items_before_the_error(portal: Portal) -> None:
    async def broken() -> AsyncIterator[int]:
        yield 1
        yield 2
        raise Boom("page 3 is missing")

    got: list[int] = []
    with pytest.raises(Boom, match="page 3"):
        got.extend(portal.iterate(broken))
    assert got == [1, 2]


def test_iterate_raises_what_make_iter_raises(portal: Portal) -> None:
    def make() -> AsyncIterator[int]:
        raise Boom("no such run")

    with pytest.raises(Boom, match="no such run"):
        next(portal.iterate(make))


def test_iterate_rejects_a_batch_below_one(portal: Portal) -> None:
    with pytest.raises(ValueError, match="batch must be at least 1, got 0"):
        portal.iterate(lambda: numbers(1), batch=0)


def test_iterate_creates_nothing_until_iterated(portal: Portal) -> None:
    made = threading.Event()

    def make() -> AsyncIterator[int]:
        made.set()
        return numbers(1)

    it = portal.iterate(make)
    time.sleep(0.05)
    assert not made.is_set()
    assert list(it) == [0]


def _closing_stream(
    closed: threading.Event, started: threading.Event | None = None
) -> AsyncIterator[int]:
    async def stream() -> AsyncIterator[int]:
        try:
            for i in range(10_000_000):
                if started is not None and i == 1:
                    await anyio.sleep(0.1)  # lets the first round trip return item 0
                    started.set()
                    await anyio.sleep(30)
                yield i
        finally:
            with anyio.CancelScope(shield=True):  # cleanup may await, shielded from a cancel
                await anyio.lowlevel.checkpoint()
            closed.set()

    return stream()


def test_break_closes_the_async_iterator(portal: Portal) -> None:
    closed = threading.Event()
    for i in portal.iterate(lambda: _closing_stream(closed)):
        if i == 3:
            break
    assert closed.is_set()


def test_close_on_the_generator_closes_the_async_iterator(portal: Portal) -> None:
    closed = threading.Event()
    it = portal.iterate(lambda: _closing_stream(closed))
    assert next(it) == 0
    it.close()
    assert closed.is_set()


def test_garbage_collection_closes_the_async_iterator(portal: Portal) -> None:
    closed = threading.Event()
    it = portal.iterate(lambda: _closing_stream(closed))
    assert next(it) == 0
    del it
    gc.collect()
    assert closed.is_set()


def test_collected_on_the_portal_thread_still_closes(portal: Portal) -> None:
    closed = threading.Event()
    box = [portal.iterate(lambda: _closing_stream(closed))]
    assert next(box[0]) == 0

    async def drop() -> None:
        box.clear()  # the last reference goes on the portal thread

    portal.call(drop)
    assert closed.wait(2)


def test_ctrl_c_while_iterating_closes_the_async_iterator(
    portal: Portal, sigint_raises: None
) -> None:
    started, closed = threading.Event(), threading.Event()
    interrupt_when(started)
    got: list[int] = []
    with pytest.raises(KeyboardInterrupt):
        got.extend(portal.iterate(lambda: _closing_stream(closed, started)))
    assert got == [0]
    assert closed.is_set()


# -- drive ------------------------------------------------------------------------------


async def _loop_thread() -> int:
    await anyio.lowlevel.checkpoint()
    return threading.get_ident()


def _driven(
    log: list[str], items: int = 3, hop_error: BaseException | None = None
) -> Callable[[Awaiter], AsyncGenerator[tuple[int, int, int], None]]:
    """A driven generator: each item is one hop; its cleanup hops too, and says so."""

    async def fail() -> int:
        await anyio.lowlevel.checkpoint()
        assert hop_error is not None
        raise hop_error

    def make(hop: Awaiter) -> AsyncGenerator[tuple[int, int, int], None]:
        async def generator() -> AsyncGenerator[tuple[int, int, int], None]:
            try:
                for i in range(items):
                    loop = await hop(_loop_thread if hop_error is None else fail)
                    yield i, threading.get_ident(), loop
            finally:
                try:
                    log.append(f"cleanup hop on {await hop(_loop_thread)}")
                except ClientStateError:
                    log.append("cleanup without a portal")
                log.append("closed")

        return generator()

    return make


def test_drive_runs_the_generator_here_and_only_its_hops_on_the_portal(portal: Portal) -> None:
    log: list[str] = []
    got = list(portal.drive(_driven(log)))
    here, there = threading.get_ident(), portal._thread_id
    assert got == [(0, here, there), (1, here, there), (2, here, there)]
    assert log == [f"cleanup hop on {there}", "closed"]


def test_a_hop_error_is_raised_where_the_generator_awaited(portal: Portal) -> None:
    log: list[str] = []
    with pytest.raises(Boom):
        next(portal.drive(_driven(log, hop_error=Boom())))
    assert log == [f"cleanup hop on {portal._thread_id}", "closed"]
    assert portal.call(double, 2) == 4


@pytest.mark.parametrize("how", ["break", "close", "collect"])
def test_a_driven_generator_is_closed_through_its_hops(portal: Portal, how: str) -> None:
    log: list[str] = []
    it = portal.drive(_driven(log, items=100))
    for i, _, _ in it:
        if i == 1:
            break
    if how == "close":
        it.close()
    elif how == "collect":
        del it
        gc.collect()
    else:
        it.close()  # the break itself leaves it open: a for loop does not close
    assert log == [f"cleanup hop on {portal._thread_id}", "closed"]


def test_a_driven_generator_collected_on_the_portal_thread_still_cleans_up(
    portal: Portal,
) -> None:
    log: list[str] = []
    box = [portal.drive(_driven(log, items=100))]
    assert next(box[0])[0] == 0

    async def drop() -> None:
        box.clear()  # the last reference goes on the portal thread

    portal.call(drop)
    deadline = time.monotonic() + 2
    while "closed" not in log and time.monotonic() < deadline:
        time.sleep(0.01)
    assert log == [f"cleanup hop on {portal._thread_id}", "closed"]


@pytest.mark.parametrize("to", ["main", "elsewhere"])
def test_ctrl_c_in_a_hop_cancels_it_and_runs_the_cleanup(
    portal: Portal, sigint_raises: None, to: str
) -> None:
    started, cancelled = threading.Event(), threading.Event()
    forever = sleeper(started, cancelled)
    log: list[str] = []

    def make(hop: Awaiter) -> AsyncGenerator[int, None]:
        async def generator() -> AsyncGenerator[int, None]:
            try:
                yield 0
                await hop(forever)
                yield 1
            finally:
                log.append(f"cleanup hop on {await hop(_loop_thread)}")

        return generator()

    portal.call(double, 1)
    interrupt_when(started, elsewhere=to == "elsewhere")
    got: list[int] = []
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        got.extend(portal.drive(make))
    assert time.monotonic() - t0 < 2
    assert got == [0]
    assert cancelled.is_set()
    assert log == [f"cleanup hop on {portal._thread_id}"]
    assert portal.call(double, 2) == 4


def test_a_driven_generator_may_await_only_hops(portal: Portal) -> None:
    def make(hop: Awaiter) -> AsyncGenerator[int, None]:
        async def generator() -> AsyncGenerator[int, None]:
            await asyncio.sleep(0)  # a loop's await, here where no loop runs
            yield 1

        return generator()

    with pytest.raises(TypeError, match="only a Hop"):
        next(portal.drive(make))


@pytest.mark.parametrize("stepped", [False, True])
def test_a_driven_generator_left_open_is_closed_when_its_portal_closes(
    monkeypatch: pytest.MonkeyPatch, stepped: bool
) -> None:
    # left open at a yield (Ctrl-C outside a hop leaves the CLI's stream so): closed
    # through its hops while the loop runs (left to the loop's shutdown, the generators
    # inside it went in any order). One its own thread was stepping at the close: its
    # hops find the portal gone, and it closes quietly.
    unraisable: list[Any] = []
    monkeypatch.setattr("sys.unraisablehook", unraisable.append)
    log: list[str] = []
    p = Portal()
    it = p.drive(_driven(log, items=100))
    assert next(it)[0] == 0
    loop_thread = p._thread_id
    if stepped:
        p._driven.clear()  # as if its thread were stepping it at the close
    p.close()
    with pytest.raises(ClientStateError):
        next(it)  # the portal is gone: the next step says so
    del it
    gc.collect()
    cleanup = "cleanup without a portal" if stepped else f"cleanup hop on {loop_thread}"
    assert log == [cleanup, "closed"]
    assert unraisable == []


def test_a_loop_running_in_the_caller_thread_leaves_driven_generators_alone(
    portal: Portal, caplog: pytest.LogCaptureFixture
) -> None:
    # Jupyter: the caller's thread runs a loop. Its generator hooks would adopt the
    # driven generator and, at shutdown, step it as a task, where a Hop is no awaitable.
    log: list[str] = []

    async def main() -> Iterator[tuple[int, int, int]]:
        it = portal.drive(_driven(log, items=100))
        next(it)
        return it

    it = asyncio.run(main())
    assert log == []  # the loop's shutdown did not touch it
    it.close()
    assert log == [f"cleanup hop on {portal._thread_id}", "closed"]
    assert "asynchronous generator" not in caplog.text


# -- close ------------------------------------------------------------------------------


def test_close_is_idempotent_and_later_use_raises() -> None:
    p = Portal()
    assert p.call(double, 1) == 2
    p.close()
    p.close()
    with pytest.raises(ClientStateError, match="closed"):
        p.call(double, 1)
    with pytest.raises(ClientStateError, match="closed"):
        next(p.iterate(lambda: numbers(1)))


def portal_threads() -> int:
    return sum(t.name == "vi-flow-portal" for t in threading.enumerate())


def _eventfds() -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            count += os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:[eventfd]"
    return count


@pytest.mark.skipif(not hasattr(os, "eventfd"), reason="the wake-up fd is Linux's eventfd")
@pytest.mark.parametrize("joined", [True, False], ids=["after-the-join", "before-the-join"])
def test_ctrl_c_while_close_stops_the_loop_leaks_no_fd(
    monkeypatch: pytest.MonkeyPatch, joined: bool
) -> None:
    """QA AD: a Ctrl-C that struck while ``close()`` stopped the loop left the portal's
    wake-up eventfd open, one per interrupted close, for good (a second close is a no-op)."""
    real = portal_module._stop

    def struck(portal: Any, runner: Any) -> None:
        if joined:
            real(portal, runner)
        else:
            portal.call(portal.stop, True)  # asked to stop; the Ctrl-C comes before the join
        raise KeyboardInterrupt

    before, threads = _eventfds(), portal_threads()
    p = Portal()
    assert p.call(double, 1) == 2
    assert _eventfds() == before + 1
    monkeypatch.setattr(portal_module, "_stop", struck)
    with pytest.raises(KeyboardInterrupt):
        p.close()
    assert _eventfds() == before
    p.close()  # nothing left to do
    with pytest.raises(ClientStateError, match="closed"):
        p.call(double, 1)
    deadline = time.monotonic() + 10  # the loop was asked to stop: its thread ends
    while portal_threads() > threads and time.monotonic() < deadline:
        time.sleep(0.01)
    assert portal_threads() == threads  # (and the next test counts only its own)


def test_close_stops_the_thread() -> None:
    before = portal_threads()
    p = Portal()
    p.call(double, 1)
    assert portal_threads() == before + 1
    p.close()
    assert portal_threads() == before


def test_close_without_use_starts_nothing() -> None:
    before = portal_threads()
    p = Portal()
    p.close()
    assert portal_threads() == before
    with pytest.raises(ClientStateError):
        p.call(double, 1)


def test_close_awaits_on_close_then_exits_contexts_last_in_first_out() -> None:
    events: list[str] = []

    @asynccontextmanager
    async def resource(name: str) -> AsyncIterator[str]:
        async with anyio.create_task_group():  # a cancel scope spanning enter and exit
            events.append(f"enter {name}")
            yield name
            events.append(f"exit {name}")

    async def on_close() -> None:
        events.append("on_close")

    with Portal() as p:
        assert p.enter_async_context(resource("a")) == "a"
        assert p.enter_async_context(resource("b")) == "b"
        p.close(on_close)
    assert events == ["enter a", "enter b", "on_close", "exit b", "exit a"]


def test_close_runs_on_close_even_if_never_used() -> None:
    ran = threading.Event()

    async def on_close() -> None:
        ran.set()

    Portal().close(on_close)
    assert ran.is_set()


def test_close_closes_open_iterators() -> None:
    closed = threading.Event()
    p = Portal()
    it = p.iterate(lambda: _closing_stream(closed))
    assert next(it) == 0
    p.close()
    assert closed.is_set()
    with pytest.raises(ClientStateError, match="closed"):
        next(it)


def test_closing_from_another_thread_ends_a_running_call() -> None:
    started = threading.Event()
    p = Portal()

    async def forever() -> None:
        started.set()
        await anyio.sleep(30)

    def close_once_started() -> None:
        started.wait(5)
        p.close()

    closer = threading.Thread(target=close_once_started)
    closer.start()
    with pytest.raises(ClientStateError, match="closed while the call was running"):
        p.call(forever)
    closer.join()


# -- own thread -------------------------------------------------------------------------


def test_calling_from_the_portal_thread_raises(portal: Portal) -> None:
    async def reenter() -> int:
        return portal.call(double, 1)

    with pytest.raises(ClientStateError, match="its own event-loop thread"):
        portal.call(reenter)


def test_iterating_and_closing_from_the_portal_thread_raise(portal: Portal) -> None:
    async def reiterate() -> list[int]:
        return list(portal.iterate(lambda: numbers(2)))

    async def reclose() -> None:
        portal.close()

    with pytest.raises(ClientStateError, match="its own event-loop thread"):
        portal.call(reiterate)
    with pytest.raises(ClientStateError, match="its own event-loop thread"):
        portal.call(reclose)
    assert portal.call(double, 2) == 4  # still open


def test_a_worker_thread_started_from_the_portal_may_call_it(portal: Portal) -> None:
    def blocking_handler() -> int:
        return portal.call(double, 5)

    async def run_handler() -> int:
        return await anyio.to_thread.run_sync(blocking_handler)

    assert portal.call(run_handler) == 10


# -- fork -------------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_gets_a_fresh_portal(portal: Portal) -> None:
    async def ident() -> int:
        return threading.get_ident()

    parent_thread = portal.call(ident)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: fork with threads
        pid = os.fork()
    if pid == 0:  # the child: report through the exit code only
        code = 1
        try:
            ok = portal.call(double, 21) == 42
            ok = ok and list(portal.iterate(lambda: numbers(3))) == [0, 1, 2]
            ok = ok and portal.call(ident) != threading.get_ident()
            portal.close()
            code = 0 if ok else 2
        finally:
            os._exit(code)
    assert _exit_code(pid) == 0
    assert portal.call(ident) == parent_thread  # the parent's portal is untouched


def _exit_code(pid: int) -> int:
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError("the forked child hung")


_STRUCK_AS_IT_STARTS = """
import concurrent.futures, os, signal, sys, threading, time
from vi_flow._portal import Portal
fire = threading.Event()
def helper():  # a thread of the program's own, which does not block SIGINT
    fire.wait()
    os.kill(os.getpid(), signal.SIGINT)
threading.Thread(target=helper, daemon=True).start()
real = concurrent.futures.Future.result
def result(self, timeout=None):  # timing only: the Ctrl-C lands while the start waits
    if threading.current_thread() is threading.main_thread() and not fire.is_set():
        fire.set()
        time.sleep(0.2)
    return real(self, timeout)
concurrent.futures.Future.result = result
portal = Portal()
try:
    portal.call(int, "1")
    print("no KeyboardInterrupt")
except KeyboardInterrupt:
    print("KeyboardInterrupt")
concurrent.futures.Future.result = real
portal.close()
print(sorted(t.name for t in threading.enumerate() if t.name.startswith("vi-flow-portal")))
"""


def test_ctrl_c_taken_by_another_thread_as_the_portal_starts_neither_hangs_nor_leaks() -> None:
    # QA AD: SIGINT blocked in the main thread went to a thread of the program's own;
    # Python raised KeyboardInterrupt in the main thread all the same, inside anyio's
    # start, whose clean-up joined a loop nobody stopped: the process hung for ever
    done = subprocess.run(
        [sys.executable, "-c", _STRUCK_AS_IT_STARTS],
        capture_output=True, text=True, timeout=30, cwd=Path(__file__).parents[2],
    )  # fmt: skip
    assert done.stdout.split("\n")[:2] == ["KeyboardInterrupt", "[]"], done.stdout + done.stderr
