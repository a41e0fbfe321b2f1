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
    target = path.resolve() if path.is_symlink() else path
    text = target.read_text(encoding="utf-8") if target.exists() else ""
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end) + r"\n?", re.DOTALL)
    text = pattern.sub("", text)
    _refuse_an_entry_of_its_own(path, text, alias)
    if text and not text.endswith("\n"):
        text += "\n"
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    _replace(target, f"{begin}\n{entry}Host *\n{end}\n{text}")


def _refuse_an_entry_of_its_own(path: Path, text: str, alias: str) -> None:
    for number, line in enumerate(text.splitlines(), 1):
        keyword, *patterns = re.split(r"[\s=]+", line.strip().replace('"', " ")) or [""]
        if keyword.lower() == "host" and alias.lower() in (p.lower() for p in patterns):
            raise click.ClickException(
                f"{path} has an entry of its own for {alias!r} (line {number}), whose other"
                " options would apply to the task too: remove it, or give another --alias"
            )


def _replace(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a new file renamed over it (mode 600: ssh refuses
    a config others may write)."""
    temporary = path.with_name(f".{path.name}.vi-flow-{os.getpid()}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o600)  # O_CREAT's mode passes the umask; a stale file's kept its own
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
