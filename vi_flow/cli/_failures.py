"""Exit codes and one-line error reports for everything a command can raise.

The exit codes are part of the CLI's interface (documented in ``docs/cli.md``):

| code | meaning |
|---|---|
| 0 | success |
| 1 | failure (a failed run or task, a rejected request) |
| 2 | usage: unknown command or option, bad argument (also one the server answers 400 or 422), bad spec file |
| 3 | authentication: the API key is missing, wrong, or may not do this |
| 4 | not found |
| 5 | conflict (409) or stale etag (412) |
| 6 | transient: connection refused, timeout, 429 or 5xx - worth retrying |
| 130 | interrupted (Ctrl-C) |

An error prints ``error: CODE: message`` (the server's code and message) and, where one
helps, a ``hint:`` line; ``--debug`` prints the traceback as well. With ``--json`` (the
global one or the command's) it prints ``{"error": {"code", "message", "hint",
"requestId", "exitCode"}}`` on stderr instead, so a script reading JSON gets JSON.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

import click

from . import interrupted

__all__ = [
    "ARGV_JSON",
    "EXIT_AUTH",
    "EXIT_CONFLICT",
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_TRANSIENT",
    "EXIT_USAGE",
    "JSON_WANTED",
    "CommandFailed",
    "JsonUsageError",
    "exit_code_for",
    "json_wanted",
    "run_guarded",
]

T = TypeVar("T")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_AUTH = 3
EXIT_NOT_FOUND = 4
EXIT_CONFLICT = 5
EXIT_TRANSIENT = 6
EXIT_INTERRUPTED = 130

# The ``code`` of a JSON error that no server code names (a failed run, a timeout, a
# refused connection): the kind its exit code says, so a script never reads null.
_CODE_OF_EXIT = {
    EXIT_FAILURE: "FAILED",
    EXIT_USAGE: "USAGE_ERROR",
    EXIT_AUTH: "UNAUTHENTICATED",
    EXIT_NOT_FOUND: "NOT_FOUND",
    EXIT_CONFLICT: "CONFLICT",
    EXIT_TRANSIENT: "UNAVAILABLE",
    EXIT_INTERRUPTED: "INTERRUPTED",
}


class CommandFailed(click.ClickException):
    """A command failed in a way it explains itself: one line, an exit code, maybe a hint."""

    def __init__(
        self,
        message: str,
        *,
        exit_code: int = EXIT_FAILURE,
        hint: str | None = None,
        code: str | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code  # the JSON error's code; none: the kind of the exit code
        self.request_id = request_id  # of the server's refusal, when it made one
        # click declares exit_code as a class variable (a ClassVar from click 8.2); each
        # failure here carries its own, which click reads from the instance.
        setattr(self, "exit_code", exit_code)  # noqa: B010
        self.hint = hint
        # Whether the invocation asked for JSON, noted while its context is current: click
        # shows the error after the context is gone (see as_json_error).
        self.json: bool | None = None

    def show(self, file: Any = None) -> None:
        """Print ``error: message`` and the hint to stderr (JSON with ``--json``)."""
        _report(
            self.message,
            self.hint,
            exit_code=self.exit_code,
            error=self,
            as_json=self.json,
            code=self.code,
        )


class JsonUsageError(click.ClickException):
    """A click error (a bad option, argument or value) reported as JSON under ``--json``.

    Click raises these while it parses the arguments, before a command runs; with
    ``--json`` anywhere on the command line they become one JSON document on stderr
    with the same exit code (2 for usage errors), like the errors of command bodies.
    """

    def __init__(self, original: click.ClickException) -> None:
        super().__init__(original.format_message())
        setattr(self, "exit_code", original.exit_code)  # noqa: B010 - see CommandFailed
        ctx = getattr(original, "ctx", None)
        self.hint = f"see '{ctx.command_path} --help'" if ctx is not None else None

    def show(self, file: Any = None) -> None:
        """Print ``{"error": {...}}`` to stderr."""
        _json_report(self.message, self.hint, exit_code=self.exit_code, code="USAGE_ERROR")


def as_json_error(exc: click.ClickException, ctx: click.Context | None) -> click.ClickException:
    """``exc`` as a :class:`JsonUsageError` when JSON was asked for; else ``exc`` itself."""
    if isinstance(exc, JsonUsageError):
        return exc
    asked = ctx is not None and bool(ctx.find_root().meta.get(ARGV_JSON) or json_wanted_in(ctx))
    if isinstance(exc, CommandFailed):
        exc.json = asked
        return exc
    return JsonUsageError(exc) if asked else exc


def asks_json(args: list[str]) -> bool:
    """Whether ``--json`` is among the options of a command line (before any ``--``)."""
    options = args[: args.index("--")] if "--" in args else args
    return "--json" in options


_NOT_TRANSIENT = frozenset(
    {
        "INSUFFICIENT_STORAGE",  # the server's disk is full
        "DATABASE_GONE",  # its database file was removed: it serves nothing until restarted
    }
)


def exit_code_for(exc: BaseException) -> int:
    """Return the documented exit code for an exception."""
    import vi_flow as e

    if isinstance(exc, e.APIStatusError) and exc.code == "NOT_THE_API":
        return EXIT_USAGE  # --base-url needs fixing, not the key
    if isinstance(exc, e.APIStatusError) and exc.code in _NOT_TRANSIENT:
        return EXIT_FAILURE  # not worth a retry soon: see _NOT_TRANSIENT
    if isinstance(exc, e.LocalServerError) and exc.lasting:
        return EXIT_FAILURE  # a home this user cannot use: a retry changes nothing
    table: list[tuple[type[BaseException] | tuple[type[BaseException], ...], int]] = [
        ((e.AuthenticationError, e.PermissionDeniedError), EXIT_AUTH),
        # a value the SDK or the server refused: the arguments need fixing
        ((e.BadRequestError, e.UnprocessableEntityError, ValueError, TypeError), EXIT_USAGE),
        (e.NotFoundError, EXIT_NOT_FOUND),
        ((e.ConflictError, e.PreconditionFailedError), EXIT_CONFLICT),
        ((e.APIConnectionError, e.RateLimitError, e.InternalServerError), EXIT_TRANSIENT),
        (KeyboardInterrupt, EXIT_INTERRUPTED),
        (click.UsageError, EXIT_USAGE),
    ]
    for kinds, code in table:
        if isinstance(exc, kinds):
            return code
    return EXIT_FAILURE


def describe(exc: BaseException) -> tuple[str, str | None]:
    """Return the one-line message and an optional hint for an exception."""
    import vi_flow as e

    if isinstance(exc, e.APIStatusError):
        code = exc.code or f"HTTP {exc.status_code}"
        rid = f" (request id {exc.request_id})" if exc.request_id else ""
        return f"{code}: {exc.message}{rid}", _hint_for(exc)
    if isinstance(exc, e.APIConnectionError):
        return exc.message, _hint_for(exc)
    if isinstance(exc, (ValueError, TypeError, e.ViFlowError)):
        return str(exc), _hint_for(exc)
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        # a file of this machine's (QA: `client` in the home made a file, not a folder:
        # "NotADirectoryError: [Errno 20] ...", with a hint at a traceback)
        return f"{exc.filename}: {exc.strerror}", None
    return f"{type(exc).__name__}: {exc}", "run again with --debug to see the traceback"


def _hint_for(exc: BaseException) -> str | None:
    import vi_flow as e

    if isinstance(exc, e.LocalServerError):  # the log, when the server wrote one
        if exc.log_file is None:
            return None
        if exc.log_file.name == "server.log":
            return "'vi-flow server logs' shows the whole log"
        return f"the whole log: {exc.log_file}"  # what a server wrote before its own log
    if isinstance(exc, e.APIStatusError) and exc.code == "NOT_THE_API":
        return "--base-url / VI_FLOW_BASE_URL names the API, ending in /v1"
    if isinstance(exc, e.APIConnectionError) and "lost the SSH connection" in exc.message:
        # the API answered; the task's own SSH endpoint did not (QA: the hint named --base-url)
        return "'vi-flow tasks status TASK_ID' says whether the task still runs"
    if isinstance(exc, e.PermissionDeniedError) and "not an admin key" in exc.message:
        # QA AS: the general hint said to use "a key of the right organization"
        return (
            "organizations and tokens are managed with the server's admin key: a 'vi-flow"
            " serve' keeps it in HOME/admin-token"
        )
    if isinstance(exc, e.APIStatusError) and exc.code == "DATABASE_GONE":
        return (
            "for the home's own server: 'vi-flow server stop', and the next command starts another"
        )
    hints: list[tuple[type[BaseException], str]] = [
        (
            e.AuthenticationError,
            "set --api-key or VI_FLOW_API_KEY; a 'vi-flow serve' keeps its admin token in "
            "HOME/admin-token: export VI_FLOW_API_KEY=$(cat HOME/admin-token)",
        ),
        (e.PermissionDeniedError, "this key may not do that; use a key of the right organization"),
        (e.FlowNotFoundError, "'vi-flow flows list' shows the flows (and 'flows get' versions)"),
        (e.RunNotFoundError, "'vi-flow runs list' shows the runs"),
        (e.TaskNotFoundError, "'vi-flow tasks list' shows the tasks"),
        (e.PreconditionFailedError, "someone changed it meanwhile; fetch it again and retry"),
        (
            e.APITimeoutError,
            "the server is slow or overloaded; retry, or allow more seconds with VI_FLOW_TIMEOUT"
            " (or 'vi-flow config set timeout N')",
        ),
        (
            e.APIConnectionError,
            "is the server at that URL running? The URL comes from --base-url, else"
            " VI_FLOW_BASE_URL, else the config file's base_url ('vi-flow config show')",
        ),
        (e.RateLimitError, "too many requests; wait a little and retry"),
        (e.NotImplementedByProviderError, "the server's compute provider cannot do this"),
    ]
    for kind, hint in hints:
        if isinstance(exc, kind):
            return hint
    return None


JSON_WANTED = "vi_flow.json"
"""The root context's ``meta`` key set when ``--json`` was given (globally or to a command)."""

ARGV_JSON = "vi_flow.argv_json"
"""The root context's ``meta`` key set when ``--json`` is on the command line at all."""


def json_wanted_in(ctx: click.Context) -> bool:
    """Whether ``ctx``'s invocation asked for JSON, as far as it was parsed."""
    return bool(ctx.find_root().meta.get(JSON_WANTED))


def json_wanted() -> bool:
    """Whether this invocation asked for JSON, as far as it was parsed."""
    ctx = click.get_current_context(silent=True)
    return bool(ctx and json_wanted_in(ctx))


def _json_report(
    message: str,
    hint: str | None,
    *,
    exit_code: int,
    code: str | None = None,
    request_id: str | None = None,
) -> None:
    import orjson

    body = {
        "code": code or _CODE_OF_EXIT.get(exit_code, "FAILED"),
        "message": message,
        "hint": hint,
        "requestId": request_id,
        "exitCode": exit_code,
    }
    click.echo(orjson.dumps({"error": body}).decode(), err=True)


def _report(
    message: str,
    hint: str | None,
    *,
    exit_code: int = EXIT_FAILURE,
    error: BaseException | None = None,
    as_json: bool | None = None,
    code: str | None = None,
) -> None:
    import vi_flow as e

    if json_wanted() if as_json is None else as_json:
        code = code or getattr(error, "code", None)
        rid = getattr(error, "request_id", None)
        if isinstance(error, e.APIStatusError):  # code and request id have fields of their own
            message = error.message
        _json_report(message, hint, exit_code=exit_code, code=code, request_id=rid)
        return
    click.echo(click.style("error: ", fg="red", bold=True) + message, err=True)
    if hint:
        click.echo(click.style("hint: ", fg="yellow") + hint, err=True)


def _silence_stdout() -> None:
    """After a broken pipe, point stdout at /dev/null so the final flush cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # no real file descriptor (e.g. under a test runner)
        pass


def _sole(exc: BaseException) -> BaseException:
    """What failed inside anyio's task groups (groups of one, nested), else ``exc``."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _failed(exc: BaseException) -> bool:
    """Whether ``exc`` is an error (not click's own exit, nor Python's)."""
    return isinstance(exc, Exception) and not isinstance(exc, (click.exceptions.Exit, click.Abort))


def run_guarded(ctx: click.Context, body: Callable[[], T]) -> T:
    """Run ``body``; report any failure in one line and exit with its documented code.

    Raises:
        click.exceptions.Exit: Always, when ``body`` failed (click exits with its code).
    """
    debug = bool(ctx.find_root().meta.get("vi_flow.debug"))
    try:
        return body()
    except BaseException as raised:
        exc = _sole(raised)
        if isinstance(exc, click.ClickException):
            raise as_json_error(exc, ctx) from None
        if isinstance(exc, click.Abort) and isinstance(exc.__context__, KeyboardInterrupt):
            exc = exc.__context__  # Ctrl-C at a prompt: click made it an Abort (exit 1)
        if isinstance(exc, BrokenPipeError):
            _silence_stdout()
            raise click.exceptions.Exit(EXIT_OK) from None
        if isinstance(exc, KeyboardInterrupt) or (_failed(exc) and interrupted()):
            if json_wanted():
                _json_report("interrupted", None, exit_code=EXIT_INTERRUPTED)
            else:
                click.echo("\ninterrupted", err=True)
            raise click.exceptions.Exit(EXIT_INTERRUPTED) from None
        if isinstance(exc, (click.exceptions.Exit, click.Abort)) or not isinstance(exc, Exception):
            if exc is raised:
                raise  # click's own exits, SystemExit and the like pass through
            raise exc from None
        if debug:
            traceback.print_exception(type(raised), raised, raised.__traceback__)
        message, hint = describe(exc)
        if debug and hint and "--debug" in hint:
            hint = None  # the traceback is above
        code = exit_code_for(exc)
        _report(message, hint, exit_code=code, error=exc)
        raise click.exceptions.Exit(code) from None
