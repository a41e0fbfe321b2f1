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


def _shown(lines: list[str]) -> str:
    """What ``vi-flow tasks logs -f`` writes for these lines (cli._output.line_end)."""
    return "".join(line if line.endswith("\r") else line + "\n" for line in lines)


@given(st.lists(_LINE, max_size=20), st.data())
def test_any_chunking_gives_the_same_lines(lines: list[str], data: st.DataObject) -> None:
    blob = "".join(line + "\n" for line in lines).encode()
    cuts = sorted(data.draw(st.lists(st.integers(0, len(blob)), max_size=10)))
    chunks = [blob[a:b] for a, b in zip([0, *cuts], [*cuts, len(blob)], strict=True)]
    got, partial, offset = _feed([c for c in chunks if c])
    # A CRLF ending loses its \r, like everywhere logs are split (vi_flow.models.loglines).
    whole = [line.removesuffix("\r") for line in lines]
    # A line holding a \r may come in pieces, each ending with a \r, as its bytes arrive:
    # joined, they are the line, and they are shown as it would be.
    assert _shown(got) == _shown(whole)
    if not any("\r" in line for line in lines):
        assert got == whole
    assert partial == [] and offset == len(blob)


def test_a_progress_bar_is_handed_out_as_it_redraws() -> None:
    # tqdm writes "\r" and the bar at each redraw, and "\n" once it closes: followed, its
    # line used to show only then (an epoch later). Each redraw shows one redraw late: the
    # text after the last \r may be unfinished.
    f = _File("stdout", "log", 0)
    assert f.take_lines(b"epoch 1\n\r  0%|     |") == ["epoch 1"]
    assert f.take_lines(b"\r 40%|\xe2\x96\x88\xe2\x96\x88   |") == ["\r  0%|     |\r"]
    assert f.take_lines(
        b"\r100%|\xe2\x96\x88\xe2\x96\x88\xe2\x96\x88\xe2\x96\x88\xe2\x96\x88|\n"
    ) == [" 40%|\u2588\u2588   |\r100%|\u2588\u2588\u2588\u2588\u2588|"]
    # a CRLF line cut between its \r and its \n is not a piece: one line, no empty one
    assert f.take_lines(b"done\r") == [] and f.take_lines(b"\n") == ["done"]


def test_multibyte_character_split_across_chunks() -> None:
    text = "température 🌡\n".encode()
    got, partial, _ = _feed([text[:13], text[13:15], text[15:]])
    assert got == ["température 🌡"] and partial == []
    got, partial, offset = _feed([b"no newline yet"])
    assert got == [] and partial == ["no newline yet"] and offset == 14
