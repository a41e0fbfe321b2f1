"""The request loop: retries, Retry-After, idempotency keys, typed errors, bad bodies.

Every test runs on both transports (``http_transport``): the pooled aiohttp session and
the CLI's ``http.client`` one; the loop's behaviour must not depend on which sends.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable

import orjson
import pytest
from aiohttp import web

import vi_flow
from vi_flow import (
    APIConnectionError,
    APIResponseValidationError,
    APITimeoutError,
    AuthenticationError,
    ConflictError,
    FlowNotFoundError,
    InternalServerError,
    RateLimitError,
    UnprocessableEntityError,
)

from .scripted import json_answer, scripted_server

pytestmark = pytest.mark.anyio


@pytest.fixture(autouse=True, params=["aiohttp", "stdlib"])
def transport(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("VI_FLOW_HTTP_TRANSPORT", request.param)
    return str(request.param)


FLOW = orjson.dumps(
    {
        "organizationId": "org_1",
        "flowId": "flow_1",
        "spec": {"name": "f", "blocks": [{"block": "template"}], "futureField": 1},
        "metadata": {"timeCreated": 1, "lastUpdated": 2},
        "etag": "e1",
    }
)
ERROR_500 = orjson.dumps({"error": {"code": "INTERNAL", "message": "boom", "requestId": "req_500"}})


class Sleeps:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


async def test_500_twice_then_200_succeeds_after_retries() -> None:
    sleeps = Sleeps()
    answers = [json_answer(500, ERROR_500), json_answer(500, ERROR_500), json_answer(200, FLOW)]
    async with scripted_server(answers) as (url, server):
        async with vi_flow.AsyncClient(base_url=url, api_key="k", sleep=sleeps) as client:
            flow = await client.flows.get("flow_1")
    assert flow.spec.name == "f"
    assert len(server.requests) == 3
    assert len(sleeps.delays) == 2
    assert 0.375 <= sleeps.delays[0] <= 0.5 and 0.75 <= sleeps.delays[1] <= 1.0


async def test_retries_exhausted_raise_typed_error_with_request_id() -> None:
    async with scripted_server([json_answer(500, ERROR_500)]) as (url, server):
        async with vi_flow.AsyncClient(
            base_url=url, api_key="k", sleep=Sleeps(), max_retries=1
        ) as client:
            with pytest.raises(InternalServerError) as info:
                await client.flows.get("flow_1")
    assert len(server.requests) == 2
    assert info.value.status_code == 500
    assert info.value.code == "INTERNAL"
    assert info.value.request_id == "req_500"
    assert "boom" in str(info.value)


async def test_retry_after_seconds_is_honoured() -> None:
    sleeps = Sleeps()
    limited = orjson.dumps({"error": {"code": "RATE_LIMITED", "message": "slow down"}})
    answers = [json_answer(429, limited, **{"Retry-After": "3"}), json_answer(200, FLOW)]
    async with scripted_server(answers) as (url, _):
        async with vi_flow.AsyncClient(base_url=url, api_key="k", sleep=sleeps) as client:
            await client.flows.get("flow_1")
    assert sleeps.delays == [3.0]


async def test_rate_limit_error_carries_retry_after() -> None:
    limited = orjson.dumps({"error": {"code": "RATE_LIMITED", "message": "slow down"}})
    async with scripted_server([json_answer(429, limited, **{"Retry-After": "7"})]) as (url, _):
        async with vi_flow.AsyncClient(
            base_url=url, api_key="k", sleep=Sleeps(), max_retries=0
        ) as client:
            with pytest.raises(RateLimitError) as info:
                await client.flows.get("flow_1")
    assert info.value.retry_after == 7.0


async def test_post_reuses_one_idempotency_key_across_attempts() -> None:
    answers = [json_answer(503, ERROR_500), json_answer(201, FLOW)]
    async with scripted_server(answers) as (url, server):
        async with vi_flow.AsyncClient(base_url=url, api_key="k", sleep=Sleeps()) as client:
            await client.flows.create({"name": "f", "blocks": [{"block": "template"}]})
    keys = [r["headers"]["Idempotency-Key"] for r in server.requests]
    assert len(keys) == 2 and keys[0] == keys[1] and keys[0].startswith("vi-")


async def test_server_can_veto_a_retry() -> None:
    conflict = orjson.dumps({"error": {"code": "CONFLICT", "message": "volume is mounted"}})
    answers = [json_answer(409, conflict, **{"X-Should-Retry": "false"})]
    async with scripted_server(answers) as (url, server):
        async with vi_flow.AsyncClient(base_url=url, api_key="k", sleep=Sleeps()) as client:
            with pytest.raises(ConflictError, match="volume is mounted"):
                await client.flows.delete("flow_1")
    assert len(server.requests) == 1


@pytest.mark.parametrize(
    ("status", "code", "error"),
    [
        (401, "UNAUTHENTICATED", AuthenticationError),
        (404, "FLOW_NOT_FOUND", FlowNotFoundError),
        (422, "VALIDATION_ERROR", UnprocessableEntityError),
    ],
)
async def test_status_maps_to_typed_error(status: int, code: str, error: type[Exception]) -> None:
    body = orjson.dumps(
        {"error": {"code": code, "message": "spec.name: required", "requestId": "r"}}
    )
    async with scripted_server([json_answer(status, body)]) as (url, _):
        async with vi_flow.AsyncClient(base_url=url, api_key="k", sleep=Sleeps()) as client:
            with pytest.raises(error, match=r"spec\.name"):
                await client.flows.get("flow_1")


@pytest.mark.parametrize(
    "body", [b"<html>oops</html>", b'{"organizationId": "o", "flowId"', b'{"items": 3}']
)
async def test_garbage_or_truncated_json_is_a_typed_error_naming_the_request(body: bytes) -> None:
    async with scripted_server([json_answer(200, body)]) as (url, _):
        async with vi_flow.AsyncClient(base_url=url, api_key="k", sleep=Sleeps()) as client:
            with pytest.raises(APIResponseValidationError) as info:
                await client.flows.get("flow_1")
    assert info.value.request_id == "req_test"
    assert "req_test" in str(info.value)


async def test_unreachable_server_is_a_connection_error_naming_the_url() -> None:
    sleeps = Sleeps()
    async with vi_flow.AsyncClient(
        base_url="http://127.0.0.1:9/v1", api_key="k", sleep=sleeps
    ) as client:
        with pytest.raises(APIConnectionError, match=r"127\.0\.0\.1:9"):
            await client.flows.get("flow_1")
    assert len(sleeps.delays) == 2


async def test_a_password_in_the_base_url_is_shown_nowhere(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="vi_flow")
    async with vi_flow.AsyncClient(
        base_url="http://me:pw-sekret@127.0.0.1:9/v1", api_key=None, sleep=Sleeps()
    ) as client:
        with pytest.raises(APIConnectionError, match=r"me:\*\*\*@127\.0\.0\.1:9") as info:
            await client.flows.get("flow_1")
        shown = [str(info.value), repr(client), repr(client.http.connection.settings)]
    assert not [text for text in shown if "pw-sekret" in text], shown
    assert "pw-sekret" not in caplog.text and "retrying" in caplog.text


@pytest.mark.parametrize("url", ["http://h/v1?token=SEKRET", "http://h/v1#SEKRET"])
def test_a_base_url_with_a_query_or_fragment_is_refused_without_showing_it(url: str) -> None:
    # QA: it was taken, every path went after the query ('/v1?token=SEKRET/flows'), and
    # errors, the CLI and the retry log lines printed it whole.
    with pytest.raises(ValueError, match=r"must not have a query or a fragment") as info:
        vi_flow.AsyncClient(base_url=url, api_key="k")
    assert "SEKRET" not in str(info.value) and "'http://h/v1' followed by" in str(info.value)
    with pytest.raises(ValueError, match=r"must not have a query"):
        vi_flow.Client(base_url=url, api_key="k")


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://alice:PW-SEKRET?x@h/v1", "must not have a query"),  # QA: the password shown
        ("http://alice:PW-SEKRET#x@h/v1", "must not have a query"),
        ("http://alice:PW-SEKRET@h/v1 ", "must not contain spaces"),  # QA: taken, then 404s
        ("ftp://alice:PW-SEKRET@h/v1", "must be 'local' or an http"),
    ],
)
def test_a_refused_base_url_never_shows_its_password(url: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem) as info:
        vi_flow.AsyncClient(base_url=url, api_key=None)
    assert "PW-SEKRET" not in str(info.value)


def test_an_upper_case_scheme_is_a_url_too() -> None:
    client = vi_flow.AsyncClient(base_url="HTTP://127.0.0.1:9/v1", api_key="k")
    assert client.http.connection.settings.base_url == "http://127.0.0.1:9/v1"


async def test_user_info_in_the_base_url_is_sent_as_basic_auth(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="vi_flow")
    async with scripted_server([json_answer(200, FLOW)]) as (url, server):
        with_user = url.replace("http://", "http://me:p%40ss-w0rd@")
        async with vi_flow.AsyncClient(base_url=with_user, api_key=None) as client:
            await client.flows.get("flow_1")
    # b64("me:p@ss-w0rd"): the user info percent-decoded, as a browser or curl sends it
    assert server.requests[0]["headers"]["Authorization"] == "Basic bWU6cEBzcy13MHJk"
    assert "me:***@" in caplog.text and "w0rd" not in caplog.text  # the debug request line


async def test_user_info_and_an_api_key_are_refused_up_front() -> None:
    with pytest.raises(ValueError, match=r"me:\*\*\*@127\.0\.0\.1:9.*one of them") as info:
        vi_flow.AsyncClient(base_url="http://me:pw-sekret@127.0.0.1:9/v1", api_key="k")
    assert "pw-sekret" not in str(info.value)
    # an @ in the path is not user info
    vi_flow.AsyncClient(base_url="http://127.0.0.1:9/v1/@team/a@b", api_key="k")


async def test_unknown_fields_are_ignored() -> None:
    async with scripted_server([json_answer(200, FLOW)]) as (url, _):
        async with vi_flow.AsyncClient(base_url=url, api_key="k") as client:
            flow = await client.flows.get("flow_1")
    assert flow.spec.blocks[0].block == "template"


async def test_with_options_shares_the_connection() -> None:
    async with scripted_server([json_answer(500, ERROR_500)]) as (url, server):
        async with vi_flow.AsyncClient(base_url=url, api_key="k", sleep=Sleeps()) as client:
            quick = client.with_options(max_retries=0, timeout=5)
            assert quick.http.connection is client.http.connection
            with pytest.raises(InternalServerError):
                await quick.flows.get("flow_1")
    assert len(server.requests) == 1


@pytest.mark.parametrize("bad", [-3, "x", 2.5, True])
async def test_with_options_checks_max_retries_as_the_constructor_does(bad: object) -> None:
    # QA: all were taken; with "x" the first retryable error raised a TypeError from
    # inside the request loop
    async with vi_flow.AsyncClient(base_url="http://127.0.0.1:9/v1", api_key="k") as client:
        with pytest.raises(ValueError, match="max_retries") as raised:
            client.with_options(max_retries=bad)  # type: ignore[arg-type]
        assert repr(bad) in str(raised.value) or str(bad) in str(raised.value)
        with (
            vi_flow.Client(base_url="http://127.0.0.1:9/v1", api_key="k") as sync,
            pytest.raises(ValueError, match="max_retries"),
        ):
            sync.with_options(max_retries=bad)  # type: ignore[arg-type]
        assert client.with_options(max_retries=0).http.max_retries == 0


async def test_debug_log_never_shows_the_token(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="vi_flow")
    async with scripted_server([json_answer(200, FLOW)]) as (url, server):
        async with vi_flow.AsyncClient(base_url=url, api_key="sekret-token-123") as client:
            await client.flows.get("flow_1")
    assert server.requests[0]["headers"]["Authorization"] == "Bearer sekret-token-123"
    assert "GET" in caplog.text
    assert "sekret-token-123" not in caplog.text
    assert "sekret" not in repr(client) and "sekret" not in repr(client.http.connection.settings)


async def test_closed_client_cannot_be_used() -> None:
    client = vi_flow.AsyncClient(base_url="http://127.0.0.1:9/v1", api_key="k")
    await client.aclose()
    await client.aclose()
    with pytest.raises(vi_flow.ClientStateError):
        await client.flows.get("flow_1")


def _slow(seconds: float) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def answer(_: web.Request) -> web.StreamResponse:
        await asyncio.sleep(seconds)
        return web.Response(status=200, body=FLOW, content_type="application/json")

    return answer


async def test_a_call_timeout_bounds_the_whole_call_retries_included() -> None:
    async with scripted_server([_slow(5)]) as (url, server):
        async with vi_flow.AsyncClient(base_url=url, api_key="k", max_retries=2) as client:
            started = time.monotonic()
            with pytest.raises(APITimeoutError):
                await client.with_options(timeout=0.5).flows.get("flow_1")
            took = time.monotonic() - started
    assert took < 1.5, f"three attempts of 0.5 s each would take 1.5 s and more; took {took}"
    assert len(server.requests) == 1


async def test_a_timeout_names_the_url_without_its_password_and_round_seconds() -> None:
    # QA: the stdlib transport said "within 1.9999982869999258 s", and named the URL with
    # its user info, password included
    async with scripted_server([_slow(5)]) as (url, _):
        secret_url = url.replace("http://", "http://user:s3cret@")
        async with vi_flow.AsyncClient(base_url=secret_url, max_retries=0) as client:
            with pytest.raises(APITimeoutError) as caught:
                await client.with_options(timeout=0.5).flows.get("flow_1")
    message = str(caught.value)
    assert "s3cret" not in message and "()" not in message, message
    assert not re.search(r"\d\.\d{4}", message), message


async def test_a_retry_after_longer_than_the_call_timeout_is_not_waited_for() -> None:
    answers = [json_answer(503, ERROR_500, **{"Retry-After": "5"})]
    async with scripted_server(answers) as (url, server):
        async with vi_flow.AsyncClient(base_url=url, api_key="k", max_retries=2) as client:
            started = time.monotonic()
            with pytest.raises(InternalServerError):
                await client.with_options(timeout=1.0).flows.get("flow_1")
    assert time.monotonic() - started < 2.0
    assert len(server.requests) == 1
