"""The file a job's environment travels in, for the providers whose scheduler shows jobs.

Slurm keeps a job's environment in its state directory and Ray's dashboard shows a job's
``runtime_env`` to anyone who can reach it, so the Slurm and Ray providers put a task's
environment in a mode-0600 file of ``export`` lines in the task directory
(:data:`ENV_FILE`) that the job sources and deletes.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Mapping
from pathlib import Path

__all__ = ["ENV_FILE", "write_secret_file"]

#: The task's environment, mode 0600, in its directory until the job has read it.
ENV_FILE = ".vi-flow-env"


def write_secret_file(path: Path, secrets: Mapping[str, str]) -> None:
    """Write ``export NAME=value`` lines to ``path``, readable only by its owner.

    Blocking: call it off the event loop. The file is created with mode 0600 before any
    byte is written, so no other user ever sees the values.
    """
    for name in secrets:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise ValueError(f"secret name {name!r} is not a valid environment variable name")
    text = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in secrets.items())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
