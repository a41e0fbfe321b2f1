"""How a task's log bytes become lines: the one rule the client and the server share.

Logs arrive as byte chunks of any size (an SSH ``tail``, a file read by offset), so a
chunk may end inside a line or even inside a UTF-8 character. Lines are split on ``\\n``
*before* decoding, so a character is never cut; a trailing ``\\r`` (CRLF output) is
dropped; bytes that are not UTF-8 become U+FFFD rather than an error. A lone ``\\r`` (a
progress bar redrawing its line) stays inside the line. Pure functions, no I/O: the SSH
log follower (:mod:`vi_flow.compute`) and the server's log follow and tail use them.
"""

from __future__ import annotations

__all__ = ["LineSplitter", "decode_line", "split_lines"]


def decode_line(raw: bytes) -> str:
    """One line's bytes as text, without a trailing ``\\r``; bad UTF-8 is replaced."""
    return raw.removesuffix(b"\r").decode("utf-8", errors="replace")


def split_lines(rest: bytes, chunk: bytes) -> tuple[list[str], bytes]:
    """The complete lines in ``rest + chunk`` and the unfinished bytes after them.

    Args:
        rest: What the previous call returned as unfinished (``b""`` at the start).
        chunk: The bytes that arrived since.

    Returns:
        ``(lines, rest)``: the lines without their endings, and the bytes after the last
        ``\\n`` to pass in with the next chunk.
    """
    data = rest + chunk if rest else chunk
    end = data.rfind(b"\n") + 1
    if not end:
        return [], data
    # One decode and one split for all the lines, not a decode per line (the log follow
    # hands out hundreds of thousands a second): a ``\n`` byte is never inside a UTF-8
    # sequence, so bad bytes are replaced exactly as line by line, and each ``\r\n`` is
    # a line's end.
    text = data[:end].decode("utf-8", errors="replace")
    if "\r" in text:
        text = text.replace("\r\n", "\n")
    lines = text.split("\n")
    lines.pop()  # the empty string after the last newline
    return lines, data[end:]


class LineSplitter:
    """:func:`split_lines` with its unfinished rest kept between chunks.

    Example:
        >>> lines = LineSplitter()
        >>> lines.feed(b"a\\nb"), lines.feed(b"c\\r\\n"), lines.flush()
        (['a'], ['bc'], [])
    """

    def __init__(self) -> None:
        self._rest = b""

    def feed(self, chunk: bytes) -> list[str]:
        """The lines ``chunk`` completes (without line endings)."""
        lines, self._rest = split_lines(self._rest, chunk)
        return lines

    def flush(self) -> list[str]:
        """The unfinished last line, if any, at the end of the stream."""
        rest, self._rest = self._rest, b""
        return [decode_line(rest)] if rest else []
