"""``vi-flow demo`` end to end, as a real process on a private home."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import vi_flow
import vi_flow.models
from tests.localserver.kit import stop_server

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


def test_a_demo_whose_reader_goes_away_ends_with_0_and_leaves_no_run_running(
    tmp_path: Path,
) -> None:
    # QA: `vi-flow demo | head -12` left the run it was showing Running on the server
    # (and `server stop` then refused); `| head -3` made rich exit 1.
    home = tmp_path / "demo-home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("VI_FLOW_BASE")}
    try:
        for lines in (3, 12):
            demo = subprocess.Popen(
                [*_cli(), "demo", "--home", str(home)],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
            )  # fmt: skip
            assert demo.stdout is not None
            for _ in range(lines):
                demo.stdout.readline()
            demo.stdout.close()  # as `head` does
            _, err = demo.communicate(timeout=60)
            assert demo.returncode == 0, err
            assert err == ""
        with vi_flow.Client(base_url="local", home=home) as client:
            deadline = time.monotonic() + 30
            while (
                running := [r.run_id for r in client.runs.list().all_items() if not _ended(r)]
            ) and (time.monotonic() < deadline):
                time.sleep(0.5)
        assert not running, f"still running after the demo ended: {running}"
    finally:
        stop_server(home)


def _ended(run: vi_flow.models.Run) -> bool:
    conditions = run.status.conditions
    return bool(conditions) and conditions[-1].condition.terminal
