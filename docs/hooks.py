"""MkDocs hooks: pages generated at build time from the code, so they cannot drift.

* ``<!-- vi-flow:cli-reference -->`` in a page becomes the reference of every ``vi-flow``
  command, rendered from the click command tree (usage, help and options).
* ``<!-- vi-flow:openapi -->`` becomes the wire protocol, rendered from the
  ``/v1/openapi.json`` document of a local server started in-process for the build.
* ``<!-- vi-flow:limits -->`` becomes the table of request limits, from the constants
  of :mod:`vi_flow.models.limits` and their docstrings.
"""

from __future__ import annotations

import inspect
import itertools
import json
import tempfile
import urllib.request
from functools import cache
from pathlib import Path
from typing import Any

import click

CLI_MARKER = "<!-- vi-flow:cli-reference -->"
OPENAPI_MARKER = "<!-- vi-flow:openapi -->"
LIMITS_MARKER = "<!-- vi-flow:limits -->"


def on_page_markdown(markdown: str, **_: Any) -> str:
    """Replace the generation markers of a page with the generated Markdown."""
    if CLI_MARKER in markdown:
        markdown = markdown.replace(CLI_MARKER, cli_reference())
    if OPENAPI_MARKER in markdown:
        markdown = markdown.replace(OPENAPI_MARKER, openapi_reference(fetch_openapi()))
    if LIMITS_MARKER in markdown:
        markdown = markdown.replace(LIMITS_MARKER, limits_reference())
    return markdown


def limits_reference() -> str:
    """The request limits as a Markdown table: name, value and what it bounds."""
    import ast

    from vi_flow.models import limits

    source = ast.parse(inspect.getsource(limits))
    docs: dict[str, str] = {}
    body = source.body
    for node, after in itertools.pairwise(body):
        doc = getattr(getattr(after, "value", None), "value", None)
        if isinstance(node, ast.Assign) and isinstance(doc, str):
            first = doc.split("\n\n")[0].replace("\n", " ").replace("``", "`")
            docs[getattr(node.targets[0], "id", "")] = first
    rows = ["| limit | value | what it bounds |", "|---|---|---|"]
    for name in limits.__all__:
        value = getattr(limits, name)
        if name.isupper() and isinstance(value, int):
            rows.append(f"| `{name}` | {value:,} | {docs.get(name, '')} |")
    return "\n".join(rows) + "\n"


# --------------------------------------------------------------------------- CLI


def _walk(command: click.Command, ctx: click.Context) -> list[tuple[click.Context, click.Command]]:
    found = [(ctx, command)]
    if isinstance(command, click.Group):
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            if sub is None or sub.hidden:
                continue
            found += _walk(sub, click.Context(sub, info_name=name, parent=ctx))
    return found


def _options_table(command: click.Command, ctx: click.Context) -> str:
    rows = []
    for param in command.get_params(ctx):
        record = param.get_help_record(ctx)
        if record is None:
            continue
        names, text = record
        text = text.replace("|", "\\|")
        rows.append(f"| `{names}` | {text} |")
    if not rows:
        return ""
    return "| option | description |\n|---|---|\n" + "\n".join(rows) + "\n"


def _help_markdown(command: click.Command) -> str:
    """Click help as Markdown: paragraphs, and ``\\b`` blocks (kept verbatim) as code."""
    out = []
    for paragraph in inspect.cleandoc(command.help or "").split("\n\n"):
        if paragraph.startswith("\b\n"):
            out.append("```text\n" + paragraph[2:] + "\n```")
        else:
            out.append(" ".join(paragraph.split()))
    return "\n\n".join(out) + "\n"


def _command_section(ctx: click.Context, command: click.Command) -> str:
    path = ctx.command_path
    level = "##" if path.count(" ") <= 1 else "###"
    usage = " ".join(command.collect_usage_pieces(ctx))
    parts = [f"{level} `{path}`\n", f"```text\n{path} {usage}\n```\n", _help_markdown(command)]
    table = _options_table(command, ctx)
    if table:
        parts.append(table)
    return "\n".join(parts)


def cli_reference() -> str:
    """Return the Markdown reference of every ``vi-flow`` command, from the click tree."""
    from vi_flow.cli._root import cli

    root = click.Context(cli, info_name="vi-flow")
    return "\n".join(_command_section(ctx, cmd) for ctx, cmd in _walk(cli, root))


# --------------------------------------------------------------------------- OpenAPI


@cache
def fetch_openapi() -> dict[str, Any]:
    """Start a local server in-process on a scratch home and GET ``/v1/openapi.json``."""
    from vi_flow.server import embedded

    with tempfile.TemporaryDirectory(prefix="vi-flow-docs-") as home:
        server = embedded.acquire(Path(home))
        try:
            with urllib.request.urlopen(server.base_url + "/openapi.json", timeout=30) as resp:
                document: dict[str, Any] = json.loads(resp.read())
        finally:
            embedded.release(server)
    return document


def _schema_name(schema: dict[str, Any]) -> str:
    ref = schema.get("$ref")
    if ref:
        return f"`{ref.rsplit('/', 1)[1]}`"
    if schema.get("type") == "object" and "items" in schema.get("properties", {}):
        return f"page of {_schema_name(schema['properties']['items'].get('items', {}))}"
    return "JSON" if schema else ""


def _body_of(op: dict[str, Any]) -> str:
    content = op.get("requestBody", {}).get("content", {})
    return _schema_name(content.get("application/json", {}).get("schema", {}))


def _answer_of(op: dict[str, Any]) -> str:
    status, answer = next(iter(op.get("responses", {}).items()), ("", {}))
    media, spec = next(iter(answer.get("content", {}).items()), ("", {}))
    what = _schema_name(spec.get("schema", {})) if media == "application/json" else f"`{media}`"
    return f"{status} {what}".strip()


def _parameters_of(op: dict[str, Any]) -> str:
    """Query parameters and headers a client may send (paths are in the path already)."""
    names = [
        f"`{p['name']}`" if p["in"] == "query" else f"`{p['name']}:` header"
        for p in op.get("parameters", [])
        if p["in"] in ("query", "header") and p["name"] != "X-Request-Id"
    ]
    return ", ".join(names)


def _events_of(op: dict[str, Any]) -> list[str]:
    for answer in op.get("responses", {}).values():
        schema = answer.get("content", {}).get("text/event-stream", {}).get("schema", {})
        kinds = [e["properties"]["event"]["const"] for e in schema.get("oneOf", [])]
        if kinds:
            return kinds
    return []


def _streams(document: dict[str, Any]) -> list[str]:
    out = ["### Event types\n", "| stream | event types |", "|---|---|"]
    for path, methods in document.get("paths", {}).items():
        for method, op in methods.items():
            kinds = _events_of(op)
            if kinds:
                listed = ", ".join(f"`{k}`" for k in kinds)
                out.append(f"| `{method.upper()} {path}` | {listed} |")
    return [*out, ""]


def openapi_reference(document: dict[str, Any]) -> str:
    """Render an OpenAPI document as Markdown: one table of operations per tag."""
    by_tag: dict[str, list[str]] = {}
    for path, methods in document.get("paths", {}).items():
        for method, op in methods.items():
            tag = (op.get("tags") or ["other"])[0]
            summary = str(op.get("summary", "")).replace("|", "\\|").replace("``", "`")
            answer = _answer_of(op)
            by_tag.setdefault(tag, []).append(
                f"| `{method.upper()}` | `{path}` | {summary} | {_parameters_of(op)} |"
                f" {_body_of(op)} | {answer} |"
            )
    out = [f"OpenAPI {document.get('openapi', '?')} — {len(document.get('paths', {}))} paths.\n"]
    for tag in sorted(by_tag):
        out.append(
            f"### {tag}\n\n| method | path | summary | parameters | body | answer |\n"
            "|---|---|---|---|---|---|"
        )
        out.extend(by_tag[tag])
        out.append("")
    return "\n".join(out + _streams(document))
