"""Developer sessions: tests, lint, typing, docs, bench, demo, the Slurm, Ray, browser,
reverse-proxy and PostgreSQL suites.

Each session installs what it needs into its own virtual environment, so a fresh machine
with Python and pip needs only ``python -m pip install nox`` first.
"""

from __future__ import annotations

import os

import nox

nox.options.default_venv_backend = "uv|virtualenv"
nox.options.sessions = ["lint", "typing", "tests"]
nox.options.reuse_existing_virtualenvs = True

PYTHON = os.environ.get("VI_FLOW_NOX_PYTHON") or None
# Checkers are pinned: a new release must not fail a commit that was clean yesterday.
RUFF = "ruff==0.17.6"
MYPY = "mypy==2.4.1"
RAY = "ray[default]==2.60.0"  # the Ray the provider's suite is run against
PG_INITDB = "/usr/lib/postgresql/*/bin/initdb"  # Debian's PostgreSQL (tests_postgres)
CHROMIUM = "/usr/bin/chromium"  # Debian's; Playwright cannot download its own browser here
_LOCAL_ONLY = "not slurm and not ray and not browser"
# The local suites run in two pytest-xdist workers: a test mostly waits on its server, a
# task or a subprocess, so two halve the time even on two cores (CI stays under 30
# minutes). VI_FLOW_TEST_WORKERS=0 runs them in one process; `-- -n 0` does too.
_WORKERS = ("-n", os.environ.get("VI_FLOW_TEST_WORKERS", "2"), "--dist", "worksteal")
# Schemathesis's 60 examples per operation (about 1.5 of the suite's 7.5 minutes of test
# time) run in `tests`; on PostgreSQL it calls every operation in every phase with fewer (CI
# stays under 30 minutes).
_FEWER_EXAMPLES = {
    "VI_FLOW_SCHEMATHESIS_EXAMPLES": os.environ.get("VI_FLOW_SCHEMATHESIS_EXAMPLES", "10")
}


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """Run the test suite against the embedded local server (Slurm and Ray tests excluded)."""
    _install_bubblewrap(session)
    session.install("-e", ".[test]")
    session.run("pytest", *_WORKERS, "-m", _LOCAL_ONLY, *session.posargs)


def _install_bubblewrap(session: nox.Session) -> None:
    """The local provider sandboxes tasks with ``bwrap``; install it where we may (root)."""
    import os
    import shutil

    if shutil.which("bwrap") is None and shutil.which("apt-get") and os.geteuid() == 0:
        session.run("apt-get", "install", "-y", "-q", "bubblewrap", external=True)


@nox.session(python=PYTHON)
def fuzz_nightly(session: nox.Session) -> None:
    """Schemathesis and the in-suite fuzz with many more examples than CI (issue 12)."""
    _install_bubblewrap(session)
    session.install("-e", ".[test]")
    env = {"VI_FLOW_SCHEMATHESIS_EXAMPLES": os.environ.get("VI_FLOW_SCHEMATHESIS_EXAMPLES", "1000")}
    files = ("tests/server/test_schemathesis.py", "tests/server/test_fuzz.py")
    session.run("pytest", *files, "-p", "no:cacheprovider", *session.posargs, env=env)


@nox.session(python=PYTHON)
def tests_lowest(session: nox.Session) -> None:
    """Run the suite with every dependency at the lowest version pyproject.toml allows.

    The docs' and seeds' examples, the Schemathesis run, the local server's process
    lifecycle (idle exits, restarts, Ctrl-C, a stopped, killed or hung server, a lost
    database or disk: waits on the clock), the CLI run as a process and retention are
    left to ``tests``: they drive the same SDK and server calls as the rest of the suite,
    which runs here whole, and they are more than half of its time (CI stays under 30
    minutes). The local server's start lock (``filelock``) and its lazy SSH
    (``asyncssh``) are tested here at their floors.
    """
    import tempfile

    # Not session.create_tmp(): it moves TMPDIR into .nox/, and with it every test's home
    # into the directory of the interpreter that the task sandbox must show.
    floors = os.path.join(tempfile.mkdtemp(prefix="vi-flow-floors-"), "floors.txt")
    with open(floors, "w", encoding="utf-8") as out:
        out.writelines(f"{pin}\n" for pin in _floors())
    session.install("-c", floors, "-e", ".[test]")
    left_to_tests = [
        "tests/docs", "tests/seeds", "tests/server/test_schemathesis.py",
        "tests/localserver/test_work_and_lifecycle.py", "tests/localserver/test_faults.py",
        "tests/localserver/test_database_gone.py", "tests/localserver/test_log_disk.py",
        "tests/localserver/test_serve_output.py",
        # the CLI run as a process (signals, terminals, a fresh shell) and retention's
        # SQL: `tests` and `tests_newest` run them
        "tests/cli/test_subprocess.py", "tests/cli/test_tmux.py",
        "tests/cli/test_demo_try_next.py", "tests/server/test_retention.py",
    ]  # fmt: skip
    ignore = [f"--ignore={path}" for path in left_to_tests]
    session.run("pytest", *_WORKERS, "-m", _LOCAL_ONLY, *ignore, *session.posargs)


@nox.session(python=PYTHON)
def tests_newest(session: nox.Session) -> None:
    """The SDK's suites (client, sync bridge, execution, compute, CLI, seeds, engine) with
    the newest of everything: CI runs it on the newest Python supported
    (``VI_FLOW_NOX_PYTHON=3.13``), as it runs ``tests_lowest`` on the oldest. The server's
    own suites stay with ``tests``, which ran them on the default Python."""
    _install_bubblewrap(session)
    session.install("-e", ".[test]")
    paths = [
        "tests/client", "tests/sync", "tests/execution", "tests/compute", "tests/seeds",
        "tests/cli", "tests/engine", "tests/test_sse.py", "tests/test_public_api.py",
        "tests/test_loglines.py", "tests/test_events_deferred.py", "tests/test_architecture.py",
    ]  # fmt: skip
    session.run(
        "pytest", *_WORKERS, "-p", "no:cacheprovider", "-m", _LOCAL_ONLY, *paths, *session.posargs
    )


def _floors() -> list[str]:
    """``name==floor`` for each runtime dependency of pyproject.toml that has a ``>=`` floor."""
    import re

    import tomllib

    with open("pyproject.toml", "rb") as fh:
        deps = tomllib.load(fh)["project"]["dependencies"]
    found = (re.match(r"^([A-Za-z0-9_.-]+)(\[[^]]*\])?>=([^,;\s]+)", d) for d in deps)
    return [f"{m.group(1)}=={m.group(3)}" for m in found if m and ";" not in m.string]


def _install_postgres(session: nox.Session) -> None:
    """Debian's ``postgresql``, when missing (as root), for tests/pgcluster.py."""
    import glob
    import shutil

    if not glob.glob(PG_INITDB) and shutil.which("apt-get") and os.geteuid() == 0:
        session.run("apt-get", "update", "-q", external=True)
        session.run("apt-get", "install", "-y", "-q", "postgresql", external=True)


@nox.session(python=PYTHON)
def tests_slurm(session: nox.Session) -> None:
    """Run the Slurm provider tests and the seed 002 examples against a real one-host
    cluster; the replica test (two servers sharing the cluster) on a throwaway PostgreSQL."""
    _install_postgres(session)
    session.install("-e", ".[test,postgres]")
    env = {"VI_FLOW_REQUIRE_SLURM": "1"}
    pytest = ["pytest", "-m", "slurm", "tests/slurm", *session.posargs]
    session.run("python", "tests/pgcluster.py", "--", *pytest, env=env)


@nox.session(python=PYTHON)
def tests_ray(session: nox.Session) -> None:
    """Run the Ray provider tests and the seed 002 examples against a real local Ray head."""
    session.install("-e", ".[test]", RAY)
    env = {"VI_FLOW_REQUIRE_RAY": "1"}
    session.run("pytest", "-m", "ray", "tests/ray", *session.posargs, env=env)


_NO_DATABASE = (
    "test_head_deadline",  # request heads on the socket
    "test_limits",  # open-file limits
    "test_server_log",  # the log's lines and file
    "test_proxy_nginx",  # the SDK through a proxy (tests_proxy)
    "test_openapi",  # the served document
    "test_serve_endpoints",  # listening addresses
)
"""The server's suites that `tests_postgres` leaves to `tests`: none of them reads or
writes the database in a way that differs between SQLite and PostgreSQL."""


@nox.session(python=PYTHON)
def tests_postgres(session: nox.Session) -> None:
    """The storage suite, and the server, engine and execution suites with the
    server on PostgreSQL, on a throwaway cluster (issue 17); Debian's ``postgresql`` is
    installed when missing (as root). ``tests/pgcluster.py`` starts the cluster, runs
    pytest with ``VI_FLOW_TEST_POSTGRES_URL`` and ``VI_FLOW_REQUIRE_POSTGRES=1``, and
    always stops it."""
    _install_postgres(session)
    session.install("-e", ".[test,postgres]")
    # The storage suite on both databases, then the server's own suites, the engine and
    # the replicas with the server on PostgreSQL (VI_FLOW_TEST_DATABASE=postgres), less
    # what never reaches the database: `tests` runs those. The SDK's executions
    # (tests/execution) drive the engine's calls that tests/engine makes here (CI stays
    # under 30 minutes); `nox -s tests_postgres -- tests/execution` runs them.
    paths = session.posargs or [
        "tests/storage", "tests/server", "tests/engine", "tests/replicas",
        *(f"--ignore=tests/server/{name}.py" for name in _NO_DATABASE),
    ]  # fmt: skip
    marks = "not slurm and not ray and not browser"
    pytest = ["pytest", *_WORKERS, "-p", "no:cacheprovider", "-m", marks, *paths]
    env = {"VI_FLOW_TEST_DATABASE": "postgres"}
    session.run("python", "tests/pgcluster.py", "--", *pytest, env={**env, **_FEWER_EXAMPLES})


@nox.session(python=PYTHON)
def tests_browser(session: nox.Session) -> None:
    """Drive the web console in Debian's Chromium with Playwright (tests/browser), also
    behind Debian's nginx under a path prefix; both are installed when missing (as root).

    ``VI_FLOW_DOCS_SCREENSHOTS=1 nox -s tests_browser`` also refreshes docs/img/console-*.png.
    """
    import shutil

    _install_bubblewrap(session)
    missing = [] if os.path.exists(CHROMIUM) else ["chromium"]
    missing += [] if _has_binary("nginx") else ["nginx"]
    if missing and shutil.which("apt-get") and os.geteuid() == 0:
        session.run("apt-get", "update", "-q", external=True)
        session.run("apt-get", "install", "-y", "-q", *missing, external=True)
    session.install("-e", ".[test,browser]")
    env = {"VI_FLOW_REQUIRE_BROWSER": "1", "VI_FLOW_CHROMIUM": CHROMIUM}
    session.run("pytest", "-m", "browser", "tests/browser", *session.posargs, env=env)


@nox.session(python=PYTHON)
def tests_proxy(session: nox.Session) -> None:
    """The SDK through Debian's nginx and Caddy terminating TLS in front of a real server
    (issue 13), and the replicas' nginx configuration of docs/production.md (issue 17);
    never skipped here: the proxies are installed when missing (as root)."""
    import shutil

    _install_bubblewrap(session)
    missing = [name for name in ("nginx", "caddy") if not _has_binary(name)]
    if missing and shutil.which("apt-get") and os.geteuid() == 0:
        session.run("apt-get", "update", "-q", external=True)
        session.run("apt-get", "install", "-y", "-q", *missing, external=True)
    session.install("-e", ".[test]")
    env = {"VI_FLOW_REQUIRE_PROXY": "1"}
    tests = ["tests/server/test_proxy_nginx.py", "tests/docs/test_nginx_replicas_conf.py"]
    session.run("pytest", *tests, *session.posargs, env=env)


def _has_binary(name: str) -> bool:
    import shutil

    return shutil.which(name) is not None or os.path.exists(f"/usr/sbin/{name}")


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """Ruff lint and format check."""
    session.install(RUFF)
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=PYTHON)
def typing(session: nox.Session) -> None:
    """mypy --strict on the package and on tests/typing/."""
    session.install("-e", ".[typing]", MYPY)
    session.run("mypy")


@nox.session(python=PYTHON)
def docs(session: nox.Session) -> None:
    """Build the documentation site, failing on any warning."""
    session.install("-e", ".[docs]")
    env = {"NO_MKDOCS_2_WARNING": "1"}  # mkdocs-material's banner about MkDocs 2
    session.run("mkdocs", "build", "--strict", "--site-dir", "site", env=env)


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Run the benchmarks; each prints ratios against a baseline measured in the same run
    (bench_replicas.py on a throwaway PostgreSQL, installed like tests_postgres)."""
    _install_postgres(session)
    session.install("-e", ".[test,postgres]")
    for script in sorted(os.listdir("benchmarks")):
        if script.startswith("bench_") and script.endswith(".py"):
            session.run("python", f"benchmarks/{script}", *session.posargs)


@nox.session(python=PYTHON)
def demo(session: nox.Session) -> None:
    """Install vi-flow and run the demo on the embedded local server."""
    session.install("-e", ".")
    session.run("vi-flow", "demo", *session.posargs)
