"""orjson's compiled module is loaded with Ctrl-C held off.

A SIGINT that strikes while orjson's extension module initializes crashes the process
with a segfault (orjson 3.x: its init runs Python code, and a ``KeyboardInterrupt``
raised there is not handled; measured: a third of the Ctrl-Cs sent during
``import orjson``). Every vi_flow module that parses JSON imports orjson, and the CLI
imports them on a command's first use, a few hundred milliseconds in, where a user's
Ctrl-C lands. :func:`install` puts a finder first on ``sys.meta_path`` that loads that
one extension module with SIGINT blocked in the importing thread: a Ctrl-C meanwhile
waits the few milliseconds of the load, then raises ``KeyboardInterrupt`` as usual.
:class:`SigintBlocked` is that block, shared with the sync portal's start.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Sequence
from importlib.machinery import ExtensionFileLoader, ModuleSpec
from types import ModuleType
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from importlib.abc import Loader

__all__ = ["SigintBlocked", "SigintDeferred", "install"]

_HELD = frozenset({"orjson.orjson", "orjson"})  # the extension (and its older layout)


class _HeldOffFinder:
    """Finds what the other finders find; wraps the loader of a held module's extension."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if fullname not in _HELD:
            return None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            if finder is self or find is None:
                continue
            spec: ModuleSpec | None = find(fullname, path, target)
            if spec is not None:
                if isinstance(spec.loader, ExtensionFileLoader):
                    spec.loader = cast("Loader", _HeldOffLoader(spec.loader))
                return spec
        return None


class _HeldOffLoader:
    """An extension module's loader, run with SIGINT blocked."""

    def __init__(self, loader: ExtensionFileLoader) -> None:
        self._loader = loader

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        with SigintBlocked():
            return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        with SigintBlocked():
            self._loader.exec_module(module)

    def __getattr__(self, name: str) -> Any:  # is_package, get_filename...
        return getattr(self._loader, name)


class SigintBlocked:
    """Block SIGINT in this thread meanwhile; a Ctrl-C that comes is raised on leaving.

    A thread started meanwhile keeps it blocked. No-op where there are no signal masks
    (Windows). A class, not :func:`contextlib.contextmanager`: importing ``vi_flow``
    does not pay for ``contextlib``.
    """

    __slots__ = ("_before",)

    def __enter__(self) -> None:
        self._before = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT}) if _MASKS else None

    def __exit__(self, *exc: object) -> None:
        if self._before is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, self._before)


_MASKS = hasattr(signal, "pthread_sigmask")


class SigintDeferred:
    """In the main thread, take a Ctrl-C that comes meanwhile as a note, and act on it
    (``KeyboardInterrupt``, or the program's own handler) on leaving.

    :class:`SigintBlocked` keeps the kernel from handing SIGINT to this thread, but a
    thread of the program's own that does not block it may take it, and Python then
    raises ``KeyboardInterrupt`` in the main thread all the same, wherever it is (QA AD:
    inside anyio's portal start, whose clean-up then joined a loop nobody stopped, for
    ever). Elsewhere than in the main thread, a no-op: no ``KeyboardInterrupt`` goes there.
    """

    __slots__ = ("_before", "_came")

    def __enter__(self) -> None:
        self._before: Any = None
        self._came: tuple[int, Any] | None = None
        try:
            self._before = signal.signal(signal.SIGINT, self._note)
        except ValueError:  # not the main thread (or no signals here)
            self._before = None

    def _note(self, signum: int, frame: Any) -> None:
        self._came = (signum, frame)

    def __exit__(self, *exc: object) -> None:
        if self._before is None:
            return
        signal.signal(signal.SIGINT, self._before)
        if self._came is not None and callable(self._before):
            self._before(*self._came)  # default_int_handler: KeyboardInterrupt


def install() -> None:
    """Hold Ctrl-C off while orjson's extension loads (once; a no-op without signal
    masks, on Windows, or when orjson is loaded already)."""
    if not _MASKS or "orjson" in sys.modules:
        return
    if not any(isinstance(finder, _HeldOffFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _HeldOffFinder())
