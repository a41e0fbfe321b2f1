"""A lock another session holds on a table stalls one request, for a bounded time, not
every organization's requests on the replica (PostgreSQL; ``tests_postgres`` runs it)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from ..localserver.kit import foreground_serve
from .conftest import call_served


def test_a_table_locked_elsewhere_holds_one_request_for_a_bounded_time(
    served_home: Path, postgres_database: str
) -> None:
    # QA J: another session's LOCK TABLE runs (as VACUUM FULL or an index build takes)
    # held an execute, and every request behind it on the replica's one connection, for
    # as long as the lock was held: 18 s for a GET /v1/flows of another organization.
    import psycopg

    flow = {"name": "f", "blocks": [{"block": "template", "id": "t"}]}
    with (
        foreground_serve(served_home, VI_FLOW_DATABASE=postgres_database),
        psycopg.connect(postgres_database) as holder,
    ):
        flow_id = call_served(served_home, "POST", "/flows", flow)[1]["flowId"]
        holder.execute(b"LOCK TABLE runs IN ACCESS EXCLUSIVE MODE")  # held until rollback
        answers: dict[str, tuple[int, float]] = {}

        def timed(name: str, method: str, path: str, body: object = None) -> None:
            begun = time.monotonic()
            status = call_served(served_home, method, path, body)[0]
            answers[name] = (status, time.monotonic() - begun)

        execute = threading.Thread(target=timed, args=("job", "POST", f"/flows/{flow_id}/jobs", {}))
        execute.start()
        time.sleep(0.5)
        timed("list", "GET", "/flows")
        execute.join(60)
        holder.rollback()
    assert answers["job"][0] == 503 and answers["job"][1] < 15, answers
    assert answers["list"][0] == 200 and answers["list"][1] < 15, answers
