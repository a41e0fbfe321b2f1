"""Usage errors, exit codes, help and config: nothing here needs flows to exist."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import click
import pytest

import vi_flow
from vi_flow import _errors as e
from vi_flow.cli._failures import exit_code_for
from vi_flow.cli._root import cli

from .conftest import Invoker


def test_help_lists_every_command(vf_offline: Invoker) -> None:
    result = vf_offline("--help")
    assert result.exit_code == 0
    for name in (
        "serve",
        "demo",
        "flows",
        "runs",
        "execute",
        "tasks",
        "volumes",
        "instances",
        "reservations",
        "ssh-keys",
        "config",
    ):
        assert f"  {name}" in result.stdout
    assert "Exit codes" in result.stdout


def test_unknown_command_suggests_the_closest(vf_offline: Invoker) -> None:
    result = vf_offline("flwos", "list")
    assert result.exit_code == 2
    assert "No such command 'flwos'" in result.stderr
    assert "Did you mean 'flows'?" in result.stderr


def test_unknown_subcommand_suggests_too(vf_offline: Invoker) -> None:
    result = vf_offline("flows", "lst")
    assert result.exit_code == 2
    assert "Did you mean 'list'?" in result.stderr


def test_unknown_option_suggests_the_closest(vf_offline: Invoker) -> None:
    result = vf_offline("flows", "list", "--jsn")
    assert result.exit_code == 2
    assert "No such option" in result.stderr and "--jsn" in result.stderr  # click's wording
    assert "--json" in result.stderr


@pytest.mark.parametrize("typo", ["--gpus", "--folow"])
def test_an_unknown_option_of_tasks_run_is_refused_not_run(vf_offline: Invoker, typo: str) -> None:
    # QA AZ: `tasks run --gpus 1 -- echo hi` started a task whose command was `--gpus 1
    # echo hi` (it failed to start), and `--folow` ran the task unfollowed, exit 0
    result = vf_offline("tasks", "run", typo, "1", "--", "echo", "hi")
    assert result.exit_code == 2, result.stderr
    assert "No such option" in result.stderr and typo in result.stderr  # click's wording


def test_a_config_file_that_is_not_one_is_blamed_not_the_value(
    vf_offline: Invoker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # QA BA: VI_FLOW_CONFIG naming a directory: "Invalid value for VALUE: config file
    # ... is not a file" (exit 2), of a value that was fine
    monkeypatch.setenv("VI_FLOW_CONFIG", str(tmp_path))
    result = vf_offline("config", "set", "timeout", "5")
    assert result.exit_code == 2, result.stderr  # a usage error: the file needs fixing
    assert f"cannot set timeout: config file {tmp_path} is not a file" in result.stderr
    assert "Invalid value" not in result.stderr


def test_param_without_equals_names_the_argument(vf_offline: Invoker) -> None:
    result = vf_offline("execute", "flow_x", "--param", "city")
    assert result.exit_code == 2
    assert "'--param'" in result.stderr
    assert "'city' is not KEY=VALUE" in result.stderr


def test_errors_say_what_was_expected_and_where_a_value_came_from(
    vf_offline: Invoker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # QA: `-v nopath` asked for KEY=VALUE, an empty spec file "got NoneType", and a bad
    # VI_FLOW_TIMEOUT did not name the variable
    volume = vf_offline("tasks", "run", "-v", "nopath", "--", "true")
    assert volume.exit_code == 2 and "'nopath' is not PATH=VOLUME" in volume.stderr
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    created = vf_offline("flows", "create", "-f", str(empty))
    assert created.exit_code == 2 and "got nothing (the file is empty)" in created.stderr
    monkeypatch.setenv("VI_FLOW_TIMEOUT", "abc")
    listed = vf_offline("flows", "list")
    assert listed.exit_code == 2 and "got 'abc' (set by VI_FLOW_TIMEOUT)" in listed.stderr
    monkeypatch.setenv("VI_FLOW_TIMEOUT", "nan")  # one number, not "timeout connect"
    listed = vf_offline("flows", "list")
    assert "timeout must be a positive number of seconds, got nan" in listed.stderr
    monkeypatch.delenv("VI_FLOW_TIMEOUT")
    monkeypatch.setenv("VI_FLOW_BASE_URL", "ftp://x")  # QA: blamed on "the argument"
    listed = vf_offline("flows", "list")
    assert "(set by VI_FLOW_BASE_URL)" in listed.stderr, listed.stderr


@pytest.mark.parametrize("item", ["AWS_SECRET_ACCESS_KEY:wJalrXUtnFEMI", "=wJalrXUtnFEMI"])
@pytest.mark.parametrize("as_json", [False, True])
def test_a_bad_env_item_is_named_by_its_place_never_its_value(
    vf_offline: Invoker, item: str, as_json: bool
) -> None:
    # QA: `-e KEY:secret` (a colon typed for "=") printed the secret in its error, to
    # the terminal or a CI log; the server names only a variable, never its value.
    options = ["--json"] if as_json else []
    result = vf_offline("tasks", "run", *options, "-e", "A=1", "-e", item, "--", "true")
    assert result.exit_code == 2, result.output
    assert "wJalrXUtnFEMI" not in result.output + result.stderr
    assert "'--env'" in result.stderr and "item 2 of 2 is not KEY=VALUE" in result.stderr


def test_bad_version_is_a_usage_error(vf_offline: Invoker) -> None:
    result = vf_offline("execute", "flow_x", "--version", "latest")
    assert result.exit_code == 2
    assert "'latest'" in result.stderr


def test_params_decode_json_values() -> None:
    from vi_flow.cli.execute import parse_params

    assert parse_params(["n=3", "city=Oslo", "tags=[1, 2]", 's="3"', "e="]) == {
        "n": 3,
        "city": "Oslo",
        "tags": [1, 2],
        "s": "3",
        "e": "",
    }


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_unreachable_server_names_the_url_and_exits_6(
    vf_offline: Invoker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VI_FLOW_MAX_RETRIES", "0")
    url = f"http://127.0.0.1:{_closed_port()}/v1"
    result = vf_offline("--base-url", url, "flows", "list")
    assert result.exit_code == 6
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("error: ") and url in lines[0]
    assert "Traceback" not in result.stderr
    assert lines[1].startswith("hint: ")
    # QA: a URL set with `config set base_url` got a hint naming only --base-url and
    # VI_FLOW_BASE_URL, where the user had set neither
    assert "the config file's base_url" in lines[1] and "vi-flow config show" in lines[1]


def test_debug_shows_the_traceback(vf_offline: Invoker, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VI_FLOW_MAX_RETRIES", "0")
    url = f"http://127.0.0.1:{_closed_port()}/v1"
    result = vf_offline("--debug", "--base-url", url, "runs", "list")
    assert result.exit_code == 6
    assert "Traceback" in result.stderr


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (e.AuthenticationError("no"), 3),
        (e.PermissionDeniedError("no"), 3),
        (e.FlowNotFoundError("no"), 4),
        (e.TaskNotFoundError("no"), 4),
        (e.ConflictError("no"), 5),
        (e.PreconditionFailedError("no"), 5),
        (e.APITimeoutError("slow"), 6),
        (e.APIConnectionError("down"), 6),
        (e.RateLimitError("busy"), 6),
        (e.InternalServerError("boom", status_code=503), 6),
        (e.InternalServerError("full", status_code=507, code="INSUFFICIENT_STORAGE"), 1),
        (e.UnprocessableEntityError("bad"), 2),
        (e.BadRequestError("bad"), 2),
        (ValueError("bad gpu"), 2),
        (e.FlowExecutionError("bad", execution_id="run_x"), 1),
        (KeyboardInterrupt(), 130),
    ],
)
def test_exit_codes_are_stable(exc: BaseException, code: int) -> None:
    assert exit_code_for(exc) == code


def test_config_set_and_show_never_echo_the_key(vf_offline: Invoker, tmp_path: Path) -> None:
    result = vf_offline("config", "set", "api_key", "sekret-token-123")
    assert result.exit_code == 0, result.stdout
    assert "sekret" not in result.stdout
    result = vf_offline("config", "set", "max_retries", "5")
    assert result.exit_code == 0
    result = vf_offline("config", "show", "--json")
    assert result.exit_code == 0
    assert "sekret" not in result.stdout
    assert '"apiKey": "set"' in result.stdout
    assert '"maxRetries": 5' in result.stdout
    config = (tmp_path / "config" / "config.toml").read_text()
    assert "sekret-token-123" in config


def test_config_set_reads_the_key_from_stdin_not_the_command_line(
    vf_offline: Invoker, tmp_path: Path
) -> None:
    # QA AJ: the docs' `config set api_key "$(cat admin-token)"` put the admin token in
    # the command's arguments, which another local user read from /proc and used.
    config = tmp_path / "config" / "config.toml"
    result = vf_offline("config", "set", "api_key", "-", input="sekret-from-stdin\n")
    assert result.exit_code == 0, result.stderr
    assert "sekret" not in result.stdout + result.stderr
    assert 'api_key = "sekret-from-stdin"' in config.read_text()
    result = vf_offline("config", "set", "api_key", input="  asked-key  \nignored\n")
    assert result.exit_code == 0, result.stderr
    assert 'api_key = "asked-key"' in config.read_text()
    empty = vf_offline("config", "set", "api_key", "-", input="")
    assert empty.exit_code == 2 and "no API key on standard input" in empty.stderr
    assert 'api_key = "asked-key"' in config.read_text()  # unchanged
    long = vf_offline("config", "set", "api_key", "-", input="k" * 70_000 + "\n")
    assert long.exit_code == 2 and "longer than 65536 characters" in long.stderr  # not cut
    missing = vf_offline("config", "set", "base_url")
    assert missing.exit_code == 2 and "give base_url's VALUE" in missing.stderr
    # QA AM: `config set organization_id -` stored "-": every key's - reads stdin
    org = vf_offline("config", "set", "organization_id", "-", input="org_from_stdin\n")
    assert org.exit_code == 0, org.stderr
    assert 'organization_id = "org_from_stdin"' in config.read_text()
    blank = vf_offline("config", "set", "timeout", "-", input="\n")
    assert blank.exit_code == 2 and "no timeout on standard input" in blank.stderr
    # QA AP: stdin brought what argv cannot: a NUL (every later command then refused the
    # key), an escape sequence (printed back raw); refused as a client would
    for key, line in (("api_key", "sk\x00abc"), ("organization_id", "org_\x1b[31mRED"),
                      ("home", "/tmp/a\x07b")):  # fmt: skip
        bad = vf_offline("config", "set", key, "-", input=line + "\n")
        assert bad.exit_code == 2 and "control" in bad.stderr, (key, bad.stderr)
        assert "\x1b[31m" not in bad.stderr and "sk\x00" not in bad.stderr
    assert 'organization_id = "org_from_stdin"' in config.read_text()  # unchanged


def test_config_set_unknown_key_is_a_usage_error(vf_offline: Invoker) -> None:
    result = vf_offline("config", "set", "colour", "red")
    assert result.exit_code == 2
    assert "unknown key 'colour'" in result.stderr


def test_config_set_refuses_a_value_every_later_command_would_refuse(
    vf_offline: Invoker, tmp_path: Path
) -> None:
    for key, value in (
        ("local_server", "weird"),
        ("base_url", "not a url"),
        ("log_transport", "foo"),
        ("http_transport", "curl"),
        ("ca_file", str(tmp_path / "missing.pem")),
        ("max_retries", "2.5"),
        ("server_idle_timeout", "never"),
        ("api_key", ""),  # echoed as set, then read back as not set (found by QA)
        ("organization_id", "  "),
    ):
        result = vf_offline("config", "set", key, value)
        assert result.exit_code == 2, (key, result.stdout, result.stderr)
        assert key in result.stderr, result.stderr
    assert not (tmp_path / "config" / "config.toml").exists()  # nothing was written
    assert vf_offline("config", "show").exit_code == 0
    assert vf_offline("config", "set", "local_server", "in-process").exit_code == 0


def test_api_key_option_is_never_printed(vf_offline: Invoker) -> None:
    result = vf_offline("--api-key", "tok-zzz-999", "config", "show")
    assert result.exit_code == 0
    assert "tok-zzz-999" not in result.stdout + result.stderr


def test_color_always_and_no_color(vf_offline: Invoker, monkeypatch: pytest.MonkeyPatch) -> None:
    forced = vf_offline("--color", "always", "config", "show")
    assert "\x1b[" in forced.stdout
    assert "\x1b[" not in vf_offline("config", "show").stdout  # not a terminal
    monkeypatch.setenv("NO_COLOR", "1")
    failed = vf_offline("config", "set", "nope", "x")
    assert "\x1b[" not in failed.stderr
    assert "\x1b[" in vf_offline("--color", "always", "config", "show").stdout


def test_bad_base_url_is_a_usage_error(vf_offline: Invoker) -> None:
    result = vf_offline("--base-url", "ftp://example", "flows", "list")
    assert result.exit_code == 2
    assert "base_url must be 'local' or an http(s) URL" in result.stderr


def test_a_config_file_that_is_a_directory_is_a_usage_error(
    vf_offline: Invoker, tmp_path: Path
) -> None:
    (tmp_path / "config" / "config.toml").mkdir(parents=True)  # a directory in its place
    result = vf_offline("config", "set", "timeout", "5")
    assert result.exit_code == 2 and "is not a file" in result.stderr, result.stderr


def test_help_summaries_are_whole_sentences(vf_offline: Invoker) -> None:
    result = vf_offline("ssh-keys", "--help")
    summary = " ".join(result.stdout.split())  # as wrapped to the terminal
    assert "(such as ~/.ssh/id_ed25519.pub), or --default." in summary


def _command_paths(group: click.Group, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    ctx = click.Context(group)
    paths = []
    for name in group.list_commands(ctx):  # the groups load their commands lazily
        paths.append((*path, name))
        if isinstance(command := group.get_command(ctx, name), click.Group):
            paths.extend(_command_paths(command, (*path, name)))
    return paths


def test_no_help_shows_a_range_with_no_bound(vf_offline: Invoker) -> None:
    # Found by QA: `tasks run --help` said `--max-price FLOAT RANGE ... [x<=None]`.
    paths = _command_paths(cli)
    assert ("tasks", "run") in paths and len(paths) > 40
    for path in paths:
        result = vf_offline(*path, "--help")
        assert result.exit_code == 0, path
        assert "None" not in result.stdout, (path, result.stdout)
    run = " ".join(vf_offline("tasks", "run", "--help").stdout.split())
    assert "--max-price FLOAT Most to pay per hour." in run


def test_server_commands_refuse_a_base_url_they_would_ignore(vf_offline: Invoker) -> None:
    # `--base-url URL server status` reported on the default home, silently (found by QA).
    for command in (["status"], ["stop"], ["logs"], ["start"]):
        result = vf_offline("--base-url", "http://me:pw-sekret@127.0.0.1:9/v1", "server", *command)
        assert result.exit_code == 2, (command, result.output)
        assert "manages the local server of a home" in result.stderr
        assert "pw-sekret" not in result.stderr


def test_a_key_no_header_can_carry_is_refused_without_showing_it(vf: Invoker) -> None:
    # Found by QA: a key read from a file saved with Windows line endings kept its "\r",
    # and the HTTP library's error quoted the whole Authorization header.
    result = vf("--api-key", "tok-zzz-secret-7\r", "flows", "list")
    assert result.exit_code == 2, result.stderr
    assert "api_key holds a control" in result.stderr
    assert "tok-zzz-secret-7" not in result.stdout + result.stderr
    # Found by QA: a key longer than a server reads in a header (a whole file given as
    # the key) was answered 400 by the server with its start quoted, and the CLI showed it
    result = vf("--api-key", "tok-zzz-secret-7" + "k" * 9000, "flows", "list")
    assert result.exit_code == 2, result.stderr
    assert "api_key is 9016 characters long" in result.stderr
    assert "tok-zzz-secret-7" not in result.stdout + result.stderr


def test_an_id_longer_than_any_is_refused_before_it_is_sent(vf: Invoker) -> None:
    # Found by QA: a 9,000-character id made a request line the server cannot read;
    # its plain-text 400 quoted the line, and the CLI showed that as the error
    for args in (["flows", "get"], ["runs", "get"], ["tasks", "status"]):
        result = vf(*args, "x" * 9000)
        assert result.exit_code == 2, (args, result.stderr)
        assert "no id is 9000 characters long" in result.stderr
        assert "x" * 100 not in result.stderr


def test_an_empty_api_key_given_is_refused_not_replaced(vf: Invoker) -> None:
    # Found by QA: `--api-key "$KEY"` with an empty KEY ran as the home's admin.
    for key in ("", "  "):
        result = vf("--api-key", key, "tokens", "list")
        assert result.exit_code == 2 and "--api-key" in result.stderr, result.stderr
        assert result.stdout == ""


@pytest.mark.parametrize(
    ("args", "option", "problem"),
    [
        (("runs", "list", "--limit", "1" + "0" * 22), "--limit", "is too large"),
        (("tasks", "run", "--cpus", "9" * 20, "--", "true"), "--cpus", "is too large"),
        (("volumes", "create", "--size-gb", "9" * 30), "--size-gb", "is too large"),
        (("tasks", "run", "--max-price", "nan", "--", "true"), "--max-price", "not a finite"),
        (("tasks", "run", "--max-run-time", "-inf", "--", "true"), "--max-run-time", "finite"),
        (("tasks", "status", "t", "--watch", "--interval", "inf"), "--interval", "not in the"),
        (("server", "start", "--idle-timeout", "nan"), "--idle-timeout", "not a finite"),
        (("reservations", "create", "--hours", "1e300"), "--hours", "is too large"),
        (("server", "--home", "", "status"), "--home", "an empty path names no home"),
        (("serve", "--home", " "), "--home", "an empty path names no home"),
    ],
)
def test_numbers_and_homes_no_command_can_use_are_usage_errors(
    vf_offline: Invoker, args: tuple[str, ...], option: str, problem: str
) -> None:
    """Each was a Python message (a slice, the JSON encoder, a sleep's overflow), taken
    as given (NaN), or the working directory as the home."""
    result = vf_offline(*args)
    assert result.exit_code == 2, result.stderr
    assert f"Invalid value for '{option}'" in result.stderr and problem in result.stderr


@pytest.mark.parametrize("args", [("--json", "--version"), ("--version", "--json")])
def test_version_as_json(vf_offline: Invoker, args: tuple[str, ...]) -> None:
    result = vf_offline(*args)
    assert result.exit_code == 0
    assert json.loads(result.stdout) == {"version": vi_flow.__version__}
    assert vf_offline("--version").stdout == f"vi-flow, version {vi_flow.__version__}\n"


@pytest.mark.parametrize(
    ("typed", "meant"),
    [
        ("2026-12-07 08:00:00Z", "2026-12-07T08:00:00+00:00"),  # as the tables print it
        ("2026-12-07T08:00:00.5Z", "2026-12-07T08:00:00.500000+00:00"),
        ("2026-12-07T08:00:00.123456789+01:00", "2026-12-07T08:00:00.123456+01:00"),
        ("2026-12-07T08:00", "2026-12-07T08:00:00"),  # no zone: local, as documented
    ],
)
def test_a_time_is_read_alike_on_every_python(typed: str, meant: str) -> None:
    # QA: a Z, or a fraction of a second not 3 or 6 digits long, was refused on 3.10
    from vi_flow.cli._output import iso_time

    assert iso_time(typed).isoformat() == meant


def test_config_show_names_the_total_a_number_timeout_sets(vf_offline: Invoker) -> None:
    # QA: `config set timeout 5` bounds each whole call to 5 s (its `total`), and the
    # table showed only the connect and read parts, as if a slow answer could go on
    assert vf_offline("config", "set", "timeout", "5").exit_code == 0
    row = [line for line in vf_offline("config", "show").stdout.splitlines() if "timeout" in line]
    assert row[0].split("\t")[1] == "total 5s, connect 5s, read 5s", row


def test_a_time_a_table_cannot_write_as_a_date_is_shown_as_its_milliseconds() -> None:
    # QA: a reservation ending in the year 10000 (accepted then) made every
    # `reservations list` and `get` fail with "year 10000 is out of range"
    from vi_flow.cli._output import when

    assert when(253_402_300_799_999) == "9999-12-31 23:59:59Z"
    assert when(253_402_304_399_999) == "253402304399999 ms since the epoch"
