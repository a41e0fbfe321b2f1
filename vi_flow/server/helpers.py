"""Small tools every route handler uses: JSON in and out, the caller, pages, idempotency.

- :func:`json_response` serializes models with the shared wire converter (camelCase).
- :func:`read_json` structures a request body into a model class; a bad body becomes
  ``422 VALIDATION_ERROR`` naming the field path (``blocks[0].block: required field
  missing``), invalid JSON ``400 INVALID_REQUEST``.
- :func:`principal_of` / :func:`org_of` give the authenticated caller.
- :func:`paginate` reads ``pageSize``/``pageToken``/``order``; :func:`page_response` answers
  ``{"items", "nextPage"}`` with an opaque token.
- :func:`idempotent` makes a POST handler honour ``Idempotency-Key``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import functools
import hashlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import attrs
import cattrs
import orjson
from aiohttp import web
from cattrs.v import format_exception

from ..models._base import camel, dumps, strict_converter
from ..models.common import MAX_PAGE_SIZE
from ..models.limits import MAX_INT, LimitError, check_json, shown
from .errors import APIProblem
from .state import OPEN_STREAMS_KEY, REPLICA_KEY, SETTINGS_KEY, STORE_KEY, Principal
from .store import IDEMPOTENCY_SLOT, PENDING_ANSWER, AlreadyAnswered, IdempotencySlot, Store

__all__ = [
    "IDEMPOTENCY_LOCKS",
    "PRINCIPAL",
    "REQUEST_ID",
    "Handler",
    "KeyedLocks",
    "PageRequest",
    "begin_body",
    "decode_page_token",
    "encode_page_token",
    "idempotent",
    "int_query",
    "json_response",
    "org_in_path",
    "org_of",
    "page_response",
    "paginate",
    "principal_of",
    "read_body",
    "read_json",
    "request_id_of",
    "setup_idempotency",
    "structure",
]

T = TypeVar("T")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ReplayHeaders = Callable[[bytes], dict[str, str]]
"""The headers a replayed answer carries, from its body (as its first answer had them)."""


async def begin_body(request: web.Request, response: web.StreamResponse) -> bool:
    """Send ``response``'s head; ``False`` for a ``HEAD`` request, whose answer ends
    there. (aiohttp sends a streamed answer's body even to ``HEAD``: a client reading
    on the same connection took its events for the next answer.)

    A streamed answer counts toward its organization's ``streams`` quota until its
    handler returns (:func:`end_of_stream`, which the auth middleware calls).

    Raises:
        APIProblem: 429 ``QUOTA_EXCEEDED``: the organization has its quota of streams
            open; nothing was sent.
    """
    principal = request.get(PRINCIPAL)
    if principal is not None and STREAM_SLOT not in request:
        org = principal.organization_id
        streams = request.app[OPEN_STREAMS_KEY].setdefault(org, {})
        # only those whose client is still there: a stream whose client left ends when
        # it next writes (a quiet one: at its heartbeat), and held its slot until then
        live = sum(1 for other in streams.values() if _connected(other))
        request.app[SETTINGS_KEY].quotas.check_streams(live)
        streams[id(request)] = request
        request[STREAM_SLOT] = org
    await response.prepare(request)
    if request.method != "HEAD":
        return True
    await response.write_eof()
    return False


def end_of_stream(request: web.Request) -> None:
    """Give back the ``streams`` quota slot :func:`begin_body` took, if it took one."""
    org = request.pop(STREAM_SLOT, None)
    if org is not None:
        every = request.app[OPEN_STREAMS_KEY]
        every.get(org, {}).pop(id(request), None)
        if not every.get(org):
            every.pop(org, None)


def _connected(request: web.Request) -> bool:
    transport = request.transport
    return transport is not None and not transport.is_closing()


def _request_key(name: str, kind: type[Any]) -> Any:
    """A ``web.RequestKey`` (aiohttp >= 3.12 warns about plain strings), else the name."""
    factory = getattr(web, "RequestKey", None)
    return factory(name, kind) if factory is not None else name


PRINCIPAL: Any = _request_key("vi_flow.principal", Principal)
"""Request key under which the auth middleware stores the caller's :class:`Principal`."""

STREAM_SLOT: Any = _request_key("vi_flow.stream_slot", str)
"""Request key of the organization whose ``streams`` quota this streamed answer counts in."""

REQUEST_ID: Any = _request_key("vi_flow.request_id", str)
"""Request key under which the request id (``req_<hex>``) is stored."""

_PATH_PART = re.compile(r"\.([A-Za-z_][A-Za-z0-9_]*)")


def json_response(
    obj: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """Answer ``obj`` (a model, list or plain data) as camelCase JSON."""
    return web.Response(
        body=dumps(obj), status=status, content_type="application/json", headers=headers
    )


def request_id_of(request: web.Request) -> str:
    """The request id the server answers in ``X-Request-Id``."""
    return str(request.get(REQUEST_ID, ""))


def principal_of(request: web.Request) -> Principal:
    """The authenticated caller of ``request``."""
    principal: Principal = request[PRINCIPAL]
    return principal


def org_of(request: web.Request) -> str:
    """The organization id every resource of ``request`` is scoped to."""
    return principal_of(request).organization_id


async def org_in_path(request: web.Request, *, admin_for: str | None = None) -> str:
    """The ``{organizationId}`` of the path, when the caller may act on it.

    An admin key may name any organization, another key only its own: anything else is
    404, as for an organization that does not exist. ``admin_for`` (such as ``"setting
    credits"``) makes the route admin-only (403 naming what needs the admin key).
    """
    org_id, principal = request.match_info["organizationId"], principal_of(request)
    if admin_for is not None and not principal.admin:
        raise APIProblem(403, "PERMISSION_DENIED", f"{admin_for} needs an admin API key")
    if not principal.admin and org_id != principal.organization_id:
        raise APIProblem.not_found("NOT_FOUND", "organization", org_id)
    if not await request.app[STORE_KEY].org_exists(org_id):
        raise APIProblem.not_found("NOT_FOUND", "organization", org_id)
    return org_id


# -- request bodies --------------------------------------------------------------------


async def read_body(request: web.Request) -> dict[str, Any]:
    """The JSON object in the request body (``{}`` when empty).

    Raises:
        APIProblem: 400 ``INVALID_REQUEST`` for invalid JSON; 422 when not an object.
    """
    raw = await request.read()
    if not raw.strip(b" \t\r\n"):  # JSON's whitespace only: a form feed is not JSON
        return {}
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise APIProblem(400, "INVALID_REQUEST", f"request body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise APIProblem.validation("body", f"expected a JSON object, got {type(data).__name__}")
    try:
        check_json(data)
    except LimitError as exc:
        raise APIProblem.validation(exc.field, exc.problem) from None
    return data


def _wire_path(path: str) -> str:
    """``.blocks[0].training_project`` -> ``blocks[0].trainingProject``."""
    return _PATH_PART.sub(lambda m: "." + camel(m.group(1)), path).lstrip(".") or "body"


def _validation_message(exc: Exception, prefix: str) -> str:
    problems = []
    named = cattrs.transform_error(exc, path="", format_exception=_naming_the_value)
    for line, plain in zip(named, cattrs.transform_error(exc, path=""), strict=True):
        what, _, where = line.rpartition(" @ ")
        if _PRIVATE.search(where):  # a value that may be a secret is not shown
            what = plain.rpartition(" @ ")[0]
        problems.append(f"{prefix}{_wire_path(where)}: {what or line}")
    return "; ".join(problems)


def _naming_the_value(exc: BaseException, type_: type | None) -> str:
    """The strict converter's words, which show the value ("expected int, got str '1'");
    cattrs' own for anything else ("required field missing")."""
    if isinstance(exc, (TypeError, ValueError)) and str(exc).startswith("expected "):
        return str(exc)
    return format_exception(exc, type_)


_PRIVATE = re.compile(r"env|secret|token|key|password", re.IGNORECASE)


def structure(data: Any, cls: type[T], prefix: str = "") -> T:
    """Structure wire data into ``cls``; failures become 422 naming the field path."""
    try:
        result: T = strict_converter.structure(data, cls)  # a scalar of the wrong type: 422
        return result
    except (cattrs.BaseValidationError, ValueError, TypeError) as exc:
        message = (
            _validation_message(exc, prefix)
            if isinstance(exc, cattrs.BaseValidationError)
            else str(exc)
        )
        raise APIProblem(
            422, "VALIDATION_ERROR", message or f"{prefix or 'body'}: invalid"
        ) from exc


async def read_json(request: web.Request, cls: type[T], prefix: str = "") -> T:
    """Read the request body as ``cls`` (an attrs model).

    Args:
        request: The request.
        cls: The model class to structure the body into.
        prefix: Prepended to field paths in error messages (for example ``"spec."``).

    Raises:
        APIProblem: 400 for invalid JSON, 422 naming the first bad field otherwise.
    """
    return structure(await read_body(request), cls, prefix)


# -- pagination ------------------------------------------------------------------------


ORDERS = ("newest", "oldest")


@attrs.frozen
class PageRequest:
    """A parsed ``?pageSize=&pageToken=&order=``.

    Attributes:
        size: Items wanted, 1..1000.
        after: The cursor to continue after (0 for the first page): the ``seq`` of the
            last item of the previous page.
        order: ``"newest"`` (the default: highest ``seq`` first) or ``"oldest"``.
        listing: The list it pages (its route), which the next page's token names.
    """

    size: int
    after: int = 0
    order: str = "newest"
    listing: str = ""

    @property
    def newest(self) -> bool:
        """Whether the list runs newest first (highest ``seq`` first)."""
        return self.order == "newest"


def encode_page_token(cursor: int | None, order: str = "newest", listing: str = "") -> str | None:
    """The opaque ``nextPage`` token for a cursor in an order of a list (``None`` stays
    ``None``)."""
    if cursor is None:
        return None
    data = orjson.dumps({"v": 1, "after": cursor, "order": order, "list": listing})
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _bad_token(token: str, why: str = "invalid page token") -> APIProblem:
    shown = token if len(token) <= 80 else token[:77] + "..."
    return APIProblem(400, "INVALID_PAGE_TOKEN", f"pageToken: {why} {shown!r}")


def _token_data(token: str) -> dict[str, Any]:
    if len(token) > 512:
        raise _bad_token(token)
    try:
        data = orjson.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        after = data["after"]
    except (binascii.Error, ValueError, KeyError, TypeError, IndexError) as exc:
        raise _bad_token(token) from exc
    if isinstance(after, bool) or not isinstance(after, int) or not 0 <= after <= MAX_INT:
        raise _bad_token(token)
    if data.get("order", "newest") not in ORDERS or not isinstance(data.get("list", ""), str):
        raise _bad_token(token)
    return {"after": after, "order": data.get("order"), "list": data.get("list")}


def decode_page_token(token: str) -> int:
    """The cursor inside a page token we issued; anything else is 400 ``INVALID_PAGE_TOKEN``.

    The token comes from the client, so it is read defensively: its cursor must be an
    int a SQLite ``INTEGER`` holds (a forged ``after = 2**63`` would overflow the query).
    """
    return int(_token_data(token)["after"])


def _order_of(request: web.Request, token: dict[str, Any] | None) -> str:
    wanted = request.query.get("order")  # as the document's enum says: no other spelling
    if wanted is not None and wanted not in ORDERS:
        raise APIProblem.validation("order", f"must be 'newest' or 'oldest', got {shown(wanted)}")
    issued = token.get("order") if token else None
    if wanted and issued and wanted != issued:
        raise APIProblem(
            400,
            "INVALID_PAGE_TOKEN",
            f"pageToken: the token continues a list ordered {issued!r}, not {wanted!r}",
        )
    return str(wanted or issued or "newest")


def int_query(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    """The integer query parameter ``name`` (``default`` when absent), ``low..high``.

    Written as the document says, ASCII digits with an optional ``-``: QA found ``1_0``,
    `` 5``, ``+5`` and other scripts' digits (``٣``) taken by ``int()``.

    Raises:
        APIProblem: 422 naming it.
    """
    raw = request.query.get(name)
    if raw is None:
        return default
    digits = raw[1:] if raw.startswith("-") else raw
    if not (digits.isascii() and digits.isdigit()) or len(digits) > 20:
        raise APIProblem.validation(name, f"expected an integer, got {shown(raw)}")
    value = int(raw)
    if not low <= value <= high:
        raise APIProblem.validation(name, f"must be between {low} and {high}, got {value}")
    return value


def bool_query(request: web.Request, name: str, default: bool) -> bool:
    """The true-or-false query parameter ``name``: ``true``/``1`` or ``false``/``0`` (any
    case; ``default`` when absent, and ``?follow`` alone, empty, is true).

    Raises:
        APIProblem: 422 naming it, for any other value (``wait=yes`` was true and
            ``wait=flase`` silently false).
    """
    raw = request.query.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value not in ("true", "false", "1", "0", ""):
        raise APIProblem.validation(name, f"expected true or false, got {shown(raw)}")
    return value in ("true", "1", "")


def paginate(request: web.Request, default_size: int = 100) -> PageRequest:
    """Read ``pageSize`` (1..1000), ``pageToken`` and ``order`` from the query string.

    ``order`` is ``newest`` (the default) or ``oldest``; a token carries the order it was
    issued for, so a later page keeps it (asking for the other order with it is a 400).

    Raises:
        APIProblem: 422 naming ``pageSize`` or ``order``; 400 ``INVALID_PAGE_TOKEN``.
    """
    size = int_query(request, "pageSize", default_size, 1, MAX_PAGE_SIZE)
    token = request.query.get("pageToken")
    data = _token_data(token) if token else None
    listing = _listing(request)
    if data and data["list"] is not None and data["list"] != listing:
        # QA: a token of the flows list was taken by the runs list, which went on from
        # the flow's place in its own list: items were skipped, without an error
        raise APIProblem(400, "INVALID_PAGE_TOKEN", "pageToken: the token continues another list")
    return PageRequest(size, data["after"] if data else 0, _order_of(request, data), listing)


_PAGING = frozenset({"pageSize", "pageToken", "order"})


def _listing(request: web.Request) -> str:
    """The list a request pages, short and opaque: a digest of its path and its filters
    (a token of the runs of one flow, or of one status, pages no other list)."""
    filters = sorted((k, v) for k, v in request.query.items() if k not in _PAGING)
    named = orjson.dumps([request.path, filters])
    return hashlib.blake2b(named, digest_size=8).hexdigest()


def page_response(items: list[Any], next_cursor: int | None, page: PageRequest) -> web.Response:
    """Answer ``{"items": [...], "nextPage": token|null}`` (the token keeps the order and
    names the list)."""
    token = encode_page_token(next_cursor, page.order, page.listing)
    return json_response({"items": items, "nextPage": token})


# -- idempotency -----------------------------------------------------------------------


class KeyedLocks:
    """One ``asyncio.Lock`` per key, kept only while someone holds or waits for it.

    A lock per idempotency key ever seen would grow without bound; here the entry goes
    when its last user leaves, so the map holds only keys in use right now.
    """

    def __init__(self) -> None:
        self._locks: dict[tuple[str, str], tuple[asyncio.Lock, int]] = {}

    def __len__(self) -> int:
        return len(self._locks)

    @contextlib.asynccontextmanager
    async def hold(self, key: tuple[str, str]) -> AsyncIterator[Callable[[], None]]:
        """Hold the lock of ``key`` for the ``async with`` body, or until the function it
        gives is called (a stream lets its key go once the key names its run)."""
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        held = False

        def let_go() -> None:
            nonlocal held
            if held:
                held = False
                lock.release()

        try:
            await lock.acquire()
            held = True
            yield let_go
        finally:
            let_go()
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


IDEMPOTENCY_LOCKS = web.AppKey("vi_flow.idempotency_locks", KeyedLocks)
"""The per-key locks that serialize requests with one ``Idempotency-Key``."""


def setup_idempotency(app: web.Application) -> None:
    """Give the application the per-key locks :func:`idempotent` needs."""
    app[IDEMPOTENCY_LOCKS] = KeyedLocks()


def _canonical(body: bytes) -> bytes:
    """The body as it compares for a retry: JSON with its keys sorted and no spacing (a
    client that rebuilt its request may order the keys otherwise), else the bytes."""
    try:
        return orjson.dumps(orjson.loads(body), option=orjson.OPT_SORT_KEYS)
    except (orjson.JSONDecodeError, orjson.JSONEncodeError):
        return body


async def _answer_once(
    request: web.Request,
    handler: Handler,
    key: str,
    let_go: Callable[[], None],
    *,
    early_lookup: bool,
    replay_headers: ReplayHeaders | None,
) -> web.StreamResponse:
    org, store = org_of(request), request.app[STORE_KEY]
    # The query is part of the request (``?flowId=`` chooses an id): a key reused with
    # another query is a different request, never a replay.
    query = request.query_string.encode("utf-8", "surrogatepass")
    body_hash = hashlib.sha256(_canonical(await request.read())).hexdigest()
    if query:
        body_hash = hashlib.sha256(query + b"?" + body_hash.encode()).hexdigest()
    held = False
    if early_lookup and request.app[REPLICA_KEY].shared:
        stored = await _hold_key(request, key, body_hash)
        if stored is not None:
            return _replay(key, stored, body_hash, replay_headers)
        held = True
    elif early_lookup:
        stored = await store.get_idempotent(org, key, request.method, request.path)
        if stored is not None and stored[1] == PENDING_ANSWER and stored[0] == body_hash:
            stored = await _answer_of(store, org, key, request)
        if stored is not None:
            return _replay(key, stored, body_hash, replay_headers)
    slot = IdempotencySlot(
        org, key, request.method, request.path, body_hash,
        lookup_pending=not early_lookup, reserved=held, let_go=let_go,
    )  # fmt: skip
    token = IDEMPOTENCY_SLOT.set(slot)
    try:
        response = await handler(request)
    except AlreadyAnswered as found:  # looked up in the creating transaction
        stored = found.stored
        if stored[1] == PENDING_ANSWER and stored[0] == body_hash:  # being answered: wait
            stored = await _answer_of(store, org, key, request)
        return _replay(key, stored, body_hash, replay_headers)
    except BaseException:
        # saved, then its request failed: no replay of it; but a placeholder naming a run
        # stays (a retry answers that run's outcome rather than start another)
        if slot.saved or (slot.reserved and not slot.holds_run):
            await store.forget_idempotent(org, key, request.method, request.path)
        raise
    finally:
        IDEMPOTENCY_SLOT.reset(token)
    if slot.saved:  # saved with the resource, in its transaction
        return response
    if isinstance(response, web.Response) and 200 <= response.status < 300:
        body = response.body if isinstance(response.body, bytes) else b""
        await store.put_idempotent(
            org, key, request.method, request.path, (body_hash, response.status, body)
        )
    elif slot.reserved and not slot.holds_run:  # no answer to replay: let the key go
        await store.forget_idempotent(org, key, request.method, request.path)
    return response


_PENDING_WAIT = 900.0  # seconds a request waits for another replica's answer to its key


async def _hold_key(
    request: web.Request, key: str, body_hash: str
) -> tuple[str, int, bytes] | None:
    """On a database replicas share, hold ``key`` for this request with a placeholder
    naming this replica before the handler runs: two replicas that both looked it up and
    found nothing would both make the resource (the key's lock is one process's).
    ``None`` once held; else the answer to replay, once it is saved.

    A placeholder whose replica is gone (its lease ran out: it died answering) is
    dropped and the key held again.

    Raises:
        APIProblem: 409 ``IDEMPOTENCY_KEY_IN_USE`` when another replica's answer takes
            too long.
    """
    org, store, method, path = org_of(request), request.app[STORE_KEY], request.method, request.path
    holder = b"@" + request.app[REPLICA_KEY].id.encode()  # a run's id never starts with "@"
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _PENDING_WAIT
    while loop.time() < deadline:
        if await store.reserve_idempotent(
            org, key, method, path, (body_hash, PENDING_ANSWER, holder)
        ):
            return None
        stored = await store.get_idempotent(org, key, method, path)
        if stored is None:
            continue  # its holder let it go meanwhile
        if stored[1] != PENDING_ANSWER or stored[0] != body_hash:
            return stored
        if stored[2].startswith(b"@"):
            await store.drop_orphaned_idempotent(org, key, method, path, stored[2])
        await asyncio.sleep(0.2)
    raise _in_use(key)


async def _answer_of(
    store: Store, org: str, key: str, request: web.Request
) -> tuple[str, int, bytes]:
    """The answer another replica is giving to ``key``, once it is saved.

    Raises:
        APIProblem: 409 ``IDEMPOTENCY_KEY_IN_USE`` when it is given up or takes too long.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _PENDING_WAIT
    while loop.time() < deadline:
        await asyncio.sleep(0.2)
        stored = await store.get_idempotent(org, key, request.method, request.path)
        if stored is None:
            break
        if stored[1] != PENDING_ANSWER:
            return stored
    raise _in_use(key)


def _in_use(key: str) -> APIProblem:
    return APIProblem(
        409,
        "IDEMPOTENCY_KEY_IN_USE",
        f"a request with Idempotency-Key {key!r} is being answered by another server"
        " replica, or failed there; retry it",
    )


def _replay(
    key: str,
    stored: tuple[str, int, bytes],
    body_hash: str,
    replay_headers: ReplayHeaders | None = None,
) -> web.Response:
    """The stored answer again, or 422 when the key came with another body."""
    if stored[0] != body_hash:
        raise APIProblem(
            422,
            "IDEMPOTENCY_KEY_REUSED",
            f"Idempotency-Key {key!r} was already used with a different request body",
        )
    return web.Response(
        body=stored[2],
        status=stored[1],
        content_type="application/json",
        headers={
            **(replay_headers(stored[2]) if replay_headers else {}),
            "Idempotent-Replayed": "true",
        },
    )


def _idempotent(
    handler: Handler, *, early_lookup: bool, replay_headers: ReplayHeaders | None = None
) -> Handler:
    @functools.wraps(handler)
    async def wrapper(request: web.Request) -> web.StreamResponse:
        keys = request.headers.getall("Idempotency-Key", [])
        if len(keys) > 1:  # a proxy may have read the other: which one is this request's?
            raise APIProblem.validation("Idempotency-Key", "given more than once")
        key = keys[0] if keys else None
        if not key:
            return await handler(request)
        if len(key) > 255:
            raise APIProblem.validation("Idempotency-Key", "must be at most 255 characters")
        if not key.isascii() or not key.isprintable():  # raw bytes arrive as surrogates
            raise APIProblem.validation("Idempotency-Key", "must be printable ASCII")
        async with request.app[IDEMPOTENCY_LOCKS].hold((org_of(request), key)) as let_go:
            return await _answer_once(
                request, handler, key, let_go,
                early_lookup=early_lookup, replay_headers=replay_headers,
            )  # fmt: skip

    return wrapper


def idempotent(handler: Handler) -> Handler:
    """Make a POST, PUT or DELETE handler honour the ``Idempotency-Key`` header (a PUT or
    DELETE retried after its answer was lost gets that answer, not a 412 or 404 about
    its own change).

    The first 2xx answer for (organization, key, method, path) is stored and replayed
    for later requests with the same key (with ``Idempotent-Replayed: true``); the same
    key with a different body is ``422 IDEMPOTENCY_KEY_REUSED``. Requests with one key
    are serialized, so concurrent retries never run the handler twice.
    """
    return _idempotent(handler, early_lookup=True)


def idempotent_in_transaction(
    handler: Handler, *, replay_headers: ReplayHeaders | None = None
) -> Handler:
    """As :func:`idempotent`, for a handler whose first transaction calls
    :meth:`~vi_flow.server.store.AnswerSaver.check` before it makes anything: the key is
    looked up there, not in a transaction of its own (one round trip fewer per request).
    ``replay_headers`` gives a replayed answer's headers from its body.
    """
    return _idempotent(handler, early_lookup=False, replay_headers=replay_headers)
