"""An ``~/.ssh/config`` entry for a task, so that plain ``ssh ALIAS`` reaches it.

Made from the pinned command line ``client.ssh(task_id)`` gives (key, port, known-hosts
file, user and host), and written between marker comments, so writing it again
replaces the entry instead of adding another.
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import click

__all__ = ["config_entry", "write_entry"]

_ALIAS = re.compile(r"^[A-Za-z0-9._-]+$")


def _check_alias(alias: str) -> str:
    if not _ALIAS.match(alias):
        raise click.BadParameter(
            f"{alias!r} is not a host alias (letters, digits, '.', '_', '-')",
            param_hint="'--alias'",
        )
    return alias


def config_entry(command_line: str, alias: str) -> str:
    """The ``Host ALIAS`` block for the OpenSSH command line of a task."""
    argv = shlex.split(command_line)
    options = {"IdentitiesOnly": "yes"}
    words = iter(argv[1:-1])
    for word in words:
        value = next(words)
        if word == "-i":
            options["IdentityFile"] = value
        elif word == "-p":
            options["Port"] = value
        elif word == "-o":
            key, _, setting = value.partition("=")
            options[key] = setting
    user, _, host = argv[-1].rpartition("@")
    lines = [f"Host {_check_alias(alias)}", f"    HostName {host}", f"    User {user}"]
    lines += [f"    {key} {_quoted(value)}" for key, value in sorted(options.items())]
    return "\n".join(lines) + "\n"


def _quoted(value: str) -> str:
    return f'"{value}"' if " " in value else value


def _markers(alias: str) -> tuple[str, str]:
    return f"# >>> vi-flow {alias} >>>", f"# <<< vi-flow {alias} <<<"


def write_entry(path: Path, entry: str, alias: str) -> None:
    """Put ``entry`` in the config file at ``path``, replacing an earlier one for ``alias``."""
    begin, end = _markers(alias)
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end) + r"\n?", re.DOTALL)
    text = pattern.sub("", text)
    if text and not text.endswith("\n"):
        text += "\n"
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.write_text(f"{text}{begin}\n{entry}{end}\n", encoding="utf-8")
    os.chmod(path, 0o600)  # ssh refuses a config others may write
