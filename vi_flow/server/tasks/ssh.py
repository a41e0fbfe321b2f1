"""SSH access to tasks: registered public keys and what a login maps to.

An organization registers OpenSSH public keys (the ``ssh_keys`` table, one row per
fingerprint); any of them may log in to the organization's tasks. A login as
``<task_id>`` runs inside the running task (through the provider's exec prefix: the
sandbox locally, ``srun`` on Slurm); a login to a task that is not running, or whose
provider cannot run commands inside it (Ray), is refused with a sentence saying why.
``<task_id>+logs`` runs only the server's fixed log reader, never a command. :class:`SessionContext` is what the SSH server
(:mod:`vi_flow.server.tasks.sshd`) needs for one session, and :meth:`SSHAccess.ssh_endpoint`
tells a client how to connect.
"""

from __future__ import annotations

from pathlib import Path

import attrs
import orjson

from ...models.limits import check_name, is_private_key
from ...models.tasks import SSHEndpoint, SSHKey, TaskStatus
from ..clock import now_ms
from ..db import Connection, Row, for_update
from ..errors import APIProblem
from ..providers.base import ProviderError, UnsupportedOperation
from ..replicas import Replica
from ..store import new_id
from ..validation import limited
from .records import TaskRecords

__all__ = ["KEY_DELETED", "SSHAccess", "SessionContext"]

KEY_DELETED = "kd"
"""The replicas' message of a deleted key: ``[kind, sender, org id, SHA256 fingerprint]``."""

MAX_KEY_LINE = 8192
"""The longest public key line taken (an RSA key of 16384 bits is about 2,800)."""


@attrs.frozen
class SessionContext:
    """What an SSH session on a task needs.

    Attributes:
        task_id: The task.
        organization_id: Whose keys may log in.
        root: The task directory (SFTP root).
        workdir: Where commands start.
        env: The task's environment (without the server's own).
        exec_prefix: Put before commands to run inside the task (empty for log logins).
        terminal_prefix: The same for a session on a terminal (a PTY).
        logs: The log files a ``+logs`` login may follow; ``()`` for a task login.
        refusal: Why commands cannot run in this session (``None``: they can).
        ended: Whether the task has ended: its files may be read, no longer changed.
    """

    task_id: str
    organization_id: str
    root: Path
    workdir: Path
    env: dict[str, str]
    exec_prefix: list[str]
    logs: tuple[Path, ...] = ()
    refusal: str | None = None
    ended: bool = False
    terminal_prefix: list[str] = attrs.field(factory=list)

    def prefix(self, terminal: bool) -> list[str]:
        """What runs a command inside the task, for a session on a terminal or not."""
        return self.terminal_prefix if terminal else self.exec_prefix

    @property
    def is_logs(self) -> bool:
        """Whether this is a ``<task_id>+logs`` login."""
        return bool(self.logs)


class SSHAccess:
    """SSH keys and SSH sessions on tasks (a part of the task service).

    Args:
        records: The service's task records.
        replica: This server among its replicas: a deleted key is announced to the others
            (``kd``), whose SSH servers close the connections that logged in with it.
    """

    def __init__(self, records: TaskRecords, replica: Replica) -> None:
        self._records = records
        self._replica = replica
        self._store = records.store
        self._provider = records.provider

    # -- ssh keys ----------------------------------------------------------------------

    async def add_ssh_key(
        self, org_id: str, name: str, public_key: str, added_by: str | None = None
    ) -> tuple[SSHKey, bool]:
        """Register a public key; returns ``(key, created)`` (an existing key is reused).
        ``added_by``: the name of the API key registering it (:meth:`delete_keys_added_by`).

        Raises:
            APIProblem: 422 naming ``publicKey`` when it is not an OpenSSH public key.
        """
        import asyncssh  # here, not at import: the idle server never loads it

        if is_private_key(public_key):  # asyncssh would take it (and derive its public half)
            raise APIProblem.validation(
                "publicKey", "this is a private key: send the public key (the .pub file)"
            )
        limited(check_name, "name", name)
        lines = [line for line in public_key.splitlines() if line.strip()[:1] not in ("", "#")]
        if len(lines) > 1:  # QA: the first was kept, the others dropped without a word
            keys = sum(1 for line in lines if _imports(line))
            if keys > 1:
                why = f"holds {keys} keys (one per line): add each on its own"
            elif keys == 1:
                why = f"holds a key and {len(lines) - 1} other lines: send the key's line alone"
            else:  # QA AH: a file of no key at all (/etc/passwd) was "28 keys"
                why = f"not an OpenSSH public key: none of its {len(lines)} lines is one"
            raise APIProblem.validation("publicKey", why)
        text = (lines or [""])[0].strip()
        try:
            key = asyncssh.import_public_key(text)
        except (asyncssh.KeyImportError, ValueError) as exc:
            if optioned := _options_before_key(text):  # an authorized_keys line
                raise APIProblem.validation(
                    "publicKey",
                    f"starts with authorized_keys options ({optioned!r}): send the key alone,"
                    " from its type (ssh-ed25519 AAAA...)",
                ) from exc
            raise APIProblem.validation("publicKey", f"not an OpenSSH public key: {exc}") from exc
        if not name.strip():
            raise APIProblem.validation("name", "required")
        fingerprint = key.get_fingerprint("sha256")
        line = key.export_public_key("openssh").decode().strip()
        if len(line) > MAX_KEY_LINE:  # an RSA key of 16384 bits is about 2,800
            raise APIProblem.validation(
                "publicKey", f"the key is {len(line)} characters long; the most is {MAX_KEY_LINE}"
            )
        row = (new_id("sshkey"), org_id, name, line, fingerprint, now_ms(), added_by)
        found, created = await self._store.run(lambda c: _insert_key(c, row))
        return _ssh_key(found), created

    async def list_ssh_keys(self, org_id: str) -> list[SSHKey]:
        """The organization's keys, oldest first."""
        rows = await self._store.run(
            lambda c: c.execute(
                "SELECT * FROM ssh_keys WHERE org_id = ? ORDER BY seq", (org_id,)
            ).fetchall()
        )
        return [_ssh_key(r) for r in rows]

    async def get_ssh_key(self, org_id: str, key_id: str) -> SSHKey:
        """One key.

        Raises:
            APIProblem: 404 ``NOT_FOUND``.
        """
        row = await self._store.run(
            lambda c: c.execute(
                "SELECT * FROM ssh_keys WHERE org_id = ? AND key_id = ?", (org_id, key_id)
            ).fetchone()
        )
        if row is None:
            raise APIProblem.not_found("NOT_FOUND", "ssh key", key_id)
        return _ssh_key(row)

    async def delete_ssh_key(
        self, org_id: str, key_id: str, *, answer_status: int | None = None
    ) -> SSHKey:
        """Remove a key (404 if unknown); the key as it was. ``answer_status``: a waiting
        ``Idempotency-Key`` record is saved in the same transaction."""
        key = await self.get_ssh_key(org_id, key_id)

        def delete(c: Connection) -> None:
            c.execute("DELETE FROM ssh_keys WHERE key_id = ?", (key_id,))
            self._replica.send(c, KEY_DELETED, org_id, key.fingerprint)

        await self._store.answering(
            delete, lambda _: {"keyId": key_id, "deleted": True}, answer_status
        )
        return key

    def delete_keys_added_by(self, conn: Connection, org_id: str, token_name: str) -> list[str]:
        """In the transaction on ``conn`` that revoked the API keys named ``token_name``:
        delete the organization's SSH keys they registered; their fingerprints. The other
        replicas close the connections that logged in with them (``kd``). (No new key may
        take the admin token's name; one made before that rule goes with the admin's SSH
        keys of that name too, which ``ensure_default_ssh_key`` registers again.)"""
        rows = conn.execute(
            "SELECT fingerprint FROM ssh_keys WHERE org_id = ? AND added_by = ?",
            (org_id, token_name),
        ).fetchall()
        conn.execute("DELETE FROM ssh_keys WHERE org_id = ? AND added_by = ?", (org_id, token_name))
        for row in rows:
            self._replica.send(conn, KEY_DELETED, org_id, row["fingerprint"])
        return [str(row["fingerprint"]) for row in rows]

    # -- ssh sessions ------------------------------------------------------------------

    async def session(self, username: str) -> SessionContext | None:
        """The session a login maps to: ``<task_id>`` (inside the task) or
        ``<task_id>+logs`` (on the log host); ``None`` for an unknown task."""
        task_id, _, kind = username.partition("+")
        row = await self._store.run(
            lambda c: c.execute("SELECT * FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
        )
        if row is None or kind not in ("", "logs"):
            return None
        paths = self._provider.task_paths(task_id)
        env = dict(orjson.loads(row["env"]))
        gpu_ids = orjson.loads(row["gpu_ids"])
        if gpu_ids:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in gpu_ids)
        if kind == "logs":
            logs = (paths.stdout, paths.stderr)
            return SessionContext(task_id, row["org_id"], paths.root, paths.workdir, {}, [], logs)
        prefix: list[str] = []
        on_terminal: list[str] = []
        refusal = None
        if row["status"] != TaskStatus.RUNNING.value:
            refusal = (
                f"task {task_id} is {row['status']}, not running: commands and shells need "
                f"a running task (its logs: `vi-flow tasks logs {task_id}` or the "
                f"{task_id}+logs login)"
            )
        else:
            try:
                prefix = self._provider.exec_prefix(task_id, row["provider_id"])
                on_terminal = self._provider.exec_prefix(task_id, row["provider_id"], terminal=True)
            except ProviderError as exc:
                refusal = f"cannot run commands in task {task_id}: {exc.message}"
        ended = TaskStatus(row["status"]).terminal
        return SessionContext(
            task_id, row["org_id"], paths.root, paths.workdir, env, prefix,
            refusal=refusal, ended=ended, terminal_prefix=on_terminal,
        )  # fmt: skip

    async def authorized_keys(self, org_id: str) -> list[str]:
        """The public key lines that may log in to the organization's tasks."""
        return [k.public_key for k in await self.list_ssh_keys(org_id)]

    async def ssh_endpoint(self, task_id: str, org_id: str) -> SSHEndpoint:
        """How to reach ``task_id`` over SSH.

        Raises:
            APIProblem: 404 for an unknown task; 503 while the SSH server is not running.
        """
        task = await self._records.get(task_id, org_id)
        address = self._records.ssh_address
        if address is None:
            raise APIProblem(503, "SSH_UNAVAILABLE", "the SSH server is not running")
        paths = self._provider.task_paths(task_id)
        prefix, refusal = self._published_prefix(task_id, task.provider_id)
        try:
            host_key = await address.host_key()
        except (OSError, ValueError) as exc:  # the host key cannot be read, the port bound
            raise APIProblem(503, "SSH_UNAVAILABLE", f"the SSH server cannot start: {exc}") from exc
        host = f"[{address.host}]:{address.port}"
        return SSHEndpoint(
            task_id=task_id,
            host=address.host,
            port=address.port,
            user=task_id,
            logs_user=f"{task_id}+logs",
            host_key=host_key,
            known_hosts=f"{host} {host_key}",
            workdir=str(paths.workdir),
            stdout_path=str(paths.stdout),
            stderr_path=str(paths.stderr),
            exec_prefix=prefix,
            status=task.status,
            provider=self._provider.name,
            commands_refused=refusal,
        )

    def _published_prefix(
        self, task_id: str, provider_id: str | None
    ) -> tuple[list[str], str | None]:
        """The exec prefix shown to clients (informational: the SSH server applies it), or
        ``[]`` and the provider's reason when commands cannot run inside the task."""
        try:
            return self._provider.exec_prefix(task_id, provider_id), None
        except UnsupportedOperation as exc:
            return [], exc.message
        except ProviderError:
            return [], None


def _insert_key(conn: Connection, row: tuple[object, ...]) -> tuple[Row, bool]:
    """Insert ``(key_id, org_id, name, line, fingerprint, created, added_by)`` unless
    the organization has that fingerprint; returns the key's row and whether it is new."""
    key_id, org_id, _, _, fingerprint, _, added_by = row
    if added_by is not None:  # its API key's rows locked: a revocation waits, or came first
        alive = conn.execute(
            "SELECT 1 FROM tokens WHERE org_id = ? AND name = ?" + for_update(conn),
            (org_id, added_by),
        ).fetchall()
        if not alive:
            raise APIProblem(401, "UNAUTHENTICATED", "the API key was revoked")
    existing = conn.execute(
        "SELECT * FROM ssh_keys WHERE org_id = ? AND fingerprint = ?", (org_id, fingerprint)
    ).fetchone()
    if existing is not None:
        return existing, False
    conn.execute(
        "INSERT INTO ssh_keys"
        " (key_id, org_id, name, public_key, fingerprint, created_at, added_by)"
        " VALUES (?,?,?,?,?,?,?)",
        row,
    )
    return conn.execute("SELECT * FROM ssh_keys WHERE key_id = ?", (key_id,)).fetchone(), True


def _ssh_key(row: Row) -> SSHKey:
    return SSHKey(
        key_id=row["key_id"],
        name=row["name"],
        public_key=row["public_key"],
        fingerprint=row["fingerprint"],
        created_at=row["created_at"],
        added_by=row["added_by"],
    )


_KEY_TYPES = ("ssh-", "ecdsa-", "sk-ssh-", "sk-ecdsa-")


def _imports(line: str) -> bool:
    """Whether ``line`` is an OpenSSH public key."""
    import asyncssh

    try:
        asyncssh.import_public_key(line.strip())
    except (asyncssh.KeyImportError, ValueError):
        return False
    return True


def _options_before_key(line: str) -> str:
    """The options an ``authorized_keys`` line puts before its key (``no-pty,...``), or
    ``""`` when it has none or no key follows."""
    words = line.split()
    for at, word in enumerate(words[1:], 1):
        if word.startswith(_KEY_TYPES) and _imports(" ".join(words[at:])):
            return " ".join(words[:at])[:80]
    return ""
