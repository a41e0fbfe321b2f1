"""The baseline of the idle-RSS benchmark: a bare aiohttp.web + sqlite3 JSON server.

``python benchmarks/_bare_server.py DB PORT`` answers ``GET /v1/flows`` with the rows of
one SQLite table as JSON (orjson) until killed: the least a local HTTP + SQLite server
needs in memory.
"""

from __future__ import annotations

import sqlite3
import sys

import orjson
from aiohttp import web


def main() -> None:
    conn = sqlite3.connect(sys.argv[1])
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE IF NOT EXISTS flows (id TEXT PRIMARY KEY, body TEXT)")

    async def flows(request: web.Request) -> web.Response:
        rows = conn.execute("SELECT id, body FROM flows").fetchall()
        return web.Response(body=orjson.dumps({"items": rows}), content_type="application/json")

    app = web.Application()
    app.router.add_get("/v1/flows", flows)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[2]), print=None, access_log=None)


if __name__ == "__main__":
    main()
