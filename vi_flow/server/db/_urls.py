"""Database URLs as they may be shown: never with their password."""

from __future__ import annotations

import re
from urllib.parse import unquote

__all__ = ["redact", "scrubbed"]

# The user info ends at the authority's *last* "@" (a password may hold one); the
# authority ends at the first "/", "?" or "#".
_PASSWORD = re.compile(r"(://[^:/@?#]*:)[^/?#]*@")
_PASSWORD_OPTION = re.compile(r"(password=)[^&\s]*")
_USER_PASSWORD = re.compile(r"://[^:/@?#]*:([^/?#]*)@")
_OPTION_PASSWORD = re.compile(r"password=([^&\s]*)")

_PIECE = 4
"""The shortest piece of a password, cut at an ``@``, that :func:`scrubbed` takes out."""


def redact(url: str) -> str:
    """``url`` with its password (``user:secret@`` or ``password=secret``) as ``***``."""
    return _PASSWORD_OPTION.sub(r"\1***", _PASSWORD.sub(r"\1***@", url))


def scrubbed(message: str, url: str) -> str:
    """``message`` (libpq's, about ``url``) with every form of the URL's password in it
    as ``***``: libpq quotes what it could not read (``invalid percent-encoded token:
    "s3cret%PW"``) and, cutting at the first ``@``, names the rest of a password that
    holds one as the host."""
    secrets = set()
    for secret in _USER_PASSWORD.findall(url) + _OPTION_PASSWORD.findall(url):
        for form in {secret, unquote(secret)}:
            secrets.add(form)
            secrets.update(piece for piece in form.split("@") if len(piece) >= _PIECE)
    for secret in sorted(filter(None, secrets), key=len, reverse=True):
        message = message.replace(secret, "***")
    return message
