"""Under ``--json``, errors click raises while parsing are one JSON document on stderr too."""

from __future__ import annotations

import json

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
