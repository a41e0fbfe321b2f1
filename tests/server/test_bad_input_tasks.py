"""Bad input around tasks never breaks the server: env bytes, volumes, stored reservations.

Each case drives a real server over HTTP: the answer is the documented error naming the
field, nothing is left behind (no record, no directory), and the lists still answer.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from .conftest import Server, StartServer

pytestmark = pytest.mark.anyio


def _refused(answer: Any, field: str) -> None:
    assert answer.status == 422, answer.body
    message = answer.body["error"]["message"]
    assert message.startswith(field), message


@pytest.mark.parametrize(
    ("env", "field"),
    [
        ({"A\x00B": "x"}, "env"),
        ({"A=B": "x"}, "env"),
        ({"": "x"}, "env"),
        # A shell cannot set these: a cluster job's shell failed on them, and the
        # server's restart after it (found by QA on Slurm)
        ({"A-B": "x"}, "env"),
        ({"1X": "x"}, "env"),
        ({"X$(id)": "x"}, "env"),
        ({"GOOD": "a\x00b"}, "env.GOOD"),
    ],
)
async def test_an_env_no_process_can_take_is_422_naming_it(
    server: Server, env: dict[str, str], field: str
) -> None:
    answer = await server.call("POST", "/tasks", json={"command": "true", "env": env})
    _refused(answer, field)
    assert (await server.call("GET", "/tasks")).body["items"] == []


async def test_a_bad_variable_name_is_named_by_its_start_never_whole(server: Server) -> None:
    # QA: `-e 'c2VjcmV0/+SECRETx='` (a secret given without its NAME=, ending in base64's
    # padding) was refused naming the whole "name": the secret, in the error
    env = {"c2VjcmV0/+SECRETx": ""}
    answer = await server.call("POST", "/tasks", json={"command": "true", "env": env})
    _refused(answer, "env: a name of 17 characters starting 'c2V'... (character 9: '/')")
    assert "SECRET" not in answer.body["error"]["message"]


@pytest.mark.parametrize("value", [None, [], {}])
async def test_an_env_value_that_is_not_text_a_number_or_a_boolean_is_422_naming_it(
    server: Server, value: object
) -> None:
    body = {"command": "true", "env": {"A": "fine", "B": value}}
    answer = await server.call("POST", "/tasks", json=body)
    _refused(answer, "env.B: must be text, a number or a boolean")
    assert (await server.call("GET", "/tasks")).body["items"] == []


async def test_a_field_of_the_wrong_type_is_422_naming_it_and_its_value(server: Server) -> None:
    # QA: "cpus: invalid value for type, expected int | None", where other checks name
    # the value they were given
    for body, message in [
        ({"command": "true", "cpus": "2"}, "cpus: expected int, got str '2'"),
        ({"command": "true", "name": 5}, "name: expected str, got int 5"),
        ({"command": "true", "maxRunTime": [1]}, "maxRunTime: expected float, got list [1]"),
    ]:
        answer = await server.call("POST", "/tasks", json=body)
        assert answer.status == 422 and answer.body["error"]["message"] == message, answer.body
    assert (await server.call("GET", "/tasks")).body["items"] == []


async def test_a_command_or_variable_past_linuxs_argument_limit_is_422(server: Server) -> None:
    # 200 KB were accepted and then failed at exec, "Argument list too long" (found by QA)
    long = "echo " + "x" * 140_000
    _refused(await server.call("POST", "/tasks", json={"command": long}), "command")
    listed = {"command": ["echo", "y" * 140_000]}
    _refused(await server.call("POST", "/tasks", json=listed), "command[1]")
    big_env = {"command": "true", "env": {"BIG": "z" * 140_000}}
    _refused(await server.call("POST", "/tasks", json=big_env), "env.BIG")
    assert (await server.call("GET", "/tasks")).body["items"] == []
    fine = {"command": "echo " + "x" * 100_000, "env": {"BIG": "z" * 100_000}}
    assert (await server.call("POST", "/tasks", json=fine)).status == 201


@pytest.mark.filterwarnings("ignore:Sending a large body:ResourceWarning")
async def test_a_command_and_env_no_process_can_start_with_together_are_422(
    server: Server,
) -> None:
    # QA: each part was under the limit of one argument, and each task was accepted
    # (201) and failed as it started: "Argument list too long", or bubblewrap's
    # "Exceeded maximum number of arguments 9000" (three for each variable)
    many = {"command": "true", "env": {f"V{i}": "x" for i in range(3000)}}
    _refused(await server.call("POST", "/tasks", json=many), "env")
    large = {"command": "true", "env": {f"V{i}": "x" * 100_000 for i in range(30)}}
    _refused(await server.call("POST", "/tasks", json=large), "env")
    long = {"command": ["echo", *(["y" * 100_000] * 30)]}
    _refused(await server.call("POST", "/tasks", json=long), "command")
    assert (await server.call("GET", "/tasks")).body["items"] == []
    most = {
        "command": ["sh", "-c", 'echo "${#V0}" "$#"', "sh", *(["y" * 100_000] * 5)],
        "env": {f"V{i}": "x" * 100_000 for i in range(4)} | {f"S{i}": "s" for i in range(990)},
    }  # just under both limits: it runs
    task = await server.call("POST", "/tasks", json=most)
    assert task.status == 201, task.body
    done = await server.task_ended(task.body["taskId"])
    assert done["status"] == "completed", done
    logs = await server.call("GET", f"/tasks/{task.body['taskId']}/logs")
    assert "100000 5" in str(logs.body), logs.body


async def test_an_env_value_with_a_lone_surrogate_is_422(server: Server) -> None:
    body = b'{"command": "true", "env": {"GOOD": "a\\ud800b"}}'  # valid JSON, not valid UTF-8
    headers = {"Content-Type": "application/json"}
    answer = await server.call("POST", "/tasks", data=body, headers=headers)
    assert 400 <= answer.status < 500, answer.body
    assert (await server.call("GET", "/tasks")).body["items"] == []


def _volume_dirs(home: Path) -> list[str]:
    root = home / "volumes"
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


async def test_racing_volumes_with_one_name_leave_one_directory(server: Server) -> None:
    body = {"sizeGb": 1, "name": "shared"}
    answers = await asyncio.gather(*(server.call("POST", "/volumes", json=body) for _ in range(8)))
    statuses = sorted(a.status for a in answers)
    assert statuses == [201] + [409] * 7, statuses
    made = next(a.body for a in answers if a.status == 201)
    assert _volume_dirs(server.home) == [made["volumeId"]]  # the losers' directories are gone
    listed = (await server.call("GET", "/volumes")).body["items"]
    assert [v["volumeId"] for v in listed] == [made["volumeId"]]


async def test_a_bad_stored_reservation_is_skipped_with_a_warning(
    server: Server, start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    made = await server.call("POST", "/reservations", json={"cpus": 1, "durationHours": 1})
    assert made.status == 201, made.body
    good = made.body["reservationId"]
    await server.stop()
    book = server.home / "compute" / "reservations.json"
    items = json.loads(book.read_text())
    spoiled = [
        {**items[0], "reservationId": "res_far", "startTime": 1e23},
        {**items[0], "reservationId": "res_backwards", "endTime": 0},
        {**items[0], "reservationId": "res_typed", "cpus": "many"},
        "not a record",
    ]
    book.write_text(json.dumps(items + spoiled))
    with caplog.at_level(logging.WARNING, logger="vi_flow.server"):
        restarted = await start_server(server.home)
        listed = await restarted.call("GET", "/reservations")
    assert listed.status == 200, listed.body
    assert [r["reservationId"] for r in listed.body["items"]] == [good]
    for name in ("res_far", "res_backwards", "res_typed"):
        assert f"unreadable reservation record {name}" in caplog.text
    assert (await restarted.call("GET", f"/reservations/{good}")).status == 200
    again = await restarted.call("POST", "/reservations", json={"cpus": 1, "durationHours": 1})
    assert again.status == 201, again.body


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"command": "true", "name": "a\x00b"}, "name"),
        (
            {
                "command": "true",
                "volumes": [
                    {"name": "fine", "mountPath": "/data", "sizeGb": 1},
                    {"name": "late", "mountPath": "a\x00b", "sizeGb": 1},
                ],
            },
            "volumes.mountPath",
        ),
        (  # QA: a part no file name can hold, the task failed at its start
            {"command": "true", "volumes": [{"name": "v", "mountPath": "/" + "a" * 300}]},
            "volumes.mountPath",
        ),
        ({"command": "true", "workingDir": "w/" + "a" * 300}, "workingDir"),
        (  # a newline made a folder "data\nx" in the workspace
            {"command": "true", "volumes": [{"name": "v", "mountPath": "/data\nx", "sizeGb": 1}]},
            "volumes.mountPath",
        ),
        (  # both would be VI_FLOW_VOLUME_DATA: one path was lost without a word
            {
                "command": "true",
                "volumes": [
                    {"name": "data", "mountPath": "/a", "sizeGb": 1},
                    {"name": "DATA", "mountPath": "/b", "sizeGb": 1},
                ],
            },
            "volumes[1]",
        ),
    ],
)
async def test_a_task_with_a_nul_in_its_name_or_a_mount_is_422_and_makes_nothing(
    server: Server, body: dict[str, Any], field: str
) -> None:
    _refused(await server.call("POST", "/tasks", json=body), field)
    assert (await server.call("GET", "/volumes")).body["items"] == []  # not even the first
    assert _volume_dirs(server.home) == []
    good = await server.call("POST", "/tasks", json={"command": "true"})
    assert good.status == 201, good.body
    for _ in range(200):  # the scheduler still runs tasks
        task = (await server.call("GET", f"/tasks/{good.body['taskId']}")).body
        if task["status"] not in ("pending", "running"):
            break
        await asyncio.sleep(0.1)
    assert task["status"] == "completed", task


@pytest.mark.parametrize(
    ("body", "field"),
    [
        # QA: `volume` for `volumeId` was dropped, and a new volume made and mounted
        ({"command": "true", "volumes": [{"volume": "volume://x", "mountPath": "/v"}]},
         "volumes[0]"),
    ],
)  # fmt: skip
async def test_a_volume_entrys_unknown_key_is_422_naming_it_and_makes_nothing(
    server: Server, body: dict[str, Any], field: str
) -> None:
    answer = await server.call("POST", "/tasks", json=body)
    assert answer.status == 422, answer.body
    assert field in answer.body["error"]["message"], answer.body
    assert (await server.call("GET", "/tasks")).body["items"] == []
    assert (await server.call("GET", "/volumes")).body["items"] == []


@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [
        ("POST", "/runs", {"flowId": "a\x00b"}, "flowId"),
        ("POST", "/tasks", {"command": "true", "reservationId": "res_\x00"}, "reservationId"),
        ("POST", "/tasks", {"command": "true", "volumes": [{"volumeId": "vol_\x00",
                                                           "mountPath": "/data"}]},
         "volumes[0].volumeId"),
        ("POST", "/retention/prune", {"organizationId": "org_\x00", "olderThan": "1d",
                                      "dryRun": True}, "organizationId"),
    ],
)  # fmt: skip
async def test_an_id_holding_a_nul_is_422_naming_it_on_either_database(
    server: Server, method: str, path: str, body: dict[str, Any], field: str
) -> None:
    # QA AN: on PostgreSQL (whose text holds no NUL) these were 500s with psycopg's
    # DataError in the log; on SQLite 404 or 422. Both refuse them alike now.
    answer = await server.call(method, path, json=body)
    _refused(answer, field)
    assert "NUL" in answer.body["error"]["message"], answer.body
    assert (await server.call("GET", "/tasks")).body["items"] == []


async def test_a_task_step_naming_an_id_with_a_nul_fails_as_a_bad_setting(
    server: Server,
) -> None:
    # QA AN: on PostgreSQL the step failed "PostgresError: PostgreSQL text fields cannot
    # contain NUL (0x00) bytes" (BLOCK_ERROR); on SQLite, reservation not found.
    made = await server.call("POST", "/tasks", json={"command": "true"})
    assert made.status == 201, made.body
    mount = await server.call(
        "POST", f"/tasks/{made.body['taskId']}/volumes",
        json={"volumeId": "vol_\x00", "mountPath": "/data"},
    )  # fmt: skip
    _refused(mount, "volumeId")
    for settings in (
        {"command": "true", "reservationId": "res_\x00"},
        {"command": "true", "volumes": [{"volumeId": "vol_\x00", "mountPath": "/data"}]},
    ):
        flow = await server.call(
            "POST", "/flows", json={"name": "t", "blocks": [{"block": "task", "id": "t",
                                                             "settings": settings}]},
        )  # fmt: skip
        assert flow.status == 201, flow.body
        outcome = await server.call("POST", f"/flows/{flow.body['flowId']}/execute", json={})
        assert outcome.body["state"] == "failed", outcome.body
        error = outcome.body["error"]
        assert "Postgres" not in error and "psycopg" not in error, error
        assert outcome.body.get("errorCode") == "INVALID_SETTINGS", outcome.body  # QA AP
        assert "NUL" in error, error
