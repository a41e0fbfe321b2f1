"""Every route, fed hostile bodies, queries and path parameters: never a 5xx.

A seeded generator (so a failure replays) takes a valid body for each route and
replaces one field at a time with a hostile value (numbers past 64 bits, ``nan`` as
text, deep nesting, NUL bytes, huge strings, wrong types), and sends hostile values in
query strings and path parameters. Every answer must be below 500, and every list must
still answer 200 afterwards, also after a restart.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from .conftest import Server, StartServer, spec

pytestmark = pytest.mark.anyio

SEED = 12

HOSTILE: list[Any] = [
    2**63,
    2**64,
    -(2**63) - 1,
    1e308,
    -1,
    0,
    1.5,
    True,
    None,
    "",
    "\x00",
    "a\x00b",
    "../../etc/passwd",
    "/abs/path",
    "nan",
    "inf",
    "x" * 70_000,
    "é" * 300,
    [],
    {},
    [None] * 3,
    {"a": {"b": {"c": [1, {"d": 2**64}]}}},
]

LISTS = ("/flows", "/runs", "/tasks", "/volumes", "/reservations", "/ssh-keys", "/instances")


def _deep(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"a": value}
    return value


def _bodies(rng: random.Random, valid: dict[str, Any], count: int) -> list[dict[str, Any]]:
    keys = list(valid) or ["x"]
    bodies = []
    for _ in range(count):
        body = dict(valid)
        for key in rng.sample(keys, k=min(len(keys), rng.randint(1, 2))):
            body[key] = rng.choice([*HOSTILE, _deep(rng.choice([65, 200, 250]))])
        bodies.append(body)
    return bodies


async def _routes(server: Server) -> list[tuple[str, str, dict[str, Any]]]:
    """(method, path, a valid body) for the routes that change state, with real ids."""
    flow = (await server.call("POST", "/flows", json=spec("f", "a"))).body["flowId"]
    await server.call("POST", f"/flows/{flow}/publish")
    run = (await server.call("POST", f"/flows/{flow}/execute", json={})).body["executionId"]
    return [
        ("POST", "/flows", {"name": "n", "blocks": [{"block": "template"}], "settings": {}}),
        ("PUT", f"/flows/{flow}", {"name": "n", "blocks": [], "inputs": []}),
        ("POST", f"/flows/{flow}/promote", {"version": 1}),
        ("POST", f"/flows/{flow}/execute", {"message": "m", "parameters": {}, "version": 1}),
        ("POST", f"/flows/{flow}/jobs", {"message": "m", "trace": False}),
        ("POST", "/runs", {"flowId": flow, "version": 1, "message": "m", "parameters": {}}),
        ("POST", f"/runs/{run}/tool-results", {"toolResults": [{"toolCallId": "c"}]}),
        ("POST", f"/runs/{run}/cancel", {}),
        ("POST", "/volumes", {"sizeGb": 1, "name": "v", "interface": "file"}),
        ("POST", "/reservations", {"cpus": 1, "startTime": 0, "durationHours": 1.0}),
        ("POST", "/ssh-keys", {"name": "k", "publicKey": "ssh-ed25519 AAAA"}),
        ("POST", "/organizations", {"name": "o"}),
        ("POST", "/tasks/task_nope/cancel", {"gracePeriod": 1}),
        ("POST", "/tasks/task_nope/volumes", {"volumeId": "v", "mountPath": "/m"}),
        ("PUT", "/organizations/org_default/credits", {"credits": 5}),
    ]


async def test_hostile_bodies_never_get_a_5xx(server: Server, start_server: StartServer) -> None:
    rng = random.Random(SEED)
    failures = []
    for method, path, valid in await _routes(server):
        for body in _bodies(rng, valid, 25):
            answer = await server.call(method, path, json=body)
            if answer.status >= 500:
                failures.append((method, path, str(body)[:120], answer.status))
    assert failures == []
    for list_path in LISTS:
        assert (await server.call("GET", list_path)).status == 200, list_path
    await server.stop()
    restarted = await start_server(server.home)
    for list_path in LISTS:
        assert (await restarted.call("GET", list_path)).status == 200, list_path


QUERIES = {
    "/flows": ["pageSize", "pageToken"],
    "/runs": ["pageSize", "pageToken", "flowId", "condition"],
    "/tasks": ["pageSize", "pageToken", "limit", "status"],
    "/volumes": ["pageSize", "pageToken", "limit"],
    "/instances": ["limit", "gpuType", "maxPrice", "minGpuMemoryGb", "gpuCount"],
    "/reservations/availability": [
        "earliestStartTime",
        "latestEndTime",
        "durationHours",
        "instanceType",
        "gpu",
    ],
}

TEXT = [
    "nan",
    "inf",
    "-inf",
    "1e400",
    str(2**63),
    str(2**64),
    "-1",
    "0",
    "9" * 5000,
    "\x00",
    "%00",
    "é",
    "a" * 5000,
    "eyJ2IjoxLCJhZnRlciI6OTIyMzM3MjAzNjg1NDc3NTgwOH0",
]


async def test_hostile_queries_and_path_parameters_never_get_a_5xx(server: Server) -> None:
    failures = []
    for path, names in QUERIES.items():
        for name in names:
            for value in TEXT:
                answer = await server.call("GET", path, params={name: value})
                if answer.status >= 500:
                    failures.append((path, name, value[:40], answer.status))
    for value in ("a%00b", "%2e%2e", "x" * 3000, "%C3%A9", "flow_%00"):
        for path in (
            f"/flows/{value}",
            f"/runs/{value}",
            f"/runs/{value}/events",
            f"/runs/{value}/trace",
            f"/runs/{value}/artifacts/{value}",
            f"/tasks/{value}",
            f"/tasks/{value}/logs",
            f"/tasks/{value}/outputs/{value}",
            f"/volumes/{value}",
            f"/reservations/{value}",
            f"/ssh-keys/{value}",
        ):
            answer = await server.call("GET", path)
            if answer.status >= 500:
                failures.append((path[:60], "", "", answer.status))
    assert failures == []
