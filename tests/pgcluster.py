"""A throwaway PostgreSQL cluster on 127.0.0.1 for the storage tests (issue 17).

``python tests/pgcluster.py -- pytest tests/storage`` runs ``initdb`` into a temporary
directory, starts the server on a free port, creates a database, runs the command with
``VI_FLOW_TEST_POSTGRES_URL`` (and ``VI_FLOW_REQUIRE_POSTGRES=1``) set, and always stops
the server afterwards (``nox -s tests_postgres`` does exactly this). Tests import
:func:`running_cluster` to start their own when ``VI_FLOW_TEST_POSTGRES_URL=start``.

PostgreSQL refuses to run as root: as root the cluster belongs to the ``postgres`` user
(Debian's package creates it) and every server command runs through ``runuser``.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

__all__ = ["find_bindir", "running_cluster"]

DATABASE = "vi_flow_test"
SUPERUSER = "postgres"


def find_bindir() -> Path | None:
    """The newest ``/usr/lib/postgresql/<version>/bin`` that has ``initdb``, or None."""
    found = glob.glob("/usr/lib/postgresql/*/bin/initdb")
    if not found:
        return None
    newest = max(found, key=lambda p: int(Path(p).parent.parent.name.split(".")[0]))
    return Path(newest).parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _as_owner(argv: Sequence[str]) -> list[str]:
    """``argv`` as the cluster's owner: ``postgres`` when we are root, else ourselves."""
    if os.geteuid() == 0:
        return ["runuser", "-u", SUPERUSER, "--", *argv]
    return list(argv)


def _run(argv: Sequence[str]) -> None:
    subprocess.run(_as_owner(argv), check=True, stdout=subprocess.DEVNULL, timeout=120)


@contextlib.contextmanager
def running_cluster(bindir: Path | None = None) -> Iterator[str]:
    """Start a cluster, yield the URL of a fresh database in it, stop it on exit."""
    bindir = bindir or find_bindir()
    if bindir is None:
        raise RuntimeError("no PostgreSQL found (/usr/lib/postgresql/*/bin/initdb)")
    top = Path(tempfile.mkdtemp(prefix="vi-flow-pg-"))
    data, port = top / "data", _free_port()
    if os.geteuid() == 0:
        shutil.chown(top, SUPERUSER)
    try:
        _run([str(bindir / "initdb"), "-D", str(data), "-U", SUPERUSER, "-A", "trust",
              "-E", "UTF8", "--no-sync"])  # fmt: skip
        options = f"-p {port} -k {top} -c listen_addresses=127.0.0.1 -c fsync=off"
        _run([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(top / "log"), "-w", "-o",
              options, "start"])  # fmt: skip
        try:
            _run([str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U",
                  SUPERUSER, DATABASE])  # fmt: skip
            yield f"postgresql://{SUPERUSER}@127.0.0.1:{port}/{DATABASE}"
        finally:
            _run([str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"])
    finally:
        shutil.rmtree(top, ignore_errors=True)


def main(argv: Sequence[str]) -> int:
    """Run ``argv`` (after ``--``) with a cluster's URL in the environment."""
    command = list(argv[argv.index("--") + 1 :] if "--" in argv else argv)
    if not command:
        sys.stderr.write("usage: python tests/pgcluster.py -- COMMAND...\n")
        return 2
    # SIGTERM (a CI timeout, a kill) unwinds like Ctrl-C: the cluster is stopped, not left
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with running_cluster() as url:
        env = {**os.environ, "VI_FLOW_TEST_POSTGRES_URL": url, "VI_FLOW_REQUIRE_POSTGRES": "1"}
        child = subprocess.Popen(command, env=env)
        try:
            return child.wait()
        except KeyboardInterrupt:
            child.terminate()
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
            return 128 + signal.SIGTERM


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
