"""``vi-flow ssh --config-file``'s writer, from several processes at once."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

WRITER = """
import sys, time
from pathlib import Path
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
