"""The ``vi-flow`` command line: click commands with rich output over the sync client.

Only :mod:`click` loads when the CLI starts; every command group lives in its own module
and is imported when it runs (``vi-flow --help`` needs none of them), so the CLI starts
fast. :func:`main` is the console script.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

__all__ = ["main"]


def main(argv: list[str] | None = None) -> None:
    """Run the ``vi-flow`` command line (the console script entry point).

    Args:
        argv: The arguments; ``sys.argv[1:]`` when ``None``.
    """
    global _struck
    struck = _note_ctrl_c()
    try:
        from ._root import cli

        cli.main(args=argv, prog_name="vi-flow")
    except KeyboardInterrupt:  # while importing, before click runs
        print("\ninterrupted", file=sys.stderr)
        raise SystemExit(_EXIT_INTERRUPTED) from None
    except SystemExit as exc:
        # Outside a command's own run (parsing the command line, closing the client at
        # its end), click answers Ctrl-C with "Aborted!" and exit 1: exit 130 as documented.
        if struck and exc.code == 1:
            raise SystemExit(_EXIT_INTERRUPTED) from None
        raise
    except Exception:
        # Ctrl-C cut an import short, which CPython may report as another error (a
        # TypeError "expected a message argument"): it is the interruption.
        if struck:
            print("\ninterrupted", file=sys.stderr)
            raise SystemExit(_EXIT_INTERRUPTED) from None
        raise
    finally:
        if struck is not None:
            # The process's own command line ends with the process: Ctrl-C while Python
            # shuts down ends it at once, without a traceback of where shutdown was.
            end = _exit_interrupted if argv is None else signal.default_int_handler
            signal.signal(signal.SIGINT, end)
            hook = sys.unraisablehook
            if isinstance(hook, functools.partial) and hook.func is _unraisable:
                sys.unraisablehook = hook.args[0]  # ours: put back what was there
            _struck = None


def interrupted() -> bool:
    """Whether Ctrl-C came during this :func:`main`: whatever fails after it (an import it
    cut short may fail with any error) is its doing."""
    return bool(_struck)


_EXIT_INTERRUPTED = 130  # _failures.EXIT_INTERRUPTED, without importing it before click


def _note_ctrl_c() -> list[bool] | None:
    """Make Ctrl-C also note that it came (in the list returned, empty until then); it
    still raises ``KeyboardInterrupt``. ``None`` where Ctrl-C is not Python's default
    (ignored, or handled by a program that runs the CLI in its own thread)."""
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        return None
    global _struck
    struck: list[bool] = []

    def noted(signum: int, frame: FrameType | None) -> None:
        struck.append(True)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, noted)
    sys.unraisablehook = functools.partial(_unraisable, sys.unraisablehook)
    _struck = struck
    return struck


_AGAIN = 0.05  # seconds after an unraisable Ctrl-C that it strikes again


def _unraisable(then: Callable[[Any], object], unraisable: Any) -> None:
    """Ctrl-C that struck inside code whose errors Python cannot raise (a weakref callback
    of the import system, a ``__del__``) printed "Exception ignored in" and a traceback,
    and the command went on as if nothing came: it is raised again, where it can be."""
    if isinstance(unraisable.exc_value, KeyboardInterrupt):
        # Ctrl-C again, to the main thread (a blocking call there wakes), a moment later:
        # sent from here, it would strike inside this hook.
        main = threading.main_thread().ident
        again = threading.Timer(_AGAIN, signal.pthread_kill, (main, signal.SIGINT))
        again.daemon = True
        again.start()
        return
    then(unraisable)


_struck: list[bool] | None = None  # what _note_ctrl_c noted, during main


def _exit_interrupted(signum: int, frame: FrameType | None) -> None:
    with contextlib.suppress(OSError, ValueError, RuntimeError):  # closed, or flushing
        sys.stdout.flush()
    os._exit(_EXIT_INTERRUPTED)
