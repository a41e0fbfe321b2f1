"""``vi-flow ssh --config-file``'s writer, from several processes at once."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

WRITER = """
import sys, time
from pathlib import Path

import pytest
from vi_flow.cli._sshconfig import config_entry, write_entry
alias, path, start = sys.argv[1], Path(sys.argv[2]), float(sys.argv[3])
line = f"ssh -i /k -p 2222 -o StrictHostKeyChecking=yes {alias}@127.0.0.1"
entry = config_entry(line, alias)
time.sleep(max(0.0, start - time.time()))  # all at once, as commands a script started
write_entry(path, entry, alias)
"""


def test_entries_written_at_once_keep_each_other_and_the_user_s_own(tmp_path: Path) -> None:
    # QA: 6 to 10 `vi-flow ssh --config-file` at once lost aliases, the user's own entry,
    # and once left a torn file that ssh refused whole
    config = tmp_path / "config"
    own = "Host mine\n    HostName example.org\n"
    config.write_text(own)
    aliases = [f"box{i}" for i in range(10)]
    start = str(time.time() + 2.0)
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER, alias, str(config), start])
        for alias in aliases
    ]
    try:
        assert [w.wait(timeout=60) for w in writers] == [0] * len(aliases)
    finally:
        for writer in writers:
            writer.kill()
            writer.wait()
    text = config.read_text()
    assert text.endswith(own)
    for alias in aliases:
        assert text.count(f"Host {alias}\n") == 1 and f"    User {alias}\n" in text
    assert text.count("# >>> vi-flow ") == text.count("# <<< vi-flow ") == len(aliases)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".config.lock", "config"]


def test_the_file_s_own_bytes_and_line_ends_are_kept(tmp_path: Path) -> None:
    # QA: a CRLF file came back with LF ends, and one byte that is not UTF-8 made the
    # write fail with a codec's message and no path; a quoted pattern "box other" (one
    # pattern, which `ssh box` does not match) was taken for an entry for box
    from vi_flow.cli._sshconfig import config_entry, write_entry

    config = tmp_path / "config"
    own = b'Host "box other"\r\n    User caf\xe9\r\n'
    config.write_bytes(own)
    line = "ssh -i /k -p 2222 box@127.0.0.1"
    write_entry(config, config_entry(line, "box"), "box")
    write_entry(config, config_entry(line, "box"), "box")  # again: replaced
    data = config.read_bytes()
    assert data.endswith(own) and data.count(b"Host box\n") == 1


def test_a_linked_config_is_written_where_it_lies_and_a_loop_is_named(tmp_path: Path) -> None:
    from vi_flow.config import ConfigWriteError, read_config_file, write_config_value

    dotfile = tmp_path / "dotfiles" / "config.toml"
    dotfile.parent.mkdir()
    dotfile.write_text("timeout = 30.0\n")
    linked = tmp_path / "cfg" / "config.toml"
    linked.parent.mkdir()
    linked.symlink_to(dotfile)
    write_config_value("max_retries", "3", linked)  # QA: the link became a plain file
    assert linked.is_symlink() and read_config_file(dotfile) == {"timeout": 30.0, "max_retries": 3}
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    with pytest.raises(ConfigWriteError) as refused:  # named by its path, and why
        write_config_value("max_retries", "3", loop)
    assert f"cannot write the config file {loop}: Too many levels" in str(refused.value)
