"""``vi-flow runs``: list, get, cancel, watch, resume and prune runs."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING

import click

from ._failures import CommandFailed
from ._lazy import LazyGroup
from ._live import RunView
from ._output import (
    Order,
    duration,
    emit_json,
    first,
    json_option,
    kv_table,
    order_option,
    table,
    wants_json,
    when,
)
from ._params import int_range
from ._state import state

if TYPE_CHECKING:
    from ..models import Run

__all__ = ["runs"]

CONDITIONS = ["Pending", "Running", "Succeeded", "Failed", "Error", "Cancelled"]


@click.group(cls=LazyGroup)
def runs() -> None:
    """List, inspect, watch and cancel runs."""


def _condition(run: Run) -> str:
    condition = run.status.condition
    return condition.value if condition is not None else "Unknown"


def _elapsed(run: Run) -> str:
    """How long the run took; for one not ended, how long it has run so far (a paused
    run's record does not change while it waits)."""
    condition = run.status.condition
    end = run.metadata.last_updated if condition and condition.terminal else time.time() * 1000
    return duration(end - run.metadata.time_created)


@runs.command("list")
@click.option("--flow", "flow_id", help="Only runs of this flow.")
@click.option(
    "--condition",
    type=click.Choice(CONDITIONS, case_sensitive=False),
    help="Only runs in this condition.",
)
@click.option(
    "--limit",
    default=50,
    show_default=True,
    type=int_range(1),
    help="Show at most this many runs.",
)
@order_option
@json_option
def list_(
    flow_id: str | None, condition: str | None, limit: int, order: Order, as_json: bool
) -> None:
    """List runs, newest first, optionally of one flow or in one condition."""
    if condition:
        condition = next(c for c in CONDITIONS if c.lower() == condition.lower())
    pages = state().client().runs.list(flow_id=flow_id, condition=condition, order=order)
    items = first(pages.all_items(), limit, "runs")
    if wants_json(as_json):
        emit_json(items)
        return
    rows = [
        (
            r.run_id,
            r.spec.flow_id or "-",
            r.spec.flow_version,
            _condition(r),
            when(r.metadata.time_created),
            _elapsed(r),
        )
        for r in items
    ]
    table(["RUN ID", "FLOW", "VERSION", "CONDITION", "CREATED", "ELAPSED"], rows)


def _show_run(run: Run) -> None:
    pairs = [
        ("run id", run.run_id),
        ("flow", f"{run.spec.flow.name} ({run.spec.flow_id or '-'})"),
        ("version", run.spec.flow_version),
        ("condition", _condition(run)),
        ("message", run.spec.message),
        ("created", when(run.metadata.time_created)),
        ("updated", when(run.metadata.last_updated)),
    ]
    pairs += [(f"param {key}", repr(value)) for key, value in run.spec.parameters.items()]
    for item in run.status.conditions:
        note = f" - {item.message}" if item.message else ""
        reason = f" ({item.reason})" if item.reason else ""
        pairs.append((when(item.last_transition_time), f"{item.condition.value}{reason}{note}"))
    kv_table(pairs)


@runs.command("get")
@click.argument("run_id")
@json_option
def get(run_id: str, as_json: bool) -> None:
    """Show one run with its condition history."""
    run = state().client().runs.get(run_id)
    if wants_json(as_json):
        emit_json(run)
    else:
        _show_run(run)


@runs.command("cancel")
@click.argument("run_id")
@json_option
def cancel(run_id: str, as_json: bool) -> None:
    """Cancel a run (a finished run is left as it is)."""
    run = state().client().runs.cancel(run_id)
    if wants_json(as_json):
        emit_json(run)
    else:
        click.echo(f"{run.run_id}: {_condition(run)}")


@runs.command("watch")
@click.argument("run_id")
@click.option("--after", type=int_range(0), help="Only events after this event id.")
@json_option
def watch(run_id: str, after: int | None, as_json: bool) -> None:
    """Follow a run's events (replayed, then live) until it ends.

    A live table on a terminal, one line per event when piped, NDJSON with --json.
    Ctrl-C stops watching; the run goes on.
    """
    from .execute import follow_run

    cli = state()
    client = cli.client()
    run = client.runs.get(run_id)
    events = client.flow(run.spec.flow_id).run(run_id).events(after=after)
    mode = "json" if wants_json(as_json) else ("live" if cli.interactive else "plain")
    view = RunView(cli.console, mode=mode, title=f"run {run_id}")
    follow_run(cli, events, view, cancel=False)
    final = view.final
    if final is not None and final.status.value != "Succeeded":
        code = f" ({final.error_code})" if final.error_code else ""
        raise CommandFailed(
            f"run {run_id} {final.status.value}{code}: {final.error or ''}", code="RUN_FAILED"
        )
    if view.final is None:  # its end was before --after: the run says how it ended
        condition = client.runs.get(run_id).status.condition
        if condition is not None and condition.terminal and condition.value != "Succeeded":
            raise CommandFailed(f"run {run_id} {condition.value}", code="RUN_FAILED")


@runs.command("resume")
@click.argument("run_id")
@click.option(
    "-t",
    "--tool-result",
    "tool_results",
    multiple=True,
    metavar="CALL_ID=JSON",
    help="Answer the tool call CALL_ID with the JSON value; repeatable. "
    "Without it, on a terminal, each pending call is asked for.",
)
@json_option
def resume(run_id: str, tool_results: tuple[str, ...], as_json: bool) -> None:
    """Answer a paused run's tool calls; the run goes on on the server.

    \b
    Examples:
      vi-flow runs resume run_123 --tool-result call_1='{"temp_c": 21}'
      vi-flow runs resume run_123          # on a terminal: asks for each pending call
    """
    from ._resume import parse_call_results, pending_calls, prompt_results

    answers = parse_call_results(tool_results)
    cli = state()
    if not answers:
        calls = pending_calls(cli, run_id)
        if not calls:
            raise CommandFailed(f"run {run_id} waits for no tool call")
        if not (sys.stdin.isatty() and cli.interactive):
            waiting = ", ".join(f"{call.id} ({call.function.name})" for call in calls)
            raise click.UsageError(
                f"give --tool-result CALL_ID=JSON for each pending call: {waiting}"
            )
        answers = prompt_results(calls)
    run = cli.client().runs.get(run_id)
    accepted = cli.client().flow(run.spec.flow_id).run(run_id).submit_tool_results(answers)
    if wants_json(as_json):
        emit_json({"runId": run_id, "accepted": accepted})
    else:
        for call_id in accepted:
            click.echo(f"{run_id}: answered {call_id}")


def _age(ctx: click.Context, param: click.Parameter, value: str) -> float:
    """``--older-than`` read as the server reads ``olderThan`` (``30d``, ``12h``, seconds)."""
    from ..models.retention import parse_age

    try:
        return parse_age(value, "--older-than")
    except ValueError as exc:
        raise click.BadParameter(str(exc).removeprefix("--older-than: "), ctx, param) from None


@runs.command("prune")
@click.option(
    "--older-than",
    required=True,
    metavar="AGE",
    callback=_age,
    help="Age past which finished work goes: 30d, 12h, 90m or seconds.",
)
@click.option("--dry-run", is_flag=True, help="Only count what would be deleted.")
@click.option(
    "--organization",
    "organization_id",
    help="Another organization (admin key), or '*' for every one [default: the key's own].",
)
@json_option
def prune(older_than: float, dry_run: bool, organization_id: str | None, as_json: bool) -> None:
    """Delete finished runs (with their events), finished tasks (with their directories)
    and idempotency records older than --older-than; pending and running work stays."""
    result = (
        state().client().runs.prune(older_than, dry_run=dry_run, organization_id=organization_id)
    )
    if wants_json(as_json):
        emit_json(result)
        return
    verb = "would delete" if dry_run else "deleted"
    click.echo(
        f"{verb} {result.runs} runs, {result.tasks} tasks ({result.task_directories}"
        f" directories) and {result.idempotency_records} idempotency records"
    )
