"""Organizations never see or reach each other's tasks, volumes, keys or reservations."""

from __future__ import annotations

import asyncssh
import pytest

from .conftest import TaskServer


async def _other_token(server: TaskServer) -> str:
    org = await server.call("POST", "/organizations", json={"name": "other"})
    assert org.status == 201, org.body
    token = await server.call(
        "POST", f"/organizations/{org.body['organizationId']}/tokens", json={"name": "t"}
    )
    assert token.status == 201, token.body
    return str(token.body["token"])


@pytest.mark.anyio
async def test_other_org_sees_nothing_and_its_keys_do_not_open_our_tasks(
    server: TaskServer, client_key: asyncssh.SSHKey
) -> None:
    other = await _other_token(server)
    task = await server.submit(command="sleep 30")
    await server.call("POST", "/volumes", json={"name": "ours"})
    reservation = (await server.call("POST", "/reservations", json={"cpus": 1})).body
    task_id = task["taskId"]
    for path in (f"/tasks/{task_id}", f"/tasks/{task_id}/logs", f"/tasks/{task_id}/ssh"):
        answer = await server.call("GET", path, token=other)
        assert answer.status == 404 and answer.body["error"]["code"] == "TASK_NOT_FOUND"
    cancel = await server.call("POST", f"/tasks/{task_id}/cancel", token=other)
    assert cancel.status == 404
    assert (await server.call("GET", "/tasks", token=other)).body["items"] == []
    assert (await server.call("GET", "/volumes", token=other)).body["items"] == []
    assert (await server.call("DELETE", "/volumes/ours", token=other)).status == 404
    assert (await server.call("GET", "/reservations", token=other)).body["items"] == []
    res_path = f"/reservations/{reservation['reservationId']}"
    assert (await server.call("DELETE", res_path, token=other)).status == 404
    public = client_key.export_public_key().decode()
    added = await server.call(
        "POST", "/ssh-keys", json={"name": "k", "publicKey": public}, token=other
    )
    assert added.status == 201
    endpoint = (await server.call("GET", f"/tasks/{task_id}/ssh")).body
    with pytest.raises(asyncssh.PermissionDenied):
        async with asyncssh.connect(
            "127.0.0.1",
            endpoint["port"],
            username=task_id,
            client_keys=[client_key],
            known_hosts=asyncssh.import_known_hosts(endpoint["knownHosts"]),
            agent_path=None,
            config=None,
        ):
            pass
    await server.call("POST", f"/tasks/{task_id}/cancel", json={"force": True})
