"""``vi-flow serve`` for clients elsewhere: SSH listen address and port, the public names the
API advertises, checked at start; a client on another address shells, uploads and follows."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

import vi_flow
from vi_flow.cli._root import cli

_REPO = Path(__file__).resolve().parents[2]


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--public-url", "ftp://flows.example.com"], "--public-url"),
        (["--public-url", "https://x.example.com/?a=1"], "--public-url"),
        (["--ssh-public-host", "ssh://flows.example.com"], "--ssh-public-host"),
        (["--ssh-host", "not a host"], "--ssh-host"),
        (["--ssh-public-port", "2222"], "--ssh-public-port"),
        (["--llm-base-url", "ftp://llm.example/v1"], "--llm-base-url"),
        (  # every llm step would fail inside aiohttp: refused at start, password hidden
            ["--llm-base-url", "http://me:pw-sekret@127.0.0.1:9/v1", "--llm-api-key", "k"],
            "--llm-base-url",
        ),
        (["--public-url", "https://me:pw-sekret@x.example.com"], "--public-url"),
        (  # QA AF: the requests went to /v1?key=.../chat/completions, the key in errors
            ["--llm-base-url", "http://127.0.0.1:9/v1?key=pw-sekret"],
            "--llm-base-url",
        ),
        (["--public-url", "https://x.example.com/?token=pw-sekret"], "--public-url"),
        (["--llm-base-url", "http://127.0.0.1:9/v1?"], "--llm-base-url"),  # QA AG: empty
        (["--llm-base-url", "http://127.0.0.1:9/v1#pw-sekret"], "--llm-base-url"),
    ],
)
def test_bad_endpoint_options_are_usage_errors_naming_them(
    tmp_path: Path, args: list[str], named: str
) -> None:
    result = CliRunner().invoke(cli, ["serve", "--home", str(tmp_path / "home"), *args])
    assert result.exit_code == 2, result.output
    assert f"{named}:" in result.output and "pw-sekret" not in result.output
    assert not (tmp_path / "home" / "state.db").exists()  # checked before anything started


@pytest.mark.parametrize(
    ("option", "named"),
    [("--ssh-port", "ssh_port: "), ("--port", "")],  # the SSH port's and the API's
)
def test_a_taken_port_is_a_clear_error(tmp_path: Path, option: str, named: str) -> None:
    # QA AQ and AT: "cannot listen on 127.0.0.1:P: error while attempting to bind on
    # address ('127.0.0.1', P): address already in use", the address twice
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        ports = {"--port": "0", "--ssh-port": "0", option: str(port)}
        proc = subprocess.run(
            [*_vi_flow(), "serve", "--host", "127.0.0.1", *(w for p in ports.items() for w in p)],
            env={**os.environ, "VI_FLOW_HOME": str(tmp_path / "home"), "PYTHONPATH": str(_REPO)},
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert proc.returncode == 1, proc.stderr
    said = f"error: {named}cannot listen on 127.0.0.1:{port}: Address already in use\n"
    assert proc.stderr.endswith(said) and "Traceback" not in proc.stderr, proc.stderr


def _vi_flow() -> list[str]:
    return [sys.executable, "-c", "from vi_flow.cli import main; main()"]


@pytest.fixture
def remote_server(tmp_path: Path) -> Iterator[tuple[str, str, str, int]]:
    """``vi-flow serve --host 0.0.0.0`` advertising 127.0.0.2, an address of this machine
    that is not the loopback one the server would name by default:
    ``(url, token, banner, ssh port)``."""
    port, ssh_port = _free_port("0.0.0.0"), _free_port("0.0.0.0")
    home = tmp_path / "home"
    args = ["serve", "--host", "0.0.0.0", "--port", str(port), "--ssh-port", str(ssh_port)]
    args += ["--public-url", f"http://127.0.0.2:{port}", "--ssh-public-host", "127.0.0.2"]
    env = {**os.environ, "VI_FLOW_HOME": str(home), "PYTHONPATH": str(_REPO)}
    log = tmp_path / "serve.log"
    with log.open("w") as err:
        proc = subprocess.Popen([*_vi_flow(), *args], stderr=err, text=True, env=env)
    try:
        banner = _wait_for_banner(log, proc)
        token = (home / "admin-token").read_text().strip()
        yield f"http://127.0.0.2:{port}/v1", token, banner, ssh_port
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _wait_for_banner(log: Path, proc: subprocess.Popen[str]) -> str:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        text = log.read_text()
        if "clients elsewhere" in text:
            return text
        time.sleep(0.05)
    raise AssertionError(f"the server did not start: {log.read_text()}")


@pytest.mark.anyio
async def test_a_client_on_another_address_shells_uploads_and_follows(
    remote_server: tuple[str, str, str, int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, token, banner, ssh_port = remote_server
    assert f"clients elsewhere: VI_FLOW_BASE_URL={url} " in banner
    monkeypatch.setenv("VI_FLOW_LOG_TRANSPORT", "ssh")  # SSH itself must be reachable
    source = tmp_path / "src"
    source.mkdir()
    (source / "train.py").write_text("print('trained')\n")
    async with vi_flow.AsyncClient(base_url=url, api_key=token, home=tmp_path / "c") as client:
        task = await client.run("sleep 60", wait=False)
        await task.wait_for_ssh(timeout=60)
        endpoint = await client.tasks.ssh_endpoint(task.task_id)
        assert (endpoint.host, endpoint.port) == ("127.0.0.2", ssh_port)
        uploaded = await task.upload_code(source, target_dir="code")
        assert uploaded.files == 1
        result = await task.shell("python3 code/train.py && echo done >&2")
        assert (result.stdout, result.stderr) == ("trained\n", "done\n")
        await task.cancel(force=True)
        follower = await client.run("echo one; echo two", wait=False)
        assert [line async for line in follower.follow_logs()] == ["one", "two"]
