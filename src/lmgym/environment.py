"""What a run or a benchmark ran on: the machine, and the versions of the libraries that compute.

Timings depend on both (this project's own CI machine has been an AVX-512 CPU on some days and an AVX2 AMD EPYC on
others), so `benchmarks/` write `machine` into their JSON lines and every start of a training run, new or
resumed, appends `environment` to its folder's ``environment.jsonl`` (tracking.RunDir).
"""

from __future__ import annotations

import os
import platform
import re
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

LIBRARIES = ("lmgym", "torch", "transformers", "accelerate", "peft", "trl")  # versions recorded when installed


def _cpu_name() -> str:
    """The first processor's model name in /proc/cpuinfo, with its family and model numbers (a virtual machine
    may call an EPYC just "AMD EPYC"); the platform's own name elsewhere."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if not line.strip():
                break
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or platform.machine()
    if "cpu family" in fields and "model" in fields:
        name += f" (family {fields['cpu family']}, model {fields['model']})"
    return name


def machine() -> dict[str, Any]:
    """What a benchmark ran on: the CPU's name, the vector instruction set PyTorch's CPU kernels use on it, the
    cores this process may run on, the torch version and its BLAS, and the GPU when there is one. Which kernel
    is faster at a shape is the CPU's to say (on the AVX2 EPYC, oneDNN's GEMM computes the bundled model's LM
    head forward in 0.70-0.86x the time of MKL's, which `torch.mm` uses)."""
    blas = re.search(r"Math Kernel Library Version ([\d.]+)", torch.__config__.show())
    return {
        "cpu": _cpu_name(),
        "isa": torch.backends.cpu.get_cpu_capability(),
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch": torch.__version__,
        "blas": f"MKL {blas.group(1)}" if blas else "not MKL",
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def library_versions() -> dict[str, str]:
    """The installed version of each of `LIBRARIES` (those that are installed)."""
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def environment(start_iteration: int, processes: int, device: str) -> dict[str, Any]:
    """One start of a training run: when (UTC), from which iteration, how many processes on which device type,
    Python and the libraries' versions, and `machine`."""
    return {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "start_iteration": start_iteration,
        "processes": processes,
        "device": device,
        "python": platform.python_version(),
        "versions": library_versions(),
        "machine": machine(),
    }
