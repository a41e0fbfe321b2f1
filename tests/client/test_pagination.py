"""Paging: lazy pages, all items, bad page sizes before any request, repeated tokens."""

from __future__ import annotations

import orjson
import pytest

import vi_flow
from vi_flow import PaginationError, PaginationParams

from .scripted import json_answer, scripted_server

pytestmark = pytest.mark.anyio


def page(ids: list[str], next_page: str | None) -> bytes:
    items = [
        {
            "organizationId": "o",
            "flowId": i,
            "spec": {"name": i},
            "metadata": {"timeCreated": 1, "lastUpdated": 1},
        }
        for i in ids
    ]
    return orjson.dumps({"items": items, "nextPage": next_page})


@pytest.mark.parametrize("size", [0, 10_000, -1])
async def test_bad_page_size_fails_before_any_request(size: int) -> None:
    async with scripted_server([json_answer(200, page([], None))]) as (url, server):
        async with vi_flow.AsyncClient(base_url=url, api_key="k") as client:
            with pytest.raises(ValueError, match=str(size)):
                client.flows.list(pagination={"page_size": size})
            with pytest.raises(ValueError, match="page_size"):
                PaginationParams(page_size=size)
    assert server.requests == []


async def test_unknown_pagination_key_names_it() -> None:
    with pytest.raises(ValueError, match="pagesize"):
        PaginationParams.coerce({"pagesize": 3})


async def test_pages_are_fetched_lazily_and_all_items_walks_them() -> None:
    answers = [json_answer(200, page(["a", "b"], "t1")), json_answer(200, page(["c"], None))]
    async with scripted_server(answers) as (url, server):
        async with vi_flow.AsyncClient(base_url=url, api_key="k") as client:
            first = await client.flows.list(pagination=PaginationParams(page_size=2))
            assert [f.flow_id for f in first.items] == ["a", "b"]
            assert len(server.requests) == 1
            server.requests.clear()
            server.answers = answers
            ids = [
                f.flow_id async for f in client.flows.list(pagination={"page_size": 2}).all_items()
            ]
    assert ids == ["a", "b", "c"]
    assert [r["query"].get("pageToken") for r in server.requests] == [None, "t1"]
    assert server.requests[0]["query"]["pageSize"] == "2"


async def test_repeated_page_token_raises_instead_of_spinning() -> None:
    answers = [json_answer(200, page(["a"], "same"))]
    async with scripted_server(answers) as (url, server):
        async with vi_flow.AsyncClient(base_url=url, api_key="k") as client:
            with pytest.raises(PaginationError, match="same"):
                async for _ in client.flows.list():
                    pass
    assert len(server.requests) == 2
