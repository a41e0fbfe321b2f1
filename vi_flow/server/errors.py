"""The one exception server handlers raise to answer with a JSON error.

Handlers and the store raise :class:`APIProblem`; the error middleware in
:mod:`vi_flow.server.middleware` turns it into the wire error body
``{"error": {"code", "message", "requestId"}}`` with the right HTTP status. Anything
else that escapes a handler becomes ``500 INTERNAL`` (logged with the request id).
"""

from __future__ import annotations

from ..models.limits import shown

__all__ = ["APIProblem"]


class APIProblem(Exception):
    """An error answer: HTTP status, wire error code and a sentence naming the bad value.

    Args:
        status: The HTTP status, such as 404.
        code: The wire error code, such as ``FLOW_NOT_FOUND``.
        message: What went wrong, naming the bad value or field.

    Example:
        >>> raise APIProblem(404, "FLOW_NOT_FOUND", "flow 'flow_x' not found")
    """

    def __init__(
        self, status: int, code: str, message: str, *, transient: bool | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        # A 409 is about the resource's state (a mounted volume, a running run): retrying
        # the same request cannot help, so clients are told not to, unless it says otherwise.
        self.transient = status != 409 if transient is None else transient

    @classmethod
    def validation(cls, field: str, problem: str) -> APIProblem:
        """A ``422 VALIDATION_ERROR`` whose message starts with the field path."""
        return cls(422, "VALIDATION_ERROR", f"{field}: {problem}")

    @classmethod
    def not_found(cls, code: str, kind: str, ident: object) -> APIProblem:
        """A 404 with ``code`` saying ``<kind> '<ident>' not found``."""
        return cls(404, code, f"{kind} {shown(ident)} not found")

    @classmethod
    def conflict(cls, message: str) -> APIProblem:
        """A ``409 CONFLICT`` that retrying cannot resolve."""
        return cls(409, "CONFLICT", message)

    def __repr__(self) -> str:
        return f"APIProblem({self.status}, {self.code!r}, {self.message!r})"
