"""A client whose home's server has gone never calls the port it had: another program
(another local user's) may listen there now. It finds the home's server again first,
and says so when a stop ended the server it had just started."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

import vi_flow
import vi_flow.local
from vi_flow.local import admin_token

from .kit import alive, cli, run_file, wait_for


class Impostor:
    """Listens on ``port`` of 127.0.0.1 and keeps every byte it is sent (never answers)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        deadline = time.monotonic() + 10
        while True:  # the killed server's last connections may hold it a moment
            try:
                self.sock.bind(("127.0.0.1", port))
                break
            except OSError:
                if time.monotonic() > deadline:
                    self.sock.close()
                    raise
                time.sleep(0.1)
        self.sock.listen()
        self.sock.settimeout(0.2)
        self.received = b""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:  # the wait's timeout, or closed
                continue
            with conn:
                conn.settimeout(1.0)
                with contextlib.suppress(OSError):
                    self.received += conn.recv(65536)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


@pytest.mark.parametrize("transport", ["aiohttp", "stdlib"])
@pytest.mark.parametrize("how", ["kill-9", "stop"])
def test_a_client_never_sends_its_key_to_whoever_took_its_servers_port(
    home: Path, transport: str, how: str
) -> None:
    # QA Z: a long-lived Client sent the home's admin token to whatever listened on its
    # server's port once the server had gone (idle exit, kill -9); and one made with
    # max_retries=0 never found the home's next server
    with vi_flow.Client(http_transport=transport, max_retries=0) as client:
        client.flows.list()
        first = run_file(home)
        assert first is not None
        token = admin_token(home)
        assert token
        if how == "kill-9":
            os.kill(first.pid, signal.SIGKILL)  # its run file stays behind
        else:  # as an idle exit: the run file goes with it
            os.kill(first.pid, signal.SIGTERM)
        wait_for(lambda: not alive(first.pid), 30, "the server to end")
        port = urlsplit(first.url).port
        assert port is not None
        impostor = Impostor(port)
        try:
            assert client.flows.list().items == []  # from the home's next server
        finally:
            impostor.close()
        assert token.encode() not in impostor.received, impostor.received[:200]
        assert impostor.received == b""
        second = run_file(home)
        assert second is not None and second.pid != first.pid and alive(second.pid)


def test_a_call_whose_new_server_a_stop_ended_says_so(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # QA Z: a command racing `vi-flow server stop` said the server it had just started
    # "started but does not answer", above a log line saying it was stopped on request
    spawn = vi_flow.local._spawn

    def spawn_then_a_stop_comes(*args: Any) -> None:
        spawn(*args)  # the server starts and publishes itself; then another command:
        assert cli(home, "server", "stop").returncode == 0

    monkeypatch.setattr(vi_flow.local, "_spawn", spawn_then_a_stop_comes)
    with pytest.raises(vi_flow.LocalServerError) as raised, vi_flow.Client() as client:
        client.flows.list()
    assert "was stopped on request ('vi-flow server stop')" in str(raised.value)
    assert "does not answer" not in str(raised.value)
