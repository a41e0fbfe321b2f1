"""The ``llm`` block: one chat with an OpenAI-compatible ``/chat/completions`` endpoint.

The endpoint is the server's ``llm_base_url`` (with ``llm_api_key`` as bearer token),
never a per-flow URL. Settings (rendered): ``prompt`` (default: the message, or the
previous step's output), ``system``, ``model`` (default the server's
``extra["llm_model"]`` or ``"default"``), ``temperature``, ``max_tokens``,
``max_iterations`` (model calls per step, default ``extra["llm_max_iterations"]`` or 10),
``timeout`` (seconds per call, default 120). Attachments go in as ``image_url`` parts.
The execution's ``tools`` and ``tool_choice`` are passed through; when the model asks
for tools the run pauses for the client, then the conversation continues with the
results; a call to a tool not among ``tools`` goes back to the model as an error result,
without a pause. Reaching ``max_iterations`` without a final answer fails the step with code
``ITERATION_LIMIT``. The output is the final message's text; usage is summed over calls.
An answer longer than :data:`MAX_ANSWER` bytes fails the step unread (code ``LLM_ERROR``).
"""

from __future__ import annotations

import asyncio
import base64
import functools
import re
from typing import Any

import aiohttp
import orjson
import yarl

from ....models.events import TokenUsage, ToolCall, ToolFunction, ToolResult
from ....models.limits import (
    MAX_INT,
    MAX_ITERATIONS,
    MAX_LLM_TEMPERATURE,
    MAX_LLM_TOKENS,
    MAX_STEP_TIMEOUT,
    check_int,
    check_number,
)
from .base import BlockContext, Pause, StepDone, StepError, add_usage, checked_setting

__all__ = ["llm_block"]

_DEFAULT_ITERATIONS = 10
_DEFAULT_TIMEOUT = 120.0

MAX_ANSWER = 16 * 1024 * 1024
"""The most bytes of one answer of the endpoint read: a broken or hostile endpoint (or
proxy) could otherwise send gigabytes into the shared server's memory."""

_ERROR_SHOWN = 300  # bytes of an error answer quoted in the step's failure

MAX_TOOL_CALLS = 1000
"""The most tool calls one answer of the model may ask for: the client answers them in
one request, whose lists hold at most ``MAX_LIST_LENGTH`` items."""


def _text(value: Any) -> str:
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def _first_messages(ctx: BlockContext) -> list[dict[str, Any]]:
    prompt = ctx.setting("prompt")
    if prompt is None:
        prompt = ctx.message if ctx.message is not None else ctx.previous
    messages: list[dict[str, Any]] = []
    if ctx.setting("system") is not None:
        messages.append({"role": "system", "content": _text(ctx.setting("system"))})
    content: Any = _text(prompt if prompt is not None else "")
    if ctx.attachments:
        parts = [{"type": "image_url", "image_url": {"url": url}} for url in ctx.attachments]
        content = [{"type": "text", "text": content}, *parts]
    messages.append({"role": "user", "content": content})
    return messages


def _tool_message(result: ToolResult) -> dict[str, Any]:
    content = _text(result.output)
    if result.is_error:
        content = f"error: {content}"
    return {"role": "tool", "tool_call_id": result.tool_call_id, "content": content}


def _count(usage: dict[str, Any], name: str) -> int:
    """A token count of the endpoint's ``usage`` (0 when it is not a count; at most
    ``MAX_INT``, what the events can carry: an endpoint may say 2**63 - 1 for "unknown")."""
    value = usage.get(name)
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return min(value, MAX_INT)
    if isinstance(value, float) and value >= MAX_INT:  # past 2**64 - 1 JSON reads a float
        return MAX_INT
    return 0


def _add(total: TokenUsage | None, usage: Any) -> TokenUsage | None:
    if not isinstance(usage, dict):
        return total
    prompt, completion = _count(usage, "prompt_tokens"), _count(usage, "completion_tokens")
    called = TokenUsage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=_count(usage, "total_tokens") or min(prompt + completion, MAX_INT),
    )
    return add_usage(total, called)


# A key as endpoints quote it shortened (OpenAI: "sk-LLM...Y999", "sk-proj-****Y999"):
# its first and last characters around "...", "…" (as such or JSON-escaped) or stars.
_SHORTENED = re.compile(r"([\w-]+)(?:\.\.\.|…|\\u2026|\*+)([\w-]+)")


def _secrets(ctx: BlockContext) -> list[str]:
    """The endpoint's credentials: the server's key, the password its URL holds, and the
    Basic ``Authorization`` that password is sent as (QA AP: an endpoint that echoed the
    header showed ``user:password`` in base64)."""
    url = yarl.URL(ctx.server.llm_base_url or "")
    basic = None
    if url.password:
        pair = f"{url.user or ''}:{url.password}"
        try:  # as aiohttp's BasicAuth encodes it
            basic = base64.b64encode(pair.encode("latin-1")).decode()
        except UnicodeEncodeError:
            basic = base64.b64encode(pair.encode()).decode()
    return [s for s in (ctx.server.llm_api_key, url.password, url.raw_password, basic) if s]


def _reach(ctx: BlockContext) -> int:
    """The most characters a credential takes in an answer: each of its characters
    JSON-escaped (12 for one past the BMP, a surrogate pair): read this far past what
    is shown, so that a credential that begins there is read whole, then hidden (QA AP:
    a key echoed escaped across the cut showed its first 10 characters)."""
    return 12 * max((len(s) for s in _secrets(ctx)), default=0)


@functools.lru_cache(maxsize=8)
def _spelled(secret: str) -> re.Pattern[str]:
    """``secret`` as it is, or with any of its characters JSON-escaped (``\\u0073``,
    ``\\/``): what an error body or a tool call's ``arguments`` (JSON in a string) holds
    when the endpoint echoed the key through an encoder that escapes (QA AM)."""
    parts = []
    for char in secret:
        spellings = [re.escape(char)]
        if ord(char) < 0x10000:
            spellings.append(rf"\\u(?i:{ord(char):04x})")
        if char in '/"\\':
            spellings.append(re.escape("\\" + char))
        parts.append(f"(?:{'|'.join(spellings)})")
    return re.compile("".join(parts))


def _hidden(secrets: list[str], text: str) -> str:
    """``text`` with each of ``secrets``, however spelt, as ``***``."""
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, "***")
        if "\\" in text:
            text = _spelled(secret).sub("***", text)
    return text


def _shown(ctx: BlockContext, text: str) -> str:
    """``text`` without the endpoint's credentials: a failed step's message reaches the
    run's events and every member of its organization; the endpoint is the server's."""
    text = _hidden(_secrets(ctx), text)
    if key := ctx.server.llm_api_key:

        def hide(match: re.Match[str]) -> str:
            head, tail = match.groups()
            shortened = len(head) >= 2 and len(tail) >= 2 and len(head) + len(tail) < len(key)
            if shortened and key.startswith(head) and key.endswith(tail):
                return "***"
            return match.group(0)

        text = _SHORTENED.sub(hide, text)
    return text


def _without_secrets(ctx: BlockContext, message: dict[str, Any]) -> dict[str, Any]:
    """The model's message (its text, its tool calls) with the endpoint's key (and the
    URL's password) as ``***`` wherever a string holds it whole: an endpoint or proxy
    that echoes the request would put it in the step's output or tool calls, which the
    organization reads. The decoded strings are looked at, not the answer's bytes: a
    short word of a key ("none") would change ordinary text, and JSON may escape the
    key (``\\/``); a "key" shorter than :data:`_SECRET_WHOLE` is taken for a placeholder.

    The message is the step's own, decoded from the answer: its containers are changed
    where they are, by a walk with its own stack, since a message nested as deep as
    orjson reads (1,024 levels) would pass Python's recursion limit.
    """
    secrets = [s for s in _secrets(ctx) if len(s) >= _SECRET_WHOLE]

    def replaced(text: str) -> str:
        return _hidden(secrets, text)

    stack: list[Any] = [message] if secrets else []
    while stack:
        node = stack.pop()
        if isinstance(node, dict) and any(replaced(name) != name for name in node):
            pairs = [(replaced(name), item) for name, item in node.items()]
            node.clear()
            node.update(pairs)
        for name, item in list(node.items() if isinstance(node, dict) else enumerate(node)):
            if isinstance(item, str):
                node[name] = replaced(item)
            elif isinstance(item, (dict, list)):
                stack.append(item)
    return message


_SECRET_WHOLE = 8  # "none", "EMPTY", "dummy": what local endpoints are given as a key


def _quoted(ctx: BlockContext, raw: bytes, most: int) -> str:
    """The first ``most`` characters of an endpoint's answer, its credentials hidden
    before it is cut (a key across the cut would leave its first characters) and before
    it is escaped for display (``repr`` spells "…" so that no pattern finds it)."""
    return _shown(ctx, raw.decode("utf-8", "replace"))[:most]


def _payload(ctx: BlockContext, messages: list[dict[str, Any]]) -> dict[str, Any]:
    body: dict[str, Any] = {"model": ctx.setting("model") or _extra(ctx, "llm_model", "default")}
    body["messages"] = messages
    if ctx.setting("temperature") is not None:
        body["temperature"] = checked_setting(
            ctx, "temperature", None, check_number, 0, MAX_LLM_TEMPERATURE
        )
    if ctx.setting("max_tokens") is not None:
        body["max_tokens"] = checked_setting(ctx, "max_tokens", None, check_int, 1, MAX_LLM_TOKENS)
    if ctx.tools:
        body["tools"] = ctx.tools
        if ctx.tool_choice is not None:
            body["tool_choice"] = ctx.tool_choice
    return body


def _extra(ctx: BlockContext, name: str, default: Any) -> Any:
    return ctx.server.extra.get(name, default)


async def _complete(ctx: BlockContext, body: dict[str, Any]) -> dict[str, Any]:
    base = ctx.server.llm_base_url
    if not base:
        raise StepError(
            f"llm step {ctx.step_id!r}: the server has no llm_base_url configured", "NOT_CONFIGURED"
        )
    headers = {"Content-Type": "application/json"}
    if ctx.server.llm_api_key:
        headers["Authorization"] = f"Bearer {ctx.server.llm_api_key}"
    seconds = checked_setting(
        ctx, "timeout", _DEFAULT_TIMEOUT, check_number, 0.001, MAX_STEP_TIMEOUT
    )
    timeout = aiohttp.ClientTimeout(total=seconds)
    url = base.rstrip("/") + "/chat/completions"
    shown = str(yarl.URL(url).with_user(None))  # the URL's user and password stay here
    try:
        async with ctx.http.post(
            url, data=orjson.dumps(body), headers=headers, timeout=timeout
        ) as resp:
            if resp.status >= 400:
                head = await _head(resp, _ERROR_SHOWN + _reach(ctx) + 64)
                detail = _quoted(ctx, head, _ERROR_SHOWN)
                raise StepError(f"llm endpoint answered {resp.status}: {detail}", "LLM_ERROR")
            raw = await _answer(resp)
    except (TimeoutError, asyncio.TimeoutError):  # one class from 3.11; QA AF: it said
        # "TimeoutError()", neither what nor how long (and on 3.10 the step's BLOCK_ERROR)
        raise StepError(
            f"llm endpoint {shown} gave no answer within the step's timeout of {seconds:g} s",
            "LLM_ERROR",
        ) from None
    except aiohttp.ClientConnectorError as exc:  # not aiohttp's ConnectionKey(...) repr
        why = _shown(ctx, exc.os_error.strerror or repr(exc.os_error))
        raise StepError(f"llm endpoint {shown} could not be reached: {why}", "LLM_ERROR") from None
    except (aiohttp.ClientError, ValueError) as exc:
        why = _shown(ctx, repr(exc))
        raise StepError(f"llm endpoint {shown} failed: {why}", "LLM_ERROR") from None
    try:
        data: dict[str, Any] = orjson.loads(raw)
        if not isinstance(data["choices"][0]["message"], dict):
            raise TypeError("message is not an object")
        data["choices"][0]["message"] = _without_secrets(ctx, data["choices"][0]["message"])
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError) as exc:
        answer = repr(_quoted(ctx, raw[: 264 + _reach(ctx)], 200))
        raise StepError(f"llm endpoint sent an unexpected answer: {answer}", "LLM_ERROR") from exc
    return data


async def _head(resp: aiohttp.ClientResponse, most: int) -> bytes:
    """The first ``most`` bytes of the body; the rest is never read."""
    data = bytearray()
    async for chunk in resp.content.iter_any():
        data += chunk
        if len(data) >= most:
            break
    return bytes(data[:most])


async def _answer(resp: aiohttp.ClientResponse) -> bytes:
    """The whole body, read in chunks while it stays within :data:`MAX_ANSWER` bytes."""
    too_long = StepError(
        f"llm endpoint sent an answer over {MAX_ANSWER} bytes, the most a step reads",
        "LLM_ERROR",
    )
    if resp.content_length is not None and resp.content_length > MAX_ANSWER:
        raise too_long
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_any():  # decompressed: counted as it will be held
        size += len(chunk)
        if size > MAX_ANSWER:
            raise too_long
        chunks.append(chunk)
    return b"".join(chunks)


def _tool_calls(message: dict[str, Any], ctx: BlockContext) -> list[ToolCall]:
    calls: list[ToolCall] = []
    raws = message.get("tool_calls") or []
    if not isinstance(raws, list) or not all(isinstance(raw, dict) for raw in raws):
        shown = _shown(ctx, repr(raws)[: 200 + 2 * len(ctx.server.llm_api_key or "")])[:200]
        raise StepError(f"llm endpoint sent unexpected tool calls: {shown}", "LLM_ERROR")
    if len(raws) > MAX_TOOL_CALLS:
        raise StepError(
            f"llm endpoint asked for {len(raws)} tool calls in one answer; a step takes at"
            f" most {MAX_TOOL_CALLS}",
            "LLM_ERROR",
        )
    taken: set[str] = set()
    for raw in raws:
        function = raw.get("function")
        function = function if isinstance(function, dict) else {}
        arguments = function.get("arguments", "{}")
        # Each call is answered by its id: one the model left out or repeated (models
        # and proxies do) gets one of ours, or the second call could never be answered.
        given = raw.get("id")
        call_id = (
            given if isinstance(given, str) and given and given not in taken else ctx.new_call_id()
        )
        taken.add(call_id)
        calls.append(
            ToolCall(
                id=call_id,
                function=ToolFunction(
                    name=str(function.get("name", "")), arguments=_text(arguments)
                ),
            )
        )
    return calls


def _offered(ctx: BlockContext) -> set[str]:
    """The names of the tools the execution offers the model."""
    functions = (tool.get("function") for tool in ctx.tools if isinstance(tool, dict))
    return {f["name"] for f in functions if isinstance(f, dict) and isinstance(f.get("name"), str)}


def _refusal(call: ToolCall, offered: set[str]) -> dict[str, Any]:
    """The error result of a call to a tool the execution did not offer."""
    names = ", ".join(sorted(offered)) or "none"
    content = f"error: tool {call.function.name!r} was not offered (offered: {names})"
    return {"role": "tool", "tool_call_id": call.id, "content": content}


def _assistant(message: dict[str, Any], calls: list[ToolCall]) -> dict[str, Any]:
    return {"role": "assistant", "content": message.get("content"), "tool_calls": [
        {"id": c.id, "type": "function",
         "function": {"name": c.function.name, "arguments": c.function.arguments}}
        for c in calls
    ]}  # fmt: skip


async def llm_block(ctx: BlockContext) -> Any:
    """Talk to the model until it answers without tool calls, pausing for each tool round.

    A call to a tool the execution did not offer is never sent to the client (which
    could not run it, or would run what it never meant to expose): it goes back to the
    model at once as an error result naming the tool.
    """
    default = _extra(ctx, "llm_max_iterations", _DEFAULT_ITERATIONS)
    limit = checked_setting(ctx, "max_iterations", default, check_int, 1, MAX_ITERATIONS)
    if ctx.resume is None:
        messages, iterations, usage = _first_messages(ctx), 0, None
    else:
        state = ctx.resume.state
        messages = [*state["messages"], *(_tool_message(r) for r in ctx.resume.results)]
        iterations, usage = int(state["iterations"]), ctx.resume.usage
    offered = _offered(ctx)
    while iterations < limit:
        data = await _complete(ctx, _payload(ctx, messages))
        usage = _add(usage, data.get("usage"))
        message = data["choices"][0]["message"]
        calls = _tool_calls(message, ctx)
        if not calls:
            return StepDone(output=message.get("content") or "", usage=usage)
        refused = [_refusal(c, offered) for c in calls if c.function.name not in offered]
        messages = [*messages, _assistant(message, calls), *refused]
        iterations += 1
        if iterations >= limit:  # no call is left to read the results: none is asked for
            break
        asked = [c for c in calls if c.function.name in offered]
        if asked:
            state = {"messages": messages, "iterations": iterations}
            return Pause(tool_calls=asked, state=state, usage=usage)
    raise StepError(
        f"llm step {ctx.step_id!r} reached its limit of {limit} model calls"
        " (max_iterations) without a final answer: its last answer asked for tools again,"
        " and they were not run",
        "ITERATION_LIMIT",
    )
