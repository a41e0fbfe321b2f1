"""Settings precedence: arguments > VI_FLOW_* env > config file > defaults."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import vi_flow
from vi_flow import Timeout
from vi_flow._config import config_path, read_config_file, resolve_settings, write_config_value


def test_defaults_are_local_with_home_from_env(tmp_path: Path) -> None:
    settings = resolve_settings()
    assert settings.base_url == "local" and settings.is_local
    assert settings.home == tmp_path / "home"
    assert settings.max_retries == 2
    assert settings.timeout == Timeout()


def test_argument_beats_env_beats_file(monkeypatch: pytest.MonkeyPatch) -> None:
    write_config_value("base_url", "http://127.0.0.1:1/v1")
    write_config_value("organization_id", "org_file")
    write_config_value("max_retries", "5")
    assert resolve_settings().base_url == "http://127.0.0.1:1/v1"
    assert resolve_settings().max_retries == 5
    monkeypatch.setenv("VI_FLOW_BASE_URL", "http://127.0.0.1:2/v1")
    monkeypatch.setenv("VI_FLOW_ORGANIZATION_ID", "org_env")
    settings = resolve_settings()
    assert (settings.base_url, settings.organization_id) == ("http://127.0.0.1:2/v1", "org_env")
    settings = resolve_settings(base_url="http://127.0.0.1:3/v1", organization_id="org_arg")
    assert (settings.base_url, settings.organization_id) == ("http://127.0.0.1:3/v1", "org_arg")


def test_config_file_is_private_and_keeps_other_keys() -> None:
    write_config_value("api_key", "secret")
    write_config_value("timeout", "12")
    path = config_path()
    assert os.stat(path).st_mode & 0o777 == 0o600
    settings = resolve_settings()
    assert settings.api_key == "secret"
    assert settings.timeout == Timeout(12, 12, 12)
    assert "secret" not in repr(settings)


def test_bad_values_are_named() -> None:
    with pytest.raises(ValueError, match="ftp://x"):
        resolve_settings(base_url="ftp://x")
    with pytest.raises(ValueError, match="max_retries"):
        resolve_settings(max_retries=-1)
    with pytest.raises(ValueError, match="colour"):
        write_config_value("colour", "red")
    with pytest.raises(ValueError, match="timeout"):
        Timeout(connect=-1)
    for endless in (float("inf"), float("nan")):  # inf overflowed inside aiohttp's timer
        with pytest.raises(ValueError, match="timeout must be a positive number of seconds"):
            Timeout.coerce(endless)
        with pytest.raises(ValueError, match="timeout"):
            resolve_settings(timeout=endless)
    for retries in ("x", 2.7, True):
        with pytest.raises(ValueError, match="max_retries must be a whole number"):
            resolve_settings(max_retries=retries)  # type: ignore[arg-type]


def test_arguments_of_the_wrong_type_are_named_at_once() -> None:
    # QA: Client(api_key=5) raised AttributeError 'int' object has no attribute 'isascii'
    # on the first call; Client(home=5) pathlib's TypeError, naming no argument.
    for name in ("api_key", "organization_id", "base_url", "http_transport"):
        with pytest.raises(TypeError, match=rf"^{name} must be a string, got int$"):
            resolve_settings(**{name: 5})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^home must be a path \(str or os.PathLike\), got int$"):
        resolve_settings(home=5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="api_key must be a string, got bytes") as info:
        vi_flow.Client(api_key=b"vf_secret")  # type: ignore[arg-type]
    assert "secret" not in str(info.value)


def test_broken_config_file_names_the_file() -> None:
    path = config_path()
    path.parent.mkdir(parents=True)
    path.write_text("api_key = [unclosed\n")
    with pytest.raises(ValueError, match=str(path)):
        resolve_settings()


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("api_key = 12", "api_key must be a string, got an integer"),
        ("organization_id = true", "organization_id must be a string, got a boolean"),
        ("home = 1970-01-01", "home must be a string, got a date or time"),
        ("timeout = true", "timeout must be a number, got a boolean"),
        ("max_retries = [1]", "max_retries must be a number, got an array"),
    ],
)
def test_a_config_value_of_the_wrong_toml_type_is_named(line: str, problem: str) -> None:
    # QA: `api_key = 12` was AttributeError: 'int' object has no attribute 'isascii'
    path = config_path()
    path.parent.mkdir(parents=True)
    path.write_text(line + "\n")
    with pytest.raises(ValueError, match=f"^config file {path}: {problem}$"):
        resolve_settings()


@pytest.mark.parametrize(
    ("key", "value"), [("organization_id", 'a "quoted" back\\slash'), ("home", '/tmp/ü \\ "q"')]
)
def test_any_value_is_written_as_toml_that_reads_back(key: str, value: str) -> None:
    write_config_value(key, value)
    write_config_value("max_retries", "3")
    assert read_config_file(config_path())[key] == value
    assert resolve_settings().max_retries == 3  # and a client reads the file


@pytest.mark.parametrize("value", ["a\tb", "a\nb", "\x1b[31mred"])
def test_a_value_with_a_control_character_is_refused_as_it_is_set(value: str) -> None:
    # QA AP: `config set KEY -` took them from stdin; a header value or a path that holds
    # one is refused when used (or draws on the terminal), so setting it is refused
    for key in ("organization_id", "home"):
        with pytest.raises(ValueError, match="control"):
            write_config_value(key, value)
    assert not config_path().exists()


def test_config_sets_at_once_keep_every_key_and_readers_never_see_it_half_written(
    tmp_path: Path,
) -> None:
    # QA: six `config set`s at once kept one to five of the six keys, and a command that
    # read the file while it was rewritten in place found it empty (and used the default
    # local server instead of the configured one)
    import subprocess
    import sys

    path = tmp_path / "config.toml"
    write_config_value("base_url", "http://127.0.0.1:1/v1", path)
    keys = {"api_key": "k", "organization_id": "o", "max_retries": "4", "timeout": "9",
            "log_transport": "http", "server_idle_timeout": "60"}  # fmt: skip
    writer = (
        "import sys; from pathlib import Path; from vi_flow._config import write_config_value\n"
        "for i in range(30): write_config_value(sys.argv[1], sys.argv[2], Path(sys.argv[3]))"
    )
    reader = (
        "import sys, time; from pathlib import Path; from vi_flow._config import read_config_file\n"
        "end, bad = time.monotonic() + 2, 0\n"
        "while time.monotonic() < end: bad += 'base_url' not in read_config_file(Path(sys.argv[1]))\n"
        "print(bad)"
    )
    watching = subprocess.Popen([sys.executable, "-c", reader, str(path)], stdout=subprocess.PIPE)
    writers = [
        subprocess.Popen([sys.executable, "-c", writer, key, value, str(path)])
        for key, value in keys.items()
    ]
    try:
        assert [w.wait(timeout=60) for w in writers] == [0] * len(keys)
        seen_without, _ = watching.communicate(timeout=60)
    finally:
        for process in (*writers, watching):
            process.kill()
            process.wait()
    assert set(vi_flow._config.read_config_file(path)) == {"base_url", *keys}
    assert seen_without.strip() == b"0"
    assert path.stat().st_mode & 0o777 == 0o600


def test_timeout_none_means_no_limit_on_the_constructor_as_on_with_options(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # QA: Client(timeout=None) kept the default limits (None read as "not given"), while
    # with_options(timeout=None) removed them, as Timeout's docstring says None does.
    monkeypatch.setenv("VI_FLOW_TIMEOUT", "7")
    unlimited = Timeout(connect=None, read=None, total=None)
    assert resolve_settings(timeout=None).timeout == unlimited
    assert resolve_settings().timeout == Timeout(7, 7, 7)  # not given: the variable
    client = vi_flow.Client(base_url="http://127.0.0.1:9/v1", api_key="k", timeout=None)
    try:
        assert client.async_client.http.timeout == unlimited
        assert client.with_options(timeout=None).async_client.http.timeout == unlimited
    finally:
        client.close()
