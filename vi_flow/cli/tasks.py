"""``vi-flow tasks``: run tasks, follow their logs, open shells, upload code.

``tasks logs -f`` exits with the task's own exit code (128 + N for a task killed by
signal N), and ends quietly when its reader goes away (``| head -1``).
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import sys
from collections.abc import Iterable
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ._failures import EXIT_FAILURE, EXIT_TRANSIENT, EXIT_USAGE, CommandFailed
from ._lazy import LazyGroup
from ._output import (
    Order,
    emit_json,
    emit_ndjson,
    first,
    iso_time,
    json_option,
    kv_table,
    line_end,
    log_line,
    log_record,
    order_option,
    table,
    wants_json,
    when,
)
from ._params import FiniteFloat, int_range, status_option
from ._specfile import STDIN, read_text_file
from ._state import state

if TYPE_CHECKING:
    from ..models.tasks import Task, TaskConfig
    from ..resources.tasks import LogStream

__all__ = ["tasks"]

STATUSES = ["pending", "running", "completed", "failed", "cancelled"]


@click.group(cls=LazyGroup)
def tasks() -> None:
    """Run GPU/CPU tasks: status, logs, shells over SSH, code upload."""


def _pairs(
    values: Iterable[str], option: str, *, secret: bool = False, form: str = "KEY=VALUE"
) -> dict[str, str]:
    """Turn ``KEY=VALUE`` items into a dict (``click.BadParameter`` naming the item, or,
    when its values may be ``secret``, only its place: ``-e TOKEN:abc`` typed for
    ``-e TOKEN=abc``, or a bare ``-e "$TOKEN"``, must not print the token)."""
    out: dict[str, str] = {}
    items = list(values)
    for number, item in enumerate(items, 1):
        key, sep, value = item.partition("=")
        if not sep or not key:
            what = f"item {number} of {len(items)}" if secret else repr(item)
            hidden = " (not shown: it may hold a secret)" if secret else ""
            raise click.BadParameter(f"{what} is not {form}{hidden}", param_hint=f"'{option}'")
        out[key] = value
    return out


def exit_code_of(task: Task) -> int:
    """The process exit code a task maps to: its own, 128 + N when killed by signal N."""
    if task.signal is not None:
        return 128 + task.signal
    if task.exit_code is None:
        return 0 if task.status.value == "completed" else 1
    return task.exit_code


def _summary_rows(items: Iterable[Task]) -> list[tuple[Any, ...]]:
    return [
        (
            t.task_id,
            t.name,
            t.status.value,
            t.instance_type or "-",
            t.exit_code if t.exit_code is not None else "",
            when(t.created_at),
        )
        for t in items
    ]


def _show_task(task: Task) -> None:
    gpus = f"{task.gpu_count} x {task.gpu_type}" if task.gpu_count else "-"
    kv_table(
        [
            ("task id", task.task_id),
            ("name", task.name),
            ("status", task.status.value),
            ("reason", task.reason),
            ("message", task.message),
            ("exit code", task.exit_code),
            ("signal", task.signal),
            ("instance", task.instance_type),
            ("gpus", gpus),
            ("cpus", task.cpus),
            ("created", when(task.created_at)),
            ("started", when(task.started_at)),
            ("ended", when(task.ended_at)),
            ("run", task.run_id),
            ("workdir", task.workdir),
        ]
    )


def _follow(
    task_id: str,
    stream: LogStream,
    as_json: bool,
    since: datetime | timedelta | None = None,
    *,
    apart: bool = False,
) -> None:
    """Print log lines as written until the task ends; exit with its exit code. ``apart``
    (``tasks run --follow``): both streams, the task's stderr on this process's stderr,
    as if the command ran here (with ``as_json``, each line names its stream)."""
    client = state().client()
    if apart:
        _follow_apart(client, task_id, as_json)
    else:
        shown = log_line()
        for line in client.follow_logs(task_id, stream, since=since):
            if as_json:
                emit_ndjson(log_record(task_id, line))
            else:
                sys.stdout.write(shown(line) + line_end(line))
                sys.stdout.flush()
    task = client.tasks.get(task_id)
    code = exit_code_of(task)
    if as_json:
        ending = {"status": task.status.value, "exitCode": task.exit_code}
        ending |= {"reason": task.reason, "message": task.message} if code else {}
        emit_ndjson({"taskId": task_id, **ending})
    elif code:  # say why, on stderr: the lines above may not (a command that never started)
        why = ": ".join(part for part in (task.reason, task.message) if part)
        click.echo(f"task {task_id} {task.status.value}" + (f": {why}" if why else ""), err=True)
        if stream == "stdout" and task.stderr_size:  # its last words are on stderr
            tail = client.tasks.logs(task_id, tail=_STDERR_TAIL, stream="stderr")
            shown = log_line(err=True)
            sys.stderr.writelines(f"  stderr: {shown(line)}\n" for line in tail.lines)
            sys.stderr.flush()  # before the exit's own words, as click.echo would
    raise click.exceptions.Exit(code)


_STDERR_TAIL = 10
"""Lines of stderr a failed task's follow shows when it followed stdout."""


_SINCE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


_LONGEST = timedelta.max.total_seconds() / 2


def _parse_since(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> datetime | timedelta | None:
    """``--since``: a duration ago (``30s``, ``10m``, ``2h``, ``1d``) or an ISO 8601 time."""
    if value is None:
        return None
    text = value.strip()
    number, unit = text[:-1], text[-1:].lower()
    if unit in _SINCE_UNITS and number.replace(".", "", 1).isdigit():
        seconds = float(number) * _SINCE_UNITS[unit]  # longer ago than a timedelta holds:
        return timedelta(seconds=min(seconds, _LONGEST))  # every line, as from the start
    try:
        return iso_time(text)
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is neither a duration (30s, 10m, 2h, 1d) nor a time (2026-12-02T08:00)",
            ctx,
            param,
        ) from None


def _watch(task_id: str, interval: float, as_json: bool) -> None:
    """Print the task's status whenever it changes (NDJSON with --json) until it ends."""
    import time

    client, last = state().client(), None
    while True:
        task = client.tasks.get(task_id)
        if task.status != last:
            last = task.status
            if as_json:
                emit_ndjson(task)
            else:
                code = f" (exit code {task.exit_code})" if task.exit_code is not None else ""
                click.echo(f"{when(int(time.time() * 1000))}  {task_id}  {last.value}{code}")
        if task.status.terminal:
            raise click.exceptions.Exit(exit_code_of(task))
        time.sleep(interval)


_RESOURCE_OPTIONS = [
    click.option("--gpu", help="GPU shorthand: a100, a100:4, 4xa100, gpu:40gb."),
    click.option("--instance-type", help="An instance type from 'vi-flow instances find'."),
    click.option("--cpus", type=int_range(1), help="CPU cores."),
    click.option("--memory-gb", type=int_range(1), help="Memory in GB."),
]


def _follow_apart(client: Any, task_id: str, as_json: bool) -> None:
    outputs = {"stdout": (sys.stdout, log_line()), "stderr": (sys.stderr, log_line(err=True))}
    for name, line in client.compute._follow_streams(task_id):
        if as_json:
            emit_ndjson(log_record(task_id, line, stream=name))
            continue
        output, shown = outputs[name]
        output.write(shown(line) + line_end(line))
        output.flush()


def _resource_options(func: Any) -> Any:
    for option in reversed(_RESOURCE_OPTIONS):
        func = option(func)
    return func


# The command's own options follow its first word, never read as ours; an unknown
# option before it is refused (QA AZ: `--gpus 1 -- echo hi` ran the task `--gpus`).
@tasks.command("run", context_settings={"allow_interspersed_args": False})
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.option(
    "-f",
    "--file",
    "config_file",
    type=click.Path(exists=True, dir_okay=False, allow_dash=True),
    help="A task YAML file (TaskConfig fields) instead of COMMAND; - reads it from stdin.",
)
@_resource_options
@click.option("--name", help="A display name.")
@click.option(
    "-e", "--env", "env", multiple=True, metavar="KEY=VALUE", help="Environment; repeatable."
)
@click.option(
    "-v",
    "--volume",
    "volumes",
    multiple=True,
    metavar="PATH=VOLUME",
    help="Mount volume VOLUME (id or name) at PATH; repeatable.",
)
@click.option("--max-price", type=FiniteFloat(), help="Most to pay per hour.")
@click.option("--max-run-time", type=FiniteFloat(), help="Stop the task after this many seconds.")
@click.option("--reservation", "reservation_id", help="Run on a reservation's capacity.")
@click.option(
    "--follow",
    is_flag=True,
    help="Follow its output (its stderr on stderr) and exit with the task's code.",
)
@json_option
def run(
    command: tuple[str, ...],
    config_file: str | None,
    gpu: str | None,
    instance_type: str | None,
    cpus: int | None,
    memory_gb: int | None,
    name: str | None,
    env: tuple[str, ...],
    volumes: tuple[str, ...],
    max_price: float | None,
    max_run_time: float | None,
    reservation_id: str | None,
    follow: bool,
    as_json: bool,
) -> None:
    """Start a task running COMMAND (or the task file given with -f); print its id.

    Several words are the command's argv, run as they are. One word is a shell command
    line, run by /bin/sh -c (pipes, &&, quotes: 'make && ./train | tee log'), so that a
    command that is not found exits 127 as in a shell; a one-word program with spaces
    in its path needs quoting inside the word.

    \b
    Examples:
      vi-flow tasks run --gpu a100 -- python train.py --epochs 3
      vi-flow tasks run -- 'pip install -r requirements.txt && python train.py'
      vi-flow tasks run -f task.yaml --follow
    """
    if bool(command) == bool(config_file):
        raise click.UsageError("give a COMMAND or -f/--file, not both and not neither")
    kwargs: dict[str, Any] = {
        k: v
        for k, v in {
            "instance_type": instance_type,
            "name": name,
            "max_price_per_hour": max_price,
            "max_run_time": max_run_time,
            "reservation_id": reservation_id,
        }.items()
        if v is not None
    }
    if env:
        kwargs["env"] = _pairs(env, "--env", secret=True)
    mounts = {
        path: f"volume://{vol}"
        for path, vol in _pairs(volumes, "--volume", form="PATH=VOLUME").items()
    }
    target: Any = _task_file(config_file) if config_file else list(command)
    if len(command) == 1:
        target = command[0]  # one word is a shell command line, as typed
    client = state().client()
    if not follow:
        _refuse_a_task_that_would_end_with_this_command(client, "--follow")
    handle = client.run(
        target, gpu=gpu, cpus=cpus, memory_gb=memory_gb, mounts=mounts or None, **kwargs
    )
    _announce(handle.data, as_json, follow=follow)
    if follow:
        _follow(handle.task_id, "both", wants_json(as_json), apart=True)


def _refuse_a_task_that_would_end_with_this_command(client: Any, waiting: str) -> None:
    """Refuse, before starting it, a task that would end with this command: with
    ``local_server = in-process`` the command's own process may serve the home alone
    (QA: the task's id was printed, "follow it", and it had ended ServerStopped)."""
    if client._portal.call(client._async.http.connection.serves_in_process):
        raise CommandFailed(
            "this command's own process serves the home (local_server = in-process), so a"
            " task it starts would end when it exits",
            exit_code=EXIT_USAGE,
            hint=f"add {waiting}, or serve the home in the background: "
            "vi-flow config set local_server background",
        )


def _task_file(config_file: str) -> TaskConfig:
    """The ``-f`` file (``-``: stdin) read, before any server is asked for anything."""
    from ..models.tasks import TaskConfig

    try:
        if config_file != "-":
            return TaskConfig.from_yaml(Path(config_file))
        return TaskConfig.from_yaml_text(read_text_file(Path("-"), "'-f'"), str(STDIN))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'-f'") from None


def _announce(task: Task, as_json: bool, *, follow: bool = False, ended: bool = False) -> None:
    if wants_json(as_json):
        (emit_ndjson if follow else emit_json)(task)  # following: NDJSON throughout
    else:
        click.echo(task.task_id)
        if not follow and not ended:  # nothing to follow: it is followed, or over
            click.echo(f"follow it: vi-flow tasks logs -f {task.task_id}", err=True)


@tasks.command("submit")
@click.argument("command")
@click.option("--gpu", help="GPU shorthand: a100, a100:4, gpu:40gb.")
@click.option("--instance-type", help="Explicit instance type (overrides --gpu).")
@click.option(
    "-m",
    "--mount",
    "mounts",
    multiple=True,
    metavar="PATH=volume://NAME",
    help="Mount a volume; repeatable.",
)
@click.option("--wait", is_flag=True, help="Wait until the task ended; exit with its code.")
@json_option
def submit(
    command: str,
    gpu: str | None,
    instance_type: str | None,
    mounts: tuple[str, ...],
    wait: bool,
    as_json: bool,
) -> None:
    """Submit a shell COMMAND with minimal configuration (the seed's submit)."""
    client = state().client()
    if not wait:
        _refuse_a_task_that_would_end_with_this_command(client, "--wait")
    handle = client.submit(
        command,
        gpu=gpu,
        mounts=_pairs(mounts, "--mount") or None,
        instance_type=instance_type,
        wait=wait,
    )
    _announce(handle.data, as_json, ended=wait)
    if wait:
        raise click.exceptions.Exit(exit_code_of(handle.data))


@tasks.command("status")
@click.argument("task_id", required=False)
@click.option(
    "-w",
    "--watch",
    is_flag=True,
    help="Print each change of the task's status until it ends; exit with its code.",
)
@click.option(
    "--interval",
    default=1.0,
    show_default=True,
    type=FiniteFloat(0.05, 3600.0),
    help="Seconds between checks with --watch.",
)
@json_option
def status(task_id: str | None, watch: bool, interval: float, as_json: bool) -> None:
    """Show one task in detail, or the recent tasks without TASK_ID."""
    client = state().client()
    if watch:
        if task_id is None:
            raise click.UsageError("--watch needs a TASK_ID")
        _watch(task_id, interval, wants_json(as_json))
    if task_id is None:
        items = [h.data for h in client.list_tasks(limit=20)]
        if wants_json(as_json):
            emit_json(items)
        else:
            table(
                ["TASK ID", "NAME", "STATUS", "INSTANCE", "EXIT", "CREATED"], _summary_rows(items)
            )
        return
    task = client.tasks.get(task_id)
    if wants_json(as_json):
        emit_json(task)
    else:
        _show_task(task)


@tasks.command("list")
@status_option(STATUSES)
@click.option("--limit", default=50, show_default=True, type=int_range(1))
@order_option
@json_option
def list_(statuses: tuple[str, ...], limit: int, order: Order, as_json: bool) -> None:
    """List tasks, newest first."""
    pages = state().client().tasks.list(status=list(statuses) or None, order=order)
    items = first(pages.all_items(), limit, "tasks")
    if wants_json(as_json):
        emit_json(items)
    else:
        table(["TASK ID", "NAME", "STATUS", "INSTANCE", "EXIT", "CREATED"], _summary_rows(items))


@tasks.command("cancel")
@click.argument("task_id")
@click.option("--force", is_flag=True, help="SIGKILL at once instead of SIGTERM then SIGKILL.")
@json_option
def cancel(task_id: str, force: bool, as_json: bool) -> None:
    """Stop a task (a finished task is left as it is)."""
    task = state().client().tasks.cancel(task_id, force=force)
    if wants_json(as_json):
        emit_json(task)
    else:
        click.echo(f"{task.task_id}: {task.status.value}")


@tasks.command("logs")
@click.argument("task_id")
@click.option(
    "-f", "--follow", is_flag=True, help="Follow until the task ends; exit with its code."
)
@click.option(
    "-n",
    "--tail",
    type=click.IntRange(0, 100000),
    help="Lines to show (without --follow)  [default: 100; with --since, all]",
)
@click.option("--stderr", is_flag=True, help="Standard error instead of standard output.")
@click.option("--both", is_flag=True, help="Standard output then standard error.")
@click.option(
    "--since",
    callback=_parse_since,
    help="Only lines written since then: a duration ago (30s, 10m, 2h, 1d) or a time "
    "(2026-12-02T08:00, local unless it names a zone); to within a second.",
)
@json_option
def logs(
    task_id: str,
    follow: bool,
    tail: int | None,
    stderr: bool,
    both: bool,
    since: datetime | timedelta | None,
    as_json: bool,
) -> None:
    """Print a task's log; with -f, follow it as it is written."""
    if stderr and both:
        raise click.UsageError("give --stderr or --both, not both")
    stream: LogStream = "both" if both else ("stderr" if stderr else "stdout")
    if follow:
        _follow(task_id, stream, wants_json(as_json), since)
        return
    if tail is None:  # --since alone: every line since then
        tail = 100 if since is None else 100_000
    snapshot = state().client().tasks.logs(task_id, tail=tail, stream=stream, since=since)
    if wants_json(as_json):
        emit_json(snapshot)
        return
    shown = log_line()
    sys.stdout.writelines(shown(line) + "\n" for line in snapshot.lines)
    sys.stdout.flush()


@tasks.command("ssh")
@click.argument("task_id")
@click.option("--print", "print_only", is_flag=True, help="Only print the ssh command line.")
@click.option("--config", "show_config", is_flag=True, help="Print an ~/.ssh/config entry.")
@click.option(
    "--config-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the entry into this ssh config file (e.g. ~/.ssh/config); "
    "an earlier entry for the alias is replaced.",
)
@click.option("--alias", help="The entry's Host name  [default: the task id]")
def ssh(
    task_id: str,
    print_only: bool,
    show_config: bool,
    config_file: Path | None,
    alias: str | None,
) -> None:
    """Open an SSH session into a task with your ssh client (host key pinned).

    Registers vi-flow's default key (in HOME/client/ssh) on first use. Without a terminal, or
    with --print, prints the command line instead. --config prints an ~/.ssh/config entry
    and --config-file writes it, so that plain 'ssh ALIAS' (and scp, rsync, editors) works.
    """
    client = state().client()
    client.ensure_default_ssh_key()
    line = client.ssh(task_id)
    if show_config or config_file:
        from ._sshconfig import config_entry, write_entry

        entry = config_entry(line, alias or task_id)
        if config_file is None:
            click.echo(entry, nl=False)
            return
        written = config_file.expanduser()
        write_entry(written, entry, alias or task_id)
        # plain `ssh ALIAS` reads ~/.ssh/config only: another file needs -F
        default = Path("~/.ssh/config").expanduser()
        use = "" if written.resolve() == default.resolve() else f"-F {shlex.quote(str(written))} "
        click.echo(
            f"wrote Host {alias or task_id} to {written}; connect: ssh {use}{alias or task_id}"
        )
        return
    if print_only or not state().interactive or shutil.which("ssh") is None:
        click.echo(line)
        return
    from ..compute.ssh import check_commands_allowed

    # a shell the task's provider cannot run (Ray) is refused before ssh connects
    check_commands_allowed(client.tasks.ssh_endpoint(task_id))
    argv = shlex.split(line)
    state().close()
    os.execvp(argv[0], argv)


@tasks.command("shell")
@click.argument("task_id")
@click.option("-c", "--command", help="Run this command and exit with its status.")
@click.option(
    "-n", "--no-stdin", is_flag=True, help="With -c: do not pass this process's stdin on."
)
def shell(task_id: str, command: str | None, no_stdin: bool) -> None:
    """Open an interactive shell in a task, or run one command with -c.

    With -c, piped standard input goes to the command (echo hi | vi-flow tasks shell T -c
    'wc -l'); on a terminal, or with -n, the command gets none.
    """
    if command is None and not sys.stdin.isatty():
        raise click.UsageError("an interactive shell needs a terminal; use -c COMMAND")
    piped = command is not None and not no_stdin and not sys.stdin.isatty()
    source = sys.stdin.buffer if piped else None  # streamed as the command runs
    client = state().client()
    task = client.tasks.get(task_id)
    if task.status.value == "pending":  # the wait may be long: say what it waits for
        why = f" ({task.reason})" if task.reason else ""
        click.echo(f"task {task_id} is pending{why}: waiting for it to start", err=True)
    from ..compute.ssh import terminal_kept_on_signals

    terminal = sys.stdin.fileno() if sys.stdin.isatty() else -1
    with terminal_kept_on_signals(terminal):  # the shell itself runs in another thread
        result = client.shell(task_id, command=command, echo=True, input=source)
    if command is None:  # the shell's own status, as ssh gives it (QA: always 0)
        raise click.exceptions.Exit(
            EXIT_FAILURE if result.exit_status is None else result.exit_status
        )
    if result.exit_status is not None:
        raise click.exceptions.Exit(result.exit_status)
    if result.exit_signal:  # as a shell says it: 128 + the signal's number
        number = getattr(signal.Signals, f"SIG{result.exit_signal}", None)
        raise click.exceptions.Exit(128 + number if number is not None else EXIT_FAILURE)
    raise CommandFailed(
        f"the session in task {task_id} ended without the command's exit status: "
        + _why_the_session_ended(task_id),
        exit_code=EXIT_TRANSIENT,
    )


def _why_the_session_ended(task_id: str) -> str:
    """What the server says of a task whose session closed with no word of its command:
    a key revoked meanwhile raises (exit code 3, as any command with it)."""
    import vi_flow

    try:
        task = state().client().tasks.get(task_id)
    except (vi_flow.AuthenticationError, vi_flow.PermissionDeniedError):
        raise
    except vi_flow.ViFlowError:  # the server is gone too (--force, SIGTERM)
        return "the task or its server stopped"
    return f"the task {task.status.value}" if task.status.terminal else "its server closed it"


@tasks.command("upload")
@click.argument("task_id")
@click.argument("source_dir", default=".", type=click.Path(exists=True, file_okay=False))
@click.option(
    "--target",
    "target_dir",
    default="/workspace",
    show_default=True,
    help="Remote directory (inside the task).",
)
@json_option
def upload(task_id: str, source_dir: str, target_dir: str, as_json: bool) -> None:
    """Upload SOURCE_DIR to a running task, as one stream.

    Inside a git repository the files git would commit are sent; elsewhere every
    .gitignore applies to its directory. .flowignore files leave out more.
    """
    result = (
        state().client().upload_code_to_task(task_id, source_dir=source_dir, target_dir=target_dir)
    )
    if wants_json(as_json):
        emit_json(result)
        return
    where = result.path or result.target_dir  # the real directory, where it is known
    click.echo(f"uploaded {result.files} files ({result.bytes} bytes) to {where}")
    for skipped in result.skipped:
        click.echo(f"skipped {skipped}", err=True)


@tasks.command("get", hidden=True)
@click.argument("task_id")
@json_option
def get(task_id: str, as_json: bool) -> None:
    """Show one task (the same as 'status TASK_ID')."""
    click.get_current_context().invoke(status, task_id=task_id, as_json=as_json)
