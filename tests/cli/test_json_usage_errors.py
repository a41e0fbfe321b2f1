"""Under ``--json``, errors click raises while parsing are one JSON document on stderr too."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import Invoker


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--json", "flows", "list", "--bogus"], "--bogus"),
        (["flows", "list", "--bogus", "--json"], "--bogus"),
        (["flows", "list", "--json", "--limit", "many"], "many"),
        (["runs", "list", "--json", "--condition", "Sleeping"], "Sleeping"),
        (["--json", "flowz"], "flows"),
        (["--json", "--colour", "never", "flows", "list"], "--colour"),
        (["tasks", "get", "--json"], "TASK_ID"),
        (["flows", "list", "--json", "--oldest", "--order", "newest"], "--oldest"),
    ],
)
def test_parse_errors_are_json_with_exit_2(
    vf_offline: Invoker, args: list[str], words: str
) -> None:
    result = vf_offline(*args)
    assert result.exit_code == 2
    assert result.stdout == ""
    error = json.loads(result.stderr)["error"]
    assert error["code"] == "USAGE_ERROR" and error["exitCode"] == 2
    assert words in error["message"]


def test_without_json_they_stay_plain_text(vf_offline: Invoker) -> None:
    result = vf_offline("flows", "list", "--bogus")
    assert result.exit_code == 2
    assert "--bogus" in result.stderr and "Usage:" in result.stderr
    assert not result.stderr.lstrip().startswith("{")


def test_json_after_a_double_dash_is_an_argument_not_the_option(vf_offline: Invoker) -> None:
    result = vf_offline("flows", "list", "--limit", "x", "--", "--json")
    assert result.exit_code == 2
    assert not result.stderr.lstrip().startswith("{")


def test_a_failure_a_command_explains_is_json_too(vf: Invoker, tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: x\nblocks:\n  - block: nosuchblock\n")
    for args in (
        ["flows", "create", "-f", str(spec), "--json"],
        ["--json", "flows", "create", "-f", str(spec)],
    ):
        result = vf(*args)
        assert result.exit_code == 2, result.stderr
        assert result.stdout == ""
        error = json.loads(result.stderr)["error"]  # one JSON document, nothing else
        assert error["exitCode"] == 2 and "spec.yaml" in error["message"]
        assert error["code"] == "USAGE_ERROR"  # the kind its exit code says, never null
    without = vf("flows", "create", "-f", str(spec))
    assert without.stderr.startswith("error: ") and "spec.yaml" in without.stderr


def test_the_commands_that_say_what_they_did_say_it_in_json(vf: Invoker, tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: x\nblocks: []\n")
    flow_id = json.loads(vf("flows", "create", "-f", str(spec), "--json").stdout)["flowId"]
    assert json.loads(vf("--json", "flows", "delete", flow_id, "-y").stdout) == {"deleted": flow_id}
    volume = json.loads(vf("volumes", "create", "--name", "scratch", "--json").stdout)["volumeId"]
    assert json.loads(vf("volumes", "delete", volume, "-y", "--json").stdout) == {"deleted": volume}
    said = json.loads(vf("config", "set", "timeout", "30", "--json").stdout)
    assert said["key"] == "timeout" and said["value"] == "30" and said["path"]
