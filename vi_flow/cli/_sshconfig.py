"""An ``~/.ssh/config`` entry for a task, so that plain ``ssh ALIAS`` reaches it.

Made from the pinned command line ``client.ssh(task_id)`` gives (key, port, known-hosts
file, user and host), and written between marker comments, so writing it again
replaces the entry instead of adding another.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click

from ..compute.ssh import ssh_config_path
from ..models.files import replace_file, through_link, updating

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
        if word == "-i":  # the path as it is, which the file's IdentityFile expands
            options["IdentityFile"] = ssh_config_path(value)
        elif word == "-p":
            options["Port"] = value
        elif word == "-o":  # written as a config line's argument (ssh_config_path)
            key, _, setting = value.partition("=")
            options[key] = setting
    user, _, host = argv[-1].rpartition("@")
    lines = [f"Host {_check_alias(alias)}", f"    HostName {host}", f"    User {user}"]
    lines += [f"    {key} {value}" for key, value in sorted(options.items())]
    return "\n".join(lines) + "\n"


def _markers(alias: str) -> tuple[str, str]:
    return f"# >>> vi-flow {alias} >>>", f"# <<< vi-flow {alias} <<<"


def write_entry(path: Path, entry: str, alias: str) -> None:
    """Put ``entry`` first in the config file at ``path``, replacing an earlier one for
    ``alias``, and write the file anew in one step (a crash leaves the old one whole).

    First, because ssh takes the first value it reads for an option: behind a ``Host *``
    or global lines that set ``User`` or ``Port``, the entry would lose to them. It ends
    in ``Host *``, so that lines of the file that were global stay global. A file with
    a ``Host`` entry of its own for ``alias`` is refused: its other options (a
    ``ProxyJump``, say) would apply to the task too. A linked file is written where it
    lies, the link kept.
    """
    begin, end = _markers(alias)
    target = through_link(path)
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end) + r"\r?\n?", re.DOTALL)
    with updating(target):  # QA: entries written at once lost each other, and the user's
        # its bytes kept as they are: CRLF line ends, and bytes that are not UTF-8
        text = target.read_bytes().decode("utf-8", "surrogateescape") if target.exists() else ""
        text = pattern.sub("", text)
        _refuse_an_entry_of_its_own(path, text, alias)
        if text and not text.endswith("\n"):
            text += "\n"
        block = f"{begin}\n{entry}Host *\n{end}\n"
        replace_file(target, (block + text).encode("utf-8", "surrogateescape"))


_OPTION = re.compile(r"\s*(\S+?)\s*(?:=|\s)\s*(.*)")  # KEYWORD ARGS or KEYWORD=ARGS


def _refuse_an_entry_of_its_own(path: Path, text: str, alias: str) -> None:
    for number, line in enumerate(text.splitlines(), 1):
        option = _OPTION.fullmatch(line)
        if option is None or option[1].lower() != "host":
            continue
        try:  # a pattern in double quotes may hold spaces ("B A" is one pattern)
            patterns = shlex.split(option[2], comments=True)
        except ValueError:
            patterns = option[2].split()
        if alias.lower() in (pattern.lower() for pattern in patterns):
            raise click.ClickException(
                f"{path} has an entry of its own for {alias!r} (line {number}), whose other"
                " options would apply to the task too: remove it, or give another --alias"
            )
