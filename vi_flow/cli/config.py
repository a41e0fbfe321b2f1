"""``vi-flow config show|set``: the client settings and the TOML config file."""

from __future__ import annotations

import click

from ._lazy import LazyGroup
from ._output import emit_done, emit_json, json_option, kv_table, wants_json
from ._state import state

__all__ = ["config"]


@click.group(cls=LazyGroup)
def config() -> None:
    """Show or set client settings (arguments > VI_FLOW_* env > config file > defaults)."""


@config.command("show")
@json_option
def show(as_json: bool) -> None:
    """Show the settings this CLI would use, and where the config file is.

    The API key is never shown, only whether one is set.
    """
    from ..config import NOT_GIVEN, config_path, resolve_settings

    cli = state()
    settings = resolve_settings(
        base_url=cli.base_url or NOT_GIVEN, api_key=cli.api_key or NOT_GIVEN
    )
    timeout = settings.timeout
    data = {
        "baseUrl": settings.base_url,
        "apiKey": "set" if settings.api_key else "not set",
        "organizationId": settings.organization_id,
        "timeout": {"connect": timeout.connect, "read": timeout.read, "total": timeout.total},
        "maxRetries": settings.max_retries,
        "home": str(settings.home),
        "localServer": settings.local_server,
        "serverIdleTimeout": settings.server_idle_timeout,
        "logTransport": settings.log_transport,
        "caFile": None if settings.ca_file is None else str(settings.ca_file),
        "configFile": str(config_path()),
    }
    if wants_json(as_json):
        emit_json(data)
        return
    kv_table(
        [
            ("base_url", data["baseUrl"]),
            ("api_key", data["apiKey"]),
            ("organization_id", data["organizationId"] or "(the key's organization)"),
            ("timeout", _shown_timeout(timeout.connect, timeout.read, timeout.total)),
            ("max_retries", data["maxRetries"]),
            ("home", data["home"]),
            ("local_server", data["localServer"]),
            ("server_idle_timeout", f"{settings.server_idle_timeout:g} s (0: never)"),
            ("log_transport", data["logTransport"]),
            ("ca_file", data["caFile"] or "(the system's CAs)"),
            ("config file", data["configFile"]),
        ]
    )


def _shown_timeout(connect: float | None, read: float | None, total: float | None) -> str:
    """A timeout as a table shows it: each part that bounds something (QA: a number set as
    the timeout is its ``total``, which the table left out)."""

    def part(name: str, seconds: float | None) -> str:
        return f"{name} {'none' if seconds is None else f'{seconds:g}s'}"

    return ", ".join(
        part(n, s) for n, s in (("total", total), ("connect", connect), ("read", read))
    )


@config.command("set")
@click.argument("key")
@click.argument("value", required=False)
@json_option
def set_(key: str, value: str | None, as_json: bool) -> None:
    """Set KEY to VALUE in the config file (mode 0600).

    Keys: api_key, organization_id, base_url, timeout, max_retries, home, local_server
    (background or in-process), server_idle_timeout (seconds, 0: never), log_transport
    (auto, ssh or http), ca_file (a PEM file of CA certificates to trust).

    VALUE - reads the value from the first line of standard input. For api_key, use - or
    leave VALUE out to be asked for it (not echoed): a key on the command line can be read
    by every user of the machine while the command runs (/proc/PID/cmdline).
    """
    from ..config import CONFIG_KEYS, ConfigFileError, write_config_value

    if key not in CONFIG_KEYS:
        raise click.BadParameter(
            f"unknown key {key!r}; known keys: {', '.join(CONFIG_KEYS)}", param_hint="KEY"
        )
    if (key == "api_key" and value is None) or value == "-":
        value = _read_value(key)
    elif value is None:
        raise click.UsageError(f"give {key}'s VALUE (or - to read it from standard input)")
    try:
        path = write_config_value(key, value)
    except ConfigFileError as exc:  # QA BA: it was "Invalid value for VALUE"
        raise click.UsageError(str(exc)) from None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="VALUE") from None
    shown = "***" if key == "api_key" else value
    data = {"key": key, "value": shown, "path": str(path)}
    emit_done(as_json, data, f"{key} = {shown}  ({path})")


def _read_value(key: str) -> str:
    """``key``'s value from standard input: asked for on a terminal (the API key without
    echo), else the first line, as ``... < key-file`` or a pipe gives it (QA AM:
    ``organization_id -`` stored ``-``)."""
    import sys

    what = "the API key" if key == "api_key" else key
    if sys.stdin is None or sys.stdin.closed:
        raise click.UsageError(f"no standard input to read {what} from")
    if sys.stdin.isatty():  # a person types it: the key is not echoed (QA AP: with -, it was)
        secret = key == "api_key"
        return str(click.prompt("API key" if secret else key, hide_input=secret, err=True)).strip()
    line = sys.stdin.readline(_MOST_VALUE + 1)
    if len(line.rstrip("\r\n")) > _MOST_VALUE:
        raise click.UsageError(f"{what} on standard input is longer than {_MOST_VALUE} characters")
    if not line.strip():
        raise click.UsageError(
            f"no {what.removeprefix('the ')} on standard input (give it as one line)"
        )
    return line.strip()


_MOST_VALUE = 64 * 1024  # a key is far shorter: more is another file piped in by mistake
