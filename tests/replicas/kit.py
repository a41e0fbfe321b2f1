"""Replicas as users run them: ``vi-flow serve`` processes on one PostgreSQL schema.

:class:`Cluster` starts real server processes (``python -m vi_flow.cli serve``), each
with its own home, on one database URL, and stops every one of them by its pid
(SIGTERM, then SIGKILL) however the test ends. :class:`RoundRobinProxy` is the load
balancer in front of them: a loopback TCP proxy that hands each new connection to the
next replica that accepts it, so a client that reconnects after a replica dies lands on
a live one. :func:`call` and :func:`sse` are raw HTTP calls to one replica; the helpers
after them start runs and read runs and their events as the tests check them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncGenerator
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp
import anyio
import attrs
import orjson

import vi_flow
from vi_flow._sse import ServerSentEvent, iter_sse
from vi_flow.models import Condition
from vi_flow.models.server import RUN_FILE, ServerInfo
from vi_flow.server.bootstrap import ADMIN_TOKEN_FILE

from ..live_server import Answer
from ..localserver.kit import env_for

LEASE = 2.0
"""``VI_FLOW_REPLICA_LEASE`` of every replica: short, so a takeover comes fast."""

TERMINAL = {c.value for c in Condition if c.terminal}
"""The conditions a run ends in, as the wire spells them."""

START_TIMEOUT = 60.0
STOP_GRACE = 10.0


@attrs.define
class Replica:
    """One ``vi-flow serve`` process: its home, pid, port and admin token."""

    name: str
    home: Path
    proc: subprocess.Popen[bytes]
    log: Path
    port: int = 0
    token: str = ""

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.root}/v1"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def client(self, token: str | None = None, **options: Any) -> vi_flow.AsyncClient:
        """An SDK client on this replica with its admin token (or ``token``)."""
        return vi_flow.AsyncClient(base_url=self.base_url, api_key=token or self.token, **options)

    def output(self) -> str:
        """What the process wrote to stdout and stderr (its log), for failure messages."""
        try:
            return self.log.read_text(errors="replace")[-4000:]
        except OSError:
            return ""


class Cluster:
    """Replicas on one database; ``stop_all`` (the fixture calls it) ends every process."""

    def __init__(self, root: Path, database: str, *, lease: float = LEASE) -> None:
        self.root = root
        self.database = database
        self.lease = lease
        self.replicas: list[Replica] = []

    def spawn(self, name: str, home_name: str | None = None, *, named: bool = True) -> Replica:
        """Start replica ``name`` (home ``<root>/<home_name or name>``) without waiting;
        ``named=False`` leaves it its default name (``name`` is then the test's only)."""
        home = self.root / (home_name or name)
        home.mkdir(parents=True, exist_ok=True)
        log = self.root / f"{name}.log"
        env = env_for(home, VI_FLOW_REPLICA_LEASE=f"{self.lease:g}", VI_FLOW_REPLICA_NAME=name)
        if not named:
            del env["VI_FLOW_REPLICA_NAME"]
        command = [sys.executable, "-m", "vi_flow.cli", "serve", "--database", self.database]
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [*command, "--host", "127.0.0.1", "--port", "0"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=home,
            )
        replica = Replica(name, home, proc, log)
        self.replicas.append(replica)
        return replica

    async def start(self, *names: str, named: bool = True) -> list[Replica]:
        """Start replicas together, as an operator would, and wait until each answers."""
        replicas = [self.spawn(name, named=named) for name in names]
        async with anyio.create_task_group() as tg:
            for replica in replicas:
                tg.start_soon(self.wait_ready, replica)
        return replicas

    async def wait_ready(self, replica: Replica) -> None:
        """Wait until a spawned replica answers (fail with its output if it exits)."""
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if not replica.alive():
                raise AssertionError(
                    f"replica {replica.name} exited {replica.proc.returncode} at start:\n"
                    + replica.output()
                )
            info = _run_file(replica.home)
            token = _admin_token(replica.home)
            if info is not None and info.pid == replica.pid and token:
                replica.port = int(info.url.rsplit(":", 1)[1].split("/", 1)[0])
                replica.token = token
                if await _answers(replica):
                    return
            await anyio.sleep(0.1)
        raise AssertionError(f"replica {replica.name} did not answer:\n{replica.output()}")

    def kill(self, replica: Replica) -> None:
        """``kill -9`` the replica and reap it."""
        replica.proc.send_signal(signal.SIGKILL)
        replica.proc.wait(STOP_GRACE)

    def terminate(self, replica: Replica) -> int:
        """Stop the replica with SIGTERM (SIGKILL after a grace); its exit status."""
        return _stop(replica.proc)

    def stop_all(self) -> None:
        for replica in self.replicas:
            _stop(replica.proc)
        _kill_left_behind(self.root)


def _kill_left_behind(root: Path) -> None:
    """Kill, by pid, any process still running in a task directory under ``root``: a
    replica killed (``kill -9``) as bubblewrap was starting one of its tasks can leave the
    sandbox's first process waiting for ever for its parent, which died before
    ``--die-with-parent`` was set (seen once, in a full run of the suite)."""
    marker = os.fsencode(root)
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if marker in (proc / "cmdline").read_bytes():
                os.kill(int(proc.name), signal.SIGKILL)
        except (OSError, ValueError):
            continue  # gone meanwhile, or not ours to read


def _stop(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(STOP_GRACE)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait(STOP_GRACE)


def _run_file(home: Path) -> ServerInfo | None:
    try:
        return ServerInfo.from_json((home / RUN_FILE).read_bytes())
    except (OSError, ValueError):
        return None


def _admin_token(home: Path) -> str:
    try:
        return (home / ADMIN_TOKEN_FILE).read_text().strip()
    except OSError:
        return ""


async def _answers(replica: Replica) -> bool:
    with contextlib.suppress(aiohttp.ClientError, OSError, asyncio.TimeoutError):
        answer = await call(replica, "GET", "/health", seconds=5)
        return answer.status == 200
    return False


# -- raw HTTP ----------------------------------------------------------------------------


def _headers(token: str, extra: dict[str, str] | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", **(extra or {})}


async def call(
    replica: Replica,
    method: str,
    path: str,
    *,
    json: Any = None,
    token: str | None = None,
    headers: dict[str, str] | None = None,
    seconds: float = 30,
    session: aiohttp.ClientSession | None = None,
) -> Answer:
    """Call ``/v1<path>`` on one replica with its admin token (or ``token``)."""
    if session is None:
        async with aiohttp.ClientSession() as own:
            return await call(
                replica, method, path, json=json, token=token, headers=headers,
                seconds=seconds, session=own,
            )  # fmt: skip
    async with session.request(
        method,
        f"{replica.base_url}{path}",
        json=json,
        headers=_headers(token or replica.token, headers),
        timeout=aiohttp.ClientTimeout(total=seconds),
    ) as resp:
        raw = await resp.read()
        try:
            body = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            body = None
        return Answer(resp.status, body, resp.headers, raw)


async def sse(
    replica: Replica, path: str, *, token: str | None = None, headers: dict[str, str] | None = None
) -> AsyncGenerator[ServerSentEvent, None]:
    """The events of ``GET /v1<path>`` on one replica, as they arrive, to the stream's end."""
    async with aiohttp.ClientSession() as session:
        async with session.get(
            f"{replica.base_url}{path}",
            headers=_headers(token or replica.token, headers),
            timeout=aiohttp.ClientTimeout(total=None, sock_read=60),
        ) as resp:
            assert resp.status == 200, await resp.text()
            async for event in iter_sse(resp):
                yield event


def data(event: ServerSentEvent) -> Any:
    """The decoded JSON ``data:`` of one SSE event."""
    return orjson.loads(event.data)


# -- runs and their events, as the tests check them --------------------------------------


async def three(cluster: Cluster) -> tuple[Replica, Replica, Replica]:
    """Replicas A, then B and C together (A made the schema; starting all three on an
    empty one at once is the first test's own subject)."""
    (a,) = await cluster.start("a")
    b, c = await cluster.start("b", "c")
    return a, b, c


async def create_flow(replica: Replica, spec: dict[str, Any]) -> str:
    answer = await call(replica, "POST", "/flows", json={"spec": spec})
    assert answer.status == 201, answer.body
    return str(answer.body["flowId"])


async def start_job(replica: Replica, flow_id: str, token: str | None = None) -> str:
    """Start a run of ``flow_id`` on ``replica`` (which then owns it); its id."""
    answer = await call(replica, "POST", f"/flows/{flow_id}/jobs", json={}, token=token)
    assert answer.status == 202, answer.body
    return str(answer.body["executionId"])


def conditions(run: dict[str, Any]) -> list[dict[str, Any]]:
    return list(run["status"]["conditions"])


def condition(run: dict[str, Any]) -> str | None:
    history = conditions(run)
    return str(history[-1]["condition"]) if history else None


async def get_run(replica: Replica, run_id: str, token: str | None = None) -> dict[str, Any]:
    answer = await call(replica, "GET", f"/runs/{run_id}", token=token)
    assert answer.status == 200, answer.body
    return dict(answer.body)


async def wait_ended(
    replica: Replica, run_id: str, within: float, token: str | None = None
) -> dict[str, Any]:
    """Poll the run on ``replica`` until it has a terminal condition (bounded)."""
    with anyio.fail_after(within):
        while condition(run := await get_run(replica, run_id, token)) not in TERMINAL:
            await anyio.sleep(0.1)
    return run


async def stored(replica: Replica, run_id: str, token: str | None = None) -> list[Any]:
    """Every event of a finished run as ``replica`` replays it: ``(id, event, data)``."""
    with anyio.fail_after(30):
        async with contextlib.aclosing(sse(replica, f"/runs/{run_id}/events", token=token)) as it:
            return [(int(e.id or 0), e.event, data(e)) async for e in it]


def one_end(run: dict[str, Any]) -> None:
    """The run's history holds exactly one terminal condition, its last."""
    ends = [c["condition"] for c in conditions(run) if c["condition"] in TERMINAL]
    assert len(ends) == 1 and conditions(run)[-1]["condition"] == ends[0], conditions(run)


async def live_replicas(replica: Replica) -> list[str]:
    """The live replicas ``replica`` knows of (``GET /v1/server``), by name, sorted."""
    answer = await call(replica, "GET", "/server")
    assert answer.status == 200, answer.body
    return sorted(answer.body["replicas"])


def exactly_once(ids: list[int]) -> None:
    """Event ids 1..n, each once, in order."""
    assert ids == list(range(1, len(ids) + 1)), ids


# -- the load balancer -------------------------------------------------------------------


class RoundRobinProxy:
    """A loopback TCP balancer: each new connection goes to the next upstream port that
    accepts it (a dead replica refuses, so it is skipped). ``served`` counts connections
    per upstream port; ``async with`` starts it and, on exit, closes every connection."""

    def __init__(self, ports: list[int]) -> None:
        self.ports = list(ports)
        self.port = 0
        self.served: Counter[int] = Counter()
        self._turn = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def __aenter__(self) -> RoundRobinProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        if self._handlers:  # each ends once its connections are aborted
            await asyncio.wait(self._handlers, timeout=10)
        await self._server.wait_closed()

    async def _upstream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        for _ in range(len(self.ports)):
            port = self.ports[self._turn % len(self.ports)]
            self._turn += 1
            try:
                pair = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                continue  # a dead replica: the next one
            self.served[port] += 1
            return pair
        return None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handler = asyncio.current_task()
        assert handler is not None
        self._handlers.add(handler)
        handler.add_done_callback(self._handlers.discard)
        self._writers.add(writer)
        upstream = await self._upstream()
        if upstream is None:  # every replica refuses: the client sees its connection drop
            self._writers.discard(writer)
            writer.transport.abort()
            return
        up_reader, up_writer = upstream
        self._writers.add(up_writer)
        try:
            await _relay(reader, writer, up_reader, up_writer)
        finally:
            for end in (writer, up_writer):
                self._writers.discard(end)
                end.close()  # flushes what is buffered, then closes


async def _relay(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    up_reader: asyncio.StreamReader,
    up_writer: asyncio.StreamWriter,
) -> None:
    """Pass bytes both ways until either side ends (a dead replica ends the client's too)."""
    pipes = {
        asyncio.ensure_future(_pipe(reader, up_writer)),
        asyncio.ensure_future(_pipe(up_reader, writer)),
    }
    try:
        await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for pipe in pipes:
            pipe.cancel()
        await asyncio.gather(*pipes, return_exceptions=True)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
