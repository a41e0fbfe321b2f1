"""The wire schema shared by the client and the local server: pure data, no I/O.

The names of the common models load at once; the events, tasks, execute request and the
rest load when first used, so a client that only lists flows does not pay for them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._base import (
    OpenEnum,
    converter,
    dumps,
    from_wire,
    loads,
    to_wire,
)
from .common import (
    Condition,
    Page,
    PaginationParams,
    ResourceCondition,
    ResourceMetadata,
)
from .flows import (
    DeletedFlow,
    Flow,
    FlowBlock,
    FlowInput,
    FlowSpec,
)
from .runs import (
    DeletedRun,
    Run,
    RunSpec,
    RunStatus,
)

if TYPE_CHECKING:
    from .events import EVENT_TYPES as EVENT_TYPES
    from .events import BaseEvent as BaseEvent
    from .events import ExecutionOutcome as ExecutionOutcome
    from .events import FlowCompleted as FlowCompleted
    from .events import LogLine as LogLine
    from .events import RunStarted as RunStarted
    from .events import RunTrace as RunTrace
    from .events import StepCompleted as StepCompleted
    from .events import StepFailed as StepFailed
    from .events import StepInput as StepInput
    from .events import StepOutput as StepOutput
    from .events import StepPaused as StepPaused
    from .events import StepStarted as StepStarted
    from .events import StepTrace as StepTrace
    from .events import StreamEvent as StreamEvent
    from .events import TokenUsage as TokenUsage
    from .events import ToolCall as ToolCall
    from .events import ToolCallsRequired as ToolCallsRequired
    from .events import ToolFunction as ToolFunction
    from .events import ToolResult as ToolResult
    from .events import UnknownEvent as UnknownEvent
    from .events import event_name as event_name
    from .events import event_to_wire as event_to_wire
    from .events import parse_event as parse_event
    from .execution import MAX_ATTACHMENTS as MAX_ATTACHMENTS
    from .execution import MAX_NESTING as MAX_NESTING
    from .execution import MAX_TOOLS as MAX_TOOLS
    from .execution import TOOL_CHOICES as TOOL_CHOICES
    from .execution import ExecuteRequest as ExecuteRequest
    from .execution import ExecuteRequestError as ExecuteRequestError
    from .execution import ExecutionJob as ExecutionJob
    from .execution import ToolChoice as ToolChoice
    from .execution import Version as Version
    from .tasks import AvailabilitySlot as AvailabilitySlot
    from .tasks import AvailableInstance as AvailableInstance
    from .tasks import GPURequest as GPURequest
    from .tasks import MountRequest as MountRequest
    from .tasks import Reservation as Reservation
    from .tasks import ReservationRequest as ReservationRequest
    from .tasks import ReservationStatus as ReservationStatus
    from .tasks import SSHEndpoint as SSHEndpoint
    from .tasks import SSHKey as SSHKey
    from .tasks import SSHKeyRequest as SSHKeyRequest
    from .tasks import Task as Task
    from .tasks import TaskConfig as TaskConfig
    from .tasks import TaskLogs as TaskLogs
    from .tasks import TaskOutputFile as TaskOutputFile
    from .tasks import TaskStatus as TaskStatus
    from .tasks import Volume as Volume
    from .tasks import VolumeRequest as VolumeRequest
    from .tasks import VolumeSpec as VolumeSpec
    from .tasks import parse_gpu as parse_gpu

_LAZY: dict[str, str] = {
    "EVENT_TYPES": ".events",
    "BaseEvent": ".events",
    "ExecutionOutcome": ".events",
    "FlowCompleted": ".events",
    "LogLine": ".events",
    "RunStarted": ".events",
    "RunTrace": ".events",
    "StepCompleted": ".events",
    "StepFailed": ".events",
    "StepInput": ".events",
    "StepOutput": ".events",
    "StepPaused": ".events",
    "StepStarted": ".events",
    "StepTrace": ".events",
    "StreamEvent": ".events",
    "TokenUsage": ".events",
    "ToolCall": ".events",
    "ToolCallsRequired": ".events",
    "ToolFunction": ".events",
    "ToolResult": ".events",
    "UnknownEvent": ".events",
    "event_name": ".events",
    "event_to_wire": ".events",
    "parse_event": ".events",
    "MAX_ATTACHMENTS": ".execution",
    "MAX_NESTING": ".execution",
    "MAX_TOOLS": ".execution",
    "TOOL_CHOICES": ".execution",
    "ExecuteRequest": ".execution",
    "ExecuteRequestError": ".execution",
    "ExecutionJob": ".execution",
    "ToolChoice": ".execution",
    "Version": ".execution",
    "AvailabilitySlot": ".tasks",
    "AvailableInstance": ".tasks",
    "GPURequest": ".tasks",
    "MountRequest": ".tasks",
    "Reservation": ".tasks",
    "ReservationRequest": ".tasks",
    "ReservationStatus": ".tasks",
    "SSHEndpoint": ".tasks",
    "SSHKey": ".tasks",
    "SSHKeyRequest": ".tasks",
    "Task": ".tasks",
    "TaskConfig": ".tasks",
    "TaskLogs": ".tasks",
    "TaskOutputFile": ".tasks",
    "TaskStatus": ".tasks",
    "Volume": ".tasks",
    "VolumeRequest": ".tasks",
    "VolumeSpec": ".tasks",
    "parse_gpu": ".tasks",
}

__all__ = [
    "EVENT_TYPES",
    "BaseEvent",
    "Condition",
    "DeletedFlow",
    "DeletedRun",
    "ExecutionOutcome",
    "Flow",
    "FlowBlock",
    "FlowCompleted",
    "FlowInput",
    "FlowSpec",
    "LogLine",
    "OpenEnum",
    "Page",
    "PaginationParams",
    "ResourceCondition",
    "ResourceMetadata",
    "Run",
    "RunSpec",
    "RunStarted",
    "RunStatus",
    "RunTrace",
    "StepCompleted",
    "StepFailed",
    "StepInput",
    "StepOutput",
    "StepPaused",
    "StepStarted",
    "StepTrace",
    "StreamEvent",
    "TokenUsage",
    "ToolCall",
    "ToolCallsRequired",
    "ToolFunction",
    "ToolResult",
    "UnknownEvent",
    "converter",
    "dumps",
    "event_name",
    "event_to_wire",
    "from_wire",
    "loads",
    "parse_event",
    "to_wire",
]
__all__ += [  # the execute request and the jobs answer (vi_flow.models.execution)
    "MAX_ATTACHMENTS",
    "MAX_NESTING",
    "MAX_TOOLS",
    "TOOL_CHOICES",
    "ExecuteRequest",
    "ExecuteRequestError",
    "ExecutionJob",
    "ToolChoice",
    "Version",
]
__all__ += [  # the task models (vi_flow.models.tasks)
    "AvailabilitySlot",
    "AvailableInstance",
    "GPURequest",
    "MountRequest",
    "Reservation",
    "ReservationRequest",
    "ReservationStatus",
    "SSHEndpoint",
    "SSHKey",
    "SSHKeyRequest",
    "Task",
    "TaskConfig",
    "TaskLogs",
    "TaskOutputFile",
    "TaskStatus",
    "Volume",
    "VolumeRequest",
    "VolumeSpec",
    "parse_gpu",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'vi_flow.models' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
