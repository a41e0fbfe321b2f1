"""Exactly one server per home, whoever starts it and however many start at once."""

from __future__ import annotations

import http.server
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import vi_flow
from vi_flow.models.server import RUN_FILE

from .kit import (
    alive,
    cli,
    cli_command,
    env_for,
    run_file,
    script,
    server_pids,
    stop_server,
    wait_for,
)

LIST_FLOWS = "import vi_flow\nwith vi_flow.Client() as c:\n    print(len(c.flows.list().items))"


def test_first_client_starts_a_background_server_that_outlives_it(home: Path) -> None:
    script(home, LIST_FLOWS)
    info = run_file(home)
    assert info is not None and info.mode == "background"
    assert alive(info.pid) and info.pid != os.getpid()
    assert server_pids(home) == [info.pid]
    script(home, LIST_FLOWS)  # the second process reuses it
    assert run_file(home) == info


def test_ten_processes_at_once_start_one_server(home: Path) -> None:
    code = (
        "import vi_flow\nwith vi_flow.Client() as c:\n"
        "    f = c.flows.create({'name': 'n', 'blocks': []})\n    print(f.flow_id)"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code], env=env_for(home), stdout=subprocess.PIPE, text=True
        )
        for _ in range(10)
    ]
    ids = [p.communicate(timeout=90)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0] * 10
    info = run_file(home)
    assert info is not None
    assert server_pids(home) == [info.pid]
    listed = json.loads(cli(home, "flows", "list", "--json").stdout)
    assert sorted(f["flowId"] for f in listed) == sorted(ids)


def test_of_five_server_starts_at_once_one_says_it_started_it(home: Path) -> None:
    procs = [
        subprocess.Popen(
            [*cli_command(), "server", "start", "--json"],
            env=env_for(home),
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(5)
    ]
    said = [json.loads(p.communicate(timeout=90)[0]) for p in procs]
    assert [p.returncode for p in procs] == [0] * 5
    assert sorted(s["started"] for s in said) == [False, False, False, False, True]
    assert len({s["pid"] for s in said}) == 1 and server_pids(home) == [said[0]["pid"]]


@pytest.fixture
def foreground(home: Path) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [*cli_command(), "serve", "--port", "0"],
        env=env_for(home),
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    line = proc.stderr.readline()
    while "listening" not in line:
        assert line, "vi-flow serve exited before listening"
        line = proc.stderr.readline()
    yield proc
    proc.terminate()
    proc.communicate(timeout=30)


def test_serve_on_a_locked_home_exits_1_naming_the_holder(home: Path) -> None:
    script(home, LIST_FLOWS)
    info = run_file(home)
    assert info is not None
    started = time.monotonic()
    done = cli(home, "serve", "--port", "0", check=False, timeout=30)
    assert done.returncode == 1
    assert time.monotonic() - started < 5
    assert info.url in done.stderr and str(info.pid) in done.stderr
    assert "vi-flow server stop" in done.stderr
    assert server_pids(home) == [info.pid]  # the second one never opened the database


def test_clients_and_cli_use_a_foreground_serve(
    home: Path, foreground: subprocess.Popen[str]
) -> None:
    script(home, LIST_FLOWS)
    info = run_file(home)
    assert info is not None and info.pid == foreground.pid and info.mode == "foreground"
    assert server_pids(home) == [foreground.pid]
    second = cli(home, "serve", "--port", "0", check=False)
    assert second.returncode == 1 and str(foreground.pid) in second.stderr


def test_clients_started_with_a_foreground_serve_use_it(tmp_path: Path) -> None:
    # A client that found no server yet (the serve had taken the home but not yet said
    # where it listens) failed, exit 6, "already served" (found by QA: 2 times in 3).
    for attempt in range(3):
        home = tmp_path / f"home{attempt}"
        serve = subprocess.Popen(
            [*cli_command(), "serve", "--port", "0"],
            env=env_for(home),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            clients = [
                subprocess.Popen(
                    [*cli_command(), "flows", "list", "--json"],
                    env=env_for(home),
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
                for _ in range(6)
            ]
            errors = [c.communicate(timeout=60)[1] for c in clients]
            assert [c.returncode for c in clients] == [0] * 6, errors
            info = run_file(home)  # the serve's, or (it came second) a background one
            assert info is not None and server_pids(home) == [info.pid]
        finally:
            serve.terminate()
            serve.communicate(timeout=30)
            stop_server(home)


def test_a_stale_run_file_is_replaced(home: Path) -> None:
    script(home, LIST_FLOWS)
    old = run_file(home)
    assert old is not None
    os.kill(old.pid, 9)
    wait_for(lambda: not alive(old.pid), what="the killed server to go")
    assert (home / RUN_FILE).exists()  # kill -9 leaves the file behind
    script(home, LIST_FLOWS)
    new = run_file(home)
    assert new is not None and new.pid != old.pid and alive(new.pid)


def test_a_run_file_removed_under_a_live_server_comes_back(home: Path) -> None:
    # Found by QA: with server.json gone, status said no server ran, stop did nothing,
    # and every client waited 10 s for a server that held the home and never republished.
    script(home, LIST_FLOWS)
    info = run_file(home)
    assert info is not None
    (home / RUN_FILE).unlink()
    back = wait_for(lambda: run_file(home), timeout=15, what="the run file to be written again")
    assert back.pid == info.pid and back.secret == info.secret
    (home / RUN_FILE).write_bytes(b"garbage{")
    wait_for(lambda: run_file(home), timeout=15, what="a spoilt run file to be replaced")
    assert cli(home, "server", "status").returncode == 0
    assert script(home, LIST_FLOWS).stdout.strip() == "0" and server_pids(home) == [info.pid]


def test_a_broken_config_file_does_not_keep_server_commands_from_their_home(
    home: Path, tmp_path: Path
) -> None:
    # With the home in VI_FLOW_HOME, `server status` and `stop` read the whole config file
    # first, and a broken one made them usage errors (--home worked; found by QA).
    script(home, LIST_FLOWS)
    info = run_file(home)
    assert info is not None
    broken = tmp_path / "broken.toml"
    broken.write_text('base_url = "local\n')
    status = cli(home, "server", "status", "--json", VI_FLOW_CONFIG=str(broken))
    assert json.loads(status.stdout)["pid"] == info.pid
    cli(home, "server", "stop", VI_FLOW_CONFIG=str(broken))
    assert not alive(info.pid)
    listed = cli(home, "flows", "list", check=False, VI_FLOW_CONFIG=str(broken))
    assert listed.returncode == 2 and str(broken) in listed.stderr  # the client needs it


def test_a_server_log_that_cannot_be_written_is_one_line_not_a_traceback(home: Path) -> None:
    (home / "logs" / "server.log").mkdir(parents=True)  # as root, chmod would not stop it
    done = cli(home, "flows", "list", check=False)
    assert done.returncode == 6, done.stderr
    assert f"cannot write the server log {home / 'logs' / 'server.log'}" in done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert server_pids(home) == []


class _Impostor(http.server.BaseHTTPRequestHandler):
    seen_auth: list[str] = []

    def do_GET(self) -> None:
        type(self).seen_auth.append(self.headers.get("Authorization", ""))
        body = b'{"status": "ok", "proof": "not-the-proof", "items": [], "nextPage": null}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_a_run_file_pointing_at_another_program_is_not_trusted(home: Path) -> None:
    script(home, LIST_FLOWS)
    real = run_file(home)
    assert real is not None
    stop_server(home)
    impostor = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Impostor)
    thread = threading.Thread(target=impostor.serve_forever, daemon=True)
    thread.start()
    try:
        port = impostor.server_address[1]
        forged = real.to_json().replace(real.url.encode(), f"http://127.0.0.1:{port}/v1".encode())
        forged = forged.replace(f'"pid":{real.pid}'.encode(), f'"pid":{os.getpid()}'.encode())
        (home / RUN_FILE).write_bytes(forged)
        script(home, LIST_FLOWS)
        new = run_file(home)
        assert new is not None and new.url != f"http://127.0.0.1:{port}/v1"
        assert alive(new.pid)
        assert _Impostor.seen_auth and not any(_Impostor.seen_auth)  # never sent the token
    finally:
        impostor.shutdown()
        impostor.server_close()


def test_two_homes_have_two_independent_servers(home: Path, tmp_path: Path) -> None:
    other = tmp_path / "other-home"
    try:
        script(home, "import vi_flow\nvi_flow.Client().flows.create({'name': 'a', 'blocks': []})")
        script(other, LIST_FLOWS)
        a, b = run_file(home), run_file(other)
        assert a is not None and b is not None and a.pid != b.pid and a.url != b.url
        assert script(other, LIST_FLOWS).stdout.strip() == "0"
        assert script(home, LIST_FLOWS).stdout.strip() == "1"
    finally:
        stop_server(other)


def test_a_server_of_another_version_is_reported(home: Path) -> None:
    script(home, LIST_FLOWS)
    info = run_file(home)
    assert info is not None
    raw = (home / RUN_FILE).read_bytes().replace(b'"version":"', b'"version":"0.0.0-old')
    (home / RUN_FILE).write_bytes(raw)
    done = cli(home, "flows", "list", check=False)
    assert done.returncode != 0
    assert "0.0.0-old" in done.stderr and vi_flow.__version__ in done.stderr
    assert "vi-flow server stop" in done.stderr
    cli(home, "server", "stop")  # it can be restarted
    assert not alive(info.pid)
    script(home, LIST_FLOWS)
    assert run_file(home) is not None


def test_a_port_taken_by_no_one_and_a_dead_pid_start_afresh(home: Path) -> None:
    home.mkdir(parents=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (home / RUN_FILE).write_text(
        json.dumps(
            {"pid": 2**22 + 1, "url": f"http://127.0.0.1:{port}/v1", "version": "x", "mode": "m",
             "startedAt": 0, "home": str(home), "secret": "s"}
        )
    )  # fmt: skip
    script(home, LIST_FLOWS)
    info = run_file(home)
    assert info is not None and alive(info.pid)


def test_a_half_written_run_file_is_not_trusted(home: Path) -> None:
    home.mkdir(parents=True)
    (home / RUN_FILE).write_bytes(b'{"pid": 1, "url": "http://127.0.0.1:')
    script(home, LIST_FLOWS)
    assert run_file(home) is not None


UNSHARE = shutil.which("unshare")


def _in_namespace(shell: str) -> subprocess.CompletedProcess[str]:
    """Run ``shell`` as root of a new user and mount namespace (no real privilege needed)."""
    assert UNSHARE, "util-linux's unshare is needed for the read-only and full-disk tests"
    return subprocess.run(
        [UNSHARE, "--user", "--map-root-user", "--mount", "sh", "-c", shell],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _client_in_namespace(prepare: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = env_for(home)
    pairs = " ".join(f"{k}={shlex.quote(env[k])}" for k in env if k.startswith(("VI_", "PATH")))
    client = f"env {pairs} {shlex.quote(sys.executable)} -c {shlex.quote(LIST_FLOWS)}"
    return _in_namespace(f"set -e; {prepare}; {client}")


def test_a_read_only_home_gives_a_clear_error_and_no_half_file(tmp_path: Path) -> None:
    home = tmp_path / "ro"
    home.mkdir()
    done = _client_in_namespace(
        f"mount --bind {home} {home}; mount -o remount,ro,bind {home}", home
    )
    assert done.returncode != 0
    assert "LocalServerError" in done.stderr and str(home) in done.stderr
    assert "it is not writable" in done.stderr
    assert list(home.iterdir()) == []


@pytest.mark.parametrize("name", ["tasks", "volumes", "logs", "ssh", "admin-token", "state.db"])
def test_a_part_of_the_home_of_the_wrong_kind_is_named_at_start(tmp_path: Path, name: str) -> None:
    # QA: with a file for tasks/ or volumes/ the server started, then every create
    # answered a bare 500; a directory named admin-token was blamed on the database
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    directory = name in ("admin-token", "state.db")
    (home / name).mkdir() if directory else (home / name).write_text("oops\n")
    try:
        done = cli(home, "server", "start", check=False)
    finally:
        cli(home, "server", "stop", "--force", check=False)  # had one started: stopped
    kind = "a directory" if directory else "not a directory"
    assert done.returncode != 0 and f"{home / name} is {kind}" in done.stderr
    assert (home / name).is_dir() == directory


def test_a_file_named_client_in_the_home_is_named_not_a_traceback_hint(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    (home / "client").write_text("oops\n")
    try:
        task_id = cli(home, "tasks", "run", "--", "sleep", "30").stdout.strip()
        shell = cli(home, "tasks", "shell", task_id, "-c", "true", check=False)
    finally:
        cli(home, "server", "stop", "--force", check=False)
    assert shell.returncode == 1, shell  # the key is kept under client/: it cannot be made
    assert f"{home / 'client' / 'ssh'}: Not a directory" in shell.stderr
    assert "--debug" not in shell.stderr and "Traceback" not in shell.stderr


def test_a_full_disk_gives_a_clear_error_and_no_half_file(tmp_path: Path) -> None:
    home = tmp_path / "full"
    home.mkdir()
    fill = f"mount -t tmpfs -o size=256k tmpfs {home}; head -c 2M /dev/zero > {home}/filler || true"
    done = _client_in_namespace(fill, home)
    assert done.returncode != 0
    assert "LocalServerError" in done.stderr
    assert "No space left on device" in done.stderr or "full" in done.stderr
    assert not (home / RUN_FILE).exists()


def test_a_bad_quota_variable_is_one_line_naming_it_not_a_traceback(home: Path) -> None:
    # QA: the background server's start-up printed a traceback of int()'s message, and
    # its hint pointed at a server log that did not exist yet
    done = cli(home, "flows", "list", check=False, VI_FLOW_QUOTA_STREAMS="abc")
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "VI_FLOW_QUOTA_STREAMS: expected a whole number or 'none', got 'abc'" in done.stderr
    assert "server logs" not in done.stderr
