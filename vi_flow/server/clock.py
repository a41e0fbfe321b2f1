"""The server's wall clock: :func:`now_ms`, the time every record, event and update carries.

One definition, so records, events and provider updates agree on the unit (integer
milliseconds since the epoch) and a test can replace the clock in one place.
"""

from __future__ import annotations

import time

__all__ = ["now_ms"]


def now_ms() -> int:
    """The current time in milliseconds since the epoch."""
    return int(time.time() * 1000)
