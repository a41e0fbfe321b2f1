"""The SSE decoder: WHATWG edge cases, any chunking decodes alike, long lines."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vi_flow import APIResponseValidationError
from vi_flow import _sse as sse
from vi_flow._sse import EVENT_NAMES, ServerSentEvent, SSEDecoder

Event = tuple[str, bytes, "str | None", "int | None"]


def decode(*chunks: bytes) -> list[Event]:
    decoder = SSEDecoder()
    out: list[ServerSentEvent] = []
    for chunk in chunks:
        out.extend(decoder.feed(chunk))
    return [tuple(e) for e in out]  # type: ignore[misc]


def decode_raw(*chunks: bytes) -> list[Event]:
    """What ``feed_raw`` gives (raw frames, then events), rebuilt as ``feed`` answers."""
    decoder = SSEDecoder()
    out: list[Event] = []
    for chunk in chunks:
        frames, events = decoder.feed_raw(chunk)
        last_id = decoder.id_before
        for ident, name, data in frames:
            last_id = ident.decode() if ident else last_id
            event = EVENT_NAMES.get(name) or name.decode("utf-8", "replace") or "message"
            out.append((event, data, last_id, decoder.retry_before))
        out.extend(tuple(e) for e in events)  # type: ignore[misc]
    return out


def reference(stream: bytes) -> list[Event]:
    """A plain reading of the WHATWG algorithm on the whole stream at once."""
    if stream.startswith(b"\xef\xbb\xbf"):
        stream = stream[3:]
    lines = re.split(rb"\r\n|\r|\n", stream)[:-1]  # the last piece is an unfinished line
    events: list[Event] = []
    data: list[bytes] | None = None
    event, last_id, retry = "", None, None
    for line in lines:
        if line == b"":
            if data is not None:
                events.append((event or "message", b"\n".join(data), last_id, retry))
            data, event = None, ""
            continue
        if line.startswith(b":"):
            continue
        name, sep, value = line.partition(b":")
        if sep and value.startswith(b" "):
            value = value[1:]
        if name == b"data":
            data = [*(data or []), value]
        elif name == b"event":
            event = value.decode("utf-8", "replace")
        elif name == b"id" and b"\0" not in value:
            last_id = value.decode("utf-8", "replace")
        elif name == b"retry" and value.isdigit():
            retry = int(value)
    return events


def test_basic_frame() -> None:
    stream = b'id: 1\nevent: step_started\ndata: {"a": 1}\n\n'
    assert decode(stream) == [("step_started", b'{"a": 1}', "1", None)]


def test_event_defaults_to_message_and_resets_after_dispatch() -> None:
    stream = b"event: x\ndata: 1\n\ndata: 2\n\n"
    assert decode(stream) == [("x", b"1", None, None), ("message", b"2", None, None)]


def test_multiline_data_joined_with_lf() -> None:
    assert decode(b"data: a\ndata:b\ndata\ndata:  c\n\n") == [
        ("message", b"a\nb\n\n c", None, None)
    ]


def test_line_ends_cr_lf_crlf_mixed() -> None:
    stream = b"data: a\r\ndata: b\rdata: c\n\r\n"
    assert decode(stream) == [("message", b"a\nb\nc", None, None)]


def test_crlf_split_across_chunks_is_one_line_end() -> None:
    assert decode(b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n") == [
        ("message", b"a\nb", None, None)
    ]


def test_lone_cr_at_chunk_end_then_data() -> None:
    assert decode(b"data: a\r", b"\r") == [("message", b"a", None, None)]


def test_comments_and_heartbeats_are_ignored() -> None:
    assert decode(b": heartbeat\n\n:\ndata: x\n: mid\n\n") == [("message", b"x", None, None)]


def test_blank_line_without_data_dispatches_nothing() -> None:
    assert decode(b"event: e\n\nid: 3\n\n") == []


def test_empty_data_field_dispatches_empty_string() -> None:
    assert decode(b"data\n\n") == [("message", b"", None, None)]


def test_id_persists_and_nul_ids_are_ignored() -> None:
    stream = b"id: 7\ndata: a\n\nid: 8\x009\ndata: b\n\nid\ndata: c\n\n"
    assert decode(stream) == [
        ("message", b"a", "7", None),
        ("message", b"b", "7", None),
        ("message", b"c", "", None),
    ]


def test_retry_digits_only() -> None:
    stream = b"retry: 1500\ndata: a\n\nretry: 1.5\ndata: b\n\n"
    assert decode(stream) == [("message", b"a", None, 1500), ("message", b"b", None, 1500)]


def test_unknown_fields_and_no_space_after_colon() -> None:
    assert decode(b"foo: bar\nevent:e\ndata:x\n\n") == [("e", b"x", None, None)]


def test_bom_at_start_only_even_split() -> None:
    assert decode(b"\xef", b"\xbb", b"\xbfdata: a\n\n") == [("message", b"a", None, None)]
    assert decode(b"data: \xef\xbb\xbfa\n\n") == [("message", b"\xef\xbb\xbfa", None, None)]


def test_unfinished_event_at_eof_is_dropped() -> None:
    assert decode(b"data: a\n\ndata: b\n") == [("message", b"a", None, None)]


def test_one_megabyte_single_line_in_small_chunks() -> None:
    payload = b"x" * (1 << 20)
    stream = b"id: 1\nevent: big\ndata: " + payload + b"\n\n"
    chunks = [stream[i : i + 4096] for i in range(0, len(stream), 4096)]
    assert decode(*chunks) == [("big", payload, "1", None)]


_LINE = st.one_of(
    st.sampled_from([b"", b":", b": hb", b"data", b"data:", b"id", b"retry: 10", b"retry: x"]),
    st.builds(
        lambda name, value: name + value,
        st.sampled_from([b"data: ", b"data:", b"event: ", b"id: ", b"id:", b"zz: "]),
        st.binary(max_size=12).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
    ),
)
_EOL = st.sampled_from([b"\n", b"\r", b"\r\n"])


@st.composite
def streams(draw: st.DrawFn) -> bytes:
    parts = draw(st.lists(st.tuples(_LINE, _EOL), max_size=30))
    body = b"".join(line + eol for line, eol in parts)
    return (b"\xef\xbb\xbf" if draw(st.booleans()) else b"") + body


@settings(max_examples=300, deadline=None)
@given(streams(), st.lists(st.integers(min_value=0, max_value=200), max_size=12))
def test_any_chunking_decodes_identically(stream: bytes, cuts: list[int]) -> None:
    points = sorted({min(c, len(stream)) for c in cuts})
    chunks = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    whole = decode(stream)
    assert decode(*chunks) == whole
    assert decode(*[stream[i : i + 1] for i in range(len(stream))]) == whole
    assert whole == reference(stream)


_FRAME = st.builds(
    lambda i, name, data: b"id: %d\nevent: %s\ndata: %s\n\n" % (i, name, data),
    st.integers(min_value=0, max_value=10**6),
    st.sampled_from([b"log", b"step_started", b"", b"x y"]),
    st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
)


@st.composite
def server_streams(draw: st.DrawFn) -> bytes:
    """Mostly canonical frames (the decoder's fast path) with odd lines in between."""
    parts = draw(
        st.lists(st.one_of(_FRAME, _FRAME, st.tuples(_LINE, _EOL).map(b"".join)), max_size=40)
    )
    return b"".join(parts)


@settings(max_examples=300, deadline=None)
@given(server_streams(), st.lists(st.integers(min_value=0, max_value=2000), max_size=20))
def test_fast_path_matches_the_rules_under_any_chunking(stream: bytes, cuts: list[int]) -> None:
    points = sorted({min(c, len(stream)) for c in cuts})
    chunks = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    expected = reference(stream)
    assert decode(stream) == expected
    assert decode(*chunks) == expected
    assert decode_raw(*chunks) == expected


def test_a_frame_glued_to_an_odd_line_start_is_read_by_the_rules() -> None:
    # "xid: 5" is a field named "xid", not an id; the fast path must not match inside it.
    stream = b"id: 1\nevent: log\ndata: a\n\nxid: 5\nevent: log\ndata: b\n\n"
    assert decode_raw(stream) == decode(stream) == reference(stream)
    assert [e[2] for e in decode_raw(stream)] == ["1", "1"]


def test_frames_without_id_or_event_leave_the_fast_path_alike() -> None:
    stream = b"data: a\n\nevent: log\ndata: b\n\nid: 7\ndata: c\n\n"
    frames, events = SSEDecoder().feed_raw(stream)
    assert frames == [] and len(events) == 3
    assert decode_raw(stream) == reference(stream)


def test_an_event_that_never_ends_is_refused_not_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    # QA: a stream of data lines with no blank line took the client past 5 GB, and a line
    # with no end past 600 MB; a vi_flow server never sends either.
    monkeypatch.setattr(sse, "MAX_EVENT_BYTES", 100_000)  # past the 64 KiB held as they come
    line = b"data: " + b"x" * 1000
    for chunks in (
        [line] * 200,  # one line, no end
        [line + b"\n"] * 200,  # lines, no blank line
        [b"id: 1\nevent: log\ndata: {}\n\n", b": hi\n" + (line + b"\n") * 200],  # after a frame
    ):
        decoder = SSEDecoder()
        with pytest.raises(APIResponseValidationError, match="without ending it"):
            for chunk in chunks:
                decoder.feed(chunk)
    monkeypatch.setattr(sse, "MAX_EVENT_LINES", 10)
    with pytest.raises(APIResponseValidationError, match="10 lines"):
        SSEDecoder().feed(b"data: \n" * 20_000)
    whole = SSEDecoder().feed(b"data: " + b"z" * 90_000 + b"\n\n")  # under the limit: read
    assert len(whole[0].data) == 90_000


def test_an_id_of_thousands_of_digits_is_no_canonical_frame() -> None:
    # QA: the fast path's int() of a 5,000-digit id raised ValueError out of events().
    decoder = SSEDecoder()
    frames, events = decoder.feed_raw(b"id: " + b"9" * 5000 + b"\nevent: log\ndata: {}\n\n")
    assert frames == [] and [e.event for e in events] == ["log"]
