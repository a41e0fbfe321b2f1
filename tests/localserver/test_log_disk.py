"""A task writes its logs itself: when their disk fills, its end says lines may be missing."""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

from .kit import cli_json, foreground_serve, script, wait_for

UNSHARE = shutil.which("unshare")
NOTE = "the disk holding its logs was full while it ran: lines it printed may be missing"


def _ended(home: Path, task_id: str) -> dict[str, object]:
    task: dict[str, object] = cli_json(home, "tasks", "status", task_id)
    return task if task["status"] in ("completed", "failed", "cancelled") else {}


def test_a_task_that_printed_onto_a_full_disk_says_lines_may_be_missing(home: Path) -> None:
    assert UNSHARE, "util-linux's unshare is needed to give the tasks a small disk"
    tasks = home / "tasks"
    tasks.mkdir(parents=True)
    # the server in a user and mount namespace of its own, its tasks on a 1 MiB tmpfs
    small = f'mount -t tmpfs -o size=1m vi-flow-small {shlex.quote(str(tasks))} && exec "$@"'
    prefix = (UNSHARE, "--user", "--map-root-user", "--mount", "sh", "-c", small, "sh")
    with foreground_serve(home, prefix=prefix):
        quiet = cli_json(home, "tasks", "run", "--", "echo", "hello")["taskId"]
        done = wait_for(lambda: _ended(home, quiet), 30, "the quiet task to end")
        assert done["status"] == "completed"
        assert "full" not in str(done["message"])

        # 3.3 MB of lines onto 1 MiB; the command itself ignores what it could not write
        loud = "yes 0123456789 | head -n 300000; exit 0"
        task_id = cli_json(home, "tasks", "run", "--", "sh", "-c", loud)["taskId"]
        done = wait_for(lambda: _ended(home, task_id), 60, "the loud task to end")
        assert done["status"] == "completed" and done["exitCode"] == 0
        assert NOTE in str(done["message"]), done

        # QA: a flow's task step showed only an empty logTail: the note is in its output
        flow = {"name": "loud", "blocks": [{"block": "task", "id": "t", "settings": {
            "command": loud}}]}  # fmt: skip
        code = (
            "import json, vi_flow\nc = vi_flow.Client()\n"
            f"flow = c.flows.create({flow!r})\n"
            "print(json.dumps(c.flow(flow.flow_id).execute().output))"
        )
        output = json.loads(script(home, code, timeout=120).stdout)
        assert output["status"] == "completed" and NOTE in output["message"], output
