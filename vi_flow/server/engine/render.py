"""The tiny, safe template renderer behind ``template``, ``tool`` and ``llm`` settings.

A template is text with ``{{ path }}`` placeholders. A path is a dotted name with
optional list indexes (``steps.step1.output``, ``parameters.items[0]``) looked up in
a namespace of plain data; an optional filter follows a bar (``{{ x | json }}``).
Nothing is evaluated: there are no calls, attributes or operators, only dictionary
and list lookups. A name that does not resolve raises :class:`RenderError` naming
the full path, which the engine reports as the step's failure.

:func:`render_value` renders every string inside a JSON-like value; a string that is
exactly one placeholder keeps the referenced value's type (a dict stays a dict).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import orjson

from ...models.limits import MAX_ID_LENGTH, MAX_STRING_LENGTH, type_name

__all__ = ["MAX_RENDERED", "RenderError", "render_text", "render_value"]

_SEGMENT = re.compile(r"([A-Za-z_][A-Za-z0-9_\-]*)|\[(\d+)\]")


class RenderError(ValueError):
    """A template referred to a name that does not exist, or was malformed.

    Attributes:
        name: The path that failed, such as ``steps.step1.output``.
    """

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name


def _to_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return orjson.dumps(value).decode()


_FILTERS: dict[str, Callable[[Any], Any]] = {
    "json": lambda v: orjson.dumps(v).decode(),
    "upper": lambda v: _to_text(v).upper(),
    "lower": lambda v: _to_text(v).lower(),
    "trim": lambda v: _to_text(v).strip(),
    "length": lambda v: len(v),
}


def _segments(path: str) -> list[str | int]:
    parts: list[str | int] = []
    for chunk in path.split("."):
        for match in _SEGMENT.finditer(chunk):
            name, index = match.groups()
            parts.append(name if name is not None else int(index))
        if not chunk or _SEGMENT.sub("", chunk):
            raise RenderError(path, f"template placeholder {path!r} is not a valid name")
    return parts


def _lookup(path: str, namespace: Mapping[str, Any]) -> Any:
    try:
        return _walk(namespace, _segments(path), path)
    except RenderError:
        step = _named_step(path, namespace)  # a step id that is no dotted name
        if step is None:
            raise
        step_id, rest = step
        return _walk(namespace["steps"][step_id], _segments(rest) if rest else [], path)


def _walk(current: Any, parts: list[str | int], path: str) -> Any:
    for part in parts:
        if not _has(current, part):
            raise RenderError(path, f"template refers to {path!r}, which is not defined")
        current = current[part]
    return current


def _named_step(path: str, namespace: Mapping[str, Any]) -> tuple[str, str] | None:
    """For ``steps.<id>...`` whose id holds what a dotted name cannot (``a.b``, ``a b``,
    ``1st``, ``étape``: QA AR, a step a template could not reach), the longest step id
    spelled there, and the path after it; ``None`` when no step id is.

    An id ends where the path does, or before a ``.`` or ``[``: those few places are
    looked up (a flow of 1,000 dotted ids scanned them all for each placeholder, and a
    long template held the server's loop for seconds: QA AT).
    """
    steps = namespace.get("steps")
    if not path.startswith("steps.") or not isinstance(steps, Mapping):
        return None
    after = path[len("steps.") :]
    # no id is longer than MAX_ID_LENGTH: a placeholder of 250,000 dots looked at every
    # one of them, a slice each, and held the loop for 15 s (QA AV)
    head = after[: MAX_ID_LENGTH + 1]
    ends = [i for i, char in enumerate(head) if char in ".["]
    if len(after) <= MAX_ID_LENGTH:
        ends.append(len(after))
    for end in sorted(ends, reverse=True):
        if end and after[:end] in steps:
            return after[:end], after[end:].removeprefix(".")
    return None


def _has(container: Any, part: str | int) -> bool:
    if isinstance(part, int):
        return isinstance(container, list) and part < len(container)
    return isinstance(container, Mapping) and part in container


def _evaluate(expression: str, namespace: Mapping[str, Any]) -> Any:
    path, *filters = (piece.strip() for piece in expression.split("|"))
    if not path:
        raise RenderError(expression.strip(), "empty template placeholder '{{ }}'")
    value = _lookup(path, namespace)
    for name in filters:
        apply = _FILTERS.get(name)
        if apply is None:
            raise RenderError(path, f"unknown template filter {name!r} (known: {sorted(_FILTERS)})")
        try:
            value = apply(value)
        except TypeError:  # ``length`` of a number
            problem = f"template filter {name!r} cannot take {type_name(value)}"
            raise RenderError(path, f"{problem} at {{{{ {path} }}}}") from None
    return value


def render_text(template: str, namespace: Mapping[str, Any]) -> str:
    """Render every ``{{ path }}`` in ``template`` as text.

    Args:
        template: The text with placeholders.
        namespace: The data names resolve against.

    Returns:
        The text with placeholders replaced; strings go in as they are, other values
        as JSON.

    Raises:
        RenderError: A placeholder names something that does not exist, or the text
            would be longer than :data:`MAX_RENDERED` characters.
    """
    return _render_text(template, namespace, _Budget())


def render_value(value: Any, namespace: Mapping[str, Any]) -> Any:
    """Render every string inside a JSON-like value.

    A string that is exactly one placeholder (``"{{ steps.a.output }}"``) becomes the
    referenced value itself, keeping its type; whitespace around it is dropped, unless
    the value is a string (``" {{ message }}"`` renders as ``" hi"``).

    Args:
        value: A string, list, dict or scalar.
        namespace: The data names resolve against.

    Returns:
        The rendered value.

    Raises:
        RenderError: A placeholder names something that does not exist, or the text
            rendered in all would be longer than :data:`MAX_RENDERED` characters.
    """
    return _render_value(value, namespace, _Budget())


MAX_RENDERED = MAX_STRING_LENGTH
"""The most characters one rendering may write (a template that repeats a step's output
would otherwise double it at every step: gigabytes after a few). A placeholder that is a
whole string counts the referenced value's size as JSON, once per place it goes."""


class _Budget:
    """What is left of one rendering's :data:`MAX_RENDERED` characters."""

    def __init__(self) -> None:
        self.left = MAX_RENDERED
        # id -> JSON size of each list or dict counted: one value repeated 100 times is
        # encoded once. Only the namespace's containers, alive for the whole rendering.
        self._sizes: dict[int, int] = {}

    def spend(self, size: int, expression: str) -> None:
        self.left -= size
        if self.left < 0:
            name = expression.split("|")[0].strip()
            raise RenderError(
                name,
                f"the rendered text would be over {MAX_RENDERED} characters at {{{{ {name} }}}}",
            )

    def spend_value(self, value: Any, expression: str) -> None:
        if isinstance(value, str):
            size = len(value)
        elif isinstance(value, (list, dict)):
            size = self._sizes.get(id(value), -1)
            if size < 0:
                size = self._sizes[id(value)] = len(orjson.dumps(value))
        else:
            size = len(_to_text(value))
        self.spend(size, expression)


def _placeholders(template: str) -> Iterator[tuple[int, int]]:
    """Where each ``{{ ... }}`` starts and ends: the first ``}}`` after each ``{{``.

    Two ``str.find`` calls per placeholder keep this linear in the text (a lazy regex
    rescans to the end for every ``{{`` without a ``}}``: minutes for a few hundred KB).
    """
    at = 0
    while (start := template.find("{{", at)) != -1:
        end = template.find("}}", start + 2)
        if end == -1:  # no "}}" after this "{{": none after any later one either
            return
        yield start, end + 2
        at = end + 2


def _whole(text: str) -> str | None:
    """The expression of ``text`` when it is one placeholder and nothing else, else None."""
    text = text.strip()
    if len(text) < 4 or not (text.startswith("{{") and text.endswith("}}")):
        return None
    inner = text[2:-2]
    return None if "{{" in inner else inner


def _render_text(template: str, namespace: Mapping[str, Any], budget: _Budget) -> str:
    parts: list[str] = []
    at = 0
    for start, end in _placeholders(template):
        expression = template[start + 2 : end - 2]
        text = _to_text(_evaluate(expression, namespace))
        budget.spend(len(text), expression)
        parts += (template[at:start], text)
        at = end
    if not parts:
        return template
    parts.append(template[at:])
    return "".join(parts)


def _render_value(value: Any, namespace: Mapping[str, Any], budget: _Budget) -> Any:
    if isinstance(value, str):
        expression = _whole(value)
        if expression is None:
            return _render_text(value, namespace, budget)
        # The value itself, shared, not copied; but every place it goes is written out
        # as JSON later (events, the store): 100 places of one 1 MB output are 100 MB.
        whole = _evaluate(expression, namespace)
        if isinstance(whole, str) and value != value.strip():  # " {{ message }}" is " hi"
            return _render_text(value, namespace, budget)
        budget.spend_value(whole, expression)
        return whole
    if isinstance(value, list):
        return [_render_value(item, namespace, budget) for item in value]
    if isinstance(value, dict):
        return {key: _render_value(item, namespace, budget) for key, item in value.items()}
    return value
