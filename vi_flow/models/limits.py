"""The limits every request must keep, written once for the client and the server.

The server checks each JSON body against :func:`check_json` before it structures it
(nesting, string and list sizes, numbers a 64-bit store can hold, finite floats), and
individual fields against the narrower checks here (names, times, sizes, relative
paths). Each check raises :class:`LimitError` (a ``ValueError``) whose ``field`` is the
wire path and whose ``problem`` names the bad value without echoing a whole body; the
server answers it as ``422 VALIDATION_ERROR`` ``"<field>: <problem>"``.
"""

from __future__ import annotations

import math
import reprlib
from collections.abc import Mapping
from typing import Any

__all__ = [
    "MAX_BLOCKS",
    "MAX_DURATION_HOURS",
    "MAX_EMIT_INTERVAL",
    "MAX_EMIT_LINES",
    "MAX_EMIT_TEXT",
    "MAX_FLOW_SPEC",
    "MAX_ID_LENGTH",
    "MAX_INT",
    "MAX_ITERATIONS",
    "MAX_LIST_LENGTH",
    "MAX_LLM_TEMPERATURE",
    "MAX_LLM_TOKENS",
    "MAX_LOG_TAIL",
    "MAX_LOG_TAIL_BYTES",
    "MAX_NAME_BYTES",
    "MAX_NAME_LENGTH",
    "MAX_NESTING",
    "MAX_PATH_LENGTH",
    "MAX_REQUEST_BODY",
    "MAX_RUN_OUTPUTS",
    "MAX_STEP_TIMEOUT",
    "MAX_STRING_LENGTH",
    "MAX_TAIL_CHARS",
    "MAX_TAIL_LINES",
    "MAX_TIME_MS",
    "MAX_VOLUME_GB",
    "LimitError",
    "check_int",
    "check_json",
    "check_name",
    "check_number",
    "check_relative_path",
    "check_time_ms",
    "depth",
    "has_control_characters",
    "is_unicode",
    "long_part",
    "shown",
    "type_name",
]

MAX_NESTING = 64
"""The deepest nesting of objects and lists in one field (``parameters``, a setting, ...).

Well below what JSON encoders take (orjson stops at 254 levels), so a request that
passes is one the server can store and replay.
"""

_ENVELOPE = 8
# A whole body may nest a few levels more than one field: ``blocks[0].settings`` is
# three levels of envelope around a field that may itself nest MAX_NESTING deep.

MAX_INT = 2**63 - 1
"""The largest integer anywhere in a body: what SQLite and orjson store exactly."""

MAX_REQUEST_BODY = 64 * 1024 * 1024
"""The largest request body in bytes; one that says it is larger is refused (413) unread."""

MAX_STRING_LENGTH = 8 * 1024 * 1024
"""The longest string anywhere in a body (a template, a tool result), in characters."""

MAX_LIST_LENGTH = 100_000
"""The most items in one JSON list, or keys in one JSON object."""

MAX_NAME_LENGTH = 256
"""The longest display name (a flow's, a volume's, a block type)."""

MAX_ID_LENGTH = 128
"""The longest block id or input name (a chosen flow or run id: 64 after its prefix)."""

MAX_BLOCKS = 1000
"""The most blocks (and declared inputs) in one flow."""

MAX_RUN_OUTPUTS = 64 * 1024 * 1024
"""The most bytes of JSON a run's step outputs hold together: a step whose output would
take its run past this fails (``OUTPUTS_TOO_LARGE``). A run keeps every output of its
steps for the steps after, in memory as in its database rows."""

MAX_FLOW_SPEC = 2 * 1024 * 1024
"""The largest flow spec, in bytes of JSON: each run keeps a copy of the spec it ran, so
a larger one would let a request of a few bytes store megabytes."""

MAX_PATH_LENGTH = 4096
"""The longest relative path (a working directory, an artifact)."""

MAX_NAME_BYTES = 255
"""The longest part of a path, in bytes (Linux's ``NAME_MAX``): a longer one cannot be
made (QA: a mount path with such a part answered 500, a working directory failed its
task at the start)."""

MAX_TIME_MS = 253_402_300_799_999
"""The last millisecond of the year 9999: the latest time a request may name."""

MAX_DURATION_HOURS = 24 * 366
"""The longest reservation window, in hours (a year)."""

MAX_VOLUME_GB = 65_536
"""The largest volume, in GB."""

MAX_EMIT_LINES = 1_000_000
"""The most log lines one ``emit`` step of a stored flow asks for (its ``count``)."""

MAX_EMIT_TEXT = 64 * 1024 * 1024
"""The most characters of log lines one ``emit`` step writes (``count`` times its line)."""

MAX_EMIT_INTERVAL = 3600
"""The longest pause, in seconds, an ``emit`` step of a stored flow makes between lines."""

MAX_STEP_TIMEOUT = 86_400
"""The longest ``timeout``, in seconds, of an ``llm`` step's model call or a ``tool`` step's
pause (a day); the shortest is 0.001 (``0`` is not "no timeout")."""

MAX_ITERATIONS = 1000
"""The most model calls one ``llm`` step makes (its ``max_iterations``)."""

MAX_LLM_TEMPERATURE = 2
"""The highest ``temperature`` of an ``llm`` step (OpenAI's range is 0 to 2)."""

MAX_LLM_TOKENS = 100_000_000
"""The highest ``max_tokens`` of an ``llm`` step (at least 1)."""

MAX_TAIL_LINES = 10_000
"""The most log lines a ``task`` step keeps in its output (its ``tail_lines``)."""

MAX_LOG_TAIL = 100_000
"""The most trailing lines one read of a task's log returns (``tail``)."""

MAX_LOG_TAIL_BYTES = 8 * 1024 * 1024
"""The most bytes of each log stream one read of a task's log returns: the last whole
lines that fit, or the end of a longer line (a ``tail`` of many long lines stays this
size: a follow, or the log's download, reads all of it)."""

MAX_TAIL_CHARS = 1024 * 1024
"""The most characters of log lines a ``task`` step keeps in its output (its last
``tail_lines`` that fit, or the end of one longer line)."""

_repr = reprlib.Repr()
_repr.maxlevel, _repr.maxstring, _repr.maxother = 2, 60, 60
shown = _repr.repr


def type_name(value: object) -> str:
    """What JSON-ish type ``value`` is, for a message that must not show it (a secret)."""
    return "null" if value is None else type(value).__name__


"""``repr`` cut short, so an error names the bad value without echoing all of it."""


class LimitError(ValueError):
    """A value outside its limit; ``str(error)`` is ``"<field>: <problem>"``.

    Attributes:
        field: The wire path of the bad value (``blocks[2].settings.x``).
        problem: What is wrong, naming the value or the limit.
    """

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


def depth(value: object, limit: int = MAX_NESTING) -> int:
    """How deeply objects and lists nest in ``value`` (0 for a scalar), without recursing.

    Counting stops once it passes ``limit``, so a hostile value costs little.
    """
    deepest, stack = 0, [(value, 1)]
    while stack and deepest <= limit:
        item, level = stack.pop()
        if isinstance(item, Mapping):
            stack.extend((child, level + 1) for child in item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend((child, level + 1) for child in item)
        else:
            continue
        deepest = max(deepest, level)
    return deepest


# A path is kept as linked (parent, part) pairs and spelled out only for an error.
_Path = tuple[Any, str] | None


def _spell(path: _Path, root: str, most: int = 6) -> str:
    parts: list[str] = []
    while path is not None:
        path, part = path
        parts.append(part)
    parts.reverse()
    if len(parts) > most:
        parts = [*parts[: most - 1], "..."]
    text = root + "".join(p if p.startswith(("[", ".")) else f".{p}" for p in parts)
    return text.lstrip(".") or "body"


def _check_scalar(item: object, where: str) -> None:
    if isinstance(item, str):
        if len(item) > MAX_STRING_LENGTH:
            raise LimitError(where, f"longer than {MAX_STRING_LENGTH} characters")
    elif isinstance(item, bool):
        return
    elif isinstance(item, int):
        if not -MAX_INT - 1 <= item <= MAX_INT:
            raise LimitError(where, f"integer out of the 64-bit range: {shown(item)}")
    elif isinstance(item, float) and (not math.isfinite(item) or abs(item) > MAX_INT):
        raise LimitError(where, f"number out of range: {item!r}")


def check_json(value: object, root: str = "") -> None:
    """Check a parsed JSON body against the limits above, without recursing.

    Args:
        value: The parsed body.
        root: Prepended to paths in the error (``"spec"``).

    Raises:
        LimitError: Naming the first value found past a limit.
    """
    stack: list[tuple[object, _Path, int]] = [(value, None, 0)]
    while stack:
        item, path, level = stack.pop()
        if isinstance(item, (Mapping, list)):
            if level >= MAX_NESTING + _ENVELOPE:
                problem = f"objects and lists nest deeper than {MAX_NESTING} levels"
                raise LimitError(_spell(path, root), problem)
            if len(item) > MAX_LIST_LENGTH:
                raise LimitError(_spell(path, root), f"more than {MAX_LIST_LENGTH} items")
            if isinstance(item, Mapping):
                for key, child in item.items():
                    try:
                        _check_scalar(key, "")
                    except LimitError as exc:  # the path is spelled out only for an error
                        raise LimitError(_spell(path, root), exc.problem) from None
                    stack.append((child, (path, str(key)[:40]), level + 1))
            else:
                stack.extend((child, (path, f"[{i}]"), level + 1) for i, child in enumerate(item))
        else:
            try:
                _check_scalar(item, "")
            except LimitError as exc:
                raise LimitError(_spell(path, root), exc.problem) from None


# Text-direction overrides, embeddings, isolates and marks: in a name they turn what
# follows around wherever it is shown ("invoice\u202egpj.exe" reads "invoiceexe.jpg").
_DIRECTION = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
# Line and paragraph separators: a name shown on one line would break in two.
_SEPARATOR = frozenset("\u2028\u2029")
# Characters drawn as nothing: "deploy\u200b-prod" looked like "deploy-prod" in every list
# (QA AL). The joiners (U+200C, U+200D) are let through: emoji and scripts need them.
_INVISIBLE = frozenset("\u00ad\u180e\u200b\u2060\u2061\u2062\u2063\u2064\ufeff")


def has_control_characters(text: str) -> bool:
    """Whether ``text`` holds a C0 or C1 control character or DEL (a newline, NUL, ESC)."""
    return any(ord(c) < 32 or 127 <= ord(c) < 160 for c in text)


def is_unicode(text: str) -> bool:
    """Whether ``text`` encodes as UTF-8: no lone surrogate (``"\\udc80"``, as a byte of a
    file name or of an argument that was not UTF-8 is decoded)."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def check_name(field: str, value: object, most: int = MAX_NAME_LENGTH) -> None:
    """A name or id of at most ``most`` characters, not blank, without control
    characters, line separators, text-direction controls or invisible characters."""
    if not isinstance(value, str):
        raise LimitError(field, f"expected a string, got {shown(value)}")
    if not value.strip():
        raise LimitError(field, "must not be empty" if not value else "must not be blank")
    if len(value) > most:
        raise LimitError(field, f"longer than {most} characters ({len(value)})")
    if has_control_characters(value) or not _SEPARATOR.isdisjoint(value):
        raise LimitError(field, f"must not hold control characters: {shown(value)}")
    if not _DIRECTION.isdisjoint(value):
        raise LimitError(field, f"must not hold text-direction control characters: {shown(value)}")
    if not _INVISIBLE.isdisjoint(value):
        raise LimitError(field, f"must not hold invisible characters: {shown(value)}")


def is_private_key(text: str) -> bool:
    """Whether ``text`` holds a private key (OpenSSH, PEM or PuTTY): what must never be
    sent where a public key is asked for."""
    return "PRIVATE KEY-----" in text or text.lstrip().startswith("PuTTY-User-Key-File")


def check_int(field: str, value: object, low: int, high: int) -> int:
    """An int (not a bool) in ``low..high``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise LimitError(field, f"expected an integer, got {shown(value)}")
    if not low <= value <= high:
        raise LimitError(field, f"must be between {low} and {high}, got {shown(value)}")
    return value


def check_number(field: str, value: object, low: float, high: float) -> float:
    """A finite int or float in ``low..high`` (``nan``, ``inf`` and ``1e400`` are refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise LimitError(field, f"expected a number, got {shown(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise LimitError(field, f"expected a finite number, got {value!r}")
    if not low <= value <= high:
        raise LimitError(field, f"must be between {low:g} and {high:g}, got {shown(value)}")
    return float(value)


def check_time_ms(field: str, value: object) -> int:
    """A time in ms since the epoch, from 1970 to the end of year 9999."""
    return int(check_number(field, value, 0, MAX_TIME_MS))


def check_relative_path(field: str, value: object) -> str:
    """A relative path that stays where it is put: no leading ``/``, no ``..``, no NUL."""
    if not isinstance(value, str):
        raise LimitError(field, f"expected a string, got {shown(value)}")
    if len(value) > MAX_PATH_LENGTH:
        raise LimitError(field, f"longer than {MAX_PATH_LENGTH} characters")
    if "\x00" in value:
        raise LimitError(field, "must not hold a NUL byte")
    if value.startswith(("/", "\\")) or (len(value) > 1 and value[1] == ":"):
        raise LimitError(field, f"must be a relative path, got {shown(value)}")
    if ".." in value.replace("\\", "/").split("/"):
        raise LimitError(field, f"must not climb out with '..', got {shown(value)}")
    if problem := long_part(value):
        raise LimitError(field, problem)
    return value


def long_part(path: str) -> str | None:
    """What is wrong with ``path`` when a part of it is longer than a file name may be
    (:data:`MAX_NAME_BYTES`), else None."""
    for part in path.replace("\\", "/").split("/"):
        if len(part) * 4 > MAX_NAME_BYTES:  # shorter ones fit in any encoding
            size = len(part.encode(errors="surrogatepass"))
            if size > MAX_NAME_BYTES:
                return (
                    f"has a part of {size:,} bytes ({shown(part)}): a file or folder name"
                    f" holds at most {MAX_NAME_BYTES}"
                )
    return None
