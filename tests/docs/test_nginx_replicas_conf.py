"""The nginx configuration of docs/production.md's "Several replicas", checked by a real
nginx: ``nginx -t`` accepts it, and a client reaches a server through it while two of
the three replicas it lists are down (nothing listens on their ports).

The page's block is used as written, with only its addresses and certificate paths
replaced (each replacement must find its text, so the test follows the page). nginx
comes from Debian (``nox -s tests_proxy`` installs it); without it the tests skip, and
with ``VI_FLOW_REQUIRE_PROXY=1`` they fail instead.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

import vi_flow
from tests.live_server import LiveServer, Starter
from tests.server.test_proxy_nginx import (
    NGINX_MAIN,
    _binary,
    _free_port,
    _make_certificates,
    _wait_listening,
)
from vi_flow.server.state import ServerSettings

from .pages import DOCS, blocks

REPLICA_PORTS = ("8001", "8002", "8003")


def _replicas_block() -> str:
    found = [b.code for b in blocks(DOCS / "production.md", "nginx") if "upstream " in b.code]
    assert len(found) == 1, "production.md has one nginx block with an upstream"
    return found[0]


def _replace(text: str, old: str, new: str) -> str:
    assert old in text, f"the page's nginx block no longer has {old!r}"
    return text.replace(old, new)


def _write_conf(tmp: Path, port: int, replicas: list[int]) -> Path:
    """nginx.conf in ``tmp``: the page's block on ``port`` (TLS) in front of ``replicas``."""
    _make_certificates(tmp)
    conf = _replace(_replicas_block(), "listen 443 ssl;", f"listen 127.0.0.1:{port} ssl;")
    conf = _replace(conf, "/etc/ssl/certs/flows.example.com.pem", str(tmp / "cert.pem"))
    conf = _replace(conf, "/etc/ssl/private/flows.example.com.key", str(tmp / "key.pem"))
    for shown, replica in zip(REPLICA_PORTS, replicas, strict=True):
        conf = _replace(conf, f"127.0.0.1:{shown} ", f"127.0.0.1:{replica} ")
    (tmp / "nginx.conf").write_text(NGINX_MAIN.format(tmp=tmp, conf=conf))
    return tmp / "nginx.conf"


def test_nginx_accepts_the_replicas_configuration(tmp_path: Path) -> None:
    nginx = _binary("nginx")
    conf = _write_conf(tmp_path, _free_port(), [_free_port() for _ in REPLICA_PORTS])
    checked = subprocess.run(
        [nginx, "-t", "-c", str(conf), "-p", str(tmp_path)],
        capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stderr
    assert "test is successful" in checked.stderr


@contextlib.contextmanager
def _nginx(conf: Path, tmp: Path, port: int) -> Iterator[None]:
    with (tmp / "stderr.log").open("wb") as err:
        proc = subprocess.Popen(
            [_binary("nginx"), "-c", str(conf), "-p", str(tmp)], stdout=err, stderr=err
        )
    try:
        _wait_listening(port, proc, tmp)
        yield
    finally:
        proc.send_signal(signal.SIGQUIT)  # nginx's graceful stop
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
async def one_of_three(tmp_path: Path) -> AsyncIterator[tuple[LiveServer, str, Path]]:
    """A server behind the page's nginx, listed second of three replicas whose other two
    are down: ``(server, the balancer's API URL, the CA file)``."""
    _binary("nginx")
    tmp = tmp_path / "nginx"
    tmp.mkdir()
    port = _free_port()
    settings = ServerSettings(
        home=tmp_path / "home",
        public_url=f"https://localhost:{port}",
        extra={"local_cpus": 2, "local_gpus": []},
    )
    async with Starter(LiveServer) as starter:
        server = await starter.start(settings)
        live = int(server.root.rsplit(":", 1)[1])
        conf = _write_conf(tmp, port, [_free_port(), live, _free_port()])
        with _nginx(conf, tmp, port):
            yield server, f"https://localhost:{port}/v1", tmp / "ca.pem"
        # nginx did try the dead replicas, and passed the requests on
        assert "Connection refused) while connecting to upstream" in (tmp / "error.log").read_text()


_FLOW = {
    "name": "greeting",
    "blocks": [{"block": "template", "id": "greet", "settings": {"template": "Hi {{ message }}"}}],
}


@pytest.mark.anyio
async def test_requests_and_streams_pass_the_dead_replicas_by(
    one_of_three: tuple[LiveServer, str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server, url, ca_file = one_of_three
    monkeypatch.setenv("VI_FLOW_CA_FILE", str(ca_file))
    # No retries by the client: nginx alone must send every request to the live replica.
    async with vi_flow.AsyncClient(
        base_url=url, api_key=server.token, home=tmp_path, max_retries=0
    ) as client:
        flow = await client.flows.create(_FLOW)  # a POST, refused by a dead replica first
        for _ in range(6):
            assert (await client.flows.get(flow.flow_id)).flow_id == flow.flow_id
        events = [e async for e in client.flow(flow.flow_id).events(message="there")]
        assert type(events[-1]).__name__ == "FlowCompleted"
        assert (await client.flow(flow.flow_id).execute(message="you")).output == "Hi you"
