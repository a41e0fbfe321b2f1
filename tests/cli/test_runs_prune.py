"""``vi-flow runs prune`` against the embedded local server: counts, dry run, bad ages."""

from __future__ import annotations

import json
import time
from pathlib import Path

from .conftest import Invoker, write

SPEC = "name: greet\nblocks:\n  - block: template\n    id: hello\n    settings: {template: hi}\n"


def _run(vf: Invoker, flow_id: str) -> str:
    final = json.loads(vf("execute", flow_id, "--json").stdout)
    return str(final["executionId"])


def test_prune_counts_then_deletes_old_finished_runs(vf: Invoker, tmp_path: Path) -> None:
    flow_id = vf("flows", "create", "-f", str(write(tmp_path / "s.yaml", SPEC))).stdout.strip()
    old = _run(vf, flow_id)
    time.sleep(1.2)
    recent = _run(vf, flow_id)
    dry = vf("runs", "prune", "--older-than", "1s", "--dry-run")
    assert dry.exit_code == 0, dry.stderr
    assert dry.stdout.startswith("would delete 1 runs, 0 tasks")
    assert vf("runs", "get", old).exit_code == 0
    done = json.loads(vf("runs", "prune", "--older-than", "1", "--json").stdout)
    assert (done["runs"], done["dryRun"], done["olderThan"]) == (1, False, 1.0)
    assert vf("runs", "get", old).exit_code == 4
    listed = json.loads(vf("runs", "list", "--json").stdout)
    assert [r["runId"] for r in listed] == [recent]
    assert vf("runs", "prune", "--older-than", "30d").stdout.startswith("deleted 0 runs")


def test_bad_ages_are_named_before_any_request(vf_offline: Invoker) -> None:
    for age in ("-1", "thirty", "5y", ""):
        result = vf_offline("runs", "prune", "--older-than", age)
        assert result.exit_code == 2, (age, result.stdout)
        assert "--older-than" in result.stderr and repr(age) in result.stderr
    missing = vf_offline("runs", "prune")
    assert missing.exit_code == 2 and "--older-than" in missing.stderr


def test_serve_names_a_bad_retention_age(vf_offline: Invoker) -> None:
    result = vf_offline("serve", "--port", "0", "--retention-days", "soon")
    assert result.exit_code == 2
    assert "--retention-days:" in result.stderr and "'soon'" in result.stderr
