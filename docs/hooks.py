"""MkDocs hooks: pages generated at build time from the code, so they cannot drift.

* ``<!-- vi-flow:cli-reference -->`` in a page becomes the reference of every ``vi-flow``
  command, rendered from the click command tree (usage, help and options).
* ``<!-- vi-flow:openapi -->`` becomes the wire protocol, rendered from the
  ``/v1/openapi.json`` document of a local server started in-process for the build.
"""

from __future__ import annotations

import inspect
import json
import tempfile
import urllib.request
from functools import cache
from pathlib import Path
from typing import Any

import click

CLI_MARKER = "<!-- vi-flow:cli-reference -->"
OPENAPI_MARKER = "<!-- vi-flow:openapi -->"


def on_page_markdown(markdown: str, **_: Any) -> str:
    """Replace the generation markers of a page with the generated Markdown."""
    if CLI_MARKER in markdown:
        markdown = markdown.replace(CLI_MARKER, cli_reference())
    if OPENAPI_MARKER in markdown:
        markdown = markdown.replace(OPENAPI_MARKER, openapi_reference(fetch_openapi()))
    return markdown


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


def openapi_reference(document: dict[str, Any]) -> str:
    """Render an OpenAPI document as Markdown: one table of operations per tag."""
    by_tag: dict[str, list[str]] = {}
    for path, methods in document.get("paths", {}).items():
        for method, op in methods.items():
            tag = (op.get("tags") or ["other"])[0]
            summary = str(op.get("summary", "")).replace("|", "\\|").replace("``", "`")
            by_tag.setdefault(tag, []).append(f"| `{method.upper()}` | `{path}` | {summary} |")
    out = [f"OpenAPI {document.get('openapi', '?')} — {len(document.get('paths', {}))} paths.\n"]
    for tag in sorted(by_tag):
        out.append(f"### {tag}\n\n| method | path | summary |\n|---|---|---|")
        out.extend(by_tag[tag])
        out.append("")
    return "\n".join(out)
