"""vi_flow: run AI flows and the GPU tasks behind them, from async code, blocking code or a shell.

Importing ``vi_flow`` is cheap: the clients, aiohttp, asyncssh, the local server and the
CLI load on first use of a name that needs them.
"""

from __future__ import annotations

import importlib
import warnings
from typing import TYPE_CHECKING, Any

from . import _heldoff
from ._errors import (
    APIConnectionError,
    APIError,
    APIResponseValidationError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ClientStateError,
    ConflictError,
    FlowExecutionError,
    FlowNotFoundError,
    HostKeyChangedError,
    InsufficientCreditsError,
    InternalServerError,
    LocalServerError,
    NotFoundError,
    NotImplementedByProviderError,
    PaginationError,
    PermissionDeniedError,
    PreconditionFailedError,
    RateLimitError,
    RunNotFoundError,
    ShellUnavailableError,
    TaskEndedError,
    TaskNotFoundError,
    TaskTimeoutError,
    ToolCallLimitError,
    ToolCallsPendingError,
    UnprocessableEntityError,
    ViFlowError,
)

__version__ = "0.2.0"

# cryptography 51 deprecates its DSA classes, which asyncssh still names when imported:
# every command that opens a shell or follows a log over SSH printed the warning, and the
# server's log had it at each start. That one message from asyncssh's modules is ignored;
# every other warning is left as the user's filters say.
warnings.filterwarnings("ignore", message="DSA is deprecated", module=r"asyncssh\.")
_heldoff.install()  # a Ctrl-C while orjson's compiled module loads crashed the process

if TYPE_CHECKING:
    from ._client import AsyncClient as AsyncClient
    from ._client import ClientState as ClientState
    from ._config import NOT_GIVEN as NOT_GIVEN
    from ._config import Timeout as Timeout
    from ._pagination import AsyncPaginator as AsyncPaginator
    from .compute import AsyncTask as AsyncTask
    from .compute.ssh import ShellResult as ShellResult
    from .execution import AsyncFlow as AsyncFlow
    from .execution import AsyncJob as AsyncJob
    from .execution import AsyncRun as AsyncRun
    from .execution import ExecuteResult as ExecuteResult
    from .execution import PausedResult as AsyncPausedResult
    from .execution import ToolHandlerWarning as ToolHandlerWarning
    from .models import PaginationParams as PaginationParams
    from .models.loglines import LinePiece as LinePiece
    from .models.tasks import TaskConfig as TaskConfig
    from .models.tasks import TaskStatus as TaskStatus
    from .models.tasks import VolumeSpec as VolumeSpec
    from .sync._client import Client as Client
    from .sync._pagination import PaginatedResponse as PaginatedResponse
    from .sync.compute import Task as Task
    from .sync.execution import Flow as Flow
    from .sync.execution import Job as Job
    from .sync.execution import PausedResult as PausedResult
    from .sync.execution import Run as Run

_LAZY: dict[str, str] = {
    "AsyncTask": ".compute",
    "ShellResult": ".compute.ssh",
    "Task": ".sync.compute",
    "TaskConfig": ".models.tasks",
    "LinePiece": ".models.loglines",
    "TaskStatus": ".models.tasks",
    "VolumeSpec": ".models.tasks",
    "AsyncClient": "._client",
    "ClientState": "._client",
    "NOT_GIVEN": "._config",
    "Timeout": "._config",
    "AsyncPaginator": "._pagination",
    "PaginatedResponse": ".sync._pagination",
    "PaginationParams": ".models",
    "Client": ".sync._client",
    "AsyncFlow": ".execution",
    "AsyncJob": ".execution",
    "AsyncRun": ".execution",
    "ExecuteResult": ".execution",
    "AsyncPausedResult": ".execution:PausedResult",
    "PausedResult": ".sync.execution",
    "ToolHandlerWarning": ".execution",
    "Flow": ".sync.execution",
    "Job": ".sync.execution",
    "Run": ".sync.execution",
}

__all__ = [
    "NOT_GIVEN",
    "APIConnectionError",
    "APIError",
    "APIResponseValidationError",
    "APIStatusError",
    "APITimeoutError",
    "AsyncClient",
    "AsyncFlow",
    "AsyncJob",
    "AsyncPaginator",
    "AsyncPausedResult",
    "AsyncRun",
    "AsyncTask",
    "AuthenticationError",
    "BadRequestError",
    "Client",
    "ClientState",
    "ClientStateError",
    "ConflictError",
    "ExecuteResult",
    "Flow",
    "FlowExecutionError",
    "FlowNotFoundError",
    "HostKeyChangedError",
    "InsufficientCreditsError",
    "InternalServerError",
    "Job",
    "LinePiece",
    "LocalServerError",
    "NotFoundError",
    "NotImplementedByProviderError",
    "PaginatedResponse",
    "PaginationError",
    "PaginationParams",
    "PausedResult",
    "PermissionDeniedError",
    "PreconditionFailedError",
    "RateLimitError",
    "Run",
    "RunNotFoundError",
    "ShellResult",
    "ShellUnavailableError",
    "Task",
    "TaskConfig",
    "TaskEndedError",
    "TaskNotFoundError",
    "TaskStatus",
    "TaskTimeoutError",
    "Timeout",
    "ToolCallLimitError",
    "ToolCallsPendingError",
    "ToolHandlerWarning",
    "UnprocessableEntityError",
    "ViFlowError",
    "VolumeSpec",
    "__version__",
]


def __getattr__(name: str) -> Any:
    where = _LAZY.get(name)
    if where is None:
        raise AttributeError(f"module 'vi_flow' has no attribute {name!r}")
    module, _, attribute = where.partition(":")  # "module:attribute" when named otherwise
    value = getattr(importlib.import_module(module, __name__), attribute or name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
