"""The memory sampler on a real process tree (this test process and a child it starts)."""

from __future__ import annotations

import math
import subprocess
import sys

import psutil
import pytest

from labkit.errors import InvalidInput
from labkit.memory import EngineMemory, MemorySampler, child_pids, new_children


@pytest.fixture
def child():
    before = child_pids()
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        yield before, proc
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)


def test_new_children_finds_the_child_started_since_the_baseline(child):
    before, proc = child
    assert [c.pid for c in new_children(before)] == [proc.pid]
    assert new_children(child_pids()) == []


def test_uss_and_pss_are_read_within_the_cpu_budget_and_at_phase_edges(child):
    _, proc = child
    scope = EngineMemory([psutil.Process(proc.pid)])
    # A budget this small means: after one page-table walk, none for a very long time.
    sampler = MemorySampler(scope, interval_s=60, device=False, cpu_budget=1e-9)
    first = sampler.sample()
    assert first["pss_bytes"] > 0 and first["uss_bytes"] > 0
    cheap = sampler.sample()
    assert cheap["rss_bytes"] > 0 and math.isnan(cheap["pss_bytes"]) and math.isnan(cheap["uss_bytes"])
    with sampler.phase("level 1"):
        sampler.sample()
    rows = sampler.frame()
    edges = rows[rows["phase"] == "level 1"]
    assert len(edges) == 3 and edges["pss_bytes"].notna().sum() == 2  # entry and exit
    assert (sampler.peaks()["pss_bytes"] > 0).all()
    # The whole core as budget: every sample may walk the page tables.
    generous = MemorySampler(scope, interval_s=60, device=False, cpu_budget=1.0)
    assert all(generous.sample()["pss_bytes"] > 0 for _ in range(3))


def test_a_zero_budget_reads_uss_and_pss_only_at_phase_edges(child):
    _, proc = child
    sampler = MemorySampler(EngineMemory([psutil.Process(proc.pid)]), interval_s=60, device=False, cpu_budget=0)
    assert math.isnan(sampler.sample()["pss_bytes"])  # not even the first free-running sample
    with sampler.phase("level 1"):
        assert math.isnan(sampler.sample()["pss_bytes"])
    rows = sampler.frame()
    assert rows["pss_bytes"].notna().tolist() == [False, True, False, True]


def test_bad_sampler_settings_are_refused():
    with pytest.raises(InvalidInput, match="interval_s"):
        MemorySampler(EngineMemory(), interval_s=0)
    with pytest.raises(InvalidInput, match="cpu_budget"):
        MemorySampler(EngineMemory(), cpu_budget=2)
    with pytest.raises(InvalidInput, match="cpu_budget"):
        MemorySampler(EngineMemory(), cpu_budget=-0.1)
