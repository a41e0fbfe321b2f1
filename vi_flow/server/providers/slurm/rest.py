"""A small aiohttp client for ``slurmrestd``, the REST face of a Slurm cluster.

It owns everything the Slurm provider needs to know about the wire: choosing the REST
version (the newest of :data:`KNOWN_VERSIONS` that the daemon's OpenAPI document lists,
or that answers ``ping`` when it serves none; v0.0.37 to v0.0.42), JWT headers read from a
token file, job submission (the command runs from a generated batch script; secrets
travel in a mode-0600 file the script sources and deletes, never in the job environment,
which Slurm stores in its state directory), job state and wait-status decoding, cancel,
and the node and reservation lists. Slurm error numbers become :class:`SlurmError`
subclasses that say whether retrying could help; only transient ones are retried, and a
refusal for now (a drained node, a partition down: :class:`SlurmNotNowError`) is told
apart from one for good. Long answers are parsed off the event loop.
Tokens never appear in logs, reprs or error messages. The decoded records and the
submission live in :mod:`.jobs` and are re-exported here.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, ClassVar

import aiohttp
import orjson
from typing_extensions import Self

from .._wire import build_records, parse_json
from .jobs import (
    BASE_ENV,
    JobSubmission,
    SlurmJob,
    SlurmNode,
    SlurmReservation,
    decode_wait_status,
    job_status,
    parse_gpu_indices,
    parse_gres,
    rest_int,
)

__all__ = [
    "BASE_ENV",
    "KNOWN_VERSIONS",
    "NOT_NOW_ERRNOS",
    "JobSubmission",
    "SlurmAuthError",
    "SlurmConnectionError",
    "SlurmError",
    "SlurmInvalidRequestError",
    "SlurmJob",
    "SlurmJobNotFoundError",
    "SlurmNode",
    "SlurmNotNowError",
    "SlurmReservation",
    "SlurmRestClient",
    "SlurmUnavailableError",
    "SlurmVersionError",
    "decode_wait_status",
    "job_status",
    "parse_gpu_indices",
    "parse_gres",
]

logger = logging.getLogger("vi_flow.server.slurm")

#: REST versions this module speaks, best first (:mod:`.jobs` adapts the shapes): Slurm
#: 22.05 (Debian's) offers v0.0.37/38, 23.11 v0.0.40, 24.05 v0.0.41, 24.11 v0.0.42.
KNOWN_VERSIONS: tuple[str, ...] = ("v0.0.42", "v0.0.41", "v0.0.40", "v0.0.38", "v0.0.37")
_VERSION_IN_PATH = re.compile(r"^/slurm/(v\d+\.\d+\.\d+)/")
_TOKEN_CACHE_S = 10.0


class SlurmError(Exception):
    """A Slurm REST call failed.

    Attributes:
        message: What went wrong, in a sentence naming the bad value.
        errno: The Slurm error number, when Slurm gave one.
        transient: Whether the same call may succeed later (only these are retried).
    """

    transient: ClassVar[bool] = False

    def __init__(self, message: str, *, errno: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.errno = errno


class SlurmConnectionError(SlurmError):
    """``slurmrestd`` could not be reached (refused, reset, timed out); the URL is named."""

    transient = True


class SlurmUnavailableError(SlurmError):
    """Slurm answered but is busy or cannot reach its controller right now."""

    transient = True


class SlurmAuthError(SlurmError):
    """The token was refused: missing, malformed, expired, or signed by another cluster."""


class SlurmJobNotFoundError(SlurmError):
    """Slurm does not know the job id (error 2017), or forgot it after ``MinJobAge``."""


class SlurmInvalidRequestError(SlurmError):
    """Slurm can never satisfy the request (error 2014 and kin): retrying will not help."""


class SlurmNotNowError(SlurmError):
    """Slurm refused a submission for now: its node or partition is down, drained or
    busy (2015, 2016, 2068, 2070). The job was not queued; it may be submitted again."""


class SlurmVersionError(SlurmError):
    """``slurmrestd`` offers no REST version this module knows."""


# Slurm error numbers (slurm/slurm_errno.h) -> the class that describes them.
_TRANSIENT_ERRNOS = frozenset(
    {1000, 1001, 1002, 1003, 1004, 1800, 1801, 1802, 1803, 2020, 2027, 5000, 5004}
)
_AUTH_ERRNOS = frozenset({1007, 2002, 2010})
_NOT_FOUND_ERRNOS = frozenset({2017})
#: Refusals that name a state that passes: partition or nodes unavailable or busy.
NOT_NOW_ERRNOS = frozenset({2015, 2016, 2068, 2070})
#: 2021 ``ESLURM_ALREADY_DONE``: cancelling a finished job is not an error for us.
ALREADY_DONE = 2021


def _error_class(errno: int | None, http_status: int) -> type[SlurmError]:
    if http_status in (401, 403) or errno in _AUTH_ERRNOS:
        return SlurmAuthError
    if errno in _NOT_FOUND_ERRNOS:
        return SlurmJobNotFoundError
    if errno in _TRANSIENT_ERRNOS or http_status in (502, 503, 504):
        return SlurmUnavailableError
    if errno in NOT_NOW_ERRNOS:
        return SlurmNotNowError
    if errno == -1 and http_status == 500:
        # 22.05 answers a token slurmctld rejects with a bare SLURM_ERROR (-1).
        return SlurmAuthError
    return SlurmInvalidRequestError


def _token_expiry(token: str) -> float | None:
    """The ``exp`` claim of a JWT, or None when the token carries none."""
    try:
        payload = token.split(".")[1]
        claims = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError, orjson.JSONDecodeError):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    return float(exp) if isinstance(exp, int | float) else None


def _read_token(path: Path) -> str:
    return path.read_text(encoding="utf-8").strip()


class SlurmRestClient:
    """Talks to one ``slurmrestd`` over HTTP with JWT authentication.

    Use it as an async context manager, or call :meth:`aclose` when done::

        async with SlurmRestClient("http://127.0.0.1:6820", user="root",
                                   token_file=Path("/var/lib/vi-flow/slurm.token")) as rest:
            job_id = await rest.submit_job(JobSubmission(...))
            job = await rest.get_job(job_id)

    Args:
        url: The ``slurmrestd`` base URL, without the ``/slurm/vX`` part.
        user: The Slurm user the token belongs to (``X-SLURM-USER-NAME``).
        token_file: File holding the JWT from ``scontrol token``; re-read when it changes.
        timeout: Seconds for one HTTP request.
        max_retries: Retries of transient failures (never of permanent ones).
        sleep: Awaited between retries with the backoff in seconds; tests pass a no-op.
    """

    def __init__(
        self,
        url: str,
        *,
        user: str,
        token_file: Path,
        timeout: float = 10.0,
        max_retries: int = 2,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.url = url.rstrip("/")
        self.user = user
        self.token_file = Path(token_file)
        self.timeout = timeout
        self.max_retries = max_retries
        self._sleep = sleep
        self._session: aiohttp.ClientSession | None = None
        self._version: str | None = None
        self._token: str | None = None
        self._token_read_at = 0.0

    def __repr__(self) -> str:
        token_file = str(self.token_file)
        return f"SlurmRestClient(url={self.url!r}, user={self.user!r}, {token_file=!r})"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP session; the client may be used again afterwards."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- versions and auth -------------------------------------------------------------

    async def version(self) -> str:
        """The REST version in use: the highest of :data:`KNOWN_VERSIONS` the daemon offers.

        Raises:
            SlurmVersionError: The daemon offers none of them.
        """
        if self._version is None:
            offered = await self._offered_versions()
            known = [v for v in KNOWN_VERSIONS if v in offered]
            if not known:
                raise SlurmVersionError(
                    f"slurmrestd at {self.url} offers REST versions "
                    f"{sorted(offered) or 'none'}; vi_flow knows {list(KNOWN_VERSIONS)}"
                )
            self._version = known[0]
            logger.debug("slurmrestd at %s: REST %s of %s", self.url, known[0], sorted(offered))
        return self._version

    async def _offered_versions(self) -> set[str]:
        """The versions the daemon's OpenAPI document lists; probed by ``ping`` without one."""
        for path in ("/openapi/v3", "/openapi"):
            try:
                document = await self._call("GET", path, versioned=False)
            except SlurmInvalidRequestError:
                continue  # this daemon serves its document elsewhere, or not at all
            paths = document.get("paths", {})
            return {m.group(1) for p in paths if (m := _VERSION_IN_PATH.match(p))}
        offered = set()
        for version in KNOWN_VERSIONS:
            with contextlib.suppress(SlurmInvalidRequestError):
                await self._call("GET", f"/slurm/{version}/ping", versioned=False)
                offered.add(version)
                break
        return offered

    async def _headers(self, *, reload: bool = False) -> dict[str, str]:
        now = time.monotonic()
        if reload or self._token is None or now - self._token_read_at > _TOKEN_CACHE_S:
            try:
                self._token = await asyncio.to_thread(_read_token, self.token_file)
            except OSError as exc:
                raise SlurmAuthError(
                    f"cannot read the Slurm token file {self.token_file}: {exc.strerror}"
                ) from None
            self._token_read_at = now
        if not self._token:
            raise SlurmAuthError(f"the Slurm token file {self.token_file} is empty")
        expiry = _token_expiry(self._token)
        if expiry is not None and expiry <= time.time():
            stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(expiry))
            raise SlurmAuthError(
                f"the Slurm token in {self.token_file} expired at {stamp}; write a new one with "
                f"`scontrol token username={self.user} lifespan=SECONDS`"
            )
        return {"X-SLURM-USER-NAME": self.user, "X-SLURM-USER-TOKEN": self._token}

    # -- operations --------------------------------------------------------------------

    async def ping(self) -> None:
        """Check that ``slurmrestd`` answers and accepts the token."""
        await self._call("GET", "/ping")

    async def submit_job(self, submission: JobSubmission) -> int:
        """Submit a batch job and return its id.

        Raises:
            SlurmInvalidRequestError: Slurm can never run it (2014: no node has what it
                asks for); a job Slurm queued anyway is cancelled first.
        """
        body = submission.body(await self.version())
        answer = await self._call("POST", "/job/submit", json=body, resend=False)
        job_id = rest_int(answer.get("job_id"))
        errors = answer.get("errors") or []
        if errors or job_id is None:
            if job_id is not None:
                await self._cancel_quietly(job_id)
            raise self._error(errors, 200, "POST /job/submit")
        logger.debug("submitted Slurm job %s (%s)", job_id, submission.name)
        return job_id

    async def get_job(self, job_id: int) -> SlurmJob:
        """The job's current state.

        Raises:
            SlurmJobNotFoundError: Slurm does not know ``job_id``.
        """
        answer = await self._call("GET", f"/job/{job_id}")
        jobs = answer.get("jobs") or []
        if not jobs:
            raise SlurmJobNotFoundError(f"Slurm job {job_id} not found", errno=2017)
        return SlurmJob.from_rest(jobs[0])

    async def list_jobs(self) -> list[SlurmJob]:
        """Every job the controller still knows (finished ones until ``MinJobAge``)."""
        answer = await self._call("GET", "/jobs")
        return await build_records(SlurmJob.from_rest, answer.get("jobs") or [])

    async def cancel_job(self, job_id: int) -> None:
        """Cancel a pending or running job; cancelling a finished job is a no-op.

        Raises:
            SlurmJobNotFoundError: Slurm does not know ``job_id``.
        """
        try:
            await self._call("DELETE", f"/job/{job_id}")
        except SlurmError as exc:
            if exc.errno != ALREADY_DONE:
                raise

    async def list_nodes(self) -> list[SlurmNode]:
        """Every node with its CPUs, memory, GPUs by type and state."""
        answer = await self._call("GET", "/nodes")
        return await build_records(SlurmNode.from_rest, answer.get("nodes") or [])

    async def partition_names(self) -> list[str]:
        """The names of the cluster's partitions."""
        answer = await self._call("GET", "/partitions")
        items = answer.get("partitions") or []
        return [str(item["name"]) for item in items if isinstance(item, dict) and item.get("name")]

    async def list_reservations(self) -> list[SlurmReservation]:
        """Every reservation the cluster has."""
        answer = await self._call("GET", "/reservations")
        return [SlurmReservation.from_rest(item) for item in answer.get("reservations") or []]

    async def _cancel_quietly(self, job_id: int) -> None:
        try:
            await self.cancel_job(job_id)
        except SlurmError as exc:
            logger.warning("could not cancel rejected Slurm job %s: %s", job_id, exc.message)

    # -- the request loop --------------------------------------------------------------

    async def _call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        versioned: bool = True,
        resend: bool = True,
    ) -> dict[str, Any]:
        """One call with retries of transient failures.

        ``resend=False`` (job submission) retries only failures where the request
        certainly never reached the daemon, so a job is never submitted twice.
        """
        if versioned:
            path = f"/slurm/{await self.version()}{path}"
        attempt = 0
        reloaded = False
        while True:
            outcome = await self._attempt(method, path, json, reload_token=reloaded)
            if not isinstance(outcome, SlurmError):
                return outcome
            if isinstance(outcome, SlurmAuthError) and not reloaded:
                reloaded = True  # the token file may have been renewed since we read it
                if await self._token_changed():
                    continue
            unsent = isinstance(outcome.__cause__, aiohttp.ClientConnectorError)
            if not outcome.transient or attempt >= self.max_retries or not (resend or unsent):
                raise outcome
            attempt += 1
            logger.info("retrying %s %s after: %s", method, path, outcome.message)
            await self._sleep(min(0.2 * 2**attempt, 2.0))

    async def _attempt(
        self, method: str, path: str, json: Any, *, reload_token: bool
    ) -> dict[str, Any] | SlurmError:
        try:
            return await self._once(method, path, json, reload_token=reload_token)
        except SlurmError as exc:
            return exc

    async def _token_changed(self) -> bool:
        previous = self._token
        try:
            await self._headers(reload=True)
        except SlurmAuthError:
            return False
        return self._token != previous

    async def _once(
        self, method: str, path: str, json: Any, *, reload_token: bool
    ) -> dict[str, Any]:
        headers = await self._headers(reload=reload_token)
        session = self._get_session()
        what = f"{method} {path}"
        try:
            async with session.request(method, self.url + path, json=json, headers=headers) as resp:
                raw = await resp.read()
                status = resp.status
        except asyncio.TimeoutError as exc:
            raise SlurmConnectionError(
                f"slurmrestd at {self.url} did not answer {what} in {self.timeout:g} s"
            ) from exc
        except aiohttp.ClientError as exc:
            raise SlurmConnectionError(
                f"cannot reach slurmrestd at {self.url} ({what}): {exc}"
            ) from exc
        logger.debug("%s -> %s (%d bytes)", what, status, len(raw))
        return self._decode(await parse_json(raw), status, what)

    def _decode(self, answer: Any, status: int, what: str) -> dict[str, Any]:
        if status in (401, 403):
            raise self._error([], status, what)
        if not isinstance(answer, dict):
            cls = SlurmUnavailableError if status >= 500 else SlurmInvalidRequestError
            raise cls(f"slurmrestd at {self.url} answered {what} with HTTP {status}, not JSON")
        errors = answer.get("errors") or []
        if status >= 400 or (errors and status != 200):
            raise self._error(errors, status, what)
        return answer

    def _error(self, errors: list[Any], status: int, what: str) -> SlurmError:
        first = errors[0] if errors and isinstance(errors[0], dict) else {}
        errno = rest_int(first.get("error_number", first.get("error_code", first.get("errno"))))
        cls = _error_class(errno, status)
        detail = str(first.get("description") or first.get("error") or f"HTTP {status}")
        if cls is SlurmAuthError and errno == -1:  # 22.05 says it when slurmctld is down too
            detail = (
                f"Slurm answered {detail!r}, which it gives both when slurmctld does not"
                " answer and when it refuses the token: check that slurmctld is running;"
                f" if it is, the token in {self.token_file} for user {self.user!r} is"
                " expired, invalid, or issued by another cluster"
            )
        elif cls is SlurmAuthError:
            detail = (
                f"Slurm refused the token in {self.token_file} for user {self.user!r} "
                f"(expired, invalid, or issued by another cluster): {detail}"
            )
        elif cls is SlurmUnavailableError:
            detail = f"slurmrestd at {self.url} is unavailable: {detail}"
        number = f" (Slurm error {errno})" if errno is not None else ""
        return cls(f"{what}: {detail}{number}", errno=errno)

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                connector=aiohttp.TCPConnector(limit=16),
            )
        return self._session
