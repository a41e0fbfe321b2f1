"""The sync bridge: one event-loop thread per sync client, and the calls that cross it.

A :class:`Portal` owns one anyio blocking portal (asyncio backend) running on its own
daemon thread, started on first use. Blocking code crosses into it with :meth:`Portal.call`
(one coroutine, Ctrl-C cancels it), :meth:`Portal.iterate` (an async iterator drained in
batches, closed on ``break``) and :meth:`Portal.drive` (an async generator run in the
caller's own thread, hopping to the loop only for its I/O). The portal also owns async
context managers entered on it (the sync client's ``AsyncClient``), closes them on
:meth:`Portal.close`, refuses calls from its own thread (they would deadlock), and starts
afresh in a child after ``os.fork()``.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import os
import selectors
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Generator,
)
from concurrent.futures import CancelledError
from contextlib import AbstractAsyncContextManager, AbstractContextManager, ExitStack
from types import TracebackType
from typing import Any, Generic, TypeVar

import anyio
import anyio.lowlevel
from anyio.from_thread import BlockingPortal, start_blocking_portal
from typing_extensions import ParamSpec, Self

from vi_flow._errors import ClientStateError
from vi_flow._heldoff import SigintBlocked, SigintDeferred
from vi_flow._hop import Awaiter, Hop

__all__ = ["Portal"]

P = ParamSpec("P")
T = TypeVar("T")

#: How long a Ctrl-C'd call, or a closed iterator, may take to finish its cleanup.
_CANCEL_GRACE = 5.0
#: How long one ``iterate`` round trip keeps collecting items that are ready.
_BATCH_BUDGET = 0.005
#: Loop turns without a new item after which a round trip stops collecting.
_IDLE_TURNS = 2
#: How often the main thread, waiting for a call, wakes to run a signal handler. The
#: kernel may hand a process's SIGINT to any thread that does not block it (the loop's,
#: say); Python then runs the handler only when the main thread next runs bytecode.
_SIGNAL_POLL = 0.05

_CLOSED = "this vi_flow sync client is closed; create a new Client to make more calls"
_CLOSED_DURING_CALL = "this vi_flow sync client was closed while the call was running"
_OWN_THREAD = (
    "a vi_flow sync client was called from its own event-loop thread (for example from a "
    "sync tool handler running on that loop), which would deadlock; use the AsyncClient "
    "with `await` there, or run the handler in a worker thread"
)
_STALE_ITERATOR = (
    "this iterator belongs to a closed client or to the parent of a forked process; "
    "start a new iteration"
)


class _Abandoned(Exception):
    """The fate of a call whose caller pressed Ctrl-C; nobody reads it."""


class _Call(Generic[T]):
    """One coroutine to run on the portal, cancellable from the calling thread, and its outcome.

    Lighter than a task plus a ``concurrent.futures.Future``: the caller blocks on a lock
    the coroutine itself releases once, as its last step (no condition variable, no done
    callback a loop turn later). Cancellation goes through this object rather than the
    task, because Ctrl-C may strike before the loop has started it. A call is cancelled
    the way ``asyncio.run`` cancels its task on Ctrl-C, with ``Task.cancel()``: an anyio
    cancel scope around every call cost about a tenth of the bridge's time per call.
    """

    __slots__ = (
        "_cancelled", "_entered", "_error", "_fn", "_lock", "_running", "_settled", "_task",
        "_value", "started",
    )  # fmt: skip

    def __init__(self, fn: Callable[[], Awaitable[T]]) -> None:
        self._fn = fn
        self._lock = threading.Lock()
        self._lock.acquire()
        self._value: Any = None
        self._error: BaseException | None = None
        self._task: asyncio.Task[None] | None = None
        self._running: set[_Call[Any]] = set()
        self._cancelled = False
        self._entered = False
        self._settled = False  # set before the lock is released (the lock says nothing once
        # the caller holds it: Ctrl-C may strike between its acquire and its release)
        self.started = False

    def start(self, running: set[_Call[Any]]) -> None:
        """Start the coroutine as a task (on the loop thread), unless it was cancelled.

        The call stays in ``running`` until it settles, so that a portal whose loop
        stopped first can settle it (a task cancelled before its first step runs no code).
        """
        if self._cancelled:
            self.settle_cancelled()
            return
        self.started = True
        self._running = running
        running.add(self)
        self._task = asyncio.ensure_future(self._run())  # the loop holds tasks weakly

    async def _run(self) -> None:
        self._entered = True
        try:
            if self._cancelled:  # Ctrl-C came before the task's first step
                self._error = _Abandoned()
                return
            self._value = await self._fn()
        except asyncio.CancelledError:  # Ctrl-C, or the portal stopped under the call
            self._error = CancelledError()
            raise
        except BaseException as exc:  # handed to the caller by result()
            # Also SystemExit or KeyboardInterrupt, which only the caller's own code run in
            # a worker thread can raise here (signals go to the main thread): they are the
            # caller's to handle, and the client's loop goes on serving its other calls.
            self._error = exc
        finally:
            self._task = None  # ending: the task needs no holder any more
            self._running.discard(self)
            self._settled = True
            self._lock.release()  # exactly once: the caller wakes as the task ends

    def settle_cancelled(self) -> None:
        """Settle as cancelled: the coroutine never started, or its loop is gone."""
        self._error = CancelledError()
        self._settled = True
        self._lock.release()

    def cancel(self) -> None:
        """Cancel the coroutine, or keep it from starting; call on the portal thread."""
        self._cancelled = True
        if self._entered and self._task is not None:
            self._task.cancel()

    def done(self) -> bool:
        """Whether the coroutine is done (or will never run)."""
        return self._settled

    def wait(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for the coroutine to be done."""
        if not self._settled and self._lock.acquire(timeout=timeout):
            self._lock.release()

    def result(self) -> T:
        """Wait for the coroutine; return its result or raise its exception.

        On the main thread the wait is sliced, so that Ctrl-C raises
        ``KeyboardInterrupt`` within ``_SIGNAL_POLL`` even when the kernel delivered
        SIGINT to another thread, whose wake-up the main thread never sees.
        """
        lock = self._lock
        if threading.current_thread() is threading.main_thread():
            while not lock.acquire(timeout=_SIGNAL_POLL):
                pass  # the loop's jump back runs any pending signal handler
        else:
            lock.acquire()
        lock.release()
        if self._error is not None:
            raise self._error
        value: T = self._value
        return value


class _Pump(Generic[T]):
    """One async iterator, advanced by its own task on the portal, handed out in batches.

    The iterator always runs in the same task (so cancel scopes inside it stay valid) and
    only while a sync caller wants items, so at most one item is fetched ahead.
    """

    def __init__(self, make_iter: Callable[[], AsyncIterable[T]]) -> None:
        self._make_iter = make_iter
        self._items: deque[T] = deque()
        self._demand = 0
        self._done = False
        self._error: BaseException | None = None
        self._stopping = False
        self._scope: anyio.CancelScope | None = None
        self._pump_wakeup: anyio.Event | None = None
        self._taker_wakeup: anyio.Event | None = None
        self.future: _Call[None] | None = None

    async def run(self) -> None:
        with anyio.CancelScope() as scope:
            self._scope = scope
            if self._stopping:
                scope.cancel()
            try:
                await self._feed()
            except (Exception, SystemExit, KeyboardInterrupt) as exc:  # for take() to raise
                self._error = exc
            finally:
                self._done = True
                _wake(self._taker_wakeup)

    def cancel(self) -> None:
        """Stop the task and close the iterator; call on the portal thread."""
        self._stopping = True
        if self._scope is not None:
            self._scope.cancel()

    async def take(self, batch: int) -> tuple[list[T], bool]:
        """Wait for one item, collect those ready right after it; say if the stream ended."""
        self._demand = batch
        _wake(self._pump_wakeup)
        try:
            await self._await_first()
            await self._collect_ready(batch)
        finally:
            self._demand = 0
        return self._drain(batch)

    async def _feed(self) -> None:
        iterator = aiter(self._make_iter())
        try:
            while True:
                await self._await_demand()
                try:
                    item = await anext(iterator)
                except StopAsyncIteration:
                    return
                self._items.append(item)
                _wake(self._taker_wakeup)
        finally:
            await _aclose(iterator)

    async def _await_demand(self) -> None:
        while len(self._items) >= self._demand:
            self._pump_wakeup = anyio.Event()
            await self._pump_wakeup.wait()

    async def _await_first(self) -> None:
        while not self._items and not self._done:
            self._taker_wakeup = anyio.Event()
            await self._taker_wakeup.wait()

    async def _collect_ready(self, batch: int) -> None:
        deadline = time.monotonic() + _BATCH_BUDGET
        idle = 0
        while len(self._items) < batch and not self._done and idle < _IDLE_TURNS:
            if time.monotonic() >= deadline:
                return
            before = len(self._items)
            await anyio.lowlevel.checkpoint()
            idle = 0 if len(self._items) > before else idle + 1

    def _drain(self, batch: int) -> tuple[list[T], bool]:
        items = [self._items.popleft() for _ in range(min(batch, len(self._items)))]
        if not items and self._error is not None:
            raise self._error
        if not items and self._stopping:  # stopped by a close() of another thread: no end
            raise ClientStateError(_CLOSED_DURING_CALL)
        finished = self._done and not self._items and self._error is None
        return items, finished


def _wake(event: anyio.Event | None) -> None:
    if event is not None:
        event.set()


async def _aclose(iterator: AsyncIterator[Any]) -> None:
    aclose = getattr(iterator, "aclose", None)
    if aclose is not None:
        with anyio.move_on_after(_CANCEL_GRACE, shield=True):
            await aclose()


_CLOSING: set[asyncio.Task[None]] = set()
#: How many hops a driven generator whose portal is gone may still try while closing.
_ORPHAN_HOPS = 16


def _close_orphan(generator: AsyncGenerator[Any, None]) -> None:
    """Close a driven generator whose portal is gone: each hop of its cleanup fails.

    Left to the garbage collector, its cleanup's first hop would surface as "async
    generator ignored GeneratorExit".
    """
    step = generator.aclose()
    try:
        step.send(None)
        for _ in range(_ORPHAN_HOPS):
            step.throw(ClientStateError(_CLOSED))
    except (StopIteration, Exception):  # closed, or its cleanup failed: nobody to tell
        return
    step.close()


async def _aclose_driven(generator: AsyncGenerator[Any, None]) -> None:
    """Close a driven generator from the portal's own loop: its hops are awaited in place."""
    step = generator.aclose()
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            hop = step.send(value) if error is None else step.throw(error)
        except (StopIteration, Exception):  # closed; a failed cleanup has no one to tell
            return
        try:
            value, error = await hop.fn(), None
        except Exception as exc:
            value, error = None, exc


def _result(call: _Call[T]) -> T:
    try:
        return call.result()
    except CancelledError as exc:  # the portal stopped under the call
        raise ClientStateError(_CLOSED_DURING_CALL) from exc


class Portal:
    """An event loop on its own thread that blocking code runs coroutines on.

    The thread starts on first use and stops on :meth:`close`. Calls from any thread but
    the portal's own are safe; after ``os.fork()`` the child starts its own thread.

    Example::

        portal = Portal()
        client = portal.enter_async_context(AsyncClient())
        flow = portal.call(client.flows.get, "flow_abc123")
        for run in portal.iterate(lambda: client.runs.list().all_items()):
            ...
        portal.close()
    """

    def __init__(self) -> None:
        self._closed = False
        self._reset()
        _PORTALS.add(self)

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._portal: BlockingPortal | None = None
        self._runner: AbstractContextManager[BlockingPortal] | None = None
        self._thread_id: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._inbox: deque[_Call[Any]] = deque()
        self._inbox_lock = threading.Lock()
        self._wake_pending = False
        self._asleep = True  # whether the loop may be waiting (True without a watch)
        self._wake_fd: int | None = None  # an eventfd the loop watches (Linux), else None
        self._inbox_closed = False
        self._running: set[_Call[Any]] = set()  # started and not settled; the loop's own
        self._contexts = ExitStack()
        self._pumps: set[_Pump[Any]] = set()
        # driven generators not closed yet (their drive() may be suspended at a yield)
        self._driven: weakref.WeakSet[AsyncGenerator[Any, None]] = weakref.WeakSet()
        # those a thread is stepping right now (in a hop, or computing between hops)
        self._stepping: set[AsyncGenerator[Any, None]] = set()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def call(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``await fn(*args, **kwargs)`` on the portal and return its result.

        Exceptions come back with their own types. Ctrl-C cancels the coroutine, waits
        briefly for its cleanup, then raises ``KeyboardInterrupt``.

        Raises:
            ClientStateError: The portal is closed (also while the call runs), or this is
                the portal's own thread.
        """
        return self._call(self._started(), functools.partial(fn, *args, **kwargs))

    def iterate(
        self, make_iter: Callable[[], AsyncIterable[T]], *, batch: int = 256
    ) -> Generator[T, None, None]:
        """Iterate an async iterator from blocking code, many items per round trip.

        ``make_iter`` is called on the portal. Each round trip waits for one item, then
        takes up to ``batch`` items that are ready right after it, so fast streams move
        in batches and slow ones deliver every item as it comes. ``break``, ``close()``,
        garbage collection and Ctrl-C close the async iterator on the portal.

        Args:
            make_iter: Returns the async iterator (or iterable) to drain.
            batch: The most items one round trip brings back.

        Raises:
            ValueError: ``batch`` is less than 1.
            ClientStateError: The portal is closed, or this is the portal's own thread.
        """
        if batch < 1:
            raise ValueError(f"batch must be at least 1, got {batch}")
        return self._iterate(make_iter, batch)

    def drive(self, make: Callable[[Awaiter], AsyncGenerator[T, None]]) -> Generator[T, None, None]:
        """Run an async generator in the calling thread; only its I/O crosses to the portal.

        ``make(hop)`` returns the generator; it must await nothing but ``hop(fn)`` (and
        coroutines that do the same), each of which runs ``await fn()`` on the portal. So
        what the generator computes (parsing, building objects) stays in the caller's
        thread and one round trip costs one hop, where :meth:`iterate` sends every item
        across. Ctrl-C in a hop cancels it and is raised inside the generator, whose
        cleanup runs (and hops) before ``KeyboardInterrupt`` reaches the caller;
        ``break``, ``close()`` and garbage collection close the generator likewise.

        Raises:
            ClientStateError: The portal is closed, or this is the portal's own thread.
        """
        portal = self._started()
        generator = make(Hop)
        self._driven.add(generator)
        try:
            while True:
                self._check_current(portal)
                self._stepping.add(generator)
                try:
                    item: T = self._step(portal, functools.partial(generator.asend, None))
                except StopAsyncIteration:
                    return
                except ClientStateError:
                    raise
                except Exception as exc:  # what a close under the step left it to raise
                    if self._closed:
                        raise ClientStateError(_CLOSED_DURING_CALL) from exc
                    raise
                finally:
                    self._stepping.discard(generator)
                yield item
        finally:
            self._close_driven(portal, generator)
            self._driven.discard(generator)

    def _step(self, portal: BlockingPortal, start: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """Advance a driven generator by one ``asend``/``aclose``, running its hops."""
        hooks = sys.get_asyncgen_hooks()
        # A loop running in this thread (Jupyter's) must not adopt the generators made
        # here (a generator takes the hooks at its first asend, aclose or athrow): its
        # finalizer would step them as tasks, where a Hop is no awaitable.
        sys.set_asyncgen_hooks(firstiter=None, finalizer=None)
        try:
            step = start()
            value: Any = None
            error: BaseException | None = None
            while True:
                try:
                    hop = step.send(value) if error is None else step.throw(error)
                except StopIteration as done:
                    result: T = done.value
                    return result
                try:
                    if type(hop) is not Hop:
                        raise TypeError(f"a driven generator awaited {hop!r}; only a Hop may")
                    value, error = self._call(portal, hop.fn), None
                except BaseException as exc:  # its own error (or Ctrl-C), raised where it awaited
                    value, error = None, exc
        finally:
            sys.set_asyncgen_hooks(hooks.firstiter, hooks.finalizer)

    def _close_open_driven(
        self, portal: BlockingPortal, generator: AsyncGenerator[Any, None]
    ) -> None:
        """Close a driven generator left open (its ``drive()`` suspended at a ``yield``,
        say after Ctrl-C struck outside a hop) through its hops, while the loop still
        runs: its connection is left on the loop, in order. Left to the loop's shutdown,
        the generators inside (a stream and the request under it) were closed at once,
        in any order, and an inner one closed first made the outer one fail ("generator
        didn't stop after athrow()"). One that its own thread is stepping right now is
        left to it (``ag_running`` does not say so: it is false while the generator
        awaits a hop), and :meth:`_shutdown` gives it time to end its step."""
        if generator in self._stepping:
            return
        with contextlib.suppress(Exception):
            self._step(portal, generator.aclose)

    def _close_driven(self, portal: BlockingPortal, generator: AsyncGenerator[Any, None]) -> None:
        if self._portal is not portal:  # closed (its loop took the connections) or forked
            _close_orphan(generator)
            return
        if threading.get_ident() == self._thread_id:  # collected on the portal thread
            closing = asyncio.ensure_future(_aclose_driven(generator))
            _CLOSING.add(closing)  # the loop holds tasks weakly
            closing.add_done_callback(_CLOSING.discard)
            return
        self._step(portal, generator.aclose)

    def enter_async_context(self, cm: AbstractAsyncContextManager[T]) -> T:
        """Enter ``cm`` on the portal and keep it open until :meth:`close` exits it.

        Contexts are exited last in, first out, in one task each (so cancel scopes and
        task groups inside them stay valid).
        """
        portal = self._started()
        return self._contexts.enter_context(portal.wrap_async_context_manager(cm))

    def close(self, on_close: Callable[[], Awaitable[object]] | None = None) -> None:
        """Close open iterators, await ``on_close()``, exit the contexts, stop the thread.

        Idempotent: only the first call does anything. Any later use of the portal raises
        :class:`~vi_flow.ClientStateError`.

        Raises:
            ClientStateError: Called from the portal's own thread.
        """
        with self._lock:
            if self._closed:
                return
            self._check_thread()
            if self._portal is None and on_close is None:
                self._closed = True
                return
            portal = self._start_locked()
            runner = self._runner
            self._closed = True
            self._portal = None
        try:
            self._shutdown(portal, on_close)
        finally:
            try:
                _stop(portal, runner)
            finally:  # even after a Ctrl-C in the stop: nothing else would close them
                self._thread_id = None
                self._close_inbox()
                self._cancel_inbox()

    def _shutdown(
        self, portal: BlockingPortal, on_close: Callable[[], Awaitable[object]] | None
    ) -> None:
        with self._contexts:  # exits the async contexts last
            for generator in list(self._driven):
                self._close_open_driven(portal, generator)
            for pump in list(self._pumps):
                self._cancel_pump(portal, pump)
            self._end_steps(portal)
            if on_close is not None:
                self._call(portal, on_close)

    def _end_steps(self, portal: BlockingPortal) -> None:
        """End the steps other threads are taking in their driven generators: their hops
        are cancelled (each raises ``ClientStateError`` in its generator), and they get a
        moment to run their cleanup hops while the loop and the connections are still
        there, so that a stream and the request under it close in order."""
        if not self._stepping:
            return

        def on_loop() -> None:
            self._drain_inbox()  # a hop queued, not started yet, is cancelled too
            for call in list(self._running):
                call.cancel()

        with contextlib.suppress(RuntimeError):  # the loop stopped: nothing runs any more
            portal.call(on_loop)
        deadline = time.monotonic() + _CANCEL_GRACE
        while self._stepping and time.monotonic() < deadline:
            time.sleep(0.005)

    def _call(self, portal: BlockingPortal, fn: Callable[[], Awaitable[T]]) -> T:
        call = _Call(fn)
        try:
            self._submit(call)
            return _result(call)
        except KeyboardInterrupt:
            self._abandon(portal, call)
            raise

    def _abandon(self, portal: BlockingPortal, call: _Call[Any]) -> None:
        """Cancel ``call`` after Ctrl-C and give its coroutine a moment to clean up."""
        self._cancel_and_wait(portal, call.cancel, call)

    def _cancel_and_wait(
        self, portal: BlockingPortal, cancel: Callable[[], None], call: _Call[Any] | None
    ) -> None:
        """Run ``cancel`` on the loop, then give ``call`` a moment to finish its cleanup.

        On the loop, the inbox is drained after ``cancel``: a cancelled call still queued
        settles, and what a Ctrl-C inside :meth:`_submit` left queued with no wake-up
        coming starts. The wait is best effort (a cleanup that hangs must not keep the
        caller waiting for ever) and skipped for a call that never started: settled just
        now, or never queued.
        """

        def on_loop() -> None:
            cancel()
            self._drain_inbox()

        try:
            portal.call(on_loop)
        except RuntimeError:  # the portal stopped, and with it the coroutine
            return
        if call is not None and call.started:
            call.wait(_CANCEL_GRACE)

    def _submit(self, call: _Call[Any]) -> None:
        """Have the loop thread start ``call``, which then carries its outcome.

        One hop per call (``start_task_soon`` waits for the task to be spawned: a second
        round trip), and one wake-up of the loop for every burst of calls: calls from
        many threads queue in an inbox the loop drains at once. Tasks still running when
        the portal stops are cancelled with its loop, and their callers' replies too.
        On Linux the wake-up is one write to an eventfd: a quarter of the cost of
        ``call_soon_threadsafe``'s socket send, and one read instead of two on the loop;
        and it is written only while the loop sleeps (:class:`_WatchedSelector`): a loop
        busy with other calls drains the inbox before it would wait again.
        """
        loop = self._loop
        if loop is None:
            raise ClientStateError(_CLOSED)
        with self._inbox_lock:
            if self._inbox_closed or loop.is_closed():
                raise ClientStateError(_CLOSED)
            self._inbox.append(call)
            if self._wake_pending or not self._asleep:
                return
            self._wake_pending = True
            if self._wake_fd is not None:  # written under the lock: never after its close
                os.eventfd_write(self._wake_fd, 1)
                return
        try:
            loop.call_soon_threadsafe(self._drain_inbox)
        except RuntimeError as exc:  # the portal stopped: closed by another thread
            self._cancel_inbox()
            raise ClientStateError(_CLOSED) from exc

    def _before_wait(self) -> bool:
        """Called by the loop before it waits for I/O: whether calls are queued (then it
        only polls, and drains them); else it is marked asleep, to be woken by the next."""
        with self._inbox_lock:
            if self._inbox:
                return True
            self._asleep = True
            return False

    def _after_wait(self, loop: asyncio.AbstractEventLoop) -> None:
        """Called by the loop once its wait returns: calls queued meanwhile, with no
        wake-up written for them, are drained in this turn."""
        self._asleep = False
        if self._inbox:
            loop.call_soon(self._drain_inbox)

    def _on_wake(self, fd: int) -> None:
        with contextlib.suppress(BlockingIOError):  # already read by an earlier turn
            os.eventfd_read(fd)
        self._drain_inbox()

    def _close_inbox(self) -> None:
        """Refuse further calls and close the wake-up fd (the loop has stopped)."""
        with self._inbox_lock:
            self._inbox_closed = True
            fd, self._wake_fd = self._wake_fd, None
        if fd is not None:
            os.close(fd)

    def _drain_inbox(self) -> None:
        """Start every queued call (on the loop thread)."""
        with self._inbox_lock:
            items, self._wake_pending = list(self._inbox), False
            self._inbox.clear()
        for call in items:
            call.start(self._running)

    def _cancel_inbox(self) -> None:
        """Settle the calls the loop never started or never finished (it stopped first)."""
        with self._inbox_lock:
            items, self._wake_pending = list(self._inbox), False
            self._inbox.clear()
            if self._loop is not None and self._loop.is_closed():
                items += self._running
                self._running = set()
        for call in items:
            call.settle_cancelled()

    def _iterate(
        self, make_iter: Callable[[], AsyncIterable[T]], batch: int
    ) -> Generator[T, None, None]:
        portal = self._started()
        pump = _Pump(make_iter)
        self._pumps.add(pump)
        try:
            pump.future = _Call(pump.run)
            self._submit(pump.future)
            while True:
                self._check_current(portal)
                items, finished = self._call(portal, functools.partial(pump.take, batch))
                for item in items:
                    if self._portal is not portal:  # closed meanwhile: stop at once
                        self._check_current(portal)
                    yield item
                if finished:
                    return
        finally:
            self._stop_pump(portal, pump)

    def _check_current(self, portal: BlockingPortal) -> None:
        self._check_thread()
        if self._portal is not portal:
            raise ClientStateError(_CLOSED if self._closed else _STALE_ITERATOR)

    def _stop_pump(self, portal: BlockingPortal, pump: _Pump[Any]) -> None:
        if self._portal is not portal:  # closed (which closed the pump) or forked
            return
        if threading.get_ident() == self._thread_id:  # collected on the portal thread
            pump.cancel()
            self._pumps.discard(pump)
            return
        self._cancel_pump(portal, pump)

    def _cancel_pump(self, portal: BlockingPortal, pump: _Pump[Any]) -> None:
        self._pumps.discard(pump)
        future = pump.future
        if future is not None and future.done():
            return
        # also when Ctrl-C came before the future did
        self._cancel_and_wait(portal, pump.cancel, future)

    def _started(self) -> BlockingPortal:
        self._check_thread()
        portal = self._portal
        if portal is not None:
            return portal
        with self._lock:
            if self._closed:
                raise ClientStateError(_CLOSED)
            return self._start_locked()

    def _start_locked(self) -> BlockingPortal:
        """Start the loop's thread, unless it runs.

        SIGINT stays blocked in this thread until the portal is started and recorded (a
        few milliseconds). Blocked while the loop's thread starts, the thread keeps it
        blocked: the kernel may hand a Ctrl-C to any thread that does not block it, and
        Python runs its handler in the main thread only, so one handed to the loop's
        thread would interrupt nothing the main thread waits in (the portal's own waits
        poll for it, :data:`_SIGNAL_POLL`; a blocking read of the caller's, a prompt,
        does not); blocked there, it goes to a thread of the program's own. And a Ctrl-C
        that strikes meanwhile, whichever thread takes it, is raised once this portal is
        recorded and can be closed (:class:`SigintDeferred`): raised earlier, it left a
        running loop nobody knew of, and the process hung until a second Ctrl-C.
        """
        if self._portal is None:
            options = {"loop_factory": self._new_loop} if hasattr(os, "eventfd") else {}
            runner = start_blocking_portal("asyncio", options, name="vi-flow-portal")
            with SigintBlocked(), SigintDeferred():
                portal = runner.__enter__()
                try:
                    self._thread_id = portal.call(threading.get_ident)
                    self._loop = portal.call(asyncio.get_running_loop)
                except BaseException:  # a Ctrl-C another thread took: nobody has it yet
                    _stop(portal, runner)
                    raise
                self._runner, self._portal = runner, portal  # last: other threads use it
                if hasattr(os, "eventfd"):
                    fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
                    portal.call(self._loop.add_reader, fd, self._on_wake, fd)
                    self._wake_fd = fd
        return self._portal

    def _new_loop(self) -> asyncio.AbstractEventLoop:
        selector = _WatchedSelector(self)
        loop = asyncio.SelectorEventLoop(selector)
        selector.loop = loop
        return loop

    def _check_thread(self) -> None:
        if self._thread_id is not None and threading.get_ident() == self._thread_id:
            raise ClientStateError(_OWN_THREAD)

    def _after_fork_in_child(self) -> None:
        # The parent's loop thread does not exist here: start afresh. Its runner is kept
        # alive on purpose, since finalizing it would wait for that thread for ever.
        _FORSAKEN.append((self._runner, self._contexts))
        if self._wake_fd is not None:  # this process's copy; the parent keeps its own
            os.close(self._wake_fd)
        self._reset()


class _WatchedSelector(selectors.DefaultSelector):
    """The selector of a portal's loop (Linux): it tells the portal when the loop is about
    to wait and when it wakes, so that calls from other threads write a wake-up only
    while it sleeps. From many threads the loop is seldom asleep: most calls then cost
    neither a write nor a turn of the loop for the wake-up, and no thread gives up the
    GIL to write it.
    """

    def __init__(self, portal: Portal) -> None:
        super().__init__()
        self._portal = portal
        self.loop: asyncio.AbstractEventLoop | None = None

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if self._portal._before_wait():
            timeout = 0
        try:
            return super().select(timeout)
        finally:
            if self.loop is not None:
                self._portal._after_wait(self.loop)


def _stop(portal: BlockingPortal, runner: AbstractContextManager[BlockingPortal] | None) -> None:
    """Cancel what still runs on the portal, then stop and join its thread."""
    try:
        portal.call(portal.stop, True)
    finally:
        if runner is not None:
            runner.__exit__(None, None, None)


_PORTALS: weakref.WeakSet[Portal] = weakref.WeakSet()
_FORSAKEN: list[object] = []  # what a forked child inherited from its parent's portals


def _reset_after_fork() -> None:
    for portal in list(_PORTALS):
        portal._after_fork_in_child()


def _close_at_exit() -> None:
    # Closing before the interpreter freezes daemon threads exits the async contexts
    # cleanly and keeps late iterator finalizers from waiting on a dead loop.
    for portal in list(_PORTALS):
        with contextlib.suppress(Exception):
            portal.close()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)
atexit.register(_close_at_exit)
