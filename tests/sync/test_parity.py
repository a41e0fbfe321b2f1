"""Every blocking method has the signature of its async twin: same names, kinds, defaults.

The sync layer is thin forwarding; a parameter added to one side only is a bug a user
meets as a TypeError. This test compares each pair of classes method by method.
"""

from __future__ import annotations

import inspect
import sys
import typing
from collections.abc import Callable
from typing import Any

import pytest

from vi_flow import AsyncClient, Client
from vi_flow._forward import forward
from vi_flow.compute import AsyncClientFacade, AsyncCompute, AsyncTask
from vi_flow.compute._platform import AsyncPlatform
from vi_flow.execution import AsyncFlow, AsyncJob, AsyncRun
from vi_flow.resources.flows import AsyncFlows
from vi_flow.resources.instances import AsyncInstances
from vi_flow.resources.reservations import AsyncReservations
from vi_flow.resources.runs import AsyncRuns
from vi_flow.resources.ssh_keys import AsyncSSHKeys
from vi_flow.resources.tasks import AsyncTasks
from vi_flow.resources.tokens import AsyncTokens
from vi_flow.resources.volumes import AsyncVolumes
from vi_flow.sync.compute import ClientFacade, Compute, Platform, Task
from vi_flow.sync.execution import Flow, Job, Run
from vi_flow.sync.resources import (
    Flows,
    Instances,
    Reservations,
    Runs,
    SSHKeys,
    Tasks,
    Tokens,
    Volumes,
)

PAIRS: list[tuple[type[Any], type[Any]]] = [
    (AsyncClient, Client),
    (AsyncCompute, Compute),
    (AsyncPlatform, Platform),
    (AsyncFlows, Flows),
    (AsyncRuns, Runs),
    (AsyncTasks, Tasks),
    (AsyncVolumes, Volumes),
    (AsyncInstances, Instances),
    (AsyncReservations, Reservations),
    (AsyncSSHKeys, SSHKeys),
    (AsyncTokens, Tokens),
    (AsyncFlow, Flow),
    (AsyncRun, Run),
    (AsyncJob, Job),
    (AsyncTask, Task),
    (AsyncClientFacade, ClientFacade),
]

#: Names that differ on purpose, with the reason.
RENAMED = {"aclose": "close"}  # the async close is awaited, the sync one is not
ASYNC_ONLY = {"__aenter__", "__aexit__", "__await__"}  # async protocols
SYNC_ONLY = {"__enter__", "__exit__", "async_client"}
#: Defaults that differ on purpose: a blocking script sees a command's output printed,
#: as the seed's ``shell`` does; async code gets it back to use.
DEFAULTS_DIFFER = {("shell", "echo")}


def _methods(cls: type[Any]) -> dict[str, Callable[..., Any]]:
    found: dict[str, Callable[..., Any]] = {}
    for klass in reversed(cls.__mro__[:-1]):
        for name, value in vars(klass).items():
            if name.startswith("_") and not (name.startswith("__") and name.endswith("__")):
                continue
            if isinstance(value, forward):
                found[name] = value.__wrapped__
            elif inspect.isfunction(value) and (not name.startswith("__") or name in _DUNDERS):
                found[name] = value
    return found


_DUNDERS = {"__aenter__", "__aexit__", "__await__", "__enter__", "__exit__", "__call__"}


def _shape(func: Callable[..., Any]) -> list[tuple[str, Any, Any]]:
    params = list(inspect.signature(func).parameters.values())[1:]  # without self
    return [
        (p.name, p.kind, "differs" if (func.__name__, p.name) in DEFAULTS_DIFFER else p.default)
        for p in params
    ] + _unpacked(func)


def _unpacked(func: Callable[..., Any]) -> list[tuple[str, Any, Any]]:
    """The keys of a ``**options: Unpack[SomeTypedDict]``: named parameters all the same."""
    for param in inspect.signature(func).parameters.values():
        if param.kind is inspect.Parameter.VAR_KEYWORD and isinstance(param.annotation, str):
            hint = eval(param.annotation, vars(sys.modules[func.__module__]))
            (kind,) = typing.get_args(hint) or (None,)
            if kind is not None and hasattr(kind, "__optional_keys__"):
                keys = kind.__required_keys__ | kind.__optional_keys__
                return [(key, "unpacked", None) for key in sorted(keys)]
    return []


@pytest.mark.parametrize("pair", PAIRS, ids=lambda p: f"{p[0].__name__}-{p[1].__name__}")
def test_sync_methods_mirror_async_ones(pair: tuple[type[Any], type[Any]]) -> None:
    async_cls, sync_cls = pair
    a, s = _methods(async_cls), _methods(sync_cls)
    a = {RENAMED.get(name, name): f for name, f in a.items() if name not in ASYNC_ONLY}
    s = {name: f for name, f in s.items() if name not in SYNC_ONLY}
    assert sorted(set(a) - set(s)) == [], "async methods without a sync twin"
    assert sorted(set(s) - set(a)) == [], "sync methods without an async twin"
    differ = {
        name: (_shape(a[name]), _shape(s[name])) for name in a if _shape(a[name]) != _shape(s[name])
    }
    assert differ == {}, "signatures differ (async, sync)"


def test_the_test_notices_a_parameter_added_on_one_side() -> None:
    class A:
        async def get(self, flow_id: str, *, version: int = 1) -> None: ...

    class S:
        def get(self, flow_id: str) -> None: ...

    assert _shape(_methods(A)["get"]) != _shape(_methods(S)["get"])


def test_an_unknown_execution_keyword_is_a_type_error_on_both_sides() -> None:
    with Client() as client:
        with pytest.raises(
            TypeError, match="execute\\(\\) got an unexpected keyword argument 'mesage'"
        ):
            client.flow("flow_x").execute(mesage="hi")  # type: ignore[call-arg]
        with pytest.raises(
            TypeError, match="events\\(\\) got an unexpected keyword argument 'mesage'"
        ):
            client.async_client.flow("flow_x").events(mesage="hi")  # type: ignore[call-arg]
        with pytest.raises(TypeError, match="'attachments'"):
            client.flow("flow_x").execute_async(attachments=["https://x"])  # type: ignore[call-arg]
