"""Peak resident memory of a phase of a process (Linux: the kernel's high-water mark, reset on demand)."""

from __future__ import annotations

import resource
import sys
from pathlib import Path

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kib(field: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) to the current RSS; False where that is not possible,
    in which case `peak_rss_mib` falls back to the whole process's peak (ru_maxrss)."""
    try:
        _CLEAR_REFS.write_text("5")  # "5": reset the peak resident set size (proc(5))
    except OSError:
        return False
    return True


def current_rss_mib() -> float:
    kib = _status_kib("VmRSS")
    return kib / 1024 if kib is not None else float("nan")


def peak_rss_mib() -> float:
    """Peak RSS since the last `reset_peak_rss` (or since the process started), in MiB."""
    kib = _status_kib("VmHWM")
    if kib is not None:
        return kib / 1024
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss / (1024 * 1024) if sys.platform == "darwin" else maxrss / 1024  # bytes on macOS, KiB on Linux
