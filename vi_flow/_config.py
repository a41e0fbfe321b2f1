"""Client settings, resolved from arguments > ``VI_FLOW_*`` env > config file > defaults.

The config file is TOML at ``$VI_FLOW_CONFIG`` or ``<config dir>/config.toml`` (the config dir
is ``$VI_FLOW_CONFIG_DIR`` or the platform's user config dir). Its keys are the argument
names: ``api_key``, ``organization_id``, ``base_url``, ``timeout``, ``max_retries``, ``home``,
``local_server``, ``server_idle_timeout``, ``http_transport``, ``log_transport`` and
``ca_file`` (a PEM file of CA certificates to trust for an ``https`` base URL, such as
a reverse proxy's own CA). The default ``base_url`` is
``local``: the home's own server, which the client finds or starts in the background
(``local_server = "background"``), or runs inside its own process (``"in-process"``).
"""

from __future__ import annotations

import enum
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, TypeVar
from urllib.parse import urlsplit

import attrs

from ._errors import ViFlowError
from .models.files import replace_file, through_link, updating

__all__ = [
    "DEFAULT_MAX_RETRIES",
    "LOCAL",
    "NOT_GIVEN",
    "NotGiven",
    "Settings",
    "Timeout",
    "bad_seconds",
    "check_secret_header",
    "config_dir",
    "config_path",
    "default_home",
    "is_number",
    "read_config_file",
    "resolve_settings",
    "write_config_value",
]

LOCAL: Final = "local"
DEFAULT_MAX_RETRIES: Final = 2
CONFIG_KEYS: Final = (
    "api_key",
    "organization_id",
    "base_url",
    "timeout",
    "max_retries",
    "home",
    "local_server",
    "server_idle_timeout",
    "http_transport",
    "log_transport",
    "ca_file",
)
LOCAL_SERVER_MODES: Final = ("background", "in-process")
#: ``aiohttp``: one pooled session for everything. ``stdlib``: calls that are not streams go
#: through :mod:`http.client` on a worker thread, so a short-lived process (the CLI) does not
#: pay for importing aiohttp; streams still use aiohttp.
HTTP_TRANSPORTS: Final = ("aiohttp", "stdlib")
DEFAULT_IDLE_TIMEOUT: Final = 600.0
#: How a log follow reaches a task: ``ssh`` (the task's SSH endpoint), ``http`` (the API's
#: SSE stream, which works wherever the API does, a reverse proxy included) or ``auto``
#: (SSH when it answers, else HTTP).
LOG_TRANSPORTS: Final = ("auto", "ssh", "http")


def shown_url(url: str) -> str:
    """``url`` as reprs, errors and logs show it: the password of its user info
    (``https://user:secret@host``) replaced by ``***``."""
    scheme, sep, rest = url.partition("://")
    authority, at, after = rest.partition("@")
    if not sep or not at or any(c in authority for c in "/?#") or ":" not in authority:
        return url
    return f"{scheme}://{authority.partition(':')[0]}:***@{after}"


class NotGiven(enum.Enum):
    """The type of :data:`NOT_GIVEN`: "the caller did not pass this", distinct from ``None``."""

    NOT_GIVEN = enum.auto()

    def __repr__(self) -> str:
        return "NOT_GIVEN"

    def __bool__(self) -> bool:
        return False


NOT_GIVEN: Final = NotGiven.NOT_GIVEN


def is_number(value: object) -> bool:
    """Whether ``value`` is an int or a float (``True`` is not a number of seconds)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def bad_seconds(name: str, value: object, wanted: str) -> TypeError | ValueError:
    """The error for a wait's ``name`` that is not ``wanted``: TypeError unless a number."""
    kind = ValueError if is_number(value) else TypeError
    return kind(f"{name} must be {wanted}, got {value!r}")


def _positive_or_none(_: object, attribute: attrs.Attribute[Any], value: float | None) -> None:
    if value is not None and not 0 < value < math.inf:
        raise ValueError(
            f"timeout {attribute.name} must be a positive number of seconds (None for no"
            f" limit), got {value!r}"
        )


@attrs.frozen
class Timeout:
    """How long to wait, in seconds; ``None`` means no limit.

    Args:
        connect: To establish the connection.
        read: Between two reads of the answer (a stream's idle gap).
        total: For the whole call, its retries and the waits between them included.
    """

    connect: float | None = attrs.field(default=10.0, validator=_positive_or_none)
    read: float | None = attrs.field(default=60.0, validator=_positive_or_none)
    total: float | None = attrs.field(default=None, validator=_positive_or_none)

    @classmethod
    def coerce(cls, value: Timeout | float | None) -> Timeout:
        """Accept a ``Timeout``, a number (applied to every phase) or ``None`` (no limit)."""
        if isinstance(value, Timeout):
            return value
        if value is None:
            return cls(connect=None, read=None, total=None)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"timeout must be a Timeout or a number, got {value!r}")
        if not 0 < value < math.inf:  # one number: named as it was given, not by phase
            raise ValueError(f"timeout must be a positive number of seconds, got {value!r}")
        return cls(connect=float(value), read=float(value), total=float(value))


@attrs.frozen
class Settings:
    """Resolved client settings. The API key never appears in the repr."""

    base_url: str = attrs.field(repr=lambda url: repr(shown_url(url)))
    api_key: str | None = attrs.field(repr=False)
    organization_id: str | None
    timeout: Timeout
    max_retries: int
    home: Path
    config_dir: Path
    local_server: str = "background"
    server_idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    http_transport: str = "aiohttp"
    log_transport: str = "auto"
    ca_file: Path | None = None

    @property
    def is_local(self) -> bool:
        """Whether the client talks to the home's local server."""
        return self.base_url == LOCAL


def config_dir() -> Path:
    """Return the directory holding ``config.toml`` and the default SSH key."""
    if env := os.environ.get("VI_FLOW_CONFIG_DIR"):
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_config_dir("vi-flow"))


def config_path() -> Path:
    """Return the config file path."""
    if env := os.environ.get("VI_FLOW_CONFIG"):
        return Path(env)
    return config_dir() / "config.toml"


def default_home() -> Path:
    """Return where the local server keeps its state (``$VI_FLOW_HOME`` or the user data dir)."""
    if env := os.environ.get("VI_FLOW_HOME"):
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_data_dir("vi-flow"))


def read_config_file(path: Path | None = None) -> dict[str, Any]:
    """Read the TOML config file; a missing file is an empty config.

    Raises:
        ValueError: The file is not valid TOML or has unknown keys (names the file and key).
    """
    path = path or config_path()
    try:
        if not path.exists():
            return {}
    except OSError as exc:  # QA BA: "/root/.config/vi-flow/config.toml: Permission denied"
        raise ValueError(
            f"cannot read the config file {path}: {exc.strerror or exc} (set VI_FLOW_CONFIG"
            " to a file of yours, or VI_FLOW_CONFIG_DIR to a directory of yours)"
        ) from None
    if not path.is_file():
        raise ValueError(f"config file {path} is not a file")
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - exercised on 3.10 only
        import tomli as tomllib
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"config file {path} is not valid TOML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read the config file {path}: {exc}") from None
    unknown = sorted(set(data) - set(CONFIG_KEYS))
    if unknown:
        raise ValueError(f"config file {path} has unknown key(s): {', '.join(unknown)}")
    for key, value in data.items():  # the value is not shown: it may be the key
        if key not in _NUMBERS and not isinstance(value, str):
            raise ValueError(f"config file {path}: {key} must be a string, got {_toml_type(value)}")
        if key in _NUMBERS and (
            isinstance(value, bool) or not isinstance(value, (int, float, str))
        ):
            raise ValueError(f"config file {path}: {key} must be a number, got {_toml_type(value)}")
    return dict(data)


_NUMBERS = frozenset({"timeout", "max_retries", "server_idle_timeout"})


def _toml_type(value: object) -> str:
    """What TOML calls a value's type (``api_key = 12`` is an integer)."""
    names = {bool: "a boolean", int: "an integer", float: "a float", str: "a string",
             list: "an array", dict: "a table"}  # fmt: skip
    return names.get(type(value), "a date or time")


class ConfigWriteError(ViFlowError):
    """The config file could not be written; the message names it and why."""


class ConfigFileError(ValueError):
    """The config file in place is not one (not a file, not TOML): the file needs
    fixing, not the value being set."""


def write_config_value(key: str, value: str, path: Path | None = None) -> Path:
    """Set one key in the config file (created with mode 0600), keeping the others."""
    if key not in CONFIG_KEYS:
        raise ValueError(f"unknown config key {key!r}; known keys: {', '.join(CONFIG_KEYS)}")
    parsed = _parse_value(key, value)
    path = path or config_path()
    import tomli_w  # a TOML writer: any value, newlines and tabs included, reads back

    # QA: `config set`s at once lost keys they had confirmed, and a command reading the
    # file while it was rewritten in place found it empty (and served another home)
    try:
        path = through_link(path)  # QA: a linked config became a plain file
        with updating(path):
            try:
                data = read_config_file(path)
            except ValueError as exc:  # the file's fault (QA BA: it was blamed on VALUE)
                raise ConfigFileError(f"cannot set {key}: {exc}") from None
            data[key] = parsed
            replace_file(path, tomli_w.dumps(dict(sorted(data.items()))).encode())
    except OSError as exc:  # QA AZ: "/nonexistent: Permission denied", the file unnamed
        where = f"{exc.filename}: " if exc.filename and str(exc.filename) != str(path) else ""
        raise ConfigWriteError(
            f"cannot write the config file {path}: {where}{exc.strerror or exc}"
        ) from None
    return path


#: The longest API key or organization id sent: servers read 8 KiB header lines
#: (aiohttp's limit), and answer a longer one with an error that quotes its start.
MAX_SECRET_HEADER = 4096


def check_secret_header(name: str, value: str) -> None:
    """Refuse a setting no HTTP header can carry, without showing it: the transports'
    own errors quote the whole header (the API key with it; found by QA with a key file
    saved with Windows line endings, whose ``\r`` ``$(cat ...)`` keeps)."""
    if not value.isascii() or not value.isprintable():
        raise ValueError(
            f"{name} holds a control or non-ASCII character (a file saved with Windows line"
            " endings leaves a \\r at its end); its value is not shown"
        )
    if len(value) > MAX_SECRET_HEADER:  # a server refuses it, quoting its start
        raise ValueError(
            f"{name} is {len(value)} characters long, more than a header carries (at most"
            f" {MAX_SECRET_HEADER}: is it the whole file, not the key in it?); its value is"
            " not shown"
        )


def _parse_value(key: str, value: str) -> Any:
    """``value`` as the config file keeps it, checked as a client would read it back
    (a value every later command would refuse is refused here, naming the key)."""
    if key in ("api_key", "organization_id"):  # sent as headers (QA AP: a NUL read from
        check_secret_header(key, value)  # stdin was stored, then every command failed)
    elif not value.isprintable():  # a control character (an escape sequence, a lone \r)
        raise ValueError(f"{key}: holds a control character, {_first_control(value)}")
    if key == "max_retries":
        return check_retries(value)
    if key == "timeout":
        _coerce_timeout(value)
        return float(value)
    if key == "server_idle_timeout":
        return _seconds_or_never(value)
    if key == "base_url":
        return _base_url(value)
    if key in _CHOICES:
        return _one_of(key, value, _CHOICES[key])
    if key == "ca_file":
        _checked_ca_file(value)
    if not value.strip():  # read back, a blank value counts as not set: say so now
        raise ValueError(
            f"{key}: a blank value sets nothing (to clear {key}, delete its line from the"
            " config file)"
        )
    return value


def _first_control(value: str) -> str:
    """The first character of ``value`` that prints as nothing, written out."""
    found = next(c for c in value if not c.isprintable())
    return ascii(found)


def _pick(arg: Any, env: str, file: dict[str, Any], key: str, default: Any) -> Any:
    if arg is not NOT_GIVEN and arg is not None:
        return arg
    if (value := os.environ.get(env)) not in (None, ""):
        return value
    return file.get(key, default)


T = TypeVar("T")


def _resolved(
    convert: Callable[[Any], T], arg: Any, env: str, file: dict[str, Any], key: str, default: Any
) -> T:
    """:func:`_pick`'s value, converted; its error says where the value came from (QA: a
    bad ``VI_FLOW_TIMEOUT`` was "timeout must be a number", the variable unnamed)."""
    value = _pick(arg, env, file, key, default)
    try:
        return convert(value)
    except ValueError as exc:
        if arg is not NOT_GIVEN and arg is not None:
            where = "the argument"
        elif os.environ.get(env) not in (None, ""):
            where = env
        else:
            where = f"the config file's {key} ({config_path()})"
        raise ValueError(f"{exc} (set by {where})") from None


def _timeout_or_not(value: Any) -> Timeout:
    return Timeout() if value is NOT_GIVEN else _coerce_timeout(value)


def resolve_settings(
    *,
    api_key: str | NotGiven | None = NOT_GIVEN,
    organization_id: str | NotGiven | None = NOT_GIVEN,
    base_url: str | NotGiven | None = NOT_GIVEN,
    timeout: Timeout | float | NotGiven | None = NOT_GIVEN,
    max_retries: int | NotGiven | None = NOT_GIVEN,
    home: str | Path | NotGiven | None = NOT_GIVEN,
    http_transport: str | NotGiven | None = NOT_GIVEN,
) -> Settings:
    """Resolve every setting from its argument, its env variable, the config file, a default.

    Raises:
        ValueError: A value is invalid; the message names the setting and where it came from.
    """
    _check_types(api_key=api_key, organization_id=organization_id, base_url=base_url,
                 http_transport=http_transport, home=home)  # fmt: skip
    file = read_config_file()
    url = _resolved(_base_url, base_url, "VI_FLOW_BASE_URL", file, "base_url", LOCAL)
    retries = _resolved(
        check_retries, max_retries, "VI_FLOW_MAX_RETRIES", file, "max_retries", DEFAULT_MAX_RETRIES
    )
    if timeout is None:  # no limit, as with_options(timeout=None) and Timeout.coerce(None)
        timeouts = Timeout.coerce(None)
    else:
        timeouts = _resolved(
            _timeout_or_not, timeout, "VI_FLOW_TIMEOUT", file, "timeout", NOT_GIVEN
        )
    mode = _resolved(
        lambda raw: _one_of("local_server", raw, LOCAL_SERVER_MODES),
        NOT_GIVEN, "VI_FLOW_LOCAL_SERVER", file, "local_server", "background",
    )  # fmt: skip
    key = _pick(api_key, "VI_FLOW_API_KEY", file, "api_key", None)
    if key and urlsplit(url).username is not None:  # user info: Basic auth of its own
        raise ValueError(
            f"base_url {shown_url(url)!r} carries a user name and an api_key is set as well:"
            " both would go in the one Authorization header; give one of them"
        )
    return Settings(
        base_url=url,
        api_key=key,
        organization_id=_pick(
            organization_id, "VI_FLOW_ORGANIZATION_ID", file, "organization_id", None
        ),
        timeout=timeouts,
        max_retries=retries,
        home=Path(_pick(home, "VI_FLOW_HOME", file, "home", default_home())).expanduser(),
        config_dir=config_dir(),
        local_server=mode,
        server_idle_timeout=_idle_timeout(file),
        http_transport=_http_transport(http_transport, file),
        log_transport=_log_transport(file),
        ca_file=_ca_file(file),
    )


def _check_types(*, home: object, **texts: object) -> None:
    """Refuse an argument of the wrong type at once, naming it (its value is not shown:
    it may be the key).

    Raises:
        TypeError: A text setting that is not a string, or a ``home`` that is no path.
    """
    for name, value in texts.items():
        if value is not NOT_GIVEN and value is not None and not isinstance(value, str):
            raise TypeError(f"{name} must be a string, got {type(value).__name__}")
    if home is not NOT_GIVEN and home is not None and not isinstance(home, (str, os.PathLike)):
        raise TypeError(f"home must be a path (str or os.PathLike), got {type(home).__name__}")


def _base_url(value: object) -> str:
    url = str(value).rstrip("/")
    scheme, sep, rest = url.partition("://")
    if sep and scheme.lower() in ("http", "https"):
        url = f"{scheme.lower()}://{rest}"  # HTTP://host is a URL too
    if url != LOCAL and not url.startswith(("http://", "https://")):
        raise ValueError(f"base_url must be 'local' or an http(s) URL, got {_unshown(url)!r}")
    if any(c.isspace() for c in url):  # a trailing space was taken, then made every path
        raise ValueError(f"base_url must not contain spaces, got {_unshown(url)!r}")
    cut = min((at for at in (url.find("?"), url.find("#")) if at >= 0), default=-1)
    if cut >= 0:  # each path was appended after it; and a query may hold a token: not shown
        raise ValueError(
            "base_url must not have a query or a fragment (an API key goes in api_key), got"
            f" {_unshown(url, url[:cut])!r} followed by {url[cut]!r}..."
        )
    return url


def _unshown(url: str, part: str | None = None) -> str:
    """``part`` of ``url`` (all of it by default) for an error about it: the password of
    user info as ``***``; nothing past the scheme when ``url`` has an ``@`` that
    :func:`shown_url` could not place (a password holding a ``?``, ``#`` or ``/``)."""
    part = url if part is None else part
    shown = shown_url(part)
    if shown == part and "@" in url.partition("://")[2] and shown_url(url) == url:
        return f"{url.partition('://')[0]}://..."
    return shown


def check_retries(value: Any) -> int:
    """``value`` as a number of retries, or ValueError naming it."""
    try:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError
        retries: int = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"max_retries must be a whole number >= 0, got {value!r}") from None
    if retries < 0:
        raise ValueError(f"max_retries must be >= 0, got {retries}")
    return retries


def _one_of(key: str, value: object, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{key} must be one of {', '.join(choices)}, got {value!r}")
    return str(value)


_CHOICES: dict[str, tuple[str, ...]] = {
    "local_server": LOCAL_SERVER_MODES,
    "log_transport": LOG_TRANSPORTS,
    "http_transport": HTTP_TRANSPORTS,
}


def _http_transport(arg: str | NotGiven | None, file: dict[str, Any]) -> str:
    value = _pick(arg, "VI_FLOW_HTTP_TRANSPORT", file, "http_transport", "aiohttp")
    return _one_of("http_transport", value, HTTP_TRANSPORTS)


def _log_transport(file: dict[str, Any]) -> str:
    value = _pick(NOT_GIVEN, "VI_FLOW_LOG_TRANSPORT", file, "log_transport", "auto")
    return _one_of("log_transport", value, LOG_TRANSPORTS)


def _ca_file(file: dict[str, Any]) -> Path | None:
    value = _pick(NOT_GIVEN, "VI_FLOW_CA_FILE", file, "ca_file", None)
    return None if value is None else _checked_ca_file(value)


def _checked_ca_file(value: object) -> Path:
    path = Path(str(value)).expanduser()
    if not path.is_file():
        raise ValueError(f"ca_file must name a PEM file of CA certificates, got {str(value)!r}")
    return path


def _idle_timeout(file: dict[str, Any]) -> float:
    raw = _pick(NOT_GIVEN, "VI_FLOW_SERVER_IDLE_TIMEOUT", file, "server_idle_timeout", None)
    if raw is None:
        return DEFAULT_IDLE_TIMEOUT
    return _seconds_or_never(raw)


def _seconds_or_never(raw: Any) -> float:
    try:
        seconds = float(raw)
    except (TypeError, ValueError):
        raise ValueError(
            f"server_idle_timeout must be a number of seconds (0 = never), got {raw!r}"
        ) from None
    if not seconds >= 0 or seconds == float("inf"):
        raise ValueError(f"server_idle_timeout must be >= 0 seconds, got {raw!r}")
    return seconds


def _coerce_timeout(value: Any) -> Timeout:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ValueError(f"timeout must be a number of seconds, got {value!r}") from None
    return Timeout.coerce(value)
