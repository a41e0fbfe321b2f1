"""A home is used only by the user it belongs to (found by QA, as a user who is not root).

Root ran ``vi-flow flows list`` with ``VI_FLOW_HOME`` naming a directory another user had
made: the server started there and wrote its admin token into that user's
``admin-token`` file (they then ran tasks as uid 0), or, through links they had left at
``admin-token`` and ``logs/server.log``, overwrote and appended to files of their choosing.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from vi_flow.server.bootstrap import _write_private
from vi_flow.server.logs import _file_handler

from ..another_user import as_another_user
from .kit import cli, run_file

#: Another user: only root can give a file away, so the CLI tests need root.
OTHER = 65534  # nobody
needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="making a file of another user needs root (CI runs as root)"
)


@needs_root
def test_a_home_of_another_user_is_refused_and_left_as_it_was(home: Path) -> None:
    home.mkdir(mode=0o777)
    (home / "admin-token").write_text("theirs\n")
    os.chown(home, OTHER, OTHER)
    os.chown(home / "admin-token", OTHER, OTHER)
    done = cli(home, "flows", "list", check=False)
    assert done.returncode != 0
    assert f"cannot use {home} as the vi-flow home: it belongs to nobody" in done.stderr
    assert "server logs" not in done.stderr  # no hint at a log that was never written
    assert (home / "admin-token").read_text() == "theirs\n"
    assert run_file(home) is None and not (home / "state.db").exists()


@needs_root
def test_a_link_another_user_left_in_a_home_is_never_written_through(
    home: Path, tmp_path: Path
) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep\n")
    home.mkdir(mode=0o777)  # the user's own home, once open to everyone
    (home / "admin-token").symlink_to(victim)
    os.lchown(home / "admin-token", OTHER, OTHER)
    done = cli(home, "flows", "list", check=False)
    assert done.returncode != 0
    assert f"{home / 'admin-token'} belongs to nobody" in done.stderr, done.stderr
    assert victim.read_text() == "keep\n" and run_file(home) is None
    (home / "admin-token").unlink()  # once removed, the home is used as usual
    cli(home, "flows", "list")
    assert victim.read_text() == "keep\n"
    assert (home / "admin-token").is_file() and not (home / "admin-token").is_symlink()


@needs_root
@pytest.mark.parametrize("name", ["models", "state.db-journal"])
def test_the_demos_models_and_sqlites_journal_are_judged_too(
    home: Path, tmp_path: Path, name: str
) -> None:
    # QA AZ: a `models` link another user left sent `vi-flow demo`'s model to their
    # directory; their `state.db-journal` failed the start with "disk I/O error"
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    home.mkdir(mode=0o777)
    (home / name).symlink_to(theirs)
    os.lchown(home / name, OTHER, OTHER)
    done = cli(home, "flows", "list", check=False)
    assert done.returncode != 0
    assert f"{home / name} belongs to nobody" in done.stderr, done.stderr
    assert list(theirs.iterdir()) == [] and run_file(home) is None


def test_the_admin_token_replaces_a_link_instead_of_writing_through_it(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep\n")
    token = tmp_path / "admin-token"
    token.symlink_to(victim)
    _write_private(token, "new-token")
    assert victim.read_text() == "keep\n"
    assert not token.is_symlink() and token.read_text() == "new-token\n"
    assert token.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["admin-token", "victim"]


def test_the_server_log_is_never_opened_through_a_link(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep\n")
    victim.chmod(0o644)
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "server.log").symlink_to(victim)
    with pytest.raises(OSError):
        _file_handler(tmp_path / "logs" / "server.log", 1 << 20)
    assert victim.read_text() == "keep\n" and victim.stat().st_mode & 0o777 == 0o644


def test_a_home_or_config_that_cannot_be_made_is_said_so_not_retried() -> None:
    # QA AZ: a service account's HOME=/nonexistent: "Permission denied" alone, exit 6
    # ("transient, worth retrying"), and `config set` named neither the file nor what to do
    nowhere = Path("/proc/vi-flow-nowhere")  # a directory no one can make
    listed = cli(nowhere / "home", "flows", "list", check=False)
    assert listed.returncode == 1, listed.stderr
    assert f"cannot use {nowhere / 'home'} as the vi-flow home" in listed.stderr
    assert "set VI_FLOW_HOME to a directory of yours" in listed.stderr
    # QA BA: one under a file failed earlier, reading its run file: still exit 6, no hint
    a_file = Path(tempfile.mkdtemp(prefix="vi-flow-home-")) / "file"
    a_file.write_text("")
    try:
        under = cli(a_file / "home", "tasks", "list", check=False)
    finally:
        shutil.rmtree(a_file.parent)
    assert under.returncode == 1, under.stderr
    assert "Not a directory (set VI_FLOW_HOME to a directory of yours)" in under.stderr
    config = nowhere / "config"
    done = cli(nowhere / "home", "config", "set", "max_retries", "3", check=False,
               VI_FLOW_CONFIG_DIR=str(config))  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert f"cannot write the config file {config / 'config.toml'}" in done.stderr, done.stderr


@needs_root
def test_a_config_file_this_user_may_not_look_at_is_said_so_with_a_way_out() -> None:
    # QA BA: `sudo -u svc vi-flow ...` keeps HOME=/root: "error: /root/.config/vi-flow/
    # config.toml: Permission denied", naming no setting to change
    from vi_flow._config import read_config_file

    closed = Path(tempfile.mkdtemp(prefix="vi-flow-config-"))  # 0700, root's when root runs
    config = closed / "config.toml"

    def refused() -> bool:
        try:
            read_config_file(config)
        except ValueError as exc:
            return str(exc).startswith(f"cannot read the config file {config}: Permission") and (
                "set VI_FLOW_CONFIG to a file of yours" in str(exc)
            )
        return False

    try:
        assert as_another_user(refused)
    finally:
        shutil.rmtree(closed)
