"""``vi-flow flows list`` wall time with a warm and a cold home server, against plain baselines.

- warm: the home's background server already runs. Baseline: a plain Python process that
  lists the same flows with ``http.client`` and ``json`` (no SDK, no CLI). Goal: the
  command's median wall time at most 0.3 s.
- cold: no server runs; the command starts the background server first. Baseline: a
  Python process that starts a bare ``aiohttp.web`` app with ``sqlite3`` on a free port,
  and a second process that asks it once.

Rounds alternate between ours and the baseline so that noise on a shared machine hits
both alike; the medians are compared. Every server started here is stopped by its pid.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from _common import median, private_home, quick_flag

CLI = [sys.executable, "-m", "vi_flow.cli"]
PLAIN_LIST = """
import http.client, json, sys
info = json.load(open(sys.argv[1] + "/server.json"))
host, port = info["url"].split("//")[1].split("/")[0].rsplit(":", 1)
token = open(sys.argv[1] + "/admin-token").read().strip()
conn = http.client.HTTPConnection(host, int(port))
conn.request("GET", "/v1/flows", headers={"Authorization": "Bearer " + token})
print(len(json.loads(conn.getresponse().read())["items"]))
"""
BARE_SERVER = """
import asyncio, sqlite3, sys
from aiohttp import web
async def flows(request):
    rows = request.app["db"].execute("SELECT 1").fetchall()
    return web.json_response({"items": [], "n": len(rows)})
async def main():
    app = web.Application(); app["db"] = sqlite3.connect(sys.argv[1] + "/bare.db")
    app.router.add_get("/v1/flows", flows)
    runner = web.AppRunner(app); await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0); await site.start()
    print(runner.addresses[0][1], flush=True); await asyncio.Event().wait()
asyncio.run(main())
"""
ASK_ONCE = """
import http.client, sys
conn = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]))
conn.request("GET", "/v1/flows"); conn.getresponse().read()
"""


def _timed(argv: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def _bare_cold(home: str, env: dict[str, str]) -> float:
    started = time.perf_counter()
    server = subprocess.Popen(
        [sys.executable, "-c", BARE_SERVER, home], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        port = server.stdout.readline().strip()
        subprocess.run([sys.executable, "-c", ASK_ONCE, port], env=env, check=True)
        return time.perf_counter() - started
    finally:
        server.terminate()
        server.communicate(timeout=20)


def _stop(env: dict[str, str]) -> None:
    subprocess.run(
        [*CLI, "server", "stop", "--force"], env=env, check=True, stdout=subprocess.DEVNULL
    )


def main() -> None:
    rounds = 5 if quick_flag() else 15
    home = private_home()
    # as installed for a user: byte code cached, the default background server
    drop = ("VI_FLOW_LOCAL_SERVER", "PYTHONDONTWRITEBYTECODE")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    try:
        spec = Path(home, "spec.json")
        spec.write_text(json.dumps({"name": "bench", "blocks": []}))
        subprocess.run([*CLI, "flows", "create", "-f", str(spec)], env=env, check=True,
                       stdout=subprocess.DEVNULL)  # fmt: skip
        warm_ours, warm_base = [], []
        for _ in range(rounds):
            warm_ours.append(_timed([*CLI, "flows", "list"], env))
            warm_base.append(_timed([sys.executable, "-c", PLAIN_LIST, home], env))
        cold_ours, cold_base = [], []
        for _ in range(max(3, rounds // 3)):
            _stop(env)
            cold_ours.append(_timed([*CLI, "flows", "list"], env))
            cold_base.append(_bare_cold(home, env))
    finally:
        _stop(env)
    _print("warm server", median(warm_ours), median(warm_base), goal_s=0.3)
    _print("cold server", median(cold_ours), median(cold_base), goal_s=None)


def _print(name: str, ours: float, base: float, goal_s: float | None) -> None:
    verdict = "" if goal_s is None else ("  ok" if ours <= goal_s else "  ABOVE GOAL")
    goal = "" if goal_s is None else f" (goal <= {goal_s} s)"
    print(
        f"vi-flow flows list, {name}: median {ours * 1000:.0f} ms, plain baseline "
        f"{base * 1000:.0f} ms, ratio {base / ours:4.2f} of the baseline's speed{goal}{verdict}"
    )


if __name__ == "__main__":
    main()
