"""Volumes and the task mounts that attach them, for the task service.

A volume is a directory the provider creates (``create_volume``), recorded per
organization in the ``volumes`` table under a unique name. Tasks mount volumes when they
are submitted (``VolumeSpec`` entries, resolved by id or name and created on first use)
or later with :meth:`Volumes.mount`; each mount is a ``task_mounts`` row and a
symlink inside the task's workspace. A ``block`` volume attaches to one pending or
running task at a time, a ``file`` volume to any number. A volume mounted by a pending
or running task cannot be deleted; a deleted volume's data is set aside in the
transaction that deletes its row, then removed (:meth:`Volumes.remove_deleted` removes
what is left).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
from collections.abc import Sequence
from pathlib import Path

import orjson

from ...models._base import to_wire
from ...models.limits import shown
from ...models.tasks import Task, TaskStatus, Volume, VolumeSpec
from .._records import seq_window
from ..beneath import LinkInTheWay, link_beneath, unlink_beneath
from ..clock import now_ms
from ..db import Connection, IntegrityError, Row, for_update
from ..errors import APIProblem
from ..providers.base import Mount
from ..store import answer_saver, new_id
from ..trees import left_aside, put_back, set_aside, try_remove_tree
from .launch import visible_path, volume_env_name
from .records import TaskRecords

__all__ = ["Volumes", "missing_volumes", "mount_rows", "refuse_attached_block_volumes"]

log = logging.getLogger("vi_flow.server")

MAX_VOLUME_NAME = 63
"""The longest volume name."""
_VOLUME_NAME = re.compile(rf"^[A-Za-z0-9][A-Za-z0-9._-]{{0,{MAX_VOLUME_NAME - 1}}}$")

_ATTACHED_SQL = (
    "SELECT m.task_id FROM task_mounts m JOIN tasks t ON t.task_id = m.task_id"
    " WHERE m.volume_id = ? AND t.status IN ('pending','running')"
)


class Volumes:
    """Volume records, and mounting them into tasks (a part of the task service).

    Args:
        records: The service's task records.
    """

    def __init__(self, records: TaskRecords) -> None:
        self._records = records
        self._store = records.store
        self._provider = records.provider
        self._removing = asyncio.Lock()  # one removal of set-aside data at a time

    async def create_volume(
        self,
        org_id: str,
        size_gb: int,
        name: str | None,
        interface: str = "file",
        region: str | None = None,
        *,
        answer_status: int | None = None,
    ) -> Volume:
        """Create a volume (directory) named ``name`` (``vol-<hex>`` when omitted).

        With ``answer_status`` (the HTTP status the volume is answered with), a waiting
        ``Idempotency-Key`` record is saved in the transaction that records the volume.
        A directory made for a volume whose record could not be saved is removed.

        Raises:
            APIProblem: 422 for a bad name/size/interface, 409 for a duplicate name.
        """
        volume_id = new_id("vol")
        name = name if name is not None else volume_id.replace("_", "-")
        _check_volume(name, size_gb, interface)
        if await self._find_volume(org_id, name) is not None:
            raise APIProblem.conflict(f"a volume named {name!r} already exists")
        save = answer_saver(answer_status)
        path = await self._provider.create_volume(volume_id, size_gb)
        row = (volume_id, org_id, name, size_gb, interface, region or "local", str(path), now_ms())

        def insert(conn: Connection) -> Volume:
            _insert_volume(conn, row)
            made = conn.execute("SELECT * FROM volumes WHERE volume_id = ?", (volume_id,))
            volume = _volume(made.fetchone(), [])
            save(conn, volume)  # an Idempotency-Key's record, in the same transaction
            return volume

        try:
            return await self._store.run(insert)
        except BaseException as exc:
            await self._provider.delete_volume(volume_id)  # no directory without its record
            if isinstance(exc, IntegrityError):
                raise APIProblem.conflict(f"a volume named {name!r} already exists") from exc
            raise

    async def _find_volume(self, org_id: str, ident: str) -> Volume | None:
        def find(conn: Connection) -> tuple[Row | None, list[str]]:
            row = conn.execute(
                "SELECT * FROM volumes WHERE org_id = ? AND (volume_id = ? OR name = ?)",
                (org_id, ident, ident),
            ).fetchone()
            if row is None:
                return None, []
            return row, _attached(conn, row["volume_id"])

        row, attached = await self._store.run(find)
        return None if row is None else _volume(row, attached)

    async def get_volume(self, org_id: str, ident: str) -> Volume:
        """A volume by id or name.

        Raises:
            APIProblem: 404 ``NOT_FOUND``.
        """
        volume = await self._find_volume(org_id, ident)
        if volume is None:
            raise APIProblem.not_found("NOT_FOUND", "volume", ident)
        return volume

    async def list_volumes(
        self, org_id: str, size: int, after: int = 0, *, newest: bool = True
    ) -> tuple[list[Volume], int | None]:
        """A page of volumes, newest first (unless ``newest=False``)."""
        window, bound, order = seq_window(after, newest)

        def select(conn: Connection) -> list[tuple[Row, list[str]]]:
            rows = conn.execute(
                f"SELECT * FROM volumes WHERE org_id = ? AND {window} ORDER BY {order} LIMIT ?",
                (org_id, *bound, size + 1),
            ).fetchall()
            return [(row, _attached(conn, row["volume_id"])) for row in rows]

        rows = await self._store.run(select)
        cursor = rows[size - 1][0]["seq"] if len(rows) > size else None
        return [_volume(row, attached) for row, attached in rows[:size]], cursor

    async def delete_volume(
        self, org_id: str, ident: str, *, answer_status: int | None = None
    ) -> str:
        """Delete a volume and its data; returns its id.

        The data is renamed aside in the transaction that deletes the row, after the
        row's checks: a delete that fails leaves the volume whole, one that commits
        leaves its data named for removal. It is removed at once; what could not be
        (or a server stopped before it) is removed by :meth:`remove_deleted`.

        With ``answer_status``, a waiting ``Idempotency-Key`` record is saved in the
        deleting transaction (a retry after a crash gets this answer, not a 404).

        Raises:
            APIProblem: 404 if unknown, 409 while a pending or running task mounts it.
        """
        volume = await self.get_volume(org_id, ident)
        path = Path(volume.path)
        aside: list[Path] = []  # where the data went, once the rename is done

        def delete(conn: Connection) -> None:
            # checked and deleted in one transaction, the volume's row locked: a task
            # made meanwhile that mounts it either comes first (409 here) or finds it
            # gone (QA: both succeeded, and the task failed to start)
            if missing_volumes(conn, [volume.volume_id]):
                raise APIProblem.not_found("NOT_FOUND", "volume", ident)
            if attached := _attached(conn, volume.volume_id):
                raise APIProblem.conflict(
                    f"volume {volume.name!r} is mounted by task {attached[0]!r}; "
                    "cancel the task or wait for it to end first"
                )
            conn.execute("DELETE FROM volumes WHERE volume_id = ?", (volume.volume_id,))
            moved = set_aside(path)  # last: a failure to move it rolls the delete back
            if moved is not None:
                aside.append(moved)

        try:
            answer = {"volumeId": volume.volume_id, "deleted": True}
            await self._store.answering(delete, lambda _: answer, answer_status)
        except BaseException:
            if aside:  # the transaction failed after the rename: the volume keeps its data
                await asyncio.to_thread(_put_back, aside[0], path)
            raise
        async with self._removing:
            for gone in aside:
                await asyncio.to_thread(try_remove_tree, gone)
        return volume.volume_id

    async def remove_deleted(self) -> int:
        """Remove the data of deleted volumes that is still set aside (its removal failed,
        or the server stopped first); data set aside by a delete that never committed
        (the server stopped between the two) goes back to its volume. Called when the
        server starts and at each retention sweep.

        Returns:
            How many volumes' data was removed.
        """
        async with self._removing:
            found = await asyncio.to_thread(left_aside, self._provider.volumes_dir)
            removed = 0
            for aside, path in found:
                if not await self._store.run(functools.partial(_restore_kept, aside, path)):
                    removed += await asyncio.to_thread(try_remove_tree, aside)
        if removed:
            log.info("removed the data of %d deleted volumes", removed)
        return removed

    # -- mounts ------------------------------------------------------------------------

    async def mount(self, org_id: str, task_id: str, ident: str, mount_path: str | None) -> Task:
        """Make a volume visible in a pending or running task's workspace now.

        Raises:
            APIProblem: 404 for an unknown task/volume, 409 for an ended task, 422 for a
                bad or taken mount path.
        """
        task = await self._records.get(task_id, org_id)
        if task.status.terminal:
            raise APIProblem.conflict(f"task {task_id!r} has ended ({task.status.value})")
        mounted = getattr(self._provider, "mounted", None)
        if mounted is None:  # a cluster job's sandbox is fixed when it is submitted
            raise APIProblem(
                501,
                "NOT_SUPPORTED",
                f"the {self._provider.name!r} compute provider cannot mount a volume into a"
                " task that exists: name the volume in the task's volumes when submitting it",
            )
        volume = await self.get_volume(org_id, ident)
        path = mount_path or f"/volumes/{volume.name}"
        paths = self._provider.task_paths(task_id)
        visible = visible_path(paths.workdir, path)
        try:
            await asyncio.to_thread(_link, paths.root, Path(volume.path), visible)
        except FileExistsError as exc:
            raise APIProblem.validation("mountPath", f"{path!r} is already used") from exc
        except LinkInTheWay as exc:
            raise APIProblem.validation(
                "mountPath", f"{path!r} goes through a link or a file in the workspace"
            ) from exc
        row = (task_id, volume.volume_id, volume.name, volume.path, path, str(visible))
        try:  # checked again where it is recorded: a delete or another mount may have come
            await self._store.run(lambda c: _record_mount(c, row))
        except BaseException:
            await asyncio.to_thread(unlink_beneath, paths.root, visible, Path(volume.path))
            raise
        # The provider shows it to the sessions opened from now on (and, where it can,
        # to the task's running processes).
        variable = (volume_env_name(volume.name), volume.path)  # for a task yet to start
        await mounted(task_id, Path(volume.path), variable)
        return await self._records.get(task_id)

    async def mounts(self, task_id: str) -> list[Mount]:
        """The volumes mounted into ``task_id``."""
        rows = await self._store.run(
            lambda c: c.execute(
                "SELECT * FROM task_mounts WHERE task_id = ?", (task_id,)
            ).fetchall()
        )
        return [
            Mount(
                r["volume_id"],
                r["name"],
                Path(r["host_path"]),
                r["mount_path"],
                Path(r["visible_path"]),
            )
            for r in rows
        ]

    async def resolve(
        self, org_id: str, workdir: Path, specs: Sequence[VolumeSpec], made: list[str]
    ) -> list[Mount]:
        """The mounts a new task's volume specs ask for, creating volumes named anew
        (their ids go to ``made``: a task refused later deletes them, :meth:`forget`).

        Every spec is checked before a volume is made; one made before a later one
        failed is deleted again (QA AH: a refused task left the volumes it named).

        Raises:
            APIProblem: 422 for a mount path used twice, an unknown volume id, or a bad
                name, size or interface of a new one (naming ``volumes[i]``).
        """
        mounts: list[Mount] = []
        seen: list[Path] = []
        for index, spec in enumerate(specs):  # every path checked before a volume is made
            visible = visible_path(workdir, spec.mount_path)
            if visible in seen:
                raise APIProblem.validation(
                    f"volumes[{index}].mountPath", f"{spec.mount_path!r} is used twice"
                )
            seen.append(visible)
        existing = [await self._existing(org_id, i, spec) for i, spec in enumerate(specs)]
        names = [
            (v.volume_id, v.name) if v else (None, spec.name)
            for v, spec in zip(existing, specs, strict=True)
        ]
        if clash := _env_name_clash(names):  # before a volume is made: a refused task makes none
            index, first, variable = clash
            raise APIProblem.validation(
                f"volumes[{index}]",
                f"volume {names[index][1]!r} and volume {names[first][1]!r} (volumes[{first}])"
                f" would both be {variable}: mount one of them, or rename one",
            )
        for index, spec in enumerate(specs):
            if existing[index] is None:
                name = spec.name if spec.name is not None else "new"
                _check_volume(name, spec.size_gb, spec.interface, f"volumes[{index}].")
        try:
            for index, (spec, visible) in enumerate(zip(specs, seen, strict=True)):
                volume = existing[index] or await self._volume_for_spec(org_id, index, spec)
                if existing[index] is None and volume.volume_id not in made:
                    made.append(volume.volume_id)
                mounts.append(
                    Mount(
                        volume.volume_id, volume.name, Path(volume.path), spec.mount_path, visible
                    )
                )
        except BaseException:
            await self.forget(org_id, made)
            raise
        return mounts

    async def forget(self, org_id: str, volume_ids: Sequence[str]) -> None:
        """Delete the volumes a refused task made (best effort: a failure is logged)."""
        for volume_id in volume_ids:
            try:
                await self.delete_volume(org_id, volume_id)
            except Exception:  # noqa: PERF203 - one volume's failure must not keep the others
                log.warning("volume %s made for a refused task could not be deleted", volume_id)

    async def _existing(self, org_id: str, index: int, spec: VolumeSpec) -> Volume | None:
        """The volume ``spec`` names when there is one (an unknown id is a 422)."""
        if spec.volume_id:
            found = await self._find_volume(org_id, spec.volume_id)
            if found is None:
                raise APIProblem.validation(
                    f"volumes[{index}].volumeId", f"volume {spec.volume_id!r} not found"
                )
            return found
        return await self._find_volume(org_id, spec.name) if spec.name else None

    async def _volume_for_spec(self, org_id: str, index: int, spec: VolumeSpec) -> Volume:
        found = await self._existing(org_id, index, spec)  # an earlier spec may have made it
        if found is not None:
            return found
        return await self.create_volume(org_id, spec.size_gb, spec.name, spec.interface, None)


def _env_name_clash(
    volumes: Sequence[tuple[str | None, str | None]],
) -> tuple[int, int, str] | None:
    """The first two volumes of one task whose ``VI_FLOW_VOLUME_<NAME>`` is the same
    (``data`` and ``DATA``, ``a-b`` and ``a_b``: one of their paths would be lost), as
    ``(index, index of the earlier one, variable)``; None when there are none.

    Args:
        volumes: ``(volume_id, name)`` of each; the id is None for a volume still to be
            made (its name alone says which it is), the name None for one made unnamed.
    """
    seen: dict[str, tuple[int, str]] = {}
    for index, (volume_id, name) in enumerate(volumes):
        if not name:
            continue  # a volume made without a name gets one of its own
        variable = volume_env_name(name)
        first, which = seen.setdefault(variable, (index, volume_id or name))
        if which != (volume_id or name):
            return index, first, variable
    return None


def mount_rows(task_id: str, mounts: Sequence[Mount]) -> list[tuple[str, ...]]:
    """``task_mounts`` rows, in column order, for a task's mounts."""
    return [
        (task_id, m.volume_id, m.name, str(m.host_path), m.mount_path, str(m.visible_path))
        for m in mounts
    ]


def _check_volume(name: str, size_gb: int, interface: str, field: str = "") -> None:
    """Refuse a bad name, size or interface (422 naming ``field`` + the setting)."""
    if "/" in name or ".." in name or not _VOLUME_NAME.match(name):
        raise APIProblem.validation(
            f"{field}name",
            f"invalid volume name {name!r}: use letters, digits, '-', '_' or '.' "
            f"(at most {MAX_VOLUME_NAME}, no '/' and no '..')",
        )
    if size_gb < 1:
        raise APIProblem.validation(f"{field}sizeGb", f"must be at least 1, got {size_gb}")
    if interface not in ("file", "block"):
        raise APIProblem.validation(
            f"{field}interface", f"must be 'file' or 'block', got {shown(interface)}"
        )


def _insert_volume(conn: Connection, row: tuple[object, ...]) -> None:
    conn.execute(
        "INSERT INTO volumes (volume_id, org_id, name, size_gb, interface, region,"
        " path, created_at) VALUES (?,?,?,?,?,?,?,?)",
        row,
    )


def missing_volumes(conn: Connection, volume_ids: Sequence[str]) -> list[str]:
    """Those of ``volume_ids`` that no longer exist; the others are locked until the
    transaction ends (PostgreSQL: a delete of one, or another task attaching it, waits
    for it). Locked in one order, so that two tasks attaching the same volumes never
    wait for each other."""
    lock = for_update(conn)
    return [
        volume_id
        for volume_id in sorted(set(volume_ids))
        if conn.execute(
            "SELECT volume_id FROM volumes WHERE volume_id = ?" + lock, (volume_id,)
        ).fetchone()
        is None
    ]


def refuse_attached_block_volumes(
    conn: Connection, task_id: str, volume_ids: Sequence[str]
) -> None:
    """Refuse to attach a ``block`` volume to ``task_id`` while another task that has
    not ended has it attached: a block volume attaches to one task at a time (a ``file``
    volume to any number). Call it after :func:`missing_volumes` locked the volumes'
    rows, in the transaction that records the mount: of two tasks attaching one at
    once, the second sees the first's mount.

    Raises:
        APIProblem: 409 ``VOLUME_IN_USE``, naming the volume and the task holding it.
    """
    for volume_id in sorted(set(volume_ids)):
        row = conn.execute(
            "SELECT name, interface FROM volumes WHERE volume_id = ?", (volume_id,)
        ).fetchone()
        if row is None or row["interface"] != "block":
            continue
        holders = [held for held in _attached(conn, volume_id) if held != task_id]
        if holders:
            raise APIProblem(
                409,
                "VOLUME_IN_USE",
                f"volume {row['name']!r} is a block volume attached to task {holders[0]!r},"
                " which has not ended: a block volume attaches to one task at a time"
                " (wait for that task to end or cancel it, or use a 'file' volume)",
            )


def _attached(conn: Connection, volume_id: str) -> list[str]:
    """Pending or running tasks that mount ``volume_id``."""
    return [a["task_id"] for a in conn.execute(_ATTACHED_SQL, (volume_id,)).fetchall()]


def _record_mount(conn: Connection, row: tuple[str, ...]) -> None:
    """Add a ``task_mounts`` row; store the task's config with the new volume, and its
    environment with the volume's ``VI_FLOW_VOLUME_<NAME>`` (SSH sessions opened from now
    on get it, as the task's processes started at launch got the others).

    Checked in the transaction that records it, so that a delete of the volume and
    other mounts into the task come before or after it, never between (QA: a volume
    deleted while it was mounted, both answered 200; parallel mounts kept one volume
    in the task's config and passed the check of their variables' names).

    Raises:
        APIProblem: 404 for a volume deleted meanwhile, 409 for a task that has ended
            or a block volume another task holds, 422 naming ``volumeId`` for a volume
            whose variable another mount has.
    """
    task_id, volume_id, name, host_path = row[:4]
    if missing_volumes(conn, [volume_id]):  # its row locked until this commits
        raise APIProblem.not_found("NOT_FOUND", "volume", volume_id)
    refuse_attached_block_volumes(conn, task_id, [volume_id])
    found = conn.execute(
        "SELECT status, config, env FROM tasks WHERE task_id = ?" + for_update(conn), (task_id,)
    ).fetchone()
    if found is None:  # pruned meanwhile
        raise APIProblem.not_found("TASK_NOT_FOUND", "task", task_id)
    if TaskStatus(found["status"]).terminal:
        raise APIProblem.conflict(f"task {task_id!r} has ended ({found['status']})")
    names = [
        (r["volume_id"], r["name"])
        for r in conn.execute(
            "SELECT volume_id, name FROM task_mounts WHERE task_id = ?", (task_id,)
        ).fetchall()
    ]
    if clash := _env_name_clash([*names, (volume_id, name)]):
        raise APIProblem.validation(
            "volumeId",
            f"volume {name!r} and volume {names[clash[1]][1]!r}, mounted already,"
            f" would both be {clash[2]}: rename one",
        )
    conn.execute(
        "INSERT INTO task_mounts VALUES (?,?,?,?,?,?) ON CONFLICT (task_id, mount_path)"
        " DO UPDATE SET volume_id = excluded.volume_id, name = excluded.name,"
        " host_path = excluded.host_path, visible_path = excluded.visible_path",
        row,
    )
    # Only the volumes change: the stored config keeps its env values (answers redact them).
    stored = orjson.loads(found["config"])
    added = to_wire(VolumeSpec(mount_path=row[4], volume_id=volume_id))
    stored["volumes"] = [*stored.get("volumes", []), added]
    env = {**orjson.loads(found["env"]), volume_env_name(name): host_path}
    conn.execute(
        "UPDATE tasks SET config = ?, env = ? WHERE task_id = ?",
        (orjson.dumps(stored).decode(), orjson.dumps(env).decode(), task_id),
    )


def _put_back(aside: Path, path: Path) -> None:
    try:
        put_back(aside, path)
    except OSError as exc:  # a sweep put it back first, or something took its name
        log.error("%s could not be put back at %s: %s", aside, path, exc)


def _restore_kept(aside: Path, path: Path, conn: Connection) -> bool:
    """Put ``aside`` back at ``path`` when a volume still has that path (its delete
    never committed); whether it did. The volume's row is locked meanwhile: a delete
    in flight comes before (and the data is removed) or after (and finds it back)."""
    row = conn.execute(
        "SELECT volume_id FROM volumes WHERE path = ?" + for_update(conn), (str(path),)
    ).fetchone()
    if row is None:
        return False
    _put_back(aside, path)
    log.warning("volume %s: its delete was not committed; its data is back", row[0])
    return True


def _link(root: Path, host_path: Path, visible: Path) -> None:
    """The volume's link at ``visible``, made below the task directory ``root`` without
    following any link the task put on the way (which would have the server write
    elsewhere on the host)."""
    root.mkdir(parents=True, exist_ok=True)  # the server's own path: no task reaches above it
    if not link_beneath(root, visible, host_path):
        raise FileExistsError(str(visible))


def _volume(row: Row, attached: list[str]) -> Volume:
    return Volume(
        volume_id=row["volume_id"],
        name=row["name"],
        size_gb=row["size_gb"],
        interface=row["interface"],
        region=row["region"],
        created_at=row["created_at"],
        attached_to=attached,
        path=row["path"],
    )
