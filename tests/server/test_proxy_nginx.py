"""The SDK through a real nginx, and a real Caddy, terminating TLS in front of the server,
configured with the snippets of docs/production.md.

Both come from Debian (``nox -s tests_proxy`` installs them when root); without one its
tests skip saying so, and with ``VI_FLOW_REQUIRE_PROXY=1`` (CI) they fail instead. The
certificate is made here, signed by a throwaway CA the client trusts through its
``ca_file`` setting. The server advertises an SSH port nothing listens on, as a server
behind a proxy would be reached: log follows must go over HTTP, through the proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

import vi_flow
from tests.live_server import LiveServer, Starter
from tests.providers_kit import unavailable
from vi_flow.server.state import ServerSettings

NGINX_MAIN = """
daemon off;
master_process off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log {tmp}/access.log;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
{conf}
}}
"""
"""nginx.conf for an unprivileged nginx in ``tmp``, around the ``http`` block's ``conf``."""

NGINX_SERVER = """    server {{
        listen 127.0.0.1:{port} ssl;
        server_name localhost;
        ssl_certificate {tmp}/cert.pem;
        ssl_certificate_key {tmp}/key.pem;
{location}
    }}"""


CADDYFILE = """
{{
    admin off
    auto_https disable_redirects
    storage file_system {tmp}/data
    skip_install_trust
}}
https://localhost:{port} {{
    bind 127.0.0.1
    tls {tmp}/cert.pem {tmp}/key.pem
    log {{
        output file {tmp}/access.log
    }}
{proxy}
}}
"""


def _from_docs(opening: str, upstream: int) -> str:
    """The block of docs/production.md that starts with ``opening`` (indented by 4) and
    ends at its closing brace: the test runs what the docs tell operators to run."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "production.md").read_text()
    start = text.index(opening)
    end = text.index("\n    }\n", start) + len("\n    }\n")
    return text[start:end].replace("127.0.0.1:8000", f"127.0.0.1:{upstream}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _make_certificates(tmp: Path) -> Path:
    """A CA and a ``localhost``/127.0.0.1 certificate it signed; returns the CA file."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vi-flow test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    (tmp / "cert.pem").write_bytes(cert.public_bytes(pem))
    (tmp / "key.pem").write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    (tmp / "ca.pem").write_bytes(ca.public_bytes(pem))
    return tmp / "ca.pem"


def _binary(name: str) -> str:
    found = shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if Path(p).exists()), None
    )
    if found is None:
        unavailable(
            "VI_FLOW_REQUIRE_PROXY",
            f"{name} is not installed",
            f"run 'nox -s tests_proxy' (installs Debian's {name} as root) or apt-get install {name}",
        )
    return str(found)


def _proxy_argv(name: str, tmp: Path, port: int, upstream: int) -> list[str]:
    """Write the proxy's configuration (the docs' block in it); return its command line."""
    if name == "nginx":
        location = _from_docs("    location / {", upstream)
        server = NGINX_SERVER.format(tmp=tmp, port=port, location=location)
        (tmp / "nginx.conf").write_text(NGINX_MAIN.format(tmp=tmp, conf=server))
        return [_binary("nginx"), "-c", str(tmp / "nginx.conf"), "-p", str(tmp)]
    proxy = _from_docs("    reverse_proxy 127.0.0.1:8000 {", upstream)
    (tmp / "Caddyfile").write_text(CADDYFILE.format(tmp=tmp, port=port, proxy=proxy))
    return [_binary("caddy"), "run", "--config", str(tmp / "Caddyfile"), "--adapter", "caddyfile"]


@contextlib.contextmanager
def _proxy(name: str, tmp: Path, port: int, upstream: int) -> Iterator[None]:
    """``name`` (nginx or caddy) on ``port`` (TLS) in front of ``upstream``."""
    argv = _proxy_argv(name, tmp, port, upstream)
    env = {**os.environ, "HOME": str(tmp), "XDG_DATA_HOME": str(tmp), "XDG_CONFIG_HOME": str(tmp)}
    with (tmp / "stderr.log").open("wb") as err:
        proc = subprocess.Popen(argv, stdout=err, stderr=err, env=env)
    try:
        _wait_listening(port, proc, tmp)
        yield
    finally:
        proc.send_signal(signal.SIGQUIT if name == "nginx" else signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_listening(port: int, proc: subprocess.Popen[bytes], tmp: Path) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the proxy exited: {(tmp / 'stderr.log').read_text()}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError("the proxy did not listen")


@pytest.fixture(params=["nginx", "caddy"])
async def behind_proxy(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[LiveServer, str, Path, Path]]:
    """The server behind the proxy, advertising an SSH port nothing listens on:
    ``(server, the proxy's API URL, the CA file, the proxy's directory)``."""
    name = str(request.param)
    _binary(name)
    tmp = tmp_path / name
    tmp.mkdir()
    ca_file = _make_certificates(tmp)
    port = _free_port()
    settings = ServerSettings(
        home=tmp_path / "home",
        public_url=f"https://localhost:{port}",
        ssh_port=_free_port(),
        ssh_public_port=_free_port(),
        extra={"local_cpus": 2, "local_gpus": []},
    )
    async with Starter(LiveServer) as starter:
        server = await starter.start(settings)
        with _proxy(name, tmp, port, int(server.root.rsplit(":", 1)[1])):
            yield server, f"https://localhost:{port}/v1", ca_file, tmp


_FLOW = {
    "name": "greeting",
    "blocks": [{"block": "template", "id": "greet", "settings": {"template": "Hi {{ message }}"}}],
}


@pytest.mark.anyio
async def test_the_sdk_lists_executes_and_follows_logs_through_the_proxy_with_tls(
    behind_proxy: tuple[LiveServer, str, Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server, url, ca_file, tmp = behind_proxy
    monkeypatch.setenv("VI_FLOW_CA_FILE", str(ca_file))
    monkeypatch.delenv("VI_FLOW_LOG_TRANSPORT", raising=False)  # auto
    async with vi_flow.AsyncClient(base_url=url, api_key=server.token, home=tmp_path) as client:
        flow = await client.flows.create(_FLOW)
        pages = [page async for page in client.flows.list()]
        assert [f.flow_id for page in pages for f in page.items] == [flow.flow_id]
        events = [e async for e in client.flow(flow.flow_id).events(message="there")]
        assert type(events[-1]).__name__ == "FlowCompleted"
        result = await client.flow(flow.flow_id).execute(message="you")
        assert result.output == "Hi you"
        task = await client.run("echo first; sleep 2; echo second", wait=True)
        started = time.monotonic()
        seen: list[tuple[str, float, bool]] = []
        async for line in task.follow_logs():
            running = not (await client.tasks.get(task.task_id)).status.terminal
            seen.append((line, time.monotonic() - started, running))
    assert [line for line, _, _ in seen] == ["first", "second"]
    assert seen[0][2] and seen[0][1] < 1.5  # streamed live: the proxy does not buffer it
    assert task.exit_code == 0
    follow = f"/v1/tasks/{task.task_id}/logs?follow=true"  # over HTTP, via the proxy
    deadline = time.monotonic() + 10  # the proxy logs a stream once it has closed it
    while follow not in (tmp / "access.log").read_text() and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert follow in (tmp / "access.log").read_text()


@pytest.mark.anyio
async def test_without_the_ca_file_the_proxy_is_not_trusted(
    behind_proxy: tuple[LiveServer, str, Path, Path], tmp_path: Path
) -> None:
    server, url, _, _ = behind_proxy
    async with vi_flow.AsyncClient(
        base_url=url, api_key=server.token, home=tmp_path, max_retries=0
    ) as client:
        with pytest.raises(vi_flow.APIConnectionError, match="certificate"):
            [page async for page in client.flows.list()]
