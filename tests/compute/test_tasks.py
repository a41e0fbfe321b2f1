"""The async task API against the embedded local server: run, wait, logs, follow, shell, SSH."""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from unittest.mock import ANY

import anyio
import asyncssh
import attrs
import pytest

import vi_flow
from vi_flow import TaskTimeoutError, UnprocessableEntityError
from vi_flow.compute import AsyncTask
from vi_flow.compute._follow import LogFollower
from vi_flow.compute._ops import ssh_target
from vi_flow.compute.ssh import connect
from vi_flow.models import Condition, Run
from vi_flow.models.tasks import TaskConfig, TaskStatus

from ..proxy import cutting_proxy
from .compute_kit import TCPProxy

pytestmark = pytest.mark.anyio

PY = sys.executable


@pytest.fixture
async def client() -> AsyncIterator[vi_flow.AsyncClient]:
    async with vi_flow.AsyncClient() as c:
        yield c


async def test_run_wait_logs_and_exit_code(client: vi_flow.AsyncClient) -> None:
    task = await client.run("echo hello; echo oops >&2; exit 3")
    assert isinstance(task, AsyncTask)
    with pytest.raises(
        TypeError, match=r"^timeout must be a number of seconds >= 0, or None, got 'x'"
    ):
        await task.wait(timeout="x")  # type: ignore[arg-type]  # (it compared 'x' <= 0)
    status = await task.wait(timeout=30)
    assert status == TaskStatus.FAILED  # a failed task is returned, not raised
    assert task.exit_code == 3
    assert task.status == "failed" and task.status.terminal
    assert await task.status() == TaskStatus.FAILED
    assert await task.logs() == "hello"
    assert await client.logs(task.task_id, stderr=True) == "oops"
    assert await client.logs(task.task_id, stream="both") == "hello\noops"
    assert await client.status(task.task_id) == "failed"


async def test_run_accepts_argv_yaml_and_config(
    client: vi_flow.AsyncClient, tmp_path: Path
) -> None:
    argv = await client.run([PY, "-c", "import sys; print(sys.argv[1])", "; rm -rf ~"])
    await argv.wait(timeout=30)
    assert await argv.logs() == "; rm -rf ~"
    yaml_file = tmp_path / "task.yaml"
    yaml_file.write_text("name: from-yaml\ncommand: echo yaml\nenv:\n  A: b\n")
    from_yaml = await client.run(str(yaml_file))
    assert from_yaml.name == "from-yaml"
    config = TaskConfig(name="cfg", command="echo $A", env={"A": "from-env"})
    from_config = await client.run(config)
    await from_config.wait(timeout=30)
    assert await from_config.logs() == "from-env"
    with pytest.raises(TypeError, match="unknown task option"):
        await client.run("true", colour="blue")
    before = await client.list_tasks(limit=100)
    with pytest.raises(ValueError, match=r"task file 'missing\.yaml' does not exist"):
        await client.run("missing.yaml")  # a typo is not run as a shell command
    assert len(await client.list_tasks(limit=100)) == len(before)


async def test_a_value_json_cannot_hold_is_refused_naming_its_field(
    client: vi_flow.AsyncClient,
) -> None:
    """Found by QA: orjson's "Integer exceeds 64-bit range" named no field."""
    before = await client.list_tasks(limit=100)
    with pytest.raises(ValueError, match=r"^cpus: integer out of the 64-bit range: 1000"):
        await client.run("true", cpus=10**30)
    with pytest.raises(ValueError, match=r"^command: text that is not valid Unicode"):
        await client.run("echo \udc80")  # a lone surrogate: bytes decoded with surrogateescape
    with pytest.raises(ValueError, match=r"^command\[1\]: text that is not valid Unicode"):
        await client.run(["echo", "\udc80"])
    with pytest.raises(ValueError, match=r"^env\.TOKEN: text that is not valid Unicode") as info:
        await client.run("true", env={"TOKEN": "secret\udc80"})
    assert "secret" not in str(info.value)
    with pytest.raises(TypeError, match=r"^cpus: expected a JSON value, got bytes$"):
        await client.run("true", cpus=b"1")  # type: ignore[arg-type]  # (orjson named no field)
    with pytest.raises(ValueError, match=r"^no id holds a lone surrogate"):
        await client.get_task("task_\udc80")  # (urllib's UnicodeEncodeError named no id)
    assert len(await client.list_tasks(limit=100)) == len(before)


async def test_env_numbers_and_booleans_arrive_as_json_writes_them(
    client: vi_flow.AsyncClient,
) -> None:
    """Found by QA: True arrived as "True" (Python's word)."""
    env = {"A": 1, "B": 1.5, "C": True, "D": "text"}
    task = await client.run('echo "$A|$B|$C|$D"', env=env)  # type: ignore[arg-type]
    await task.wait(timeout=30)
    assert await client.logs(task.task_id) == "1|1.5|true|text"
    before = await client.list_tasks(limit=100)
    for value in (None, [1], float("nan")):
        with pytest.raises(TypeError, match=r"^env\.B must be text, a number or a boolean"):
            await client.run("true", env={"A": "fine", "B": value})  # type: ignore[dict-item]
    assert len(await client.list_tasks(limit=100)) == len(before)


async def test_run_wait_true_returns_running(client: vi_flow.AsyncClient) -> None:
    task = await client.run("sleep 30", wait=True)
    try:
        assert task.status == "running"
        assert task.is_running
    finally:
        assert await client.cancel(task.task_id)
    assert await client.status(task.task_id) == "cancelled"


async def test_submit_wait_true_waits_until_done(client: vi_flow.AsyncClient) -> None:
    task = await client.submit("echo done", wait=True)
    assert task.status == "completed"
    assert task.exit_code == 0


async def test_wait_timeout_raises(client: vi_flow.AsyncClient) -> None:
    task = await client.run("sleep 30")
    try:
        with pytest.raises(TaskTimeoutError, match="still"):
            await task.wait(timeout=0.3)
    finally:
        await task.cancel(force=True)


async def test_a_wait_refuses_a_poll_interval_that_is_not_positive_seconds(
    client: vi_flow.AsyncClient,
) -> None:
    # QA AB: poll_interval=0 polled the server ~900 times a second (a run's wait refused it)
    task = await client.run("sleep 30")
    try:
        with pytest.raises(ValueError, match=r"poll_interval must be a positive number.*got 0"):
            await task.wait(timeout=1, poll_interval=0)
        with pytest.raises(ValueError, match=r"poll_interval.*-1"):
            await task.wait(timeout=1, poll_interval=-1)
        with pytest.raises(TypeError, match=r"poll_interval.*'1'"):
            await task.wait(timeout=1, poll_interval="1")  # type: ignore[arg-type]
        # QA AD: a negative timeout waited once, then said "still running after -1 s"
        with pytest.raises(ValueError, match=r"timeout must be a number of seconds >= 0"):
            await task.wait(timeout=-1)
        with pytest.raises(ValueError, match=r"timeout must be a number of seconds >= 0"):
            await client.wait_for_ssh(task.task_id, timeout=-1)
    finally:
        await task.cancel(force=True)


async def test_nonexistent_command_fails_with_stderr(client: vi_flow.AsyncClient) -> None:
    task = await client.submit("definitely-not-a-command-xyz", wait=True)
    assert task.status == "failed"
    assert task.exit_code == 127
    assert "definitely-not-a-command-xyz" in await task.logs(stream="stderr")


async def test_impossible_gpu_is_refused_at_submit(client: vi_flow.AsyncClient) -> None:
    with pytest.raises(UnprocessableEntityError, match="h100"):
        await client.run("nvidia-smi", gpu="h100:9")
    with pytest.raises(ValueError, match="invalid GPU request"):
        await client.run("nvidia-smi", gpu="a100:x")


async def test_follow_logs_in_order_then_exit_code(client: vi_flow.AsyncClient) -> None:
    script = "import time\nfor i in range(200):\n print(i, flush=True)\n time.sleep(0.001)\n"
    task = await client.run([PY, "-c", script])
    lines = [line async for line in task.follow_logs()]
    assert lines == [str(i) for i in range(200)]
    assert task.status == "completed"
    assert task.exit_code == 0


async def test_follow_both_streams_via_logs(client: vi_flow.AsyncClient) -> None:
    task = await client.run("echo out1; echo err1 >&2; echo out2")
    lines = [line async for line in await client.logs(task.task_id, follow=True, stream="both")]
    assert sorted(lines) == ["err1", "out1", "out2"]
    only_err = [line async for line in await client.logs(task.task_id, follow=True, stderr=True)]
    assert only_err == ["err1"]


async def test_a_python_task_s_prints_reach_a_follower_while_it_runs(
    client: vi_flow.AsyncClient,
) -> None:
    # no flush=True: Python buffers a pipe's output in 8 KiB blocks unless
    # PYTHONUNBUFFERED is set, which the service does for every task that leaves it alone
    task = await client.run([PY, "-c", "import time\nprint('epoch 1')\ntime.sleep(60)"])
    follow = task.follow_logs()
    assert await asyncio.wait_for(follow.__anext__(), 20) == "epoch 1"
    assert await task.status() == TaskStatus.RUNNING
    await client.cancel(task.task_id)
    await follow.aclose()
    # a task that sets it keeps its choice ("" turns Python's buffering back on)
    env = {"PYTHONUNBUFFERED": ""}
    show = "import os; print(repr(os.environ['PYTHONUNBUFFERED']))"
    chosen = await client.run(TaskConfig(name="buffered", command=[PY, "-c", show], env=env))
    await chosen.wait(timeout=30)
    assert await chosen.logs() == "''"


async def test_cancel_while_following_ends_the_follow(client: vi_flow.AsyncClient) -> None:
    task = await client.run("echo started; sleep 60")
    seen: list[str] = []

    async def follow() -> None:
        async for line in task.follow_logs():
            seen.append(line)  # noqa: PERF401 - the canceller watches it fill up

    async def cancel_when_started() -> None:
        while not seen:
            await asyncio.sleep(0.05)
        await client.cancel(task.task_id)

    await asyncio.wait_for(asyncio.gather(follow(), cancel_when_started()), 20)
    assert seen == ["started"]
    assert task.status == "cancelled"


async def test_logs_snapshot_while_pending(client: vi_flow.AsyncClient) -> None:
    cores = os.cpu_count() or 1
    blocker = await client.run("sleep 30", cpus=cores, wait=True)
    waiting = await client.run("echo later", cpus=cores)
    try:
        assert waiting.status == "pending"
        assert await waiting.logs() == ""
        snapshot = await client.tasks.logs(waiting.task_id)
        assert snapshot.status == TaskStatus.PENDING and snapshot.lines == []
    finally:
        await blocker.cancel(force=True)
    assert await waiting.wait(timeout=30) == TaskStatus.COMPLETED


async def test_shell_command_and_quoting(client: vi_flow.AsyncClient) -> None:
    task = await client.run("sleep 60", wait=True)
    try:
        result = await client.shell(task.task_id, "echo $VI_FLOW_TASK_ID; echo e >&2; exit 5")
        assert (result.stdout, result.stderr, result.exit_status) == (
            f"{task.task_id}\n",
            "e\n",
            5,
        )
        literal = await task.shell(["sh", "-c", 'printf "%s" "$1"', "sh", "; touch pwned"])
        assert literal.stdout == "; touch pwned"
        listing = await task.shell("ls")
        assert "pwned" not in listing.stdout
    finally:
        await task.cancel(force=True)


async def test_ssh_command_line_works_with_openssh(client: vi_flow.AsyncClient) -> None:
    if not shutil.which("ssh"):
        pytest.skip("no OpenSSH client")
    task = await client.run("sleep 60", wait=True)
    try:
        line = await client.ssh(task.task_id)
        assert "StrictHostKeyChecking=yes" in line and "UserKnownHostsFile=" in line
        assert line == await task.ssh_command()
        argv = [*line.split(), "-o", "BatchMode=yes", "echo", "via-openssh"]
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        out, err = await asyncio.wait_for(proc.communicate(), 20)
        assert proc.returncode == 0, err
        assert out == b"via-openssh\n"
    finally:
        await task.cancel(force=True)


async def test_default_key_is_private_and_registered(client: vi_flow.AsyncClient) -> None:
    key_id = await client.ensure_default_ssh_key()
    private = Path(os.environ["VI_FLOW_HOME"]) / "client" / "ssh" / "id_ed25519"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert key_id in [k["id"] for k in await client.list_ssh_keys()]
    assert await client.ensure_default_ssh_key() == key_id


async def test_unregistered_key_is_refused(client: vi_flow.AsyncClient, tmp_path: Path) -> None:
    task = await client.run("sleep 60", wait=True)
    try:
        target = await ssh_target(client.compute._context, task.task_id)
        stranger = tmp_path / "stranger"
        asyncssh.generate_private_key("ssh-ed25519").write_private_key(str(stranger))
        with pytest.raises(asyncssh.PermissionDenied):
            await connect(attrs.evolve(target, key_path=stranger))
        wrong_host = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
        with pytest.raises(asyncssh.HostKeyNotVerifiable):
            await connect(attrs.evolve(target, host_key=wrong_host.strip()))
    finally:
        await task.cancel(force=True)


async def test_an_ended_task_refuses_shells_waits_and_uploads_by_name(
    client: vi_flow.AsyncClient, tmp_path: Path
) -> None:
    task = await client.run("true")
    assert await task.wait(timeout=60) == TaskStatus.COMPLETED
    attempts = {
        "shell": client.shell(task.task_id, "echo hi"),
        "wait_for_ssh": client.wait_for_ssh(task.task_id, timeout=30),
        "upload": task.upload_code(tmp_path),
    }
    for name, attempt in attempts.items():
        with pytest.raises(vi_flow.TaskEndedError) as ended:
            await attempt
        assert (ended.value.task_id, ended.value.status) == (task.task_id, "completed"), name
        assert "has ended (completed)" in str(ended.value), name


async def test_shell_echo_into_a_closed_pipe_raises_the_broken_pipe_itself(
    client: vi_flow.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not the exception group anyio's task groups wrap it in."""

    class Closed:
        def write(self, text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self) -> None:
            pass

    task = await client.run("sleep 60", wait=True)
    try:
        monkeypatch.setattr(sys, "stdout", Closed())
        with pytest.raises(BrokenPipeError):
            await task.shell("echo hi", echo=True)
    finally:
        monkeypatch.undo()
        await task.cancel(force=True)


async def test_wait_for_ssh_and_list_tasks(client: vi_flow.AsyncClient) -> None:
    task = await client.run("sleep 60")
    try:
        ready = await client.wait_for_ssh(task.task_id, timeout=30)
        assert ready.status == "running"
        running = await client.list_tasks(status="running")
        assert task.task_id in [t.task_id for t in running]
        got = await client.get_task(task.task_id)
        assert got.task_id == task.task_id
        assert [t.task_id for t in await client.list_tasks(limit=1)] == [task.task_id]
    finally:
        await task.cancel(force=True)


async def test_fifty_tasks_on_two_cores_all_complete(client: vi_flow.AsyncClient) -> None:
    tasks = await asyncio.gather(*(client.run(f"echo task-{i}") for i in range(50)))
    statuses = await asyncio.gather(*(t.wait(timeout=60) for t in tasks))
    assert statuses == [TaskStatus.COMPLETED] * 50
    outputs = await asyncio.gather(*(t.logs() for t in tasks))
    assert outputs == [f"task-{i}" for i in range(50)]


# Prints numbered lines; after lines 25,000 and 70,000 it waits for a gate file in its
# workspace (all a sandboxed task can see), so the test cuts the connection at a moment when more data can only come over a new one.
_NUMBERED = """
import os, sys, time
for i in range(100_000):
    sys.stdout.write(f"line {i:06d}\\n")
    if i + 1 in (25_000, 70_000):
        sys.stdout.flush()
        while not os.path.exists(str(i + 1)):
            time.sleep(0.005)
"""


async def test_follow_100k_lines_through_two_cuts(client: vi_flow.AsyncClient) -> None:
    """The real server's SSH, a proxy cut twice mid-stream: every line exactly once, in order."""
    task = await client.run([PY, "-c", _NUMBERED])
    real = await ssh_target(client.compute._context, task.task_id, logs=True)
    endpoint = await client.tasks.ssh_endpoint(task.task_id)
    proxy = TCPProxy(real.port)
    await proxy.start()
    via_proxy = attrs.evolve(real, port=proxy.port)

    async def final_sizes() -> dict[str, int] | None:
        data = await client.tasks.get(task.task_id)
        return {"stdout": data.stdout_size} if data.status.terminal else None

    follower = LogFollower(
        lambda: connect(via_proxy),
        {"stdout": endpoint.stdout_path},
        is_terminal=final_sizes,
        poll_interval=0.1,
    )
    got: list[str] = []
    try:
        async for _, line in follower:
            got.append(line)
            if len(got) in (25_000, 70_000):
                proxy.cut()
                (Path(endpoint.workdir) / str(len(got))).touch()
    finally:
        await proxy.close()
    assert proxy.cuts == 2 and follower.reconnects == 2
    assert got == [f"line {i:06d}" for i in range(100_000)]
    assert (await task.refresh()).exit_code == 0


async def test_instances_reservations_and_normalize(client: vi_flow.AsyncClient) -> None:
    instances = await client.find_instances({"max_price": 100.0}, limit=5)
    assert instances and instances[0].instance_type
    with pytest.raises(ValueError, match="unknown instance requirement"):
        await client.find_instances({"colour": "red"})
    assert client.normalize_instance_request(4, "a100") == ("4xa100", 1, None)
    assert client.normalize_instance_request(3, "a100")[0] == "4xa100"
    assert client.normalize_instance_request(16, "h100") == ("8xh100", 2, None)
    # found by QA: True and 1.5 were GPU counts, "a100:2" a GPU model
    for count, error in ((True, TypeError), (1.5, TypeError), (0, ValueError)):
        with pytest.raises(error, match="gpu_count"):
            client.normalize_instance_request(count)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="gpu_type must be a GPU model"):
        client.normalize_instance_request(1, "a100:2")
    assert await client.get_reservation("res_missing") is None
    assert isinstance(await client.list_reservations(), list)


async def test_list_reservations_filters_by_status_and_knows_no_other_filter(
    client: vi_flow.AsyncClient,
) -> None:
    held = await client.reservations.create(cpus=1, duration_hours=0.5)
    try:
        ids = [r.reservation_id for r in await client.list_reservations({"status": "active"})]
        assert ids == [held.reservation_id]
        assert await client.list_reservations({"status": ["scheduled", "expired"]}) == []
        assert await client.reservations.list(status="scheduled") == []
        with pytest.raises(UnprocessableEntityError, match="known: active, cancelled"):
            await client.list_reservations({"status": "bogus"})
        with pytest.raises(TypeError, match=r"unknown reservation filter.*'colour'"):
            await client.list_reservations({"colour": "red"})  # it filtered nothing
    finally:
        await client.reservations.cancel(held.reservation_id)


async def test_get_model_downloads_run_artifacts(
    client: vi_flow.AsyncClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    command = (
        'mkdir -p "$VI_FLOW_OUTPUT_DIR/weights" && printf w > "$VI_FLOW_OUTPUT_DIR/model.bin"'
        ' && printf cfg > "$VI_FLOW_OUTPUT_DIR/weights/config.json"'
    )
    run = await _ended_run(client, command)
    assert run.status.condition == Condition.SUCCEEDED
    model = await client.get_model(run.run_id, save_dir=tmp_path / "model")
    assert sorted(p.relative_to(tmp_path / "model").as_posix() for p in model.files) == [
        "model.bin",
        "weights/config.json",
    ]
    assert (tmp_path / "model" / "model.bin").read_bytes() == b"w"
    assert (tmp_path / "model" / "weights" / "config.json").read_bytes() == b"cfg"
    monkeypatch.chdir(tmp_path)  # the default: ./models/<run_id>, answered as absolute paths
    default = await client.get_model(run.run_id)
    assert default.path.is_absolute() and default.path.parts[-2:] == ("models", run.run_id)
    assert sorted(p.relative_to(default.path).as_posix() for p in default.files) == [
        "model.bin",
        "weights/config.json",
    ]


async def test_get_model_refuses_a_blank_save_dir(
    client: vi_flow.AsyncClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # save_dir="" wrote into the current directory, over its files (found by QA).
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model.bin").write_bytes(b"mine")
    for blank in ("", "  "):
        with pytest.raises(ValueError, match=r"save_dir must name a directory, got '\s*'"):
            await client.get_model("run_abc123", save_dir=blank)
    with pytest.raises(TypeError, match="save_dir must be a directory's path, got 5"):
        await client.get_model("run_abc123", save_dir=5)  # type: ignore[arg-type]
    assert os.listdir(tmp_path) == ["model.bin"]
    assert await anyio.Path(tmp_path / "model.bin").read_bytes() == b"mine"


async def test_a_download_cut_short_leaves_no_file_and_says_so(
    client: vi_flow.AsyncClient, tmp_path: Path
) -> None:
    # QA: a download cut short raised aiohttp's ClientPayloadError (not a vi_flow
    # error), and the file's first part stayed in save_dir under its full name
    run = await _ended_run(client, 'head -c 5000000 /dev/urandom > "$VI_FLOW_OUTPUT_DIR/model.bin"')
    endpoint = await client.http.connection.endpoint()
    port = int(endpoint.base_url.rsplit(":", 1)[1].split("/")[0])
    async with cutting_proxy(port, cut_after=lambda: 2_000_000) as proxy:
        url = f"http://127.0.0.1:{proxy.port}/v1"
        async with vi_flow.AsyncClient(base_url=url, api_key=endpoint.api_key) as cut:
            with pytest.raises(
                vi_flow.APIConnectionError, match=r"'model\.bin' of this run was cut"
            ):
                await cut.get_model(run.run_id, save_dir=tmp_path / "model")
    assert os.listdir(tmp_path / "model") == []


async def _ended_run(client: vi_flow.AsyncClient, command: str) -> Run:
    """A run of one task step running ``command``, once it has ended."""
    spec = {
        "name": "model",
        "blocks": [{"block": "task", "id": "t", "settings": {"command": command}}],
    }
    flow = await client.flows.create(spec)
    run = await client.runs.create(flow.flow_id)
    with anyio.fail_after(30):
        while (run := await client.runs.get(run.run_id)).status.condition not in (
            Condition.SUCCEEDED, Condition.FAILED):  # fmt: skip
            await anyio.sleep(0.05)
    return run


async def test_get_model_of_a_run_still_going_warns(
    client: vi_flow.AsyncClient, tmp_path: Path
) -> None:
    # It answered an empty model, silently, as if the run had written nothing (found by QA).
    slow = {"block": "emit", "settings": {"count": 200, "interval": 0.05}}
    flow = await client.flows.create({"name": "slow", "blocks": [slow]})
    run = await client.runs.create(flow.flow_id)
    with pytest.warns(UserWarning, match=r"is (Pending|Running): its model may be incomplete"):
        model = await client.get_model(run.run_id, save_dir=tmp_path / "early")
    assert model.files == []
    await client.runs.cancel(run.run_id)


async def test_interactive_shell_on_the_server_pty(client: vi_flow.AsyncClient) -> None:
    import termios

    from vi_flow.compute._ops import open_ssh
    from vi_flow.compute.ssh import interactive_shell

    task = await client.run("sleep 60", wait=True)
    master, slave = os.openpty()
    cooked = termios.tcgetattr(slave)
    try:
        async with await open_ssh(client.compute._context, task.task_id) as conn:
            shell = asyncio.ensure_future(interactive_shell(conn, stdin_fd=slave, stdout_fd=slave))
            while termios.tcgetattr(slave) == cooked:
                await asyncio.sleep(0.01)
            os.write(master, b"tty >/dev/null && echo on-a-pty; exit 7\n")
            assert await asyncio.wait_for(shell, 10) == 7
        assert termios.tcgetattr(slave) == cooked
        assert b"on-a-pty" in os.read(master, 65536)
    finally:
        os.close(master)
        os.close(slave)
        await task.cancel(force=True)


async def test_shell_without_terminal_runs_stdin_as_script(
    client: vi_flow.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    import io

    task = await client.run("sleep 60", wait=True)
    try:
        fake = io.TextIOWrapper(io.BytesIO(b"echo scripted\nexit 2\n"))
        monkeypatch.setattr(sys, "stdin", fake)
        result = await client.shell(task.task_id)
        assert (result.stdout, result.exit_status) == ("scripted\n", 2)
        host, port = await client.resolve_ssh_endpoint(task.task_id)
        assert host == "127.0.0.1" and port > 0
        key, error = await client.get_task_ssh_connection_info(task.task_id)
        assert error == "" and key is not None and key.name == "id_ed25519"
        with pytest.raises(ValueError, match="node"):
            await client.ssh(task.task_id, node=1)
    finally:
        await task.cancel(force=True)
    assert await client.get_task_ssh_connection_info("task_missing") == (None, ANY)


@pytest.fixture
async def gpu_client() -> AsyncIterator[vi_flow.AsyncClient]:
    """A client whose local server sees two (fake) 80 GB A100s."""
    from vi_flow.server import embedded

    fake = {"local_gpus": [{"type": "a100", "memory_gb": 80}] * 2}
    home = os.environ["VI_FLOW_HOME"]
    server = await anyio.to_thread.run_sync(lambda: embedded.acquire(home, extra=fake))
    try:
        async with vi_flow.AsyncClient() as client:
            yield client
    finally:
        await anyio.to_thread.run_sync(embedded.release, server)


async def test_gpu_task_gets_its_gpus(gpu_client: vi_flow.AsyncClient) -> None:
    task = await gpu_client.submit("echo $CUDA_VISIBLE_DEVICES", gpu="a100:2", wait=True)
    assert task.status == "completed" and task.gpu_count == 2
    assert sorted((await task.logs()).split(",")) == ["0", "1"]
    with pytest.raises(UnprocessableEntityError, match=r"h100[\s\S]*a100"):
        await gpu_client.run("true", gpu="h100:9")
    with pytest.raises(UnprocessableEntityError, match="a100"):
        await gpu_client.run("true", gpu="a100:3")


async def test_100_concurrent_shells_on_one_client(client: vi_flow.AsyncClient) -> None:
    """Issue 11: parallel shells share one pin file; none fails (no shared temporary name)."""
    task = await client.run("sleep 60", wait=True)
    try:
        for count in (20, 100):
            results = await asyncio.wait_for(
                asyncio.gather(*(task.shell(f"echo shell-{i}") for i in range(count))), 120
            )
            assert [r.stdout for r in results] == [f"shell-{i}\n" for i in range(count)]
    finally:
        await task.cancel(force=True)


async def test_a_wait_of_no_time_is_one_look(client: vi_flow.AsyncClient) -> None:
    task = await client.run("true")
    assert await task.wait(timeout=60) == TaskStatus.COMPLETED
    assert await task.wait(timeout=0) == TaskStatus.COMPLETED  # over: no time needed
    running = await client.run("sleep 30", wait=True)
    try:
        with pytest.raises(TaskTimeoutError, match="is still running after 0 s"):
            await running.wait(timeout=0)
    finally:
        await running.cancel(force=True)
