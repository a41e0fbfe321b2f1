"""How a task's log bytes become lines: the one rule the client and the server share.

Logs arrive as byte chunks of any size (an SSH ``tail``, a file read by offset), so a
chunk may end inside a line or even inside a UTF-8 character. Lines are split on ``\\n``
*before* decoding, so a character is never cut; a trailing ``\\r`` (CRLF output) is
dropped; bytes that are not UTF-8 become U+FFFD rather than an error. A lone ``\\r`` (a
progress bar redrawing its line) stays inside the line. A line longer than
:data:`MAX_LINE` bytes is handed out in pieces of at most that size, cut at a character's
end, however its bytes arrive: no reader holds more of one line (and its ``\\r``), nor
copies it again with every chunk. A piece is cut only once a byte of the line follows
it, so that a line of exactly ``MAX_LINE`` bytes is one line, not a piece and an empty
line. A follower (``LineSplitter(progress=True)``) also hands out an unfinished line up
to its last ``\\r``, that ``\\r`` included, as a piece of it (:func:`redrawn_end`): a
progress bar is seen as it redraws itself, not only once its line ends. Pure functions,
no I/O: the log followers (:mod:`vi_flow.compute`) and the server's log follow and tail
use them.
"""

from __future__ import annotations

__all__ = [
    "MAX_LINE", "LinePiece", "LineSplitter", "decode_line", "first_char_start",
    "last_char_end", "redrawn_end", "split_lines",
]  # fmt: skip

MAX_LINE = 256 * 1024
"""The most bytes of one line handed out whole: a longer one comes in pieces."""


class LinePiece(str):
    """A piece of a log line, not its end: the rest of the line follows.

    A line longer than :data:`MAX_LINE` bytes comes in pieces, and a follow hands out a
    progress bar's unfinished line up to its last ``\\r`` (the piece ends with it). It
    is a ``str`` like any line; ``isinstance(line, LinePiece)`` tells a piece from a whole
    line, or a line's last part, as the CLI does to write no newline after one.
    """

    __slots__ = ()


def decode_line(raw: bytes) -> str:
    """One line's bytes as text, without a trailing ``\\r``; bad UTF-8 is replaced."""
    return raw.removesuffix(b"\r").decode("utf-8", errors="replace")


def split_lines(rest: bytes, chunk: bytes) -> tuple[list[str], bytes]:
    """The complete lines in ``rest + chunk`` and the unfinished bytes after them.

    Args:
        rest: What the previous call returned as unfinished (``b""`` at the start).
        chunk: The bytes that arrived since.

    Returns:
        ``(lines, rest)``: the lines without their endings (a long one in pieces), and
        the bytes after the last ``\\n`` to pass in with the next chunk (at most
        :data:`MAX_LINE` and a ``\\r``).
    """
    data = rest + chunk if rest else chunk
    end = data.rfind(b"\n") + 1
    if not end:
        return _pieces(data) if len(data) > MAX_LINE else ([], data)
    if end > MAX_LINE and _may_hold_a_long_line(data, end):
        return _line_by_line(data, end)
    # One decode and one split for all the lines, not a decode per line (the log follow
    # hands out hundreds of thousands a second): a ``\n`` byte is never inside a UTF-8
    # sequence, so bad bytes are replaced exactly as line by line, and each ``\r\n`` is
    # a line's end.
    text = data[:end].decode("utf-8", errors="replace")
    if "\r" in text:
        text = text.replace("\r\n", "\n")
    lines = text.split("\n")
    lines.pop()  # the empty string after the last newline
    return _with_rest(lines, data[end:])


def _may_hold_a_long_line(data: bytes, end: int) -> bool:
    """Whether ``data[:end]`` may hold a line longer than ``MAX_LINE`` bytes: one holds a
    whole aligned block of half that size without a newline (a search in C per block)."""
    half = max(MAX_LINE // 2, 1)
    return any(data.find(b"\n", at, at + half) < 0 for at in range(0, end - half + 1, half))


def _line_by_line(data: bytes, end: int) -> tuple[list[str], bytes]:
    """:func:`split_lines` of ``data`` whose lines up to ``end`` may be long: each cut in
    pieces as if it had come unfinished, so that the chunks it came in change nothing."""
    lines: list[str] = []
    at = 0
    while at < end:
        newline = data.index(b"\n", at)
        pieces, last = _pieces(data[at:newline])
        lines += pieces
        lines.append(decode_line(last))
        at = newline + 1
    return _with_rest(lines, data[end:])


def _with_rest(lines: list[str], rest: bytes) -> tuple[list[str], bytes]:
    if len(rest) <= MAX_LINE:
        return lines, rest
    pieces, rest = _pieces(rest)
    return lines + pieces, rest


def _pieces(data: bytes) -> tuple[list[str], bytes]:
    """A line's bytes (without its ``\\n``): its pieces of ``MAX_LINE`` bytes at most, cut at
    a character's end, while more than that many are left; and what is left. A piece is
    never cut off the line's last byte alone if that is a ``\\r``: it may be the first
    half of a ``\\r\\n`` line end, and the line would end in an empty one."""
    pieces: list[str] = []  # of LinePiece
    at = 0
    while len(data) - at > MAX_LINE:
        cut = at + (last_char_end(data[at : at + MAX_LINE]) or MAX_LINE)
        if cut == len(data) - 1 and data[cut] == _CR:
            break
        pieces.append(LinePiece(data[at:cut].decode("utf-8", errors="replace")))
        at = cut
    return pieces, data[at:]


_CR = ord("\r")


def redrawn_end(rest: bytes) -> int:
    """Where the part of an unfinished line that a progress bar has redrawn ends: just
    past the last ``\\r`` of ``rest`` that is not its last byte (that one may be the first
    half of a ``\\r\\n``); 0 when there is none, or nothing but ``\\r`` before it.

    What follows that ``\\r`` is left for later: the writer may be in the middle of it.
    A bar that writes ``"\\r 10%|..."`` is therefore seen one redraw late, and a line
    that never holds a ``\\r`` is handed out only when it ends, as before.
    """
    end = rest.rfind(b"\r", 0, len(rest) - 1) + 1
    return end if rest.count(b"\r", 0, end) < end else 0  # no copy of up to 256 KiB


def first_char_start(data: bytes) -> int:
    """Where the first complete UTF-8 character of ``data`` starts: past the continuation
    bytes (at most three) of one that began before it."""
    for at in range(min(3, len(data))):
        if data[at] & 0xC0 != 0x80:
            return at
    return min(3, len(data))


def last_char_end(data: bytes) -> int:
    """Where the last complete UTF-8 character of ``data`` ends."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 != 0x80:  # not a continuation byte: the last character starts here
            need = 1 if byte < 0x80 else 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            return len(data) if need <= back else len(data) - back
    return len(data)  # not UTF-8: any cut will do


class LineSplitter:
    """:func:`split_lines` with its unfinished rest kept between chunks.

    Args:
        progress: Also hand out what an unfinished line holds up to its last ``\\r``
            (:func:`redrawn_end`), as a piece that ends with that ``\\r``: a follower
            shows a progress bar as it goes. The pieces of a line and its last part,
            joined, are the line.

    Example:
        >>> lines = LineSplitter()
        >>> lines.feed(b"a\\nb"), lines.feed(b"c\\r\\n"), lines.flush()
        (['a'], ['bc'], [])
        >>> bar = LineSplitter(progress=True)
        >>> bar.feed(b"\\r 10%"), bar.feed(b"\\r 20%"), bar.feed(b"\\r100%\\n")
        ([], ['\\r 10%\\r'], [' 20%\\r100%'])
    """

    def __init__(self, *, progress: bool = False) -> None:
        self._rest = b""
        self._progress = progress

    def feed(self, chunk: bytes) -> list[str]:
        """The lines ``chunk`` completes (without line endings), and with ``progress``
        the redrawn start of the unfinished one."""
        lines, rest = split_lines(self._rest, chunk)
        if self._progress and (end := redrawn_end(rest)):
            lines.append(LinePiece(rest[:end].decode("utf-8", errors="replace")))  # cut after \r
            rest = rest[end:]
        self._rest = rest
        return lines

    def flush(self) -> list[str]:
        """The unfinished last line, if any, at the end of the stream."""
        rest, self._rest = self._rest, b""
        return [decode_line(rest)] if rest else []
