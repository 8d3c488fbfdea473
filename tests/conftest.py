"""Shared test settings.

The test machine has two cores shared with other work. One torch thread avoids OpenMP
spin-waits against other processes (10-100x slowdowns were seen with two threads).
"""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    # Per test, because trainers (config.threads) and other tests may change the global setting.
    torch.set_num_threads(1)
