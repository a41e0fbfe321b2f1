"""``vi-flow console``: open the web console signed in, without putting the key in a URL.

The command asks the server for a one-time sign-in code bound to the API key's
organization (good once, for a minute) and opens ``<server>/console/signin?code=...``
in the browser, or prints it with ``--print-url``. The browser trades the code for a
session cookie; the key itself never reaches the browser.
"""

from __future__ import annotations

from typing import Any

import anyio
import click

from ._output import emit_json, json_option, wants_json
from ._state import state

__all__ = ["console"]


async def _sign_in_url(base_url: str | None, api_key: str | None) -> str:
    from .. import AsyncClient

    kwargs: dict[str, Any] = {}
    if base_url:
        kwargs["base_url"] = base_url
    if api_key:
        kwargs["api_key"] = api_key
    async with AsyncClient(**kwargs) as client:
        answer = await client.http.request("POST", "/console/sign-in", max_retries=0)
        endpoint = await client.http.connection.endpoint()
    origin = endpoint.base_url.removesuffix("/v1")
    return origin + str(answer["signInPath"])


@click.command("console")
@click.option(
    "--print-url",
    is_flag=True,
    help="Print the one-time sign-in URL and exit instead of opening a browser.",
)
@json_option
def console(print_url: bool, as_json: bool) -> None:
    """Open the web console in your browser, signed in to your organization.

    The sign-in URL works once, for one minute; the API key never appears in it.
    """
    cli = state()
    try:
        url = anyio.run(_sign_in_url, cli.base_url, cli.api_key)
    except ValueError as exc:  # a bad setting (base URL, config file)
        raise click.UsageError(str(exc)) from None
    if wants_json(as_json):
        emit_json({"url": url})
    elif print_url:
        click.echo(url)
    else:
        _open(url)


def _open(url: str) -> None:
    import webbrowser

    if not webbrowser.open(url):
        click.echo(f"Could not start a browser; open this URL (good once, for a minute):\n{url}")
    else:
        state().err_console.print("Opened the console in your browser.")
