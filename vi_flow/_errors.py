"""The exceptions vi_flow raises, one tree for client and server answers.

Every error a user can catch derives from :class:`ViFlowError`::

    ViFlowError
    ├── APIError                      the server could not be reached or answered badly
    │   ├── APIConnectionError        no answer: refused, reset, DNS, TLS, a malformed or cut answer
    │   │   ├── APITimeoutError       no answer in time
    │   │   └── LocalServerError      the home's local server could not be found or started
    │   ├── APIResponseValidationError  an answer that is not the JSON it should be, a redirect,
    │   │                               or an answer or event past 256 MiB
    │   └── APIStatusError            a non-2xx answer (status, code, request id, body)
    │       ├── BadRequestError               400
    │       ├── AuthenticationError           401
    │       ├── InsufficientCreditsError      402
    │       ├── PermissionDeniedError         403
    │       ├── NotFoundError                 404
    │       │   ├── FlowNotFoundError
    │       │   ├── RunNotFoundError
    │       │   └── TaskNotFoundError
    │       ├── ConflictError                 409
    │       ├── PreconditionFailedError       412
    │       ├── UnprocessableEntityError      422
    │       ├── RateLimitError                429 (with ``retry_after``)
    │       ├── InternalServerError           5xx
    │       └── NotImplementedByProviderError 501 (an operation the compute provider lacks)
    ├── FlowExecutionError            a run ended Failed/Error (carries the failing step)
    ├── ToolCallLimitError            ``max_tool_rounds`` exhausted
    ├── ToolCallsPendingError         ``steps()`` met tool calls it has no ``tool_handler`` for
    ├── TaskTimeoutError              waiting for a task or job exceeded its timeout
    ├── HostKeyChangedError           a task server's SSH host key differs from the pinned one
    ├── ShellUnavailableError         the task's provider cannot run commands inside it (Ray)
    ├── TaskEndedError                a command, shell or upload met a task that has ended
    ├── PaginationError               a server sent a repeated page token or too many pages
    └── ClientStateError              a closed client was used, a sync client from its own portal,
                                      or its local server was stopped on purpose

Arguments that are wrong before any request is made raise the builtin ``ValueError`` or
``TypeError`` with a sentence naming the bad value.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .models.common import Condition

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIResponseValidationError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "ClientStateError",
    "ConflictError",
    "FlowExecutionError",
    "FlowNotFoundError",
    "HostKeyChangedError",
    "InsufficientCreditsError",
    "InternalServerError",
    "LocalServerError",
    "NotFoundError",
    "NotImplementedByProviderError",
    "PaginationError",
    "PermissionDeniedError",
    "PreconditionFailedError",
    "RateLimitError",
    "RunNotFoundError",
    "ShellUnavailableError",
    "TaskEndedError",
    "TaskNotFoundError",
    "TaskTimeoutError",
    "ToolCallLimitError",
    "ToolCallsPendingError",
    "UnprocessableEntityError",
    "ViFlowError",
    "error_for_status",
    "sole_exception",
]


class ViFlowError(Exception):
    """Base of every exception vi_flow raises on purpose."""


class APIError(ViFlowError):
    """The server could not be reached, or answered something unusable.

    Attributes:
        message: What went wrong, in a sentence.
        request_id: The ``X-Request-Id`` of the request, when known.
    """

    def __init__(self, message: str, *, request_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.request_id = request_id

    def __str__(self) -> str:
        if self.request_id:
            return f"{self.message} (request id {self.request_id})"
        return self.message


class APIConnectionError(APIError):
    """No answer came back: connection refused, reset, or a network failure."""


class APITimeoutError(APIConnectionError):
    """No answer came back in time.

    Attributes:
        execution_id: The run the request started or answered, when its answer had
            begun (``X-Execution-Id``) before the time ran out: an ``execute`` whose
            ``timeout`` ended it leaves its run going on, and the message names it.
    """

    def __init__(
        self, message: str, *, request_id: str | None = None, execution_id: str | None = None
    ) -> None:
        super().__init__(message, request_id=request_id)
        self.execution_id = execution_id


class LocalServerError(APIConnectionError):
    """The home's local server could not be found or started (the message says why).

    Attributes:
        log_file: The server log that may tell more, when the server wrote one.
        lasting: Whether trying again cannot help: the home itself cannot be used by
            this user (the CLI exits 1 for it, not 6).
    """

    def __init__(
        self, message: str, *, log_file: Path | None = None, lasting: bool = False
    ) -> None:
        super().__init__(message)
        self.log_file = log_file
        self.lasting = lasting


class APIResponseValidationError(APIError):
    """The server answered with a body that is not the JSON this client expects, with a
    redirect (never followed: the request could go to another host), or with an answer or
    an event of over 256 MiB (a vi_flow server never sends one: a proxy in the way?)."""


class APIStatusError(APIError):
    """The server answered with a non-2xx status.

    Attributes:
        status_code: The HTTP status.
        code: The server's error code, such as ``FLOW_NOT_FOUND``.
        body: The decoded error body (or the raw text when it was not JSON).
    """

    status_code: int = 0

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        code: str | None = None,
        request_id: str | None = None,
        body: Any = None,
    ) -> None:
        super().__init__(message, request_id=request_id)
        if status_code is not None:
            self.status_code = status_code
        self.code = code
        self.body = body

    def __str__(self) -> str:
        code = f" {self.code}" if self.code else ""
        return f"{self.status_code}{code}: {super().__str__()}"


class BadRequestError(APIStatusError):
    """400: the request is malformed."""

    status_code = 400


class AuthenticationError(APIStatusError):
    """401: the API key is missing, wrong or expired."""

    status_code = 401


class InsufficientCreditsError(APIStatusError):
    """402: the organization has no credits left for this execution."""

    status_code = 402


class PermissionDeniedError(APIStatusError):
    """403: the key may not do this."""

    status_code = 403


class NotFoundError(APIStatusError):
    """404: no such resource in this organization."""

    status_code = 404


class FlowNotFoundError(NotFoundError):
    """404: the flow (or the requested version of it) does not exist."""


class RunNotFoundError(NotFoundError):
    """404: the run does not exist."""


class TaskNotFoundError(NotFoundError):
    """404: the task does not exist."""


class ConflictError(APIStatusError):
    """409: the request conflicts with the resource's state."""

    status_code = 409


class PreconditionFailedError(APIStatusError):
    """412: the ``If-Match`` etag is stale; re-read and retry."""

    status_code = 412


class UnprocessableEntityError(APIStatusError):
    """422: the request is well-formed but invalid; the message names the field."""

    status_code = 422


class RateLimitError(APIStatusError):
    """429: too many requests.

    Attributes:
        retry_after: Seconds the server asked to wait, when it said.
    """

    status_code = 429

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after


class InternalServerError(APIStatusError):
    """5xx: the server failed."""

    status_code = 500


class NotImplementedByProviderError(APIStatusError):
    """501: the server's compute provider cannot do this operation."""

    status_code = 501


class FlowExecutionError(ViFlowError):
    """A run ended without succeeding: ``Failed``, ``Error`` or ``Cancelled``.

    Attributes:
        execution_id: The run id.
        step_id: The failing step, when one failed (or the step a cancel stopped).
        message: The server's message.
        code: The failure's code, when it has one: the failed step's (``LLM_ERROR``,
            ``TEMPLATE_ERROR``, ``ITERATION_LIMIT``, ``OUTPUTS_TOO_LARGE``...) or
            ``TOOL_RESULTS_TIMEOUT``.
        status: How the run ended (``Condition.FAILED``, ``ERROR`` or ``CANCELLED``),
            when known: a cancel is told from a failure by it, not by the message.
    """

    def __init__(
        self,
        message: str,
        *,
        execution_id: str,
        step_id: str | None = None,
        code: str | None = None,
        status: Condition | None = None,
    ) -> None:
        where = f" at step {step_id!r}" if step_id else ""
        cancelled = status is not None and status.value == "Cancelled"
        ended = "was cancelled" if cancelled else "failed"
        super().__init__(f"run {execution_id} {ended}{where}: {message}")
        self.message = message
        self.execution_id = execution_id
        self.step_id = step_id
        self.code = code
        self.status = status


class ToolCallLimitError(ViFlowError):
    """The tool-handler loop ran ``max_tool_rounds`` rounds and the run still asks for more.

    Attributes:
        execution_id: The run that kept asking (it was cancelled).
        rounds: How many rounds the handler answered.
    """

    def __init__(self, message: str, *, execution_id: str | None = None, rounds: int = 0) -> None:
        super().__init__(message)
        self.execution_id = execution_id
        self.rounds = rounds


class ToolCallsPendingError(ViFlowError):
    """``steps()`` met a run waiting for tool results, with no ``tool_handler`` to give them.

    ``steps()`` yields only ``StepCompleted``, so it cannot hand the pause over as
    ``events()`` does; it raises this instead of waiting for results nobody will send. The
    run stays paused: answer it with ``flow.run(execution_id).submit_tool_results(...)``,
    or cancel it.

    Attributes:
        execution_id: The paused run.
        tool_calls: The calls it waits for (``ToolCall`` objects).
    """

    def __init__(self, *, execution_id: str, tool_calls: list[Any]) -> None:
        names = ", ".join(f"{c.id} ({c.function.name})" for c in tool_calls[:5])
        more = f" and {len(tool_calls) - 5} more" if len(tool_calls) > 5 else ""
        super().__init__(
            f"run {execution_id} waits for tool results ({names}{more}) and steps() has no"
            " tool_handler to answer them: pass tool_handler=, use events() or execute(),"
            f" or answer with flow.run({execution_id!r}).submit_tool_results(...)"
        )
        self.execution_id = execution_id
        self.tool_calls = tool_calls


class TaskTimeoutError(ViFlowError, TimeoutError):
    """Waiting for a task, job or SSH endpoint took longer than the timeout given."""


class HostKeyChangedError(ViFlowError):
    """A server's SSH host key is not the one pinned on first use: refused, never re-pinned.

    Attributes:
        host: The SSH host.
        port: The SSH port.
        pinned: The SHA256 fingerprint pinned before.
        presented: The SHA256 fingerprint the server publishes now.
        known_hosts: The pin file; delete it to accept a planned key rotation.
    """

    def __init__(self, host: str, port: int, pinned: str, presented: str, known_hosts: str):
        super().__init__(
            f"the SSH host key of {host}:{port} changed: pinned {pinned}, the server now "
            f"publishes {presented}. If its key was rotated on purpose, delete {known_hosts} "
            "and connect again; otherwise do not trust this server."
        )
        self.host = host
        self.port = port
        self.pinned = pinned
        self.presented = presented
        self.known_hosts = known_hosts


class ShellUnavailableError(ViFlowError):
    """The task's compute provider cannot run a command or shell inside it (Ray jobs).

    Raised before any command is sent; the command never runs anywhere (never on the
    server's host). The task's logs, uploads and status work as usual.

    Attributes:
        task_id: The task.
        provider: The compute provider that runs it, such as ``"ray"``.
        reason: The server's sentence saying why.
    """

    def __init__(self, task_id: str, provider: str, reason: str) -> None:
        super().__init__(
            f"task {task_id} runs on the {provider!r} provider, which cannot run commands "
            f"or shells inside it: {reason}"
        )
        self.task_id = task_id
        self.provider = provider
        self.reason = reason


class TaskEndedError(ViFlowError):
    """A command, shell, SSH wait or upload met a task that has already ended.

    Raised before anything is sent: these need a running task.

    Attributes:
        task_id: The task.
        status: The status it ended with, such as ``"succeeded"`` or ``"cancelled"``.
    """

    def __init__(self, task_id: str, status: str) -> None:
        super().__init__(
            f"task {task_id} has ended ({status}): commands, shells and uploads need a running task"
        )
        self.task_id = task_id
        self.status = status


class PaginationError(ViFlowError):
    """The server repeated a page token or sent more pages than any list can have."""


class ClientStateError(ViFlowError, RuntimeError):
    """The client was used after ``close()``, a sync client from its own portal thread, or
    the home's local server it used was stopped on purpose (``vi-flow server stop``: the
    client does not start another; a new client does)."""


_BY_STATUS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    402: InsufficientCreditsError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    412: PreconditionFailedError,
    422: UnprocessableEntityError,
    429: RateLimitError,
    501: NotImplementedByProviderError,
}

_BY_CODE: dict[str, type[APIStatusError]] = {
    "FLOW_NOT_FOUND": FlowNotFoundError,
    "FLOW_VERSION_NOT_FOUND": FlowNotFoundError,
    "RUN_NOT_FOUND": RunNotFoundError,
    "TASK_NOT_FOUND": TaskNotFoundError,
    "INSUFFICIENT_CREDITS": InsufficientCreditsError,
}


def error_for_status(
    status: int,
    *,
    code: str | None,
    message: str,
    request_id: str | None,
    body: Any,
    retry_after: float | None = None,
) -> APIStatusError:
    """Build the typed exception for a non-2xx answer."""
    cls = _BY_CODE.get(code or "") or _BY_STATUS.get(status)
    if cls is None:
        cls = InternalServerError if status >= 500 else APIStatusError
    kw: dict[str, Any] = {
        "status_code": status,
        "code": code,
        "request_id": request_id,
        "body": body,
    }
    if cls is RateLimitError:
        return RateLimitError(message, retry_after=retry_after, **kw)
    return cls(message, **kw)


def sole_exception(exc: BaseException) -> BaseException:
    """What failed inside ``exc`` when it is an exception group of one kind of failure
    (nested or not: its first), else ``exc``.

    anyio's task groups wrap whatever their tasks raised in an exception group; a caller
    of ours should see the ``BrokenPipeError`` itself, or the ``ConnectionLost`` both
    pumps of a dropped connection raised. A group of different failures is left as is.
    """
    while isinstance(exc, BaseExceptionGroup):
        leaves = list(_leaves(exc))
        if len({type(leaf) for leaf in leaves}) != 1:
            return exc
        exc = leaves[0]
    return exc


def _leaves(group: BaseExceptionGroup[BaseException]) -> Iterator[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc
