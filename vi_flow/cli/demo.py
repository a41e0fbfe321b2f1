"""``vi-flow demo``: a guided tour on the home's local server, in well under a minute.

It creates a tool-calling flow (template -> tool -> template; a local Python function
answers the tool call) and a small training flow (a ``task`` block running a short
training loop that prints its loss and writes a model file to ``$VI_FLOW_OUTPUT_DIR``,
on the GPU when torch sees one), executes both with a live view, downloads the model
with ``get_model`` and ends with a summary and the commands to try next.
"""

from __future__ import annotations

import os
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ._failures import CommandFailed, json_wanted
from ._live import RunView
from ._output import duration, kv_table, terminal_safe
from ._params import HomeDir
from ._state import CliState, state

if TYPE_CHECKING:
    from .. import Client
    from ..models.events import ToolCall

__all__ = ["TRAIN_SCRIPT", "demo"]

WEATHER = {
    "Oslo": {"summary": "light rain", "temp_c": 9},
    "Lima": {"summary": "sunny", "temp_c": 24},
}

ASSISTANT_FLOW: dict[str, Any] = {
    "name": "demo-weather-assistant",
    "inputs": [{"name": "city", "required": True, "description": "Where to look"}],
    "blocks": [
        {"block": "template", "id": "question",
         "settings": {"template": "What is the weather in {{ city }}?"}},
        {"block": "tool", "id": "lookup",
         "settings": {"tool": "get_weather", "arguments": {"city": "{{ city }}"}}},
        {"block": "template", "id": "answer",
         "settings": {"template": "{{ city }}: {{ steps.lookup.output.summary }}, "
                                  "{{ steps.lookup.output.temp_c }} °C"}},
    ],
}  # fmt: skip

TRAIN_SCRIPT = r"""
import json, os, random, shutil, subprocess, time
device = "cpu"
try:
    import torch
    if torch.cuda.is_available():
        device = "cuda:0 (" + torch.cuda.get_device_name(0) + ")"
except ImportError:
    torch = None
visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
if device == "cpu" and visible and shutil.which("nvidia-smi"):
    q = subprocess.run(["nvidia-smi", "-i", visible, "--format=csv,noheader",
                        "--query-gpu=name,memory.total,utilization.gpu"],
                       capture_output=True, text=True)
    if q.returncode == 0 and q.stdout.strip():
        print("assigned GPU " + visible + ": " + q.stdout.strip().splitlines()[0])
        print("(torch is not installed here: the loop itself runs on the CPU)")
print("training on", device, flush=True)
random.seed(0)
xs = [i / 10 for i in range(-20, 21)]
ys = [3.0 * x + 0.5 + random.uniform(-0.1, 0.1) for x in xs]
epochs = int(os.environ.get("EPOCHS", "12"))
if device.startswith("cuda"):
    X = torch.tensor(xs, device="cuda").unsqueeze(1)
    Y = torch.tensor(ys, device="cuda").unsqueeze(1)
    model = torch.nn.Linear(1, 1).cuda()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for epoch in range(1, epochs + 1):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(X), Y)
        loss.backward()
        opt.step()
        print(f"epoch {epoch:2d}/{epochs} loss {loss.item():.4f}", flush=True)
        time.sleep(0.05)
    w, b = model.weight.item(), model.bias.item()
else:
    w = b = 0.0
    for epoch in range(1, epochs + 1):
        gw = sum(2 * (w * x + b - y) * x for x, y in zip(xs, ys)) / len(xs)
        gb = sum(2 * (w * x + b - y) for x, y in zip(xs, ys)) / len(xs)
        w, b = w - 0.1 * gw, b - 0.1 * gb
        loss = sum((w * x + b - y) ** 2 for x, y in zip(xs, ys)) / len(xs)
        print(f"epoch {epoch:2d}/{epochs} loss {loss:.4f}", flush=True)
        time.sleep(0.05)
out = os.environ["VI_FLOW_OUTPUT_DIR"]
with open(os.path.join(out, "model.json"), "w") as fh:
    json.dump({"weight": w, "bias": b, "device": device, "epochs": epochs}, fh)
print(f"saved model.json: y = {w:.3f} x + {b:.3f}", flush=True)
"""


def training_flow(python: str, instance_type: str | None = None) -> dict[str, Any]:
    """The training flow: a ``task`` block running :data:`TRAIN_SCRIPT` with ``python``.

    Args:
        python: The interpreter the task runs.
        instance_type: A GPU instance type to ask for, when the server has GPUs.
    """
    settings: dict[str, Any] = {
        "command": [python, "-u", "-c", TRAIN_SCRIPT], "max_run_time": 120, "tail_lines": 5,
    }  # fmt: skip
    if instance_type:
        settings["instance_type"] = instance_type
    else:
        settings["cpus"] = 1
    return {
        "name": "demo-tiny-training",
        "blocks": [
            {"block": "task", "id": "train", "settings": settings},
            {"block": "template", "id": "report",
             "settings": {"template": "exit {{ steps.train.output.exitCode }}, "
                                      "{{ steps.train.output.artifacts | json }}"}},
        ],
    }  # fmt: skip


def get_weather(calls: list[ToolCall]) -> list[dict[str, Any]]:
    """The demo's local tool: answers each ``get_weather`` call from a tiny table."""
    answers = []
    for call in calls:
        city = str(call.function.parsed_arguments().get("city", ""))
        answers.append({"city": city, **WEATHER.get(city, {"summary": "unknown", "temp_c": 0})})
    return answers


def _home(given: Path | None) -> Path:
    if given is not None:
        return given
    if os.environ.get("VI_FLOW_HOME"):
        return Path(os.environ["VI_FLOW_HOME"])
    return Path(tempfile.mkdtemp(prefix="vi-flow-demo-"))


def _text(value: object) -> str:
    """``value`` for a line printed with markup: its own brackets and escapes shown as text."""
    from rich.markup import escape

    return escape(terminal_safe(str(value)))


def _section(cli: CliState, title: str) -> None:
    cli.console.print(f"\n[bold cyan]==> {title}[/]")


def _run_flow(cli: CliState, client: Client, flow_id: str, **kwargs: Any) -> RunView:
    mode = "live" if cli.interactive else "plain"
    view = RunView(cli.console, mode=mode, title=kwargs.pop("title", flow_id))
    with view:
        # the run ends with the demo: one whose reader went away (`| head`) is cancelled
        for event in client.flow(flow_id).events(cancel_on_disconnect=True, **kwargs):
            view.add(event)
    if view.final is None or view.final.status.value != "Succeeded":
        error = view.final.error if view.final else "the stream ended early"
        raise CommandFailed(f"demo run {view.run_id} did not succeed: {error}")
    return view


def _gpu_instance(client: Client) -> str | None:
    """The smallest GPU instance type the server offers now, if any."""
    gpus = [i for i in client.find_instances(limit=50) if i.gpu_count and i.available]
    return min(gpus, key=lambda i: i.gpu_count).instance_type if gpus else None


def _tour(cli: CliState, client: Client, home: Path) -> dict[str, Any]:
    _section(cli, "1/3  A tool-calling flow: template -> tool -> template")
    assistant = client.flows.create(ASSISTANT_FLOW)
    cli.console.print(f"created flow {assistant.flow_id}; the tool runs here, in this process")
    chat = _run_flow(
        cli,
        client,
        assistant.flow_id,
        parameters={"city": "Oslo"},
        tool_handler=get_weather,
        title="weather assistant",
    )
    assert chat.final is not None
    cli.console.print(f"[green]answer:[/] {_text(chat.final.output)}")

    _section(cli, "2/3  A training flow: a task block that prints its loss")
    gpu = _gpu_instance(client)
    trainer = client.flows.create(training_flow(sys.executable, gpu))
    where = f"on a {gpu} GPU" if gpu else "on 1 CPU (no GPU found)"
    cli.console.print(
        f"created flow {trainer.flow_id}; it trains {where}, its log streams as events"
    )
    train = _run_flow(cli, client, trainer.flow_id, title="tiny training")

    _section(cli, "3/3  Download the model the task wrote")
    assert train.run_id is not None
    model = client.get_model(train.run_id, save_dir=home / "models" / train.run_id)
    for path in model.files:
        cli.console.print(f"saved {_text(path)} ({path.stat().st_size} bytes)")
    return {"assistant": (assistant.flow_id, chat), "trainer": (trainer.flow_id, train),
            "model": model}  # fmt: skip


def _summary(cli: CliState, home: Path, result: dict[str, Any], seconds: float) -> None:
    assistant_id, chat = result["assistant"]
    trainer_id, train = result["trainer"]
    model = result["model"]
    _section(cli, f"Done in {seconds:.1f} s")
    kv_table(
        [
            ("home (VI_FLOW_HOME)", home),
            ("assistant flow", f"{assistant_id}  run {chat.run_id}  "
                               f"{chat.final.status.value} in {duration(chat.final.duration_ms)}"),
            ("training flow", f"{trainer_id}  run {train.run_id}  "
                              f"{train.final.status.value} in {duration(train.final.duration_ms)}"),
            ("model", ", ".join(str(p) for p in model.files) or "(no files)"),
        ]
    )  # fmt: skip
    cli.console.print(
        "\n[bold]Try next[/] in a shell here; each line sets VI_FLOW_HOME to the home above, "
        "where the demo's state is:"
    )
    for line in _try_next(home, assistant_id, trainer_id, train.run_id):
        # soft_wrap: a wrapped line would no longer paste as one command
        cli.console.print(f"  {line}", markup=False, highlight=False, soft_wrap=True)


def _try_next(home: Path, assistant_id: str, trainer_id: str, run_id: str) -> list[str]:
    """The commands to try next; each works alone, pasted in a fresh shell here.

    A fresh shell has neither the demo's home in its environment nor, when the demo ran
    in a virtual environment (``nox -s demo``), ``vi-flow`` on its ``PATH``.
    """
    vf = f"{_environment(home)} {_vi_flow_command()}"
    tool_result = shlex.quote('get_weather={"summary": "sunny", "temp_c": 24}')
    return [
        f"{vf} flows list",
        f"{vf} execute {assistant_id} --param city=Lima --tool-result {tool_result} --stream",
        f"{vf} runs watch {run_id}",
        f"{vf} tasks list",
        f"{vf} execute {trainer_id} --stream",
        f"{vf} server status        # the local server of the home, shared by these commands",
    ]


def _environment(home: Path) -> str:
    """The variables that point a command at the demo's data, as shell assignments."""
    from ..config import resolve_settings

    words = [f"VI_FLOW_HOME={shlex.quote(os.path.abspath(home))}"]
    if not resolve_settings().is_local:
        words.append("VI_FLOW_BASE_URL=local")  # the demo ran locally despite the settings
    return " ".join(words)


def _vi_flow_command() -> str:
    """This installation's ``vi-flow``, by path: its console script, else ``python -m``."""
    script = Path(sys.executable).parent / "vi-flow"
    if script.is_file():
        return shlex.quote(_shown(script))
    return f"{shlex.quote(_shown(Path(sys.executable)))} -m vi_flow.cli"


def _shown(path: Path) -> str:
    """``path`` relative to the current directory when it is inside it, else absolute."""
    absolute = Path(os.path.abspath(path))  # not resolved: a venv's python is a symlink
    try:
        relative = absolute.relative_to(os.getcwd())
    except ValueError:
        return str(absolute)
    return str(relative) if relative.parent != Path() else f"./{relative}"


@click.command()
@click.option(
    "--home",
    type=HomeDir(),
    help="State directory (default: VI_FLOW_HOME if set, else a new temporary one).",
)
def demo(home: Path | None) -> None:
    """Run the guided demo on the home's local server (no configuration needed).

    Creates a tool-calling flow and a small training flow, executes both with a live
    view, downloads the trained model and prints what to try next.
    """
    from .. import Client

    if json_wanted():  # QA: the global --json was ignored without a word
        raise click.UsageError("the demo is a guided tour to read and prints no JSON")
    cli = state()
    chosen = _home(home)
    cli.console.print(f"[bold]vi-flow demo[/] — the home's local server, home {_text(chosen)}")
    started = time.monotonic()
    with Client(base_url="local", home=chosen) as client:
        result = _tour(cli, client, chosen)
    _summary(cli, chosen, result, time.monotonic() - started)
