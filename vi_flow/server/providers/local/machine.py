"""What the local machine offers: CPU cores, memory and GPUs (from ``nvidia-smi``).

:func:`detect_machine` reads it once at provider start; ``ServerSettings.extra`` may
override each part (``local_cpus``, ``local_memory_gb``, ``local_gpus``) for tests and
for machines where ``nvidia-smi`` is not on ``PATH``.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from typing import Any

import attrs

__all__ = ["GPUDevice", "Machine", "detect_machine", "normalize_gpu_name", "parse_nvidia_smi"]


@attrs.frozen
class GPUDevice:
    """One GPU of the machine.

    Attributes:
        index: The device index (``CUDA_VISIBLE_DEVICES`` value).
        gpu_type: Normalized model name (``a100``, ``h100``).
        memory_gb: Memory in GB.
    """

    index: int
    gpu_type: str
    memory_gb: int


@attrs.frozen
class Machine:
    """What this machine offers.

    Attributes:
        cpus: CPU cores the scheduler hands out.
        memory_gb: Memory in GB.
        gpus: The GPUs.
    """

    cpus: int
    memory_gb: int
    gpus: tuple[GPUDevice, ...] = ()

    def gpu_types(self) -> dict[str, list[GPUDevice]]:
        """GPUs grouped by type."""
        groups: dict[str, list[GPUDevice]] = {}
        for gpu in self.gpus:
            groups.setdefault(gpu.gpu_type, []).append(gpu)
        return groups

    def describe_gpus(self) -> str:
        """``"2 x a100 (80 GB)"`` or ``"no GPUs"``."""
        if not self.gpus:
            return "no GPUs"
        parts = [f"{len(g)} x {t} ({g[0].memory_gb} GB)" for t, g in self.gpu_types().items()]
        return ", ".join(parts)


_GPU_NOISE = {"nvidia", "geforce", "tesla", "quadro"}


def normalize_gpu_name(name: str) -> str:
    """``"NVIDIA A100-SXM4-80GB"`` -> ``"a100"``; ``"NVIDIA GeForce RTX 4090"`` -> ``"rtx4090"``."""
    words = [w for w in re.split(r"[\s_]+", name.lower()) if w and w not in _GPU_NOISE]
    if not words:
        return "gpu"
    if words[0] in ("rtx", "gtx") and len(words) > 1:
        return words[0] + words[1].split("-")[0]
    return words[0].split("-")[0]


def parse_nvidia_smi(text: str) -> tuple[GPUDevice, ...]:
    """GPUs from ``nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader,nounits``."""
    gpus = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 3 or not parts[0].isdigit():
            continue
        memory_mib = float(parts[2]) if parts[2].replace(".", "", 1).isdigit() else 0.0
        gpus.append(
            GPUDevice(int(parts[0]), normalize_gpu_name(parts[1]), round(memory_mib / 1024))
        )
    return tuple(gpus)


async def _detect_gpus() -> tuple[GPUDevice, ...]:
    exe = await asyncio.to_thread(shutil.which, "nvidia-smi")
    if exe is None:
        return ()
    try:
        proc = await asyncio.create_subprocess_exec(
            exe,
            "--query-gpu=index,name,memory.total",
            "--format=csv,noheader,nounits",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 15)
    except (OSError, asyncio.TimeoutError):
        return ()
    return parse_nvidia_smi(out.decode(errors="replace")) if proc.returncode == 0 else ()


def _memory_gb() -> int:
    try:
        pages = os.sysconf("SC_PHYS_PAGES")
        size = os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0
    return int(pages * size / 1024**3)


async def detect_machine(extra: dict[str, Any] | None = None) -> Machine:
    """Read the machine's CPUs, memory and GPUs (settings in ``extra`` override).

    ``extra["local_gpus"]`` is a list of ``{"type": "a100", "memory_gb": 80}`` (fake GPUs
    for tests and for machines where ``nvidia-smi`` is not on ``PATH``).
    """
    extra = extra or {}
    cpus = int(extra.get("local_cpus") or os.cpu_count() or 1)
    memory = int(extra.get("local_memory_gb") or _memory_gb())
    if "local_gpus" in extra:
        gpus = tuple(
            GPUDevice(i, str(g["type"]).lower(), int(g.get("memory_gb", 0)))
            for i, g in enumerate(extra["local_gpus"])
        )
    else:
        gpus = await _detect_gpus()
    return Machine(cpus=max(cpus, 1), memory_gb=memory, gpus=gpus)
