"""``forward``: offer a part's method on the object that holds the part, typed and documented.

The clients compose their parts (``client.compute``, ``client.platform``) instead of
inheriting them, yet the seeds call those methods on the client itself
(``client.run(...)``). ``run = forward("compute", AsyncCompute.run)`` in the client's
class body gives ``client.run`` as the part's bound method: the same signature for type
checkers and IDEs, the same docstring, and no logic written twice.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Concatenate, Generic, TypeVar, overload

from typing_extensions import ParamSpec

__all__ = ["forward"]

P = ParamSpec("P")
R = TypeVar("R")


class forward(Generic[P, R]):
    """A method of the part in attribute ``part``, offered on the holder.

    Args:
        part: The holder's attribute that holds the part (``"compute"``).
        method: The part's method (``AsyncCompute.run``).
    """

    def __init__(self, part: str, method: Callable[Concatenate[Any, P], R]) -> None:
        self._part = part
        self._name = method.__name__
        self.__doc__ = method.__doc__
        self.__wrapped__: Callable[Concatenate[Any, P], R] = method

    @overload
    def __get__(self, holder: None, owner: type[Any]) -> Callable[Concatenate[Any, P], R]: ...

    @overload
    def __get__(self, holder: object, owner: type[Any]) -> Callable[P, R]: ...

    def __get__(
        self, holder: object, owner: type[Any]
    ) -> Callable[Concatenate[Any, P], R] | Callable[P, R]:
        if holder is None:  # on the class: the part's function, as a method would be, so
            return self.__wrapped__  # inspect.signature, help() and pydoc read it
        method: Callable[P, R] = getattr(getattr(holder, self._part), self._name)
        return method

    def __repr__(self) -> str:
        return f"forward({self._part!r}, {self._name})"
