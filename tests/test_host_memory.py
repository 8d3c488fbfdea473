"""lmgym.host_memory: with ``keep``, a block freed and allocated again reuses its pages instead of faulting them
in afresh; the guards trim the heap before their copy only when the heap gives memory back."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from lmgym import host_memory
from lmgym.algos import guards
from lmgym.algos.guards import Rollback
from lmgym.host_memory import _libc

# Allocate and fill a tensor, free it, and again with smaller ones: the page faults of each round. (Each block is
# smaller than the one before: glibc's aligned allocation asks a few bytes more than the freed block held, so a
# block of the same size can land past it.) Run in a fresh process: the malloc settings are process-wide and last
# for the rest of the process.
_ROUNDS = """
import json, resource, sys, torch
if sys.argv[1] == "keep":
    from lmgym.host_memory import keep_freed_memory
    assert keep_freed_memory()
faults = []
for mib in (256, 224, 192, 160):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = torch.ones(mib * 2**18)  # every page written
    del block
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps(faults))
"""


def _faults(policy: str) -> list[int]:
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_ROUNDS), policy], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(_libc() is None, reason="the malloc settings are glibc's")
def test_keep_reuses_freed_pages_where_the_default_faults_them_in_again() -> None:
    pages = 160 * 2**20 // 4096
    release = _faults("release")
    keep = _faults("keep")
    # glibc's default maps a block this large on its own and unmaps it on free: every round faults every page.
    assert all(f > pages // 2 for f in release), release
    # Kept in the heap: the first round faults the pages in, the next ones reuse them.
    assert keep[0] > pages // 2, keep
    assert all(f < pages // 20 for f in keep[1:]), keep


@pytest.mark.parametrize("trim_heap", [True, False])
def test_the_rollback_copy_trims_the_heap_only_when_asked(monkeypatch: pytest.MonkeyPatch, trim_heap: bool) -> None:
    trims = []
    monkeypatch.setattr(guards, "release_free_heap", lambda: trims.append(1))
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    rollback = Rollback(copies=True, trim_heap=trim_heap)
    rollback.begin(1, {})
    rollback.changing(model, optimizer, {})
    assert len(trims) == (1 if trim_heap else 0)
    assert rollback.current().tensors is not None  # the copy is kept either way


def test_auto_keeps_freed_memory_on_a_cpu_only(monkeypatch: pytest.MonkeyPatch) -> None:
    kept = []
    monkeypatch.setattr(host_memory, "keep_freed_memory", lambda: kept.append(1) or True)
    assert host_memory.configure("auto", "cpu") and host_memory.configure("keep", "cuda")
    assert not host_memory.configure("auto", "cuda") and not host_memory.configure("release", "cpu")
    assert len(kept) == 2  # only the two settings that keep asked the allocator
