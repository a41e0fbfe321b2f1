"""Database URLs as they may be shown: never with their password."""

from __future__ import annotations

import re

__all__ = ["redact"]

_PASSWORD = re.compile(r"(://[^:/@]*:)[^@]*@")
_PASSWORD_OPTION = re.compile(r"(password=)[^&\s]*")


def redact(url: str) -> str:
    """``url`` with its password (``user:secret@`` or ``password=secret``) as ``***``."""
    return _PASSWORD_OPTION.sub(r"\1***", _PASSWORD.sub(r"\1***@", url))
