"""What a run or a benchmark records about where it ran (lmgym.environment)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from lmgym import environment
from lmgym.environment import LIBRARIES, library_versions, machine


def test_machine_names_the_cpu_and_the_kernels_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    described = machine()
    assert described["isa"] == torch.backends.cpu.get_cpu_capability()
    assert 1 <= described["cores"] <= (os.cpu_count() or 1) and described["torch"] == torch.__version__
    assert described["blas"].startswith("MKL ") == torch.backends.mkl.is_available()
    assert described["gpu"] is None or torch.cuda.is_available()
    # The first processor's block of /proc/cpuinfo, with its family and model numbers.
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 1\nmodel name\t: AMD EPYC\n\n"
        "processor\t: 1\nmodel name\t: another\n"
    )
    real_path = environment.Path
    monkeypatch.setattr(environment, "Path", lambda p: cpuinfo if p == "/proc/cpuinfo" else real_path(p))
    assert machine()["cpu"] == "AMD EPYC (family 25, model 1)"


def test_library_versions_are_the_installed_ones() -> None:
    versions = library_versions()
    assert versions["lmgym"] and versions["torch"] == torch.__version__
    assert set(versions) <= set(LIBRARIES)
    record = environment.environment(3, 2, "cpu")
    assert (record["start_iteration"], record["processes"], record["device"]) == (3, 2, "cpu")
    assert record["versions"] == versions and record["machine"] == machine()
