"""The template renderer's lookup of step ids that are no dotted name."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from vi_flow.models.limits import MAX_ID_LENGTH
from vi_flow.server.engine.render import RenderError, render_text, render_value


class _Unlisted(dict[str, Any]):
    """Steps that may be looked up by id but not listed: listing them all for each
    placeholder held the server's loop for seconds on a flow of 1,000 dotted ids (QA AT)."""

    def __iter__(self) -> Iterator[str]:
        raise AssertionError("the renderer listed every step")

    def keys(self) -> Any:
        raise AssertionError("the renderer listed every step")


def test_a_step_id_is_found_by_the_places_it_may_end_not_by_listing_the_steps() -> None:
    steps = _Unlisted({f"s.{i}": {"output": i} for i in range(1000)})
    steps.update(
        {"a": {"output": "A"}, "a.b": {"output": {"k": ["x", "y"]}}, "1st pass": {"output": 1}}
    )
    namespace = {"steps": steps}
    assert render_text("{{ steps.s.998.output }}/{{ steps.a.output }}", namespace) == "998/A"
    assert render_value("{{ steps.a.b.output.k[1] }}", namespace) == "y"
    assert render_value("{{ steps.1st pass.output }}", namespace) == 1
    with pytest.raises(RenderError) as missing:
        render_text("{{ steps.a.b.nothing }}", namespace)
    assert "'steps.a.b.nothing', which is not defined" in str(missing.value)


class _Counted(dict[str, Any]):
    """Steps that count how often an id is looked up."""

    looked_up = 0

    def __contains__(self, key: object) -> bool:
        type(self).looked_up += 1
        return super().__contains__(key)


def test_a_placeholder_of_many_dots_looks_up_no_more_ids_than_an_id_can_be_long() -> None:
    # QA AV: each '.' of a 500 KB placeholder was a lookup of a slice up to it: the
    # step held the server's loop for 15 s. No id is longer than MAX_ID_LENGTH.
    steps = _Counted({"x": {"output": "v"}})
    with pytest.raises(RenderError):
        render_text("{{ steps." + "x." * 200_000 + "output }}", {"steps": steps})
    assert _Counted.looked_up <= MAX_ID_LENGTH
