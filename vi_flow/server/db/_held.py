"""Log lines about a transaction's changes, written once the transaction commits.

A change logged inside a transaction (``run X: Pending -> Running``) is only true once
the transaction commits: :func:`log_when_committed` holds the line until then, and a
rollback drops it. The store (:meth:`~vi_flow.server.store.Store.run`) writes the held
lines on the event loop when the result comes back, so the database thread never waits
on a log handler's write (a write there released the GIL mid-transaction, and taking it
back from a busy loop cost a run of 32 at once about an eighth of its time).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["Held", "hold", "log_when_committed", "release"]

T = TypeVar("T")

Held = list[tuple[logging.Logger, str, tuple[Any, ...]]]
"""The INFO lines held for one transaction: logger, message, arguments."""


class _State(threading.local):
    held: Held | None = None


_state = _State()


def log_when_committed(logger: logging.Logger, message: str, *args: Any) -> None:
    """Log an INFO line once the current transaction commits (at once outside one)."""
    held = _state.held
    if held is None:
        logger.info(message, *args)
    elif logger.isEnabledFor(logging.INFO):
        held.append((logger, message, args))


def hold(held: Held, fn: Callable[..., T], *args: Any) -> T:
    """Call ``fn(*args)`` with this thread's lines going to ``held`` (emptied first);
    ``held`` is left empty when ``fn`` raises."""
    held.clear()
    _state.held = held
    try:
        return fn(*args)
    except BaseException:
        held.clear()
        raise
    finally:
        _state.held = None


def release(held: Held) -> None:
    """Write the lines held for a transaction that committed (and forget them)."""
    lines, held[:] = held[:], []
    for logger, message, args in lines:
        logger.info(message, *args)
