"""``vi-flow demo`` end to end, as a real process on a private home."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from .test_subprocess import _cli


def test_demo_runs_to_the_end(tmp_path: Path) -> None:
    home = tmp_path / "demo [/] home"  # once read as markup: MarkupError
    env = {k: v for k, v in os.environ.items() if not k.startswith("VI_FLOW_BASE")}
    out = subprocess.run(
        [*_cli(), "demo", "--home", str(home)],
        capture_output=True, text=True, env=env, timeout=90,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr + out.stdout
    assert "answer: Oslo: light rain, 9 °C" in out.stdout
    assert "epoch 12/12 loss" in out.stdout
    assert "Done in" in out.stdout and "Try next" in out.stdout
    models = list((home / "models").rglob("model.json"))
    assert len(models) == 1
    assert json.loads(models[0].read_text())["epochs"] == 12
