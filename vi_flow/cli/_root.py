"""The root ``vi-flow`` group: global options and the (lazily imported) command list."""

from __future__ import annotations

import click

from ._failures import JSON_WANTED
from ._lazy import LazyGroup
from ._state import CliState

__all__ = ["COMMANDS", "cli"]

COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("vi_flow.cli.serve:serve", "Run the home's server in the foreground."),
    "server": ("vi_flow.cli.server:server", "Start, inspect, stop the home's background server."),
    "demo": ("vi_flow.cli.demo:demo", "Run the guided demo on the home's local server."),
    "flows": ("vi_flow.cli.flows:flows", "Create, list, publish and delete flows."),
    "runs": ("vi_flow.cli.runs:runs", "List, inspect, watch and cancel runs."),
    "execute": ("vi_flow.cli.execute:execute", "Execute a flow and show its steps live."),
    "tasks": ("vi_flow.cli.tasks:tasks", "Run GPU/CPU tasks: logs, shells, SSH, uploads."),
    "ssh": ("vi_flow.cli.tasks:ssh", "SSH into a task, or write its ~/.ssh/config entry."),
    "volumes": ("vi_flow.cli.volumes:volumes", "Create, list, mount and delete volumes."),
    "instances": ("vi_flow.cli.instances:instances", "Find instance types and their prices."),
    "reservations": ("vi_flow.cli.reservations:reservations", "Reserve capacity ahead of time."),
    "ssh-keys": ("vi_flow.cli.ssh_keys:ssh_keys", "Register the SSH keys task shells accept."),
    "tokens": ("vi_flow.cli.tokens:tokens", "List, create and revoke API keys (admin)."),
    "config": ("vi_flow.cli.config:config", "Show or set client settings (the config file)."),
    "console": ("vi_flow.cli.console:console", "Open the web console in your browser."),
}

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.group(
    cls=LazyGroup,
    lazy=COMMANDS,
    context_settings=CONTEXT_SETTINGS,
    epilog="Exit codes: 0 ok, 1 failure, 2 usage, 3 auth, 4 not found, 5 conflict, "
    "6 transient (worth retrying), 130 interrupted.",
)
@click.option(
    "--version",
    is_flag=True,
    is_eager=True,
    expose_value=False,
    callback=lambda ctx, _, value: _show_version(ctx) if value else None,
    help="Show the version and exit (as JSON with --json).",
)
@click.option(
    "--base-url",
    envvar="VI_FLOW_BASE_URL",
    show_envvar=True,
    metavar="URL",
    help="Server URL ending in /v1, or 'local' for the home's own server (the default).",
)
@click.option(
    "--api-key",
    envvar="VI_FLOW_API_KEY",
    show_envvar=True,
    metavar="KEY",
    help="API key (never printed; the environment variable keeps it out of the command line, which other users can read).",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print JSON from every command (the same as each command's --json).",
)
@click.option(
    "--color",
    type=click.Choice(["auto", "always", "never"]),
    default="auto",
    show_default=True,
    help="Colour output; NO_COLOR in the environment means never unless 'always'.",
)
@click.option("--debug", is_flag=True, help="Show tracebacks of errors.")
@click.pass_context
def cli(
    ctx: click.Context,
    base_url: str | None,
    api_key: str | None,
    as_json: bool,
    color: str,
    debug: bool,
) -> None:
    """vi-flow: run AI flows and the GPU tasks behind them.

    With nothing configured, commands talk to the home's local server (state under
    VI_FLOW_HOME), started in the background on first use and shared by every process
    ('vi-flow server status'). Start with 'vi-flow demo'.
    """
    given = ctx.get_parameter_source("api_key") is click.core.ParameterSource.COMMANDLINE
    if given and not (api_key or "").strip():  # a script's key that came out empty would
        raise click.BadParameter(  # run as whoever the env, config or home names
            "the key given is empty", param_hint="'--api-key'"
        )
    if ctx.get_parameter_source("base_url") is click.core.ParameterSource.ENVIRONMENT:
        base_url = None  # the SDK reads VI_FLOW_BASE_URL itself, and names it in an error
    obj = CliState(base_url=base_url, api_key=api_key, color=color, debug=debug, json=as_json)
    ctx.obj = obj
    if as_json:
        ctx.meta[JSON_WANTED] = True
    ctx.meta["vi_flow.debug"] = debug
    if obj.use_color is not None:
        ctx.color = obj.use_color
    ctx.call_on_close(obj.close)


def _show_version(ctx: click.Context) -> None:
    from .. import __version__
    from ._failures import ARGV_JSON

    if ctx.meta.get(ARGV_JSON):
        import orjson

        click.echo(orjson.dumps({"version": __version__}))
    else:
        click.echo(f"vi-flow, version {__version__}")
    ctx.exit()
