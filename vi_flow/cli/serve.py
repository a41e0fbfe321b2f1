"""``vi-flow serve``: run the local server as a long-running process."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from ._failures import EXIT_FAILURE, CommandFailed
from ._params import FiniteFloat, HomeDir

if TYPE_CHECKING:
    from ..server import ServerSettings
    from ..server.retention import RetentionSettings

__all__ = ["serve"]


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option(
    "--port",
    default=8000,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="TCP port (0 picks a free one).",
)
@click.option(
    "--home",
    type=HomeDir(),
    envvar="VI_FLOW_HOME",
    show_envvar=True,
    help="State directory (database, tokens, task files).",
)
@click.option(
    "--provider",
    type=click.Choice(["local", "slurm", "ray"]),
    default="local",
    show_default=True,
    help="Where tasks run.",
)
@click.option(
    "--llm-base-url",
    envvar="VI_FLOW_LLM_BASE_URL",
    show_envvar=True,
    help="OpenAI-compatible endpoint for llm blocks.",
)
@click.option(
    "--llm-api-key",
    envvar="VI_FLOW_LLM_API_KEY",
    show_envvar=True,
    help="Key for --llm-base-url (never printed).",
)
@click.option("--slurm-url", help="slurmrestd URL (provider slurm).")
@click.option("--slurm-user", help="Slurm user the token belongs to (provider slurm).")
@click.option(
    "--slurm-token-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="File with the JWT from 'scontrol token' (provider slurm).",
)
@click.option("--slurm-partition", help="Partition for task jobs (provider slurm).")
@click.option("--ray-url", help="Ray dashboard (Jobs API) URL (provider ray).")
@click.option(
    "--ssh-host",
    envvar="VI_FLOW_SSH_HOST",
    show_envvar=True,
    help="Address the SSH server binds (shells, log follows, uploads) [default: as --host].",
)
@click.option(
    "--ssh-port",
    default=0,
    show_default=True,
    envvar="VI_FLOW_SSH_PORT",
    show_envvar=True,
    type=click.IntRange(0, 65535),
    help="SSH port (0 picks a free one; set one for clients elsewhere).",
)
@click.option(
    "--public-url",
    envvar="VI_FLOW_PUBLIC_URL",
    show_envvar=True,
    help="API URL clients elsewhere use, such as a reverse proxy's https://flows.example.com.",
)
@click.option(
    "--ssh-public-host",
    envvar="VI_FLOW_SSH_PUBLIC_HOST",
    show_envvar=True,
    help="SSH host name task endpoints advertise [default: the bound address, or the "
    "--public-url host for a wildcard bind].",
)
@click.option(
    "--ssh-public-port",
    envvar="VI_FLOW_SSH_PUBLIC_PORT",
    show_envvar=True,
    type=click.IntRange(1, 65535),
    help="SSH port task endpoints advertise (a forwarded port) [default: --ssh-port].",
)
@click.option(
    "--retention-days",
    envvar="VI_FLOW_RETENTION_DAYS",
    show_envvar=True,
    metavar="AGE",
    help="Prune finished runs and tasks older than this many days (or 12h, 2w), hourly "
    "(VI_FLOW_RETENTION_INTERVAL); unset keeps everything.",
)
@click.option(
    "--database",
    envvar="VI_FLOW_DATABASE",
    show_envvar=True,
    metavar="URL",
    help="Keep the server's state in PostgreSQL (postgresql://USER@HOST/DB, needs "
    "vi-flow[postgres]) instead of HOME/state.db. Several servers (replicas, each with its "
    "own home) may share one database behind a load balancer. Give the password in "
    "~/.pgpass or PGPASSWORD rather than in the URL.",
)
@click.option(
    "--replica-name",
    envvar="VI_FLOW_REPLICA_NAME",
    show_envvar=True,
    metavar="NAME",
    help="How this server shows among the replicas of its database (logs, "
    "'vi-flow server status'); other replicas send it its tasks' log, file and shell "
    "requests by this name [default: HOST:<digest of HOME's path>, the same at every start].",
)
@click.option(
    "--replica-lease",
    envvar="VI_FLOW_REPLICA_LEASE",
    show_envvar=True,
    type=FiniteFloat(),
    callback=lambda ctx, param, value: _lease(value),
    metavar="SECONDS",
    help="Seconds a replica may stay silent before the others take its runs over [default: 15].",
)
def serve(
    host: str,
    port: int,
    home: Path | None,
    provider: str,
    llm_base_url: str | None,
    llm_api_key: str | None,
    slurm_url: str | None,
    slurm_user: str | None,
    slurm_token_file: Path | None,
    slurm_partition: str | None,
    ray_url: str | None,
    ssh_host: str | None,
    ssh_port: int,
    public_url: str | None,
    ssh_public_host: str | None,
    ssh_public_port: int | None,
    retention_days: str | None,
    database: str | None,
    replica_name: str | None,
    replica_lease: float | None,
) -> None:
    """Run the home's vi-flow server in the foreground until Ctrl-C or SIGTERM.

    It owns the home: clients with the default 'local' base URL use it, and a second
    server on the same home exits 1 naming this one. Remote clients reach it with
    --base-url http://HOST:PORT/v1 (or --public-url) and the admin token in
    HOME/admin-token; they reach task shells and log follows over SSH at the advertised
    --ssh-public-host/--ssh-public-port, or follow logs over HTTP. Logs go to stderr at the
    level of VI_FLOW_LOG (default info).
    """
    from ..config import default_home
    from ..server import ServerSettings
    from ..server.endpoints import EndpointError, check_endpoints

    slurm = {
        "url": slurm_url,
        "user": slurm_user,
        "token_file": slurm_token_file,
        "partition": slurm_partition,
    }
    slurm = {k: v for k, v in slurm.items() if v is not None}
    if slurm and provider != "slurm":
        raise click.UsageError("--slurm-* options need --provider slurm")
    if ray_url and provider != "ray":
        raise click.UsageError("--ray-url needs --provider ray")
    extra: dict[str, object] = {"slurm": slurm} if slurm else {}
    if ray_url:
        extra["ray"] = {"url": ray_url}
    settings = ServerSettings(
        home=(home or default_home()).expanduser().resolve(),
        host=host,
        port=port,
        provider=provider,
        llm_base_url=llm_base_url,
        llm_api_key=llm_api_key,
        extra=extra,
        ssh_host=ssh_host,
        ssh_port=ssh_port,
        public_url=public_url,
        ssh_public_host=ssh_public_host,
        ssh_public_port=ssh_public_port,
        retention=_retention(retention_days),
        database=_database(database),
        replica_name=replica_name,
    )
    if replica_lease is not None:
        settings.replica_lease = replica_lease
    try:
        check_endpoints(settings)
    except EndpointError as exc:
        raise click.UsageError(f"--{exc.setting.replace('_', '-')}: {exc.problem}") from None
    _serve_logged(settings)


def _lease(value: float | None) -> float | None:
    """``--replica-lease``: seconds from 1 to a day (not NaN, not infinite)."""
    if value is not None and not 1.0 <= value <= 86400.0:
        raise click.BadParameter(f"must be between 1 and 86400 seconds, not {value!r}")
    return value


def _database(target: str | None) -> str | None:
    """The ``--database`` value, checked as the server will (a kind it knows, its driver)."""
    from ..server.db import DatabaseSettingError, open_database

    if not target:
        return None
    try:
        open_database(target)
    except DatabaseSettingError as exc:
        raise click.UsageError(f"--database: {exc}") from None
    return target


def _retention(days: str | None) -> RetentionSettings:
    """The retention settings, ``--retention-days`` over the environment's."""
    import os

    from ..server.retention import RetentionSettings

    env = {**os.environ, "VI_FLOW_RETENTION_DAYS": days or ""}
    try:
        return RetentionSettings.from_env(env)
    except ValueError as exc:
        problem = str(exc).replace("VI_FLOW_RETENTION_DAYS:", "--retention-days:")
        raise click.UsageError(problem) from None


def _serve_logged(settings: ServerSettings) -> None:
    from ..server import run_server
    from ..server.endpoints import EndpointError, cannot_listen
    from ..server.home import HomeError
    from ..server.logs import close_logging, configure_logging

    try:
        configure_logging()
    except ValueError as exc:  # a bad VI_FLOW_LOG
        raise click.UsageError(str(exc)) from None
    try:
        run_server(settings)
    except HomeError as exc:  # another server owns the home, or it is unusable
        raise CommandFailed(str(exc), exit_code=EXIT_FAILURE) from None
    except EndpointError as exc:  # the SSH port is taken
        raise CommandFailed(str(exc), exit_code=EXIT_FAILURE) from None
    except OSError as exc:  # the HTTP port is taken, the address is not this machine's
        message = cannot_listen(f"{settings.host}:{settings.port}", exc)
        raise CommandFailed(message, exit_code=EXIT_FAILURE) from None
    finally:
        close_logging()
