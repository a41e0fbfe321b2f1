"""The log-line splitter both sides use: any chunking gives the same lines, text is safe."""

from __future__ import annotations

from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st

from vi_flow.models import loglines
from vi_flow.models.loglines import MAX_LINE, LineSplitter, split_lines


def lines_of(*chunks: bytes) -> list[str]:
    splitter = LineSplitter()
    out = [line for chunk in chunks for line in splitter.feed(chunk)]
    return out + splitter.flush()


def test_endings_partial_lines_and_bad_bytes() -> None:
    assert split_lines(b"", b"a\nb") == (["a"], b"b")
    assert split_lines(b"b", b"c\r\nd\re\n") == (["bc", "d\re"], b"")
    assert lines_of(b"x\n", b"", b"\n", b"tail") == ["x", "", "tail"]
    assert lines_of(b"\xff ok\n") == ["\ufffd ok"]


def test_a_character_cut_by_a_chunk_is_decoded_whole() -> None:
    snowman = "\u2603\n".encode()
    assert lines_of(snowman[:1], snowman[1:2], snowman[2:]) == ["\u2603"]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.sampled_from([b"a", b"\n", b"\r", b"\r\n", "\u00e9".encode(), b"\xff"])),
    st.lists(st.integers(min_value=0, max_value=40), max_size=8),
)
def test_any_chunking_splits_identically(parts: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(parts)
    assert lines_of(*_cut(stream, cuts)) == lines_of(stream)


def _cut(stream: bytes, cuts: list[int]) -> list[bytes]:
    """``stream`` in the chunks that cutting it at ``cuts`` makes."""
    points = sorted({min(c, len(stream)) for c in cuts})
    return [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]


def _line_by_line(data: bytes) -> tuple[list[str], bytes]:
    """The rule, written the slow way: split the bytes, then decode each line."""
    *lines, rest = data.split(b"\n")
    return [line.removesuffix(b"\r").decode("utf-8", errors="replace") for line in lines], rest


_TRICKY = [b"a", b"\n", b"\r", b"\r\n", b"\xe2\x82", b"\xe2\x82\xac", b"\xed\xa0\x80", b"\xf0\x9f"]
_TRICKY += [b"\xf0\x9f\x98\x80", b"\xff", b"\xc3", b"\x80", b"\x00"]  # cut, bad, surrogate


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from(_TRICKY)),
    st.binary(max_size=8),
)
def test_one_decode_per_chunk_equals_a_decode_per_line(parts: list[bytes], rest: bytes) -> None:
    chunk = b"".join(parts)
    assert split_lines(rest, chunk) == _line_by_line(rest + chunk)


def test_a_long_line_comes_in_pieces_and_is_never_held_whole() -> None:
    # QA: a task printing one 200 MB line with no newline held it whole (on the server and
    # in `tasks logs -f`), copying it again with every chunk: 18 s of the server's loop,
    # other organizations' requests waiting up to 9 s, the client at 1.4 GB.
    line = ("x" * 1000 + "\u00e9") * 3000  # 3 MB, a two-byte character cut at some ends
    data = line.encode() + b"\n"
    splitter = LineSplitter()
    pieces: list[str] = []
    for at in range(0, len(data), 65536):
        pieces += splitter.feed(data[at : at + 65536])
        assert len(splitter._rest) <= MAX_LINE
    assert "".join(pieces) == line
    assert all(len(piece.encode()) <= MAX_LINE for piece in pieces)
    assert len(pieces) == len(data) // MAX_LINE + 1
    whole, rest = split_lines(b"", data)  # the same pieces, read at once
    assert (whole, rest) == (pieces, b"")


def test_a_line_of_exactly_max_line_bytes_is_one_line() -> None:
    # QA: a line of exactly 262,144 bytes came out as that line and then an empty one (in
    # follows, events and tails): a piece was cut as soon as MAX_LINE bytes were held, so
    # the newline after them ended an empty line. The same for a CRLF line end.
    for ending in (b"\n", b"\r\n"):
        exact = b"x" * (MAX_LINE - 2) + "\u00e9".encode() + ending + b"next\n"
        for size in (1, 4096, 65536, MAX_LINE, MAX_LINE + 1, len(exact)):
            chunks = [exact[at : at + size] for at in range(0, len(exact), size)]
            assert lines_of(*chunks) == ["x" * (MAX_LINE - 2) + "\u00e9", "next"]
    twice = b"y" * (2 * MAX_LINE) + b"\r\n"  # two pieces, the second the line's end
    assert lines_of(twice[:MAX_LINE], twice[MAX_LINE:-1], twice[-1:]) == ["y" * MAX_LINE] * 2
    assert lines_of(b"z" * MAX_LINE + b"\r") == ["z" * MAX_LINE]  # no end: flushed whole
    assert lines_of(b"z" * MAX_LINE + b"\r", b"a\n") == ["z" * MAX_LINE, "\ra"]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from([b"ab", b"\n", b"\r", b"\r\n", "\u00e9".encode(), b"\xff"])),
    st.lists(st.integers(min_value=0, max_value=60), max_size=8),
)
def test_with_pieces_any_chunking_splits_identically(parts: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(parts)
    chunks = _cut(stream, cuts)
    with mock.patch.object(loglines, "MAX_LINE", 8):
        assert lines_of(*chunks) == lines_of(stream)
        splitter = LineSplitter()
        for chunk in chunks:
            splitter.feed(chunk)
            assert len(splitter._rest) <= 8 + 1  # and a "\r" that may end the line
