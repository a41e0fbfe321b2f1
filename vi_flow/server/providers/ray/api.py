"""A small aiohttp client for the Ray dashboard's Jobs REST API (no ``ray`` import).

It owns the wire: ``POST /api/jobs/`` (submit), ``GET /api/jobs/{id}``, ``POST
/api/jobs/{id}/stop``, ``DELETE /api/jobs/{id}``, ``GET /api/version``, and the node list
from the state API (``GET /api/v0/nodes``) with what is in use from ``GET
/api/cluster_status``. Answers become plain records (:class:`RayJob`, :class:`RayNode`);
failures become :class:`RayError` subclasses that say what the provider should do. The
optional bearer token (``RAY_AUTH_MODE=token`` clusters) never appears in reprs or errors.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp
import attrs
from typing_extensions import Self

from .._wire import build_records, parse_json

__all__ = [
    "TERMINAL_STATES",
    "RayAuthError",
    "RayConnectionError",
    "RayError",
    "RayInvalidRequestError",
    "RayJob",
    "RayJobNotFoundError",
    "RayJobsClient",
    "RayNode",
]

#: Ray job states after which nothing more happens.
TERMINAL_STATES = frozenset({"SUCCEEDED", "FAILED", "STOPPED"})
_ACCELERATOR = "accelerator_type:"
_GIB = 1024**3


class RayError(Exception):
    """A call to the Ray dashboard failed; ``message`` names the URL and what was asked."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class RayConnectionError(RayError):
    """The dashboard could not be reached, timed out, or answered 5xx (may pass)."""


class RayAuthError(RayError):
    """The dashboard refused the token (401/403)."""


class RayJobNotFoundError(RayError):
    """The dashboard does not know the submission id (404)."""


class RayInvalidRequestError(RayError):
    """The dashboard refused the request as malformed (400): retrying will not help."""


def _seconds(value: Any) -> float | None:
    return value / 1000 if isinstance(value, int | float) and value else None


@attrs.frozen
class RayJob:
    """A submitted job as the dashboard reports it.

    Attributes:
        submission_id: The id given at submission (the vi_flow task id).
        state: ``PENDING``, ``RUNNING``, ``SUCCEEDED``, ``FAILED`` or ``STOPPED``.
        message: Ray's sentence about the state (its first line; Ray appends log tails).
        error_type: Ray's error class for a failed job (``JOB_ENTRYPOINT_COMMAND_ERROR``).
        driver_exit_code: The entry point's exit code, when Ray knows it.
        start_time: Epoch seconds when the job was accepted, or None.
        end_time: Epoch seconds when it ended, or None.
        node_id: The node its entry point runs on, once placed.
    """

    submission_id: str
    state: str
    message: str
    error_type: str | None
    driver_exit_code: int | None
    start_time: float | None
    end_time: float | None
    node_id: str | None

    @property
    def terminal(self) -> bool:
        """Whether the job has ended."""
        return self.state in TERMINAL_STATES

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> Self:
        """Build from the body of ``GET /api/jobs/{id}``."""
        message = str(data.get("message") or "").strip().splitlines()
        code = data.get("driver_exit_code")
        return cls(
            submission_id=str(data.get("submission_id") or ""),
            state=str(data.get("status") or "PENDING").upper(),
            message=message[0][:300] if message else "",
            error_type=data.get("error_type") or None,
            driver_exit_code=code if isinstance(code, int) else None,
            start_time=_seconds(data.get("start_time")),
            end_time=_seconds(data.get("end_time")),
            node_id=data.get("driver_node_id") or None,
        )


@attrs.frozen
class RayNode:
    """A node of the cluster and its resources.

    Attributes:
        node_id: Ray's node id.
        alive: Whether the node is ``ALIVE``.
        cpus: Logical CPUs.
        memory_gb: Memory Ray schedules with, GiB (rounded down).
        gpu_type: The GPU model in lower case (``"h100"``; ``"gpu"`` when Ray has no
            ``accelerator_type`` for it), or None without GPUs.
        accelerator: Ray's own accelerator label (``"H100"``), to pin a job to the type.
        gpus: GPUs on the node.
        free_cpus: CPUs not held by tasks, actors or jobs now.
        free_gpus: GPUs not held now.
    """

    node_id: str
    alive: bool
    cpus: int
    memory_gb: int
    gpu_type: str | None
    accelerator: str | None
    gpus: int
    free_cpus: float
    free_gpus: float

    @classmethod
    def from_api(cls, data: Mapping[str, Any], used: Mapping[str, Any]) -> Self:
        """Build from one ``/api/v0/nodes`` item and its ``usageByNode`` entry (may be empty)."""
        total: Mapping[str, Any] = data.get("resources_total") or {}
        gpus = int(total.get("GPU") or 0)
        labels = [k[len(_ACCELERATOR) :] for k in total if k.startswith(_ACCELERATOR)]
        accelerator = labels[0] if gpus and labels else None
        gpu_type = (accelerator or "gpu").lower() if gpus else None
        cpus = int(total.get("CPU") or 0)

        def in_use(key: str) -> float:
            pair = used.get(key)
            return float(pair[0]) if isinstance(pair, list) and pair else 0.0

        return cls(
            node_id=str(data.get("node_id") or ""),
            alive=data.get("state") == "ALIVE",
            cpus=cpus,
            memory_gb=int(float(total.get("memory") or 0) // _GIB),
            gpu_type=gpu_type,
            accelerator=accelerator,
            gpus=gpus,
            free_cpus=cpus - in_use("CPU"),
            free_gpus=gpus - in_use("GPU"),
        )


class RayJobsClient:
    """Talks to one Ray dashboard over HTTP.

    Args:
        url: The dashboard URL, such as ``http://127.0.0.1:8265``.
        token_file: File with the cluster token, for ``RAY_AUTH_MODE=token`` clusters.
        timeout: Seconds for one request.
    """

    def __init__(self, url: str, *, token_file: Path | None = None, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.token_file = token_file
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"RayJobsClient(url={self.url!r}, token_file={self.token_file!r})"

    async def aclose(self) -> None:
        """Close the HTTP session; the client may be used again afterwards."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- operations --------------------------------------------------------------------

    async def version(self) -> str:
        """The cluster's Ray version (``"2.60.0"``)."""
        answer = await self._call("GET", "/api/version")
        return str(answer.get("ray_version") or "unknown")

    async def submit_job(self, body: Mapping[str, Any]) -> str:
        """Submit a job (``body`` as ``POST /api/jobs/`` takes it); return its submission id."""
        answer = await self._call("POST", "/api/jobs/", json=body)
        return str(answer.get("submission_id") or body.get("submission_id") or "")

    async def get_job(self, submission_id: str) -> RayJob:
        """The job's current state.

        Raises:
            RayJobNotFoundError: The dashboard does not know ``submission_id``.
        """
        return RayJob.from_api(await self._call("GET", f"/api/jobs/{submission_id}"))

    async def stop_job(self, submission_id: str) -> bool:
        """Ask Ray to stop the job; False when it had already ended.

        A PENDING job answers True but is not stopped: Ray starts it later anyway.
        """
        answer = await self._call("POST", f"/api/jobs/{submission_id}/stop")
        return bool(answer.get("stopped"))

    async def delete_job(self, submission_id: str) -> None:
        """Forget an ended job (its record and logs)."""
        await self._call("DELETE", f"/api/jobs/{submission_id}")

    async def list_nodes(self) -> list[RayNode]:
        """Every node with its resources and what is in use now."""
        answer = await self._call("GET", "/api/v0/nodes?limit=10000")
        items = answer.get("data", {}).get("result", {}).get("result") or []
        usage = await self._usage()
        return await build_records(
            lambda item: RayNode.from_api(item, usage.get(item.get("node_id"), {})), items
        )

    async def _usage(self) -> Mapping[str, Any]:
        """Resources in use by node id, ``{"GPU": [used, total], ...}`` (empty if unknown)."""
        try:
            answer = await self._call("GET", "/api/cluster_status")
        except RayInvalidRequestError:
            return {}
        status = answer.get("data", {}).get("clusterStatus") or {}
        usage = (status.get("loadMetricsReport") or {}).get("usageByNode")
        return usage if isinstance(usage, dict) else {}

    # -- the wire ------------------------------------------------------------------------

    async def _call(self, method: str, path: str, *, json: Any = None) -> dict[str, Any]:
        what = f"{method} {path.split('?')[0]}"
        session = self._get_session()
        try:
            headers = await self._headers()
            async with session.request(method, self.url + path, json=json, headers=headers) as resp:
                raw = await resp.read()
                status = resp.status
        except asyncio.TimeoutError:
            raise RayConnectionError(
                f"the Ray dashboard at {self.url} did not answer {what} in {self.timeout:g} s"
            ) from None
        except aiohttp.ClientError as exc:
            raise RayConnectionError(
                f"cannot reach the Ray dashboard at {self.url} ({what}): {exc}"
            ) from None
        if status >= 400:
            raise self._error(raw, status, what)
        answer = await parse_json(raw)
        if answer is None:
            raise RayConnectionError(
                f"the Ray dashboard at {self.url} answered {what} with HTTP {status}, not JSON"
            )
        return answer if isinstance(answer, dict) else {"items": answer}

    def _error(self, raw: bytes, status: int, what: str) -> RayError:
        text = raw.decode("utf-8", "replace").strip()
        # Ray answers errors with a Python traceback: its last line says what went wrong
        lines = [line for line in text.splitlines() if line.strip(" .")]
        detail = lines[-1].strip()[:300] if lines else f"HTTP {status}"
        message = f"the Ray dashboard at {self.url} refused {what} (HTTP {status}): {detail}"
        if status in (401, 403):
            where = f"the token in {self.token_file}" if self.token_file else "no token"
            return RayAuthError(f"{message}; it was sent {where} (RAY_AUTH_MODE=token?)")
        if status == 404:
            return RayJobNotFoundError(message)
        if status >= 500:
            return RayConnectionError(message)
        return RayInvalidRequestError(message)

    async def _headers(self) -> dict[str, str]:
        if self.token_file is None:
            return {}
        try:
            token = await asyncio.to_thread(self.token_file.read_text, encoding="utf-8")
        except OSError as exc:
            raise RayAuthError(
                f"cannot read the Ray token file {self.token_file}: {exc.strerror}"
            ) from None
        return {"Authorization": f"Bearer {token.strip()}"}

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                connector=aiohttp.TCPConnector(limit=16),
            )
        return self._session
