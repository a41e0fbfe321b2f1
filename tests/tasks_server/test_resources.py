"""Volumes, reservations, SSH keys, instances and run artifacts over the real app."""

from __future__ import annotations

import asyncio
import errno
import os
import threading
from pathlib import Path
from typing import Any

import anyio
import asyncssh
import pytest

from vi_flow.models.tasks import TaskConfig
from vi_flow.server import trees
from vi_flow.server.tasks import TASKS_KEY, volumes

from ..live_server import deep_path, deep_tree
from .conftest import StartServer, TaskServer


@pytest.mark.anyio
async def test_volume_names_are_validated(server: TaskServer) -> None:
    for name in ("a/b", "..", "x..y", "", "-lead"):
        answer = await server.call("POST", "/volumes", json={"name": name, "sizeGb": 1})
        assert answer.status == 422, name
        assert answer.body["error"]["message"].startswith("name"), answer.body
    long = await server.call("POST", "/volumes", json={"name": "v" * 300, "sizeGb": 1})
    assert "longer than 63 characters" in long.body["error"]["message"]  # the rule it breaks
    created = await server.call("POST", "/volumes", json={"name": "data", "sizeGb": 5})
    assert created.status == 201 and created.body["name"] == "data"
    duplicate = await server.call("POST", "/volumes", json={"name": "data"})
    assert duplicate.status == 409
    listed = (await server.call("GET", "/volumes")).body["items"]
    assert [v["name"] for v in listed] == ["data"]
    assert (await server.call("GET", "/volumes/nope")).status == 404


@pytest.mark.anyio
async def test_task_sees_its_volumes_and_a_mounted_volume_cannot_be_deleted(
    server: TaskServer,
) -> None:
    volume = (await server.call("POST", "/volumes", json={"name": "datasets"})).body
    script = 'echo hi > data/in-volume.txt; echo "$VI_FLOW_VOLUME_DATASETS"; ls rel/sub; sleep 30'
    task = await server.submit(
        command=script,
        volumes=[
            {"volumeId": "datasets", "mountPath": "/data"},
            {"name": "scratch-1", "mountPath": "rel/sub"},
        ],
    )
    await server.wait(task["taskId"], until={"running"})
    for _ in range(300):
        if (Path(volume["path"]) / "in-volume.txt").exists():
            break
        await asyncio.sleep(0.01)
    assert (Path(volume["path"]) / "in-volume.txt").read_text() == "hi\n"
    shown = (await server.call("GET", "/volumes/datasets")).body
    assert shown["attachedTo"] == [task["taskId"]]
    answer = await server.call("DELETE", f"/volumes/{volume['volumeId']}")
    assert answer.status == 409 and task["taskId"] in answer.body["error"]["message"]
    logs = (await server.call("GET", f"/tasks/{task['taskId']}/logs")).body
    assert logs["lines"][0] == volume["path"]
    await server.call("POST", f"/tasks/{task['taskId']}/cancel", json={"force": True})
    answer = await server.call("DELETE", "/volumes/datasets")
    assert answer.status == 200 and answer.body == {"volumeId": volume["volumeId"], "deleted": True}
    assert _gone(Path(volume["path"]))
    bad = await server.call(
        "POST",
        "/tasks",
        json={"command": "true", "volumes": [{"volumeId": "gone", "mountPath": "/d"}]},
    )
    assert bad.status == 422 and bad.body["error"]["message"].startswith("volumes[0].volumeId")


@pytest.mark.anyio
async def test_mount_volume_into_a_running_task(server: TaskServer) -> None:
    await server.call("POST", "/volumes", json={"name": "late"})
    task = await server.submit(command="sleep 30")
    await server.wait(task["taskId"], until={"running"})
    answer = await server.call(
        "POST", f"/tasks/{task['taskId']}/volumes", json={"volumeId": "late"}
    )
    assert answer.status == 200, answer.body
    assert answer.body["config"]["volumes"][-1]["mountPath"] == "/volumes/late"
    assert (Path(task["workdir"]) / "volumes" / "late").is_dir()
    await server.call("POST", f"/tasks/{task['taskId']}/cancel", json={"force": True})
    ended = await server.call("POST", f"/tasks/{task['taskId']}/volumes", json={"volumeId": "late"})
    assert ended.status == 409


@pytest.mark.anyio
async def test_two_volumes_of_one_variable_name_are_not_mounted_together(
    server: TaskServer,
) -> None:
    # a_b and a-b are two volumes, but both would be VI_FLOW_VOLUME_A_B in a task: one
    # path was silently lost (found by QA). One task may mount one of them, at any path.
    for name in ("a_b", "a-b", "other"):
        assert (await server.call("POST", "/volumes", json={"name": name})).status == 201
    both = [{"volumeId": "a_b", "mountPath": "/x"}, {"volumeId": "a-b", "mountPath": "/y"}]
    refused = await server.call("POST", "/tasks", json={"command": "true", "volumes": both})
    assert refused.status == 422, refused.body
    message = refused.body["error"]["message"]
    assert message.startswith("volumes[1]") and "VI_FLOW_VOLUME_A_B" in message, message
    assert (await server.call("GET", "/tasks")).body["items"] == []
    twice = [{"volumeId": "a_b", "mountPath": "/x"}, {"volumeId": "a_b", "mountPath": "/y"}]
    task = await server.submit(command="sleep 30", volumes=twice)  # one volume, two paths
    await server.wait(task["taskId"], until={"running"})
    mount = f"/tasks/{task['taskId']}/volumes"
    late = await server.call("POST", mount, json={"volumeId": "a-b"})
    assert late.status == 422 and "VI_FLOW_VOLUME_A_B" in late.body["error"]["message"]
    assert (await server.call("POST", mount, json={"volumeId": "other"})).status == 200
    config = (await server.call("GET", f"/tasks/{task['taskId']}")).body["config"]
    for path, words in (
        ("/", "not the workspace itself"),
        ("a/../..", "'..'"),
        ("/" + "a" * 256, "256 bytes"),  # QA: 500 (ENAMETOOLONG)
        ("/d/" + "é" * 128, "256 bytes"),  # 128 characters, 256 bytes in UTF-8
    ):
        answer = await server.call("POST", mount, json={"volumeId": "other", "mountPath": path})
        assert answer.status == 422 and words in answer.body["error"]["message"], answer.body
    after = (await server.call("GET", f"/tasks/{task['taskId']}")).body["config"]
    assert after["volumes"] == config["volumes"]  # nothing recorded
    fits = await server.call("POST", mount, json={"volumeId": "other", "mountPath": "b" * 255})
    assert fits.status == 200, fits.body
    await server.call("POST", f"/tasks/{task['taskId']}/cancel", json={"force": True})


@pytest.mark.anyio
async def test_mounts_at_once_into_one_task_are_all_kept_and_checked_together(
    server: TaskServer,
) -> None:
    # Found by QA: five mounts at once kept one volume in the task's config, and two
    # volumes of one variable name mounted at once were both accepted.
    names = [f"pm{i}" for i in range(5)] + ["clash", "CLASH"]
    for name in names:
        assert (await server.call("POST", "/volumes", json={"name": name})).status == 201
    task = await server.submit(command="sleep 30")
    await server.wait(task["taskId"], until={"running"})
    mount = f"/tasks/{task['taskId']}/volumes"
    answers = await asyncio.gather(
        *(server.call("POST", mount, json={"volumeId": name}) for name in names)
    )
    statuses = {name: answer.status for name, answer in zip(names, answers, strict=True)}
    assert [statuses[f"pm{i}"] for i in range(5)] == [200] * 5, [a.body for a in answers]
    assert sorted([statuses["clash"], statuses["CLASH"]]) == [200, 422], statuses
    loser = "clash" if statuses["clash"] == 422 else "CLASH"
    after = (await server.call("GET", f"/tasks/{task['taskId']}")).body
    shown = sorted(v["mountPath"] for v in after["config"]["volumes"])
    kept = sorted(f"/volumes/{n}" for n in names if n != loser)
    assert shown == kept, shown
    assert not (Path(task["workdir"]) / "volumes" / loser).exists()  # its link went too
    await server.call("POST", f"/tasks/{task['taskId']}/cancel", json={"force": True})


@pytest.mark.anyio
async def test_a_volume_deleted_while_it_is_mounted_into_a_running_task(
    server: TaskServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Found by QA: the mount and the delete both answered 200; the task's config named
    # a volume that was gone, and every later shell into it failed (bwrap: no source).
    making, deleted = threading.Event(), threading.Event()
    make_link = volumes._link

    def link(*args: Any) -> None:  # the delete comes while the mount makes its link
        making.set()
        deleted.wait(10)
        make_link(*args)

    monkeypatch.setattr(volumes, "_link", link)
    task = await server.submit(command="sleep 30")
    await server.wait(task["taskId"], until={"running"})
    volume = (await server.call("POST", "/volumes", json={"name": "going"})).body
    path = f"/tasks/{task['taskId']}/volumes"
    mount = asyncio.ensure_future(server.call("POST", path, json={"volumeId": "going"}))
    await anyio.to_thread.run_sync(making.wait, 10)
    gone = await server.call("DELETE", f"/volumes/{volume['volumeId']}")
    deleted.set()
    mounted = await mount
    assert gone.status == 200 and mounted.status == 404, mounted.body
    config = (await server.call("GET", f"/tasks/{task['taskId']}")).body["config"]
    assert config["volumes"] == [] and not (Path(task["workdir"]) / "volumes" / "going").exists()
    monkeypatch.setattr(volumes, "_link", make_link)
    kept = (await server.call("POST", "/volumes", json={"name": "kept"})).body
    assert (await server.call("POST", path, json={"volumeId": "kept"})).status == 200
    refused = await server.call("DELETE", f"/volumes/{kept['volumeId']}")
    assert refused.status == 409 and task["taskId"] in refused.body["error"]["message"]
    await server.call("POST", f"/tasks/{task['taskId']}/cancel", json={"force": True})


@pytest.mark.anyio
async def test_reservation_holds_capacity_until_cancelled(server: TaskServer) -> None:
    answer = await server.call("POST", "/reservations", json={"cpus": 2, "durationHours": 1})
    assert answer.status == 201, answer.body
    reservation = answer.body
    assert reservation["status"] == "active" and reservation["cpus"] == 2
    outsider = await server.submit(command="echo outsider")
    await asyncio.sleep(0.3)
    waiting = (await server.call("GET", f"/tasks/{outsider['taskId']}")).body
    assert waiting["status"] == "pending" and waiting["reason"] == "WaitingForCapacity"
    insider = await server.submit(
        command="echo insider", reservationId=reservation["reservationId"]
    )
    assert (await server.wait(insider["taskId"]))["status"] == "completed"
    full = await server.call("POST", "/reservations", json={"cpus": 1})
    assert full.status == 422 and "free in that window: 0 CPUs" in full.body["error"]["message"]
    slots = (
        await server.call("GET", "/reservations/availability", params={"instanceType": "cpu"})
    ).body["items"]
    assert slots and slots[0]["startTime"] >= reservation["endTime"]
    cancelled = await server.call("DELETE", f"/reservations/{reservation['reservationId']}")
    assert cancelled.body["status"] == "cancelled"
    assert (await server.wait(outsider["taskId"]))["status"] == "completed"
    listed = (await server.call("GET", "/reservations")).body["items"]
    assert [r["reservationId"] for r in listed] == [reservation["reservationId"]]
    assert (await server.call("GET", "/reservations/res_nope")).status == 404
    gpu = await server.call("POST", "/reservations", json={"gpu": "a100"})
    assert gpu.status == 422 and "no GPUs" in gpu.body["error"]["message"]


@pytest.mark.anyio
async def test_reservations_made_at_once_are_all_kept_over_a_restart(
    start_server: StartServer,
) -> None:
    # Each change rewrote the book through one fixed "reservations.tmp" on a worker
    # thread: saves made at once wrote over each other's file, and a later snapshot
    # could be renamed in before an earlier one, which then lost the later reservations.
    first = await start_server(local_cpus=64, local_gpus=[])
    made = await asyncio.gather(
        *(first.call("POST", "/reservations", json={"cpus": 1, "name": f"r{n}"}) for n in range(40))
    )
    assert [answer.status for answer in made] == [201] * 40, [a.body for a in made]
    cancelled = await asyncio.gather(
        *(first.call("DELETE", f"/reservations/{a.body['reservationId']}") for a in made[:20])
    )
    assert [answer.status for answer in cancelled] == [200] * 20
    await first.stop()
    second = await start_server(first.home, local_cpus=64, local_gpus=[])
    listed = (await second.call("GET", "/reservations")).body["items"]
    status = {r["name"]: r["status"] for r in listed}
    assert status == {f"r{n}": "cancelled" if n < 20 else "active" for n in range(40)}


@pytest.mark.anyio
async def test_a_reservation_change_that_cannot_be_saved_is_not_kept(server: TaskServer) -> None:
    kept = (await server.call("POST", "/reservations", json={"cpus": 1, "name": "kept"})).body
    book = server.home / "compute" / "reservations.json"
    book.unlink()
    (book / "in-the-way").mkdir(parents=True)  # the book cannot be written
    made = await server.call("POST", "/reservations", json={"cpus": 1, "name": "lost"})
    cancelled = await server.call("DELETE", f"/reservations/{kept['reservationId']}")
    assert made.status == cancelled.status == 500  # the home is broken: an internal error
    listed = (await server.call("GET", "/reservations")).body["items"]
    assert {r["name"]: r["status"] for r in listed} == {"kept": "active"}


@pytest.mark.anyio
async def test_ssh_keys_are_validated_and_deduplicated(
    server: TaskServer, client_key: asyncssh.SSHKey
) -> None:
    public = client_key.export_public_key().decode()
    bad = await server.call("POST", "/ssh-keys", json={"name": "k", "publicKey": "ssh-rsa nope"})
    assert bad.status == 422 and bad.body["error"]["message"].startswith("publicKey")
    first = await server.call("POST", "/ssh-keys", json={"name": "laptop", "publicKey": public})
    again = await server.call("POST", "/ssh-keys", json={"name": "laptop2", "publicKey": public})
    assert first.status == 201 and again.status == 200
    assert first.body["keyId"] == again.body["keyId"]
    assert first.body["fingerprint"].startswith("SHA256:")
    listed = (await server.call("GET", "/ssh-keys")).body["items"]
    assert [k["keyId"] for k in listed] == [first.body["keyId"]]
    deleted = await server.call("DELETE", f"/ssh-keys/{first.body['keyId']}")
    assert deleted.body == {"keyId": first.body["keyId"], "deleted": True}
    assert (await server.call("GET", f"/ssh-keys/{first.body['keyId']}")).status == 404


@pytest.mark.anyio
async def test_instances_list_the_machine(server: TaskServer) -> None:
    items = (await server.call("GET", "/instances")).body["items"]
    assert items == [
        {
            "instanceType": "cpu",
            "gpuType": None,
            "gpuCount": 0,
            "gpuMemoryGb": 0,
            "cpus": 2,
            "memoryGb": items[0]["memoryGb"],
            "pricePerHour": 0.0,
            "available": True,
            "region": "local",
        }
    ]
    assert (await server.call("GET", "/instances", params={"gpuType": "h100"})).body["items"] == []


@pytest.mark.anyio
async def test_run_artifacts_and_the_engine_service(server: TaskServer) -> None:
    flow = await server.call("POST", "/flows", json={"name": "f", "blocks": []})
    assert flow.status == 201, flow.body
    run = await server.call("POST", "/runs", json={"flowId": flow.body["flowId"]})
    assert run.status == 201, run.body
    run_id = run.body["runId"]
    service = server.app[TASKS_KEY]
    config = TaskConfig(
        command='for i in 1 2 3; do echo "line $i"; done; echo err >&2; '
        'mkdir -p "$VI_FLOW_OUTPUT_DIR/model"; printf w > "$VI_FLOW_OUTPUT_DIR/model/w.bin"'
    )
    task = await service.submit("org_default", config, run_id=run_id, step_id="train")
    lines = [item async for item in service.follow(task.task_id)]
    assert [x for x in lines if x[0] == "stdout"] == [("stdout", f"line {i}") for i in (1, 2, 3)]
    assert ("stderr", "err") in lines
    done = await service.wait(task.task_id, timeout=5)
    assert done.exit_code == 0 and done.run_id == run_id and done.step_id == "train"
    assert await service.outputs.tail(task.task_id, 2, "stdout") == ["line 2", "line 3"]
    listing = (await server.call("GET", f"/runs/{run_id}/artifacts")).body
    assert listing == {"items": [{"path": "model/w.bin", "size": 1}]}
    blob = await server.call("GET", f"/runs/{run_id}/artifacts/model/w.bin")
    assert blob.status == 200 and blob.raw == b"w"
    sneaky = await server.call(
        "GET", f"/runs/{run_id}/artifacts/model/%2E%2E/%2E%2E/logs/stdout.log"
    )
    assert sneaky.status in (400, 404) and sneaky.raw != b"line 1\n"
    # a later task of the run writing the same path wins, in the listing and the download
    again = TaskConfig(
        command='mkdir -p "$VI_FLOW_OUTPUT_DIR/model"; printf v2 > "$VI_FLOW_OUTPUT_DIR/model/w.bin"'
    )
    later = await service.submit("org_default", again, run_id=run_id, step_id="tune")
    assert (await service.wait(later.task_id, timeout=5)).exit_code == 0
    listing = (await server.call("GET", f"/runs/{run_id}/artifacts")).body
    assert listing == {"items": [{"path": "model/w.bin", "size": 2}]}
    assert (await server.call("GET", f"/runs/{run_id}/artifacts/model/w.bin")).raw == b"v2"
    absent = await server.call("GET", f"/runs/{run_id}/artifacts/model/none.bin")
    assert absent.status == 404 and absent.body["error"]["code"] == "NOT_FOUND"
    missing = await server.call("GET", "/runs/run_missing/artifacts")
    assert missing.status == 404 and missing.body["error"]["code"] == "RUN_NOT_FOUND"


@pytest.mark.anyio
@pytest.mark.usefixtures("deep_trees")
async def test_outputs_of_a_tree_deeper_than_the_recursion_limit_are_listed(
    server: TaskServer,
) -> None:
    # Found by QA: 1,200 nested directories made the listing a 500 (RecursionError).
    task = await server.submit(command=deep_tree("VI_FLOW_OUTPUT_DIR"))
    assert (await server.wait(task["taskId"], within=30))["status"] == "completed"
    listed = await server.call("GET", f"/tasks/{task['taskId']}/outputs")
    assert listed.status == 200, listed.body
    assert listed.body["items"] == [{"path": deep_path(), "size": 6}]
    fetched = await server.call("GET", f"/tasks/{task['taskId']}/outputs/{deep_path()}")
    assert fetched.raw == b"bottom"


@pytest.mark.anyio
@pytest.mark.usefixtures("deep_trees")
async def test_a_volume_holding_a_deep_tree_is_deleted_with_its_data(server: TaskServer) -> None:
    # Found by QA: the delete answered 500 (RecursionError) once the row was gone, and
    # the data stayed on disk, reachable by no volume.
    volume = (await server.call("POST", "/volumes", json={"name": "deep"})).body
    mount = [{"volumeId": "deep", "mountPath": "/deep"}]
    task = await server.submit(command=deep_tree("VI_FLOW_VOLUME_DEEP"), volumes=mount)
    assert (await server.wait(task["taskId"], within=30))["status"] == "completed"
    answer = await server.call("DELETE", "/volumes/deep")
    assert answer.status == 200, answer.body
    assert _gone(Path(volume["path"]))
    assert os.listdir(server.home / "volumes") == []  # nothing left aside either


@pytest.mark.anyio
async def test_a_deleted_volume_whose_data_could_not_be_removed_is_removed_later(
    start_server: StartServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Found by QA: the row went first, then the removal failed: the data stayed on disk,
    # named by no volume, and nothing ever tried again.
    server = await start_server(local_cpus=2, local_gpus=[])
    volume = (await server.call("POST", "/volumes", json={"name": "stuck"})).body
    (Path(volume["path"]) / "data.bin").write_bytes(b"x" * 1000)

    def fail(path: Path) -> bool:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(trees, "remove_tree", fail)
    assert (await server.call("DELETE", "/volumes/stuck")).status == 200
    monkeypatch.undo()
    volumes_dir = server.home / "volumes"
    assert os.listdir(volumes_dir) == [f".deleted-{volume['volumeId']}"]
    await server.stop()
    await start_server(server.home, local_cpus=2, local_gpus=[])  # removed when it starts
    with anyio.fail_after(5):
        while os.listdir(volumes_dir):
            await asyncio.sleep(0.02)


@pytest.mark.anyio
async def test_data_set_aside_by_a_delete_that_never_committed_goes_back(
    start_server: StartServer,
) -> None:
    # The server stopped between the rename and the commit: the row is there, and so
    # must its data be.
    server = await start_server(local_cpus=2, local_gpus=[])
    volume = (await server.call("POST", "/volumes", json={"name": "kept"})).body
    path = Path(volume["path"])
    (path / "data.txt").write_text("mine")
    await server.stop()
    os.rename(path, path.with_name(f".deleted-{path.name}"))
    server = await start_server(server.home, local_cpus=2, local_gpus=[])
    with anyio.fail_after(5):
        while not (path / "data.txt").exists():
            await asyncio.sleep(0.02)
    assert (path / "data.txt").read_text() == "mine"
    assert os.listdir(server.home / "volumes") == [path.name]


def _gone(path: Path) -> bool:
    return not path.exists()


@pytest.mark.anyio
async def test_tasks_queued_on_a_cancelled_reservation_fail(server: TaskServer) -> None:
    reservation = (await server.call("POST", "/reservations", json={"cpus": 1})).body
    res_id = reservation["reservationId"]
    holder = await server.submit(command="sleep 30", reservationId=res_id)
    queued = await server.submit(command="echo never", reservationId=res_id)
    too_big = await server.call(
        "POST", "/tasks", json={"command": "true", "cpus": 2, "reservationId": res_id}
    )
    assert too_big.status == 422 and "holds 1 CPUs" in too_big.body["error"]["message"]
    await server.wait(holder["taskId"], until={"running"})
    await server.call("DELETE", f"/reservations/{res_id}")
    failed = await server.wait(queued["taskId"])
    assert failed["status"] == "failed" and failed["reason"] == "ReservationEnded"
    late = await server.call("POST", "/tasks", json={"command": "true", "reservationId": res_id})
    assert late.status == 422 and "cancelled" in late.body["error"]["message"]
    foreign = await server.call(
        "POST", "/tasks", json={"command": "true", "reservationId": "res_x"}
    )
    assert foreign.status == 422 and foreign.body["error"]["message"].startswith("reservationId")
    await server.call("POST", f"/tasks/{holder['taskId']}/cancel", json={"force": True})


@pytest.mark.anyio
async def test_a_task_of_a_cancelled_reservation_keeps_its_cpus_while_it_runs(
    server: TaskServer,
) -> None:
    # Cancelling a reservation gave its CPUs back while its task still ran: a waiting
    # task started beside it, 3 CPUs busy on a 2-CPU machine (QA round 10).
    ours = (await server.call("POST", "/reservations", json={"cpus": 1})).body["reservationId"]
    other = (await server.call("POST", "/reservations", json={"cpus": 1})).body
    holder = await server.submit(command="sleep 30", reservationId=ours)
    await server.wait(holder["taskId"], until={"running"})
    waiting = await server.submit(command="echo ran")
    await server.call("DELETE", f"/reservations/{ours}")
    await asyncio.sleep(1.5)  # the cancel wakes the scheduler: time for it to look
    assert (await server.call("GET", f"/tasks/{waiting['taskId']}")).body["status"] == "pending"
    assert (await server.call("GET", f"/tasks/{holder['taskId']}")).body["status"] == "running"
    await server.call("POST", f"/tasks/{holder['taskId']}/cancel", json={"force": True})
    assert (await server.wait(waiting["taskId"]))["status"] == "completed"
    await server.call("DELETE", f"/reservations/{other['reservationId']}")


@pytest.mark.anyio
async def test_gpu_reservation_is_honoured(start_server: StartServer) -> None:
    fake = [{"type": "a100", "memory_gb": 80}, {"type": "a100", "memory_gb": 80}]
    server = await start_server(local_cpus=4, local_gpus=fake)
    reservation = (await server.call("POST", "/reservations", json={"gpu": "a100"})).body
    assert reservation["gpuCount"] == 1 and reservation["instanceType"] == "a100"
    both = await server.submit(command="echo both", gpu="a100:2")
    mine = await server.submit(
        command='echo "mine $CUDA_VISIBLE_DEVICES"; sleep 30',
        gpu="a100",
        reservationId=reservation["reservationId"],
    )
    other = await server.submit(command='echo "other $CUDA_VISIBLE_DEVICES"; sleep 30', gpu="a100")
    await server.wait(mine["taskId"], until={"running"})
    await server.wait(other["taskId"], until={"running"})
    await asyncio.sleep(0.2)
    assert (await server.call("GET", f"/tasks/{both['taskId']}")).body["status"] == "pending"
    lines = []
    for task in (mine, other):
        done = (await server.call("GET", f"/tasks/{task['taskId']}")).body
        lines.append(done["gpuIds"])
    assert sorted(lines) == [[0], [1]]
    for task in (mine, other):
        await server.call("POST", f"/tasks/{task['taskId']}/cancel", json={"force": True})
    await server.call("DELETE", f"/reservations/{reservation['reservationId']}")
    assert (await server.wait(both["taskId"]))["status"] == "completed"


@pytest.mark.anyio
async def test_memory_asked_for_is_held_while_a_task_runs(start_server: StartServer) -> None:
    server = await start_server(local_cpus=4, local_gpus=[], local_memory_gb=8)
    big = await server.submit(command="sleep 30", memoryGb=6)
    await server.wait(big["taskId"], until={"running"})
    second = await server.submit(command="echo second", memoryGb=4)
    small = await server.submit(command="echo small", memoryGb=2)
    untracked = await server.submit(command="echo untracked")
    assert (await server.wait(small["taskId"]))["status"] == "completed"
    assert (await server.wait(untracked["taskId"]))["status"] == "completed"
    waiting = (await server.call("GET", f"/tasks/{second['taskId']}")).body
    assert waiting["status"] == "pending" and waiting["reason"] == "WaitingForCapacity"
    await server.call("POST", f"/tasks/{big['taskId']}/cancel", json={"force": True})
    assert (await server.wait(second["taskId"]))["status"] == "completed"
    too_big = await server.call("POST", "/tasks", json={"command": "true", "memoryGb": 9})
    assert too_big.status == 422 and "this machine has 8 GB" in too_big.body["error"]["message"]


@pytest.mark.anyio
async def test_auto_renew_reservation_rolls_on_until_cancelled(server: TaskServer) -> None:
    hours = 1.5 / 3600  # a 1.5 s window
    body = {"cpus": 1, "durationHours": hours, "autoRenew": True, "name": "rolling"}
    rolling = (await server.call("POST", "/reservations", json=body)).body
    plain = (
        await server.call("POST", "/reservations", json={"cpus": 1, "durationHours": hours})
    ).body
    first_end = rolling["endTime"]
    later = {"cpus": 2, "startTime": first_end + 3_600_000, "durationHours": 1}
    refused = await server.call("POST", "/reservations", json=later)
    assert refused.status == 422  # the rolling one holds its CPU from its start on
    await asyncio.sleep(2.0)
    listed = {r["name"]: r for r in (await server.call("GET", "/reservations")).body["items"]}
    renewed = listed["rolling"]
    assert renewed["status"] == "active" and renewed["endTime"] > first_end
    assert renewed["endTime"] - renewed["startTime"] == first_end - rolling["startTime"]
    assert listed[plain["name"]]["status"] == "expired"
    task = await server.submit(command="echo inside", reservationId=rolling["reservationId"])
    assert (await server.wait(task["taskId"]))["status"] == "completed"
    cancelled = await server.call("DELETE", f"/reservations/{rolling['reservationId']}")
    assert cancelled.body["status"] == "cancelled"
    assert (await server.call("POST", "/reservations", json=later)).status == 201


def _refused_as_held(answer: Any, holder: str) -> bool:
    if answer.status != 409:
        return False
    error = answer.body["error"]
    return error["code"] == "VOLUME_IN_USE" and all(
        word in error["message"] for word in ("'blk'", holder)
    )


@pytest.mark.anyio
async def test_a_block_volume_attaches_to_one_task_at_a_time(server: TaskServer) -> None:
    # Found by QA: "block" is documented as exclusive attach, yet a second running task
    # attached one at submit, and a third by a mount.
    await server.call("POST", "/volumes", json={"name": "blk", "interface": "block"})
    await server.call("POST", "/volumes", json={"name": "shared", "interface": "file"})
    on_d, on_e = ({"volumeId": "blk", "mountPath": path} for path in ("/d", "/e"))
    first = await server.submit(command="sleep 30", volumes=[on_d, on_e])  # one task: fine
    second = await server.call("POST", "/tasks", json={"command": "true", "volumes": [on_d]})
    assert _refused_as_held(second, first["taskId"]), second.body
    other = await server.submit(command="sleep 30", volumes=[{"volumeId": "shared"}])
    late = await server.call("POST", f"/tasks/{other['taskId']}/volumes", json={"volumeId": "blk"})
    assert _refused_as_held(late, first["taskId"]), late.body
    shared = await server.call(
        "POST", f"/tasks/{first['taskId']}/volumes", json={"volumeId": "shared"}
    )
    assert shared.status == 200, shared.body  # a file volume: any number of tasks
    await server.call("POST", f"/tasks/{first['taskId']}/cancel", json={"force": True})
    await server.wait(first["taskId"])
    late = await server.call("POST", f"/tasks/{other['taskId']}/volumes", json={"volumeId": "blk"})
    assert late.status == 200, late.body  # its holder ended
    again = await server.call("POST", "/tasks", json={"command": "true", "volumes": [on_d]})
    assert _refused_as_held(again, other["taskId"]), again.body
    await server.call("POST", f"/tasks/{other['taskId']}/cancel", json={"force": True})


@pytest.mark.anyio
async def test_tasks_attaching_one_block_volume_at_once_leave_one_holder(
    server: TaskServer,
) -> None:
    for trial in range(3):
        name = f"blk-{trial}"
        await server.call("POST", "/volumes", json={"name": name, "interface": "block"})
        body = {"command": "sleep 30", "volumes": [{"volumeId": name, "mountPath": "/d"}]}
        submits = await asyncio.gather(
            *(server.call("POST", "/tasks", json=body) for _ in range(4))
        )
        assert sorted(a.status for a in submits) == [201, 409, 409, 409], [a.body for a in submits]
        holders = [a.body["taskId"] for a in submits if a.status == 201]
        await server.call("POST", f"/tasks/{holders[0]}/cancel", json={"force": True})
        await server.wait(holders[0])
        waiting = [await server.submit(command="sleep 30") for _ in range(3)]
        mounts = await asyncio.gather(
            *(
                server.call("POST", f"/tasks/{t['taskId']}/volumes", json={"volumeId": name})
                for t in waiting
            )
        )
        assert sorted(a.status for a in mounts) == [200, 409, 409], [a.body for a in mounts]
        for task in waiting:
            await server.call("POST", f"/tasks/{task['taskId']}/cancel", json={"force": True})


@pytest.mark.anyio
async def test_mount_volume_into_a_task_still_waiting_to_start(server: TaskServer) -> None:
    # Its directory does not exist yet: the mount makes it (beneath it, link by link).
    await server.call("POST", "/volumes", json={"name": "early"})
    hold = await server.call("POST", "/reservations", json={"cpus": 2, "durationHours": 1})
    # and its variable is set when it starts (QA: it was not, the environment being the
    # one the task was submitted with)
    waiting = await server.submit(
        command='ls "$VI_FLOW_WORKSPACE/volumes"; ls "$VI_FLOW_VOLUME_EARLY" >/dev/null && echo set'
    )
    await asyncio.sleep(0.3)
    task = (await server.call("GET", f"/tasks/{waiting['taskId']}")).body
    assert task["status"] == "pending"
    answer = await server.call(
        "POST", f"/tasks/{waiting['taskId']}/volumes", json={"volumeId": "early"}
    )
    assert answer.status == 200, answer.body
    await server.call("DELETE", f"/reservations/{hold.body['reservationId']}")
    assert (await server.wait(waiting["taskId"]))["status"] == "completed"
    logs = await server.call("GET", f"/tasks/{waiting['taskId']}/logs")
    assert logs.body["lines"] == ["early", "set"]


@pytest.mark.anyio
async def test_a_volume_deleted_while_tasks_that_mount_it_are_made(server: TaskServer) -> None:
    # Found by QA: the delete checked for tasks mounting the volume, then deleted it, in
    # two steps; tasks made in between were accepted and failed to start (bwrap: no
    # such source path). Whichever comes first now wins, whole.
    for trial in range(5):
        volume = (await server.call("POST", "/volumes", json={"name": f"race-{trial}"})).body
        mount = [{"volumeId": volume["volumeId"], "mountPath": "/data"}]
        body = {"command": "sleep 30", "volumes": mount}
        made = [server.call("POST", "/tasks", json=body) for _ in range(3)]
        answers = await asyncio.gather(
            *made, server.call("DELETE", f"/volumes/{volume['volumeId']}")
        )
        *tasks, deleted = answers
        created = [t.body["taskId"] for t in tasks if t.status == 201]
        assert all(t.status in (201, 422) for t in tasks), [t.body for t in tasks]
        if deleted.status == 200:  # then no task was made with it
            assert created == [], (trial, created)
        else:
            assert deleted.status == 409 and created, deleted.body
        for task_id in created:
            await server.call("POST", f"/tasks/{task_id}/cancel", json={"force": True})


async def _outputs_of(server: TaskServer, command: str) -> tuple[str, list[dict[str, Any]]]:
    """Run ``command`` to its end; its task id and outputs list (answered 200)."""
    task = await server.submit(command=command)
    assert (await server.wait(task["taskId"], within=30))["status"] == "completed"
    listed = await server.call("GET", f"/tasks/{task['taskId']}/outputs")
    assert listed.status == 200, listed.body
    return task["taskId"], listed.body["items"]


@pytest.mark.anyio
async def test_an_output_whose_name_holds_a_newline_downloads(server: TaskServer) -> None:
    # QA: the listing named "report\n2024.txt", and its download was "no route" (404):
    # the route's pattern (.+) stopped at the newline.
    task_id, listed = await _outputs_of(
        server, 'printf ok > "$VI_FLOW_OUTPUT_DIR/report\n2024.txt"'
    )
    assert listed == [{"path": "report\n2024.txt", "size": 2}]
    fetched = await server.call("GET", f"/tasks/{task_id}/outputs/report%0A2024.txt")
    assert (fetched.status, fetched.raw) == (200, b"ok")


@pytest.mark.anyio
async def test_head_answers_heads_only_and_the_connection_goes_on(server: TaskServer) -> None:
    # QA: HEAD on the task routes was 405 (every other GET route takes it), and HEAD on a
    # stream (a run's events) sent the events after the head: a client reading on, on the
    # same connection, took them for its next answer.
    task = await server.submit(command='echo hi > "$VI_FLOW_OUTPUT_DIR/f"; echo line; sleep 30')
    task_id = task["taskId"]
    await server.until_logged(task_id, "line")
    emit = {"block": "emit", "id": "e", "settings": {"count": 5, "interval": 0.2}}
    flow = await server.call("POST", "/flows", json={"name": "e", "blocks": [emit]})
    job = await server.call("POST", f"/flows/{flow.body['flowId']}/jobs", json={})
    host, port = server.root.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        for path in (
            f"/v1/runs/{job.body['executionId']}/events",
            f"/v1/tasks/{task_id}",
            f"/v1/tasks/{task_id}/logs?follow=true",
            f"/v1/tasks/{task_id}/outputs/f",
            "/v1/tasks",
            "/v1/health",
        ):
            method = "GET" if path == "/v1/health" else "HEAD"
            writer.write(
                f"{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {server.token}"
                "\r\n\r\n".encode()
            )
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            assert head.startswith(b"HTTP/1.1 200"), (path, head)
        body = await asyncio.wait_for(reader.read(200), 10)  # the health answer's body only
        assert body == b'{"status":"ok"}', body
    finally:
        writer.close()
        await server.call("POST", f"/tasks/{task_id}/cancel", json={})


@pytest.mark.anyio
async def test_an_output_whose_name_is_not_utf8_is_left_out_not_a_500(server: TaskServer) -> None:
    # QA: a file named b"bad\xff.bin" made the outputs and the run's artifacts 500, and
    # failed the run of the task block that wrote it ("not JSON: surrogates not allowed")
    command = 'printf x > "$VI_FLOW_OUTPUT_DIR/$(printf \'bad\\377.bin\')"; printf ok > "$VI_FLOW_OUTPUT_DIR/good"'
    assert (await _outputs_of(server, command))[1] == [{"path": "good", "size": 2}]
    block = {"block": "task", "id": "a", "settings": {"command": command}}
    flow = await server.call("POST", "/flows", json={"name": "odd", "blocks": [block]})
    outcome = (await server.call("POST", f"/flows/{flow.body['flowId']}/execute", json={})).body
    assert outcome["state"] == "completed", outcome
    artifacts = await server.call("GET", f"/runs/{outcome['executionId']}/artifacts")
    assert (artifacts.status, artifacts.body["items"]) == (200, [{"path": "good", "size": 2}])


@pytest.mark.anyio
@pytest.mark.parametrize("refused", ["held", "interface", "name"])
async def test_a_refused_task_makes_none_of_the_volumes_it_names(
    server: TaskServer, refused: str
) -> None:
    """QA AH: a task refused for its second volume (a block volume another task holds,
    a bad interface or name) had already made the new volume its first one named."""
    await server.call("POST", "/volumes", json={"name": "blk", "interface": "block"})
    holder = await server.submit(
        command="sleep 30", volumes=[{"volumeId": "blk", "mountPath": "/b"}]
    )
    second = {
        "held": {"volumeId": "blk", "mountPath": "/b"},
        "interface": {"name": "x2", "interface": "zzz", "mountPath": "/b"},
        "name": {"name": "bad name", "mountPath": "/b"},
    }[refused]
    body = {"command": "true", "volumes": [{"name": "made-a", "mountPath": "/a"}, second]}
    answer = await server.call("POST", "/tasks", json=body)
    assert answer.status == (409 if refused == "held" else 422), answer.body
    if refused != "held":  # the field it names is the request's
        assert answer.body["error"]["message"].startswith(f"volumes[1].{refused}"), answer.body
    names = [v["name"] for v in (await server.call("GET", "/volumes")).body["items"]]
    assert names == ["blk"]
    tasks = (await server.call("GET", "/tasks")).body["items"]
    assert [t["taskId"] for t in tasks] == [holder["taskId"]]
    await server.call("POST", f"/tasks/{holder['taskId']}/cancel", json={"force": True})


@pytest.mark.anyio
async def test_cancelling_an_expired_reservation_leaves_it_expired(server: TaskServer) -> None:
    # QA AH: the cancel answered 200 and rewrote it "cancelled": it left the expired list.
    body = {"cpus": 1, "durationHours": 1 / 3600, "name": "short"}
    made = (await server.call("POST", "/reservations", json=body)).body
    assert "reservationId" in made, made
    await asyncio.sleep(1.5)
    cancelled = await server.call("DELETE", f"/reservations/{made['reservationId']}")
    assert cancelled.status == 200 and cancelled.body["status"] == "expired", cancelled.body
    listed = await server.call("GET", "/reservations", params={"status": "expired"})
    assert [r["reservationId"] for r in listed.body["items"]] == [made["reservationId"]]
