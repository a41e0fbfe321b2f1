"""Where the server listens and the names it gives clients: the API URL and the SSH endpoint.

A server on one host binds its HTTP API and its SSH server to loopback and names them so.
A server that others reach (``vi-flow serve --host 0.0.0.0``, or behind a reverse proxy)
must tell clients names that work from *their* side: :func:`check_endpoints` validates
those settings once, at start, with errors that name the bad value;
:func:`ssh_listen_host` and :func:`advertised_ssh` say where the SSH server binds and
what each task's SSH endpoint names; :func:`public_base_url` is the API URL to print.

Defaults: SSH binds where HTTP binds (loopback stays loopback), on a free port; a
wildcard bind is advertised under the host name of ``public_url``, else this machine's
host name.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from collections.abc import Callable
from urllib.parse import SplitResult, urlsplit

from .db import redact
from .state import ServerSettings

__all__ = [
    "EndpointError",
    "advertised_ssh",
    "cannot_listen",
    "check_endpoints",
    "public_base_url",
    "ssh_listen_host",
]

_WILDCARDS = ("", "0.0.0.0", "::")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")


class EndpointError(ValueError):
    """A listen address or public name the server cannot use.

    ``str(error)`` is ``"<setting>: <problem naming the value>"``.

    Attributes:
        setting: The setting, as :class:`~vi_flow.server.state.ServerSettings` names it.
        problem: What is wrong with its value.
    """

    def __init__(self, setting: str, problem: str) -> None:
        super().__init__(f"{setting}: {problem}")
        self.setting = setting
        self.problem = problem


def cannot_listen(where: str, exc: OSError) -> str:
    """Why a listener at ``where`` (``HOST:PORT``) could not bind, in the system's words:
    aiohttp's and asyncio's own text repeats the address ("error while attempting to bind
    on address (...): address already in use")."""
    return f"cannot listen on {where}: {os.strerror(exc.errno) if exc.errno else exc}"


def _is_host(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return len(value) <= 253 and _HOSTNAME.fullmatch(value) is not None
    return True


def _check_host(option: str, value: str | None) -> None:
    if value is not None and not _is_host(value):
        raise EndpointError(
            option, f"expected a host name or IP address (no scheme, no port), got {value!r}"
        )


def _check_port(option: str, value: int | None, low: int) -> None:
    if value is not None and (isinstance(value, bool) or not low <= value <= 65535):
        raise EndpointError(option, f"expected a port {low}..65535, got {value!r}")


def _check_http_url(
    setting: str, value: str | None, example: str, problem_of: Callable[[SplitResult], str]
) -> None:
    """An http(s) URL with a host, and what ``problem_of`` finds wrong with it (``""``:
    nothing; it is given the URL's parts, and ``query``/``fragment`` of ``"?"`` for one
    written empty, which ``urlsplit`` drops); the error never shows a password the URL
    carries, nor its query or fragment (which may hold a key: ``?key=...``)."""
    if value is None:
        return
    parts = urlsplit(value)
    if "?" in value and not parts.query:  # ".../v1?": a query all the same
        parts = parts._replace(query="?")
    if "#" in value and not parts.fragment:
        parts = parts._replace(fragment="?")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        problem = f"expected an http(s) URL such as {example}"
    else:
        problem = problem_of(parts)
    if problem:
        head = re.split(r"[?#]", value, maxsplit=1)[0]
        shown = redact(head) + ("?***" if head != value else "")
        raise EndpointError(setting, f"{problem}, got {shown!r}")


def _public_url_problem(parts: SplitResult) -> str:
    if parts.query or parts.fragment or parts.username or parts.password:
        return "must not carry a query, a fragment or credentials"
    try:
        parts.port  # noqa: B018 - parsing it is the check
    except ValueError:
        return "has an invalid port"
    return ""


def _llm_url_problem(with_key: bool) -> Callable[[SplitResult], str]:
    def problem(parts: SplitResult) -> str:
        if parts.query or parts.fragment:  # an empty one too: ".../v1?"
            # "/chat/completions" is added to the URL: it would land after the query
            return "has a query or fragment; the llm block adds /chat/completions to its path"
        if with_key and (parts.username or parts.password):
            return (
                "carries a user name and an llm_api_key is set as well: both would go in"
                " the one Authorization header; give one of them"
            )
        return ""

    return problem


def check_endpoints(settings: ServerSettings) -> None:
    """Validate the listen and public settings before anything starts.

    Raises:
        EndpointError: Naming the setting (``ssh_host``, ``public_url`` ...) and its value.
    """
    _check_host("ssh_host", settings.ssh_host)
    _check_port("ssh_port", settings.ssh_port, 0)
    _check_host("ssh_public_host", settings.ssh_public_host)
    _check_port("ssh_public_port", settings.ssh_public_port, 1)
    _check_http_url(
        "public_url", settings.public_url, "https://flows.example.com", _public_url_problem
    )
    _check_http_url(
        "llm_base_url",
        settings.llm_base_url,
        "http://127.0.0.1:8000/v1",
        _llm_url_problem(bool(settings.llm_api_key)),
    )
    if settings.ssh_public_port is not None and settings.ssh_port == 0:
        raise EndpointError(
            "ssh_public_port",
            f"{settings.ssh_public_port} needs a fixed ssh_port (the SSH server would "
            "listen on a different, random port each start)",
        )


def ssh_listen_host(settings: ServerSettings) -> str:
    """The address the SSH server binds: ``ssh_host``, else where the HTTP API binds."""
    if settings.ssh_host is not None:
        return settings.ssh_host
    return "0.0.0.0" if settings.host == "" else settings.host


def advertised_ssh(settings: ServerSettings, bound_host: str, bound_port: int) -> tuple[str, int]:
    """The SSH host and port each task's endpoint names (what clients connect to)."""
    port = settings.ssh_public_port or bound_port
    if settings.ssh_public_host is not None:
        return settings.ssh_public_host, port
    if bound_host not in _WILDCARDS:
        return bound_host, port
    if settings.public_url is not None:
        return urlsplit(settings.public_url).hostname or bound_host, port
    return socket.gethostname(), port


def public_base_url(settings: ServerSettings, local_url: str) -> str:
    """The API base URL for clients elsewhere: ``public_url`` (ending in ``/v1``), else
    ``local_url``."""
    if settings.public_url is None:
        return local_url
    url = settings.public_url.rstrip("/")
    return url if url.endswith("/v1") else f"{url}/v1"
