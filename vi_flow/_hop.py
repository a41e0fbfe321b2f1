"""Awaiting I/O where it lives: the seam between a generator and the loop that serves it.

An async generator written against an :class:`Awaiter` awaits its I/O as ``await
hop(fn)``. On its own loop (``hop=now``) that is ``await fn()`` in place; driven from
another thread by :meth:`Portal.drive <vi_flow._portal.Portal.drive>` (``hop=Hop``) each
``fn`` runs on the portal's loop while the rest of the generator runs in the caller's
thread.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator
from typing import Any, Generic, Protocol, TypeVar

__all__ = ["Awaiter", "Hop", "now"]

T = TypeVar("T")


class Awaiter(Protocol):
    """How a generator given to :meth:`Portal.drive` awaits its I/O: ``await hop(fn)``
    runs ``await fn()`` where the I/O lives (the portal's loop) and returns its result."""

    def __call__(self, fn: Callable[[], Awaitable[T]], /) -> Awaitable[T]:
        """Await ``fn()`` there; return its result or raise its exception here."""
        ...


class Hop(Generic[T]):
    """``await Hop(fn)``: hand ``fn`` to the driver, which runs it on the portal.

    Awaited in a generator that :meth:`Portal.drive` steps in the caller's thread, it
    suspends the generator with itself as the value; the driver sends back
    ``await fn()``'s result, or throws in its exception.
    """

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[], Awaitable[T]]) -> None:
        self.fn = fn

    def __await__(self) -> Generator[Any, Any, T]:
        value: T = yield self
        return value


def now(fn: Callable[[], Awaitable[T]]) -> Awaitable[T]:
    """The :class:`Awaiter` of code already on its loop: ``fn()`` is awaited in place."""
    return fn()
