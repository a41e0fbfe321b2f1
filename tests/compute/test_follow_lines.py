"""Line splitting of a followed log: any chunking of the bytes gives the same lines."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from vi_flow.compute._follow import _File


def _feed(chunks: list[bytes]) -> tuple[list[str], list[str], int]:
    f = _File("stdout", "log", 0)
    lines: list[str] = []
    for chunk in chunks:
        lines += f.take_lines(chunk)
    return lines, f.lines.flush(), f.offset


# Lines are text a process wrote, so valid UTF-8: no lone surrogates (category Cs).
_LINE = st.text(alphabet=st.characters(blacklist_characters="\n", blacklist_categories=("Cs",)))


@given(st.lists(_LINE, max_size=20), st.data())
def test_any_chunking_gives_the_same_lines(lines: list[str], data: st.DataObject) -> None:
    blob = "".join(line + "\n" for line in lines).encode()
    cuts = sorted(data.draw(st.lists(st.integers(0, len(blob)), max_size=10)))
    chunks = [blob[a:b] for a, b in zip([0, *cuts], [*cuts, len(blob)], strict=True)]
    got, partial, offset = _feed([c for c in chunks if c])
    # A CRLF ending loses its \r, like everywhere logs are split (vi_flow.models.loglines).
    assert got == [line.removesuffix("\r") for line in lines]
    assert partial == [] and offset == len(blob)


def test_multibyte_character_split_across_chunks() -> None:
    text = "température 🌡\n".encode()
    got, partial, _ = _feed([text[:13], text[13:15], text[15:]])
    assert got == ["température 🌡"] and partial == []
    got, partial, offset = _feed([b"no newline yet"])
    assert got == [] and partial == ["no newline yet"] and offset == 14
