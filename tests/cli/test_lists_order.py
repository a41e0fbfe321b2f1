"""``vi-flow ... list`` is newest first; ``--order oldest`` / ``--oldest`` reverses it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import Invoker, write

SPEC = "name: n\nblocks:\n  - block: template\n    id: t\n    settings:\n      template: x\n"


def _ids(vf: Invoker, *args: str) -> list[str]:
    result = vf(*args, "--json")
    assert result.exit_code == 0, result.stderr
    items = json.loads(result.stdout)
    key = next(k for k in items[0] if k.endswith("Id") and k != "organizationId")
    return [item[key] for item in items]


def test_flows_runs_volumes_and_tasks_list_newest_first(vf: Invoker, tmp_path: Path) -> None:
    spec = str(write(tmp_path / "spec.yaml", SPEC))
    flows = [vf("flows", "create", "-f", spec).stdout.strip() for _ in range(3)]
    assert _ids(vf, "flows", "list") == flows[::-1]
    assert _ids(vf, "flows", "list", "--oldest") == flows
    assert _ids(vf, "flows", "list", "--order", "OLDEST", "--limit", "2") == flows[:2]
    for _ in range(2):
        assert vf("execute", flows[0], "-m", "hi").exit_code == 0
    run_ids = _ids(vf, "runs", "list", "--oldest")
    assert len(run_ids) == 2
    assert _ids(vf, "runs", "list") == run_ids[::-1]
    assert _ids(vf, "runs", "list", "--order", "oldest") == run_ids
    volumes = [vf("volumes", "create", "--name", f"v{i}").stdout.strip() for i in range(2)]
    assert _ids(vf, "volumes", "list") == volumes[::-1]
    assert _ids(vf, "volumes", "list", "--oldest") == volumes
    tasks = [vf("tasks", "run", "--", "true").stdout.strip() for _ in range(2)]
    assert _ids(vf, "tasks", "list") == tasks[::-1]
    assert _ids(vf, "tasks", "list", "--oldest") == tasks


@pytest.mark.parametrize("args", [("--order", "sideways"), ("--oldest", "--order", "newest")])
def test_a_bad_order_is_a_usage_error(vf_offline: Invoker, args: tuple[str, ...]) -> None:
    result = vf_offline("flows", "list", *args)
    assert result.exit_code == 2
    assert "--order" in result.stderr


def test_a_list_cut_at_its_limit_says_so_on_stderr(vf: Invoker, tmp_path: Path) -> None:
    # QA: with 60 flows, `flows list --json` gave 50 and said nothing of the others
    spec = str(write(tmp_path / "spec.yaml", SPEC))
    for _ in range(3):
        assert vf("flows", "create", "-f", spec).exit_code == 0
    cut = vf("flows", "list", "--limit", "2", "--json")
    assert len(json.loads(cut.stdout)) == 2
    assert cut.stderr == "(the first 2 flows; there are more: --limit N shows N)\n"
    whole = vf("flows", "list", "--limit", "3", "--json")
    assert len(json.loads(whole.stdout)) == 3 and whole.stderr == ""
    assert "there are more" in vf("flows", "list", "--limit", "1").stderr


@pytest.mark.parametrize("command", ["flows", "runs", "tasks", "volumes", "reservations"])
def test_every_list_keeps_50_by_default_as_documented(vf_offline: Invoker, command: str) -> None:
    # QA: docs/cli.md says 50; `tasks list` kept 20, volumes and reservations 100
    shown = vf_offline(command, "list", "--help")
    assert shown.exit_code == 0 and "--limit INTEGER RANGE" in shown.stdout
    assert " ".join(shown.stdout.split()).count("[default: 50; x>=1]") == 1, shown.stdout
