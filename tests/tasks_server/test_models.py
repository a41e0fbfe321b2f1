"""The task models: GPU shorthand, YAML configs, volume specs and the wire shape."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vi_flow.models import from_wire, to_wire
from vi_flow.models.limits import MAX_LOG_TAIL_BYTES
from vi_flow.models.loglines import LineSplitter
from vi_flow.models.tasks import (
    GPURequest,
    TaskConfig,
    TaskOutputFile,
    TaskStatus,
    VolumeSpec,
    parse_gpu,
)
from vi_flow.server.tasks.files import UnsafePath, list_outputs, open_output, tail_lines
from vi_flow.server.tasks.logfile import READ_SIZE

from ..another_user import as_another_user, shared_with_another_user


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a100", ("a100", 1, None)),
        ("A100:4", ("a100", 4, None)),
        ("4xa100", ("a100", 4, None)),
        ("gpu:40gb", (None, 1, 40)),
        ("gpu:40GB:2", (None, 2, 40)),
        ("gpu", (None, 1, None)),
        ("h100-80gb:8", ("h100-80gb", 8, None)),
    ],
)
def test_parse_gpu(text: str, expected: tuple[str | None, int, int | None]) -> None:
    assert parse_gpu(text) == GPURequest(*expected)


@pytest.mark.parametrize("text", ["", "a100:0", "a100:65", "a100:x", ":2", "gpu:gb", "a 100"])
def test_parse_gpu_names_the_bad_input(text: str) -> None:
    with pytest.raises(ValueError, match="invalid GPU request"):
        parse_gpu(text)


def test_config_from_yaml_and_wire_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "task.yaml"
    path.write_text(
        "name: train\n"
        "command: [python, train.py]\n"
        "gpu: a100:2\n"
        "min_gpu_memory_gb: 40\n"
        "maxRunTime: 60\n"
        "env: {EPOCHS: 3, FAST: true}\n"
        "volumes:\n"
        "  - {volume_id: vol_1, mount_path: /data}\n"
    )
    config = TaskConfig.from_yaml(path)
    assert config.command == ["python", "train.py"]
    assert config.env == {"EPOCHS": "3", "FAST": "true"}
    assert config.volumes == [VolumeSpec(mount_path="/data", volume_id="vol_1")]
    assert config.gpu_request() == GPURequest("a100", 2, 40)
    wire = to_wire(config)
    assert wire["volumes"][0]["volumeId"] == "vol_1" and wire["maxRunTime"] == 60
    assert from_wire(wire, TaskConfig) == config
    (tmp_path / "null.yaml").write_text("command: x\nenv: {EPOCHS: null}\n")
    with pytest.raises(ValueError, match=r"env\.EPOCHS must be text, a number or a boolean"):
        TaskConfig.from_yaml(tmp_path / "null.yaml")
    (tmp_path / "bad.yaml").write_text("nme: x\n")
    with pytest.raises(ValueError, match="unknown task config field 'nme'"):
        TaskConfig.from_yaml(tmp_path / "bad.yaml")
    (tmp_path / "alias.yaml").write_text("command: &c [sleep, '1']\nname: *c\n")
    with pytest.raises(ValueError, match=r"alias.yaml:2:7: not valid YAML: aliases \(\*c\)"):
        TaskConfig.from_yaml(tmp_path / "alias.yaml")


def test_status_is_open_and_knows_terminal() -> None:
    assert TaskStatus("completed").terminal and not TaskStatus("running").terminal
    future = TaskStatus("preempted")
    assert not future.known and future.value == "preempted"


def test_file_helpers(tmp_path: Path) -> None:
    log = tmp_path / "log"
    log.write_bytes(b"".join(b"line %d\n" % i for i in range(100_000)))
    assert tail_lines(tmp_path, log, 2) == ["line 99998", "line 99999"]
    assert tail_lines(tmp_path, tmp_path / "missing", 5) == []
    long = tmp_path / "long.log"
    long.write_bytes(b"first\n" + b"a" * (3 * READ_SIZE) + b"z")  # one line of 768 KiB
    assert tail_lines(tmp_path, long, 1) == ["a" * (READ_SIZE - 1) + "z"]  # its end only
    # Read whole, the long line is three pieces of READ_SIZE bytes and the rest, as a
    # follow hands it out (loglines.MAX_LINE): "first" is the fifth line from the end.
    assert tail_lines(tmp_path, long, 5) == ["first", *["a" * READ_SIZE] * 3, "z"]
    # QA: a task printed 400 MB without a newline, and tail=100000 read all of it into
    # one answer (the server held 500 MB more, and other organizations waited). A tail
    # is now at most MAX_LOG_TAIL_BYTES; the line that bound cuts is left out...
    huge = tmp_path / "huge.log"
    huge.write_bytes(b"x" * (MAX_LOG_TAIL_BYTES + 3 * READ_SIZE) + b"\nbefore\nlast\n")
    assert tail_lines(tmp_path, huge, 100_000) == ["before", "last"]
    # ... unless it is the log's last: then its end, as pieces of READ_SIZE.
    huge.write_bytes(b"y" * (MAX_LOG_TAIL_BYTES + 3 * READ_SIZE + 5))
    end = tail_lines(tmp_path, huge, 100_000)
    assert sum(map(len, end)) == MAX_LOG_TAIL_BYTES and set("".join(end)) == {"y"}
    many = tmp_path / "many.log"  # lines cut where the bound falls, whole ones kept
    many.write_bytes(b"".join(b"%07d%s\n" % (i, b"." * 992) for i in range(9000)))
    kept = tail_lines(tmp_path, many, 100_000)
    assert kept[-1].startswith("0008999") and all(len(line) == 999 for line in kept)
    assert len(kept) == MAX_LOG_TAIL_BYTES // 1000
    euros = tmp_path / "euros.log"  # QA: the end of a long line began with U+FFFD
    euros.write_bytes("€".encode() * 100_000)  # 300,000 bytes: a read starts mid-character
    [end] = tail_lines(tmp_path, euros, 1)
    assert end == "€" * (len(end)) and len(end) == READ_SIZE // 3
    # QA: lines of exactly READ_SIZE bytes lost their first bytes, or were left out
    for end in (b"\n", b"\r\n"):
        exact = tmp_path / "exact.log"
        exact.write_bytes(b"a" * READ_SIZE + end + b"b" * READ_SIZE + end)
        assert tail_lines(tmp_path, exact, 1) == ["b" * READ_SIZE]
        assert tail_lines(tmp_path, exact, 2) == ["a" * READ_SIZE, "b" * READ_SIZE]
        assert tail_lines(tmp_path, exact, 3) == ["a" * READ_SIZE, "b" * READ_SIZE]
        exact.write_bytes(b"x" * 3 * READ_SIZE + end)  # the end of a longer line, whole pieces
        assert tail_lines(tmp_path, exact, 1) == ["x" * READ_SIZE]
    (tmp_path / "link").symlink_to(log)  # a link a task put in place of its log
    assert tail_lines(tmp_path, tmp_path / "link", 5) == []
    splitter = LineSplitter()
    assert splitter.feed(b"a\nb") == ["a"]
    assert splitter.feed(b"c\r\n") == ["bc"]
    assert splitter.feed(b"tail") == [] and splitter.flush() == ["tail"]
    out = tmp_path / "out"
    (out / "x").mkdir(parents=True)
    (out / "x" / "y").write_bytes(b"model")
    (out / "link").symlink_to(tmp_path)
    (out / "file-link").symlink_to(log)
    (out / "inner-link").symlink_to(out / "x" / "y")
    for bad in ("../log", "/etc/passwd", "a/../../log", "", "/", ".", "./"):
        with pytest.raises(UnsafePath):
            open_output(out, bad)
    for refused in ("link/log", "file-link", "inner-link", "x", "missing"):  # no link followed
        assert open_output(out, refused) is None, refused
    fd = open_output(out, "./x//y")
    assert fd is not None
    with os.fdopen(fd, "rb") as handle:
        assert handle.read() == b"model"
    assert list_outputs(out) == [TaskOutputFile("x/y", 5)]  # the links are not listed
    assert list_outputs(tmp_path / "missing") == []
    (tmp_path / "swapped").symlink_to(out)  # the output directory itself a link
    assert list_outputs(tmp_path / "swapped") == []
    assert open_output(tmp_path / "swapped", "x/y") is None


def test_a_server_that_is_not_root_lists_a_directory_its_task_made_unreadable() -> None:
    # QA AZ: as root, `mkdir ckpt; ... chmod 000 ckpt` listed ckpt's files; as another
    # user they were left out without a word, and get_model missed the checkpoint
    def listed_as_a_server_that_is_not_root(out: Path) -> bool:
        (out / "ckpt" / "deep").mkdir(parents=True)
        (out / "ckpt" / "c1.bin").write_bytes(b"c1")
        (out / "ckpt" / "deep" / "d.bin").write_bytes(b"d")
        (out / "model.bin").write_bytes(b"w")
        (out / "ckpt" / "deep").chmod(0o000)
        (out / "ckpt").chmod(0o000)
        out.chmod(0o300)  # the output directory itself, unreadable too
        return list_outputs(out) == [
            TaskOutputFile("ckpt/c1.bin", 2),
            TaskOutputFile("ckpt/deep/d.bin", 1),
            TaskOutputFile("model.bin", 1),
        ]

    with shared_with_another_user("vi-flow-outputs-") as shared:  # its files are made in it
        assert as_another_user(lambda: listed_as_a_server_that_is_not_root(shared / "out"))


def test_an_output_the_server_may_not_read_is_403_not_404() -> None:
    # QA: on a server that is not root, an output its task made mode 000 was listed with
    # its size, and its download answered 404 "not found"
    from vi_flow.server.errors import APIProblem
    from vi_flow.server.routes.tasks import _open_output

    def refusal(out: Path, path: str) -> tuple[int, str, bool] | None:
        try:
            _open_output(out, path)
        except APIProblem as problem:
            return problem.status, problem.code, path in problem.message
        return None

    def outputs_as_a_server_that_is_not_root(out: Path) -> bool:
        (out / "closed").mkdir(parents=True)
        (out / "closed" / "inside").write_bytes(b"x")
        (out / "closed").chmod(0o000)
        (out / "secret").write_bytes(b"weights")
        (out / "secret").chmod(0o000)
        (out / "open").write_bytes(b"fine")
        answers = [refusal(out, path) for path in ("secret", "closed/inside")]
        fd = _open_output(out, "open")
        readable = fd is not None and os.read(fd, 10) == b"fine"
        if fd is not None:
            os.close(fd)
        missing = _open_output(out, "missing") is None
        return answers == [(403, "PERMISSION_DENIED", True)] * 2 and readable and missing

    with shared_with_another_user("vi-flow-outputs-") as shared:  # its files are made in it
        assert as_another_user(lambda: outputs_as_a_server_that_is_not_root(shared / "out"))
