"""The SDK against a broken or hostile server, or a proxy in the way (QA round 9).

A raw asyncio server on 127.0.0.1 answers each request with prepared bytes, so an
answer can be what no HTTP library would send: too many headers, a body shorter than
its length, a gzip bomb, a redirect to another port. Every answer must be one of the
documented errors, retried when it may be, with the API key in none of them; and it
must never take the client's memory. Each test runs on both transports.
"""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

import vi_flow
from vi_flow import (
    APIConnectionError,
    APIResponseValidationError,
    ClientStateError,
    RateLimitError,
)
from vi_flow import _http as http
from vi_flow.cli._failures import EXIT_TRANSIENT, exit_code_for

pytestmark = pytest.mark.anyio

KEY = "sk-SECRET-KEY-123456"
FLOW = (
    b'{"organizationId":"o","flowId":"f","spec":{"name":"f","blocks":[]},"etag":"e",'
    b'"metadata":{"timeCreated":1,"lastUpdated":2}}'
)


@pytest.fixture(autouse=True, params=["aiohttp", "stdlib"])
def transport(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("VI_FLOW_HTTP_TRANSPORT", request.param)
    return str(request.param)


def answer(status: str, body: bytes = b"", *headers: str, length: int | None = None) -> bytes:
    """Raw HTTP/1.1 answer bytes; ``length`` may lie about the body."""
    size = len(body) if length is None else length
    head = [f"HTTP/1.1 {status}", f"Content-Length: {size}", "Connection: close", *headers]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


class RawServer:
    """Answers request ``n`` with ``answers[n]`` (the last one again past the end)."""

    def __init__(self, answers: list[bytes]) -> None:
        self.answers, self.requests = answers, 0
        self.url = ""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                (int(line.split(b":")[1]) for line in head.split(b"\r\n")
                 if line.lower().startswith(b"content-length:")),
                0,
            )  # fmt: skip
            await reader.readexactly(length)
            answer = self.answers[min(self.requests, len(self.answers) - 1)]
            self.requests += 1
            writer.write(answer)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


@asynccontextmanager
async def raw_server(answers: list[bytes]) -> AsyncIterator[RawServer]:
    raw = RawServer(answers)
    server = await asyncio.start_server(raw.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    raw.url = f"http://127.0.0.1:{port}/v1"
    try:
        yield raw
    finally:
        server.close()
        await server.wait_closed()


async def _no_sleep(delay: float) -> None:
    pass


def client(url: str, **options: object) -> vi_flow.AsyncClient:
    return vi_flow.AsyncClient(base_url=url, api_key=KEY, sleep=_no_sleep, **options)  # type: ignore[arg-type]


def _keyless(exc: BaseException) -> None:
    """The key is in no part of the error: its text, repr, cause or context."""
    seen: BaseException | None = exc
    while seen is not None:
        assert KEY not in repr(seen) and KEY not in str(seen), repr(seen)
        assert KEY not in repr(getattr(seen, "request_info", "")), repr(seen)
        seen = seen.__cause__ or seen.__context__


async def test_a_malformed_answer_is_a_retried_connection_error_without_the_key() -> None:
    # QA: aiohttp's parser error came out raw (not a vi_flow error, not retried), its
    # repr holding "Authorization: Bearer <key>".
    huge = "X-Huge: " + "v" * 100_000  # a header line past what any client reads
    for bad in [answer("200 OK", FLOW, huge)]:
        async with raw_server([bad]) as raw, client(raw.url, max_retries=2) as c:
            with pytest.raises(APIConnectionError) as info:
                await c.flows.get("f")
            _keyless(info.value)
            assert raw.requests == 3, bad[:40]  # the first try and two retries


async def test_a_body_cut_short_is_retried_and_then_answered() -> None:
    short = answer("200 OK", FLOW[:20], length=len(FLOW))  # the connection closes early
    async with raw_server([short, answer("200 OK", FLOW)]) as raw, client(raw.url) as c:
        assert (await c.flows.get("f")).flow_id == "f"
        assert raw.requests == 2


async def test_an_unreadable_retry_after_is_no_wait_asked_not_a_value_error() -> None:
    for value in ("garbage", "Wed, 31 Feb 2099 07:28:00 GMT"):
        limited = answer("429 Too Many Requests", b"{}", f"Retry-After: {value}")
        async with raw_server([limited]) as raw, client(raw.url, max_retries=1) as c:
            with pytest.raises(RateLimitError):
                await c.flows.get("f")
            assert raw.requests == 2


async def test_a_web_page_is_not_the_api_even_at_a_url_ending_in_v1() -> None:
    # QA: the message asked whether base_url ends in /v1, when it did: the address was
    # a plain web server's, not a vi-flow server's
    page = answer("404 Not Found", b"<html>nope</html>", "Content-Type: text/html")
    async with raw_server([page]) as raw, client(raw.url, max_retries=0) as c:
        with pytest.raises(vi_flow.NotFoundError) as caught:
            await c.flows.get("f")
    assert caught.value.code == "NOT_THE_API"
    assert "must be a vi-flow server's API" in caught.value.message
    assert "serves something else" in caught.value.message


@pytest.mark.parametrize(
    ("kind", "body"),
    [
        ("text/html", b"<html><body>Sign in to the Wi-Fi</body></html>"),
        ("application/json", b'{"executionId": "run_1", "state": "completed"}'),
        ("text/event-stream", b""),
    ],
)
async def test_a_200_that_is_no_event_stream_is_an_error_not_a_silent_end(
    kind: str, body: bytes
) -> None:
    # QA AK: events() and steps() ended with no event and no error (a run that seemed to
    # end without its FlowCompleted), where execute() raised.
    page = answer("200 OK", body, f"Content-Type: {kind}")
    for stream in ("events", "steps"):
        async with raw_server([page]) as raw, client(raw.url, max_retries=0) as c:
            with pytest.raises(APIResponseValidationError, match="not a vi_flow event stream"):
                async for _ in getattr(c.flow("flow_x"), stream)(message="hi"):
                    pass


async def test_an_error_that_quotes_the_key_back_does_not_show_it() -> None:
    # QA AK: a gateway whose 401 quoted the Authorization header it got put the client's
    # key in str(exc), its repr, and the caller's logged tracebacks
    quoted = f'{{"error": {{"code": "UNAUTHENTICATED", "message": "bad: Bearer {KEY}"}}}}'
    refused = answer("401 Unauthorized", quoted.encode(), "Content-Type: application/json")
    async with raw_server([refused]) as raw, client(raw.url, max_retries=0) as c:
        with pytest.raises(vi_flow.AuthenticationError) as caught:
            await c.flows.get("f")
    assert "bad: Bearer ***" in str(caught.value)
    _keyless(caught.value)
    assert KEY not in repr(vars(caught.value))


async def test_a_proxys_5xx_page_is_a_server_away_not_a_wrong_base_url() -> None:
    # QA Y: nginx's "502 Bad Gateway" page, while no replica answered, was NOT_THE_API
    # ("base_url must be a vi-flow server's API") and the CLI exited 2, not 6
    for status in (
        "502 Bad Gateway",
        "503 Service Temporarily Unavailable",
        "504 Gateway Time-out",
    ):
        page = answer(status, b"<html><h1>bad gateway</h1></html>", "Content-Type: text/html")
        async with raw_server([page]) as raw, client(raw.url, max_retries=0) as c:
            with pytest.raises(vi_flow.InternalServerError) as caught:
                await c.flows.get("f")
        assert caught.value.code != "NOT_THE_API"
        assert "a proxy or gateway in front of the server" in caught.value.message
        assert exit_code_for(caught.value) == EXIT_TRANSIENT


async def test_an_answer_over_the_limit_is_refused_not_read_whole(
    monkeypatch: pytest.MonkeyPatch, transport: str
) -> None:
    # QA: 2 MiB of gzip took the client to 4 GB (aiohttp decompresses); a 400 MB error
    # answer was kept whole in the error.
    monkeypatch.setattr(http, "MAX_ANSWER", 1 << 20)
    monkeypatch.setattr("vi_flow._stdlib_http.MAX_ANSWER", 1 << 20)
    bomb = gzip.compress(b"0" * (20 << 20))  # 20 MB of zeros, 20 KB on the wire
    zipped = answer("200 OK", bomb, "Content-Encoding: gzip", "Content-Type: application/json")
    big = answer("200 OK", b" " * (2 << 20))
    for too_big in [zipped, big] if transport == "aiohttp" else [big]:
        async with raw_server([too_big]) as raw, client(raw.url) as c:
            with pytest.raises(APIResponseValidationError, match="over 1048576 bytes"):
                await c.flows.get("f")
            assert raw.requests == 1  # not retried: it would be the same again
    error = answer("500 Internal Server Error", b"x" * (3 << 20))
    async with raw_server([error]) as raw, client(raw.url, max_retries=0) as c:
        with pytest.raises(vi_flow.InternalServerError) as info:
            await c.flows.get("f")
        assert len(info.value.body or "") <= http.MAX_ERROR_BODY


async def test_a_redirect_is_named_and_not_followed() -> None:
    # QA: aiohttp followed a 307 to another port, the flow spec with it; http.client
    # said the body was not JSON.
    async with raw_server([answer("201 Created", FLOW)]) as elsewhere:
        moved = answer("307 Temporary Redirect", b"", f"Location: {elsewhere.url}/flows")
        async with raw_server([moved]) as raw, client(raw.url) as c:
            with pytest.raises(APIResponseValidationError, match="redirect") as info:
                await c.flows.create({"name": "f", "blocks": []})
            assert elsewhere.url in str(info.value)
        assert elsewhere.requests == 0


async def test_closing_the_client_ends_a_call_that_waits_to_retry_at_once() -> None:
    # QA: aclose() during a call's wait before its retry let it run on with a closed
    # session, to end with a RuntimeError ("Session is closed"); then it ended with
    # ClientStateError, but only once the wait was over (a Retry-After: a minute).
    down = answer("503 Service Unavailable", b"{}", "Retry-After: 60")
    async with raw_server([down]) as raw:
        c = vi_flow.AsyncClient(base_url=raw.url, api_key=KEY)
        call = asyncio.ensure_future(c.flows.get("f"))
        for _ in range(500):  # the first answer is in: the call waits its minute
            if raw.requests:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)
        await c.aclose()
        with pytest.raises(ClientStateError):
            await asyncio.wait_for(call, 5)
        assert raw.requests == 1
