"""The client's self-check: when the load generator, not the server, set the figures."""

from __future__ import annotations

import math

import pandas as pd
import psutil

import labkit
from labkit.loadgen import workloads
from labkit.loadgen.client import BUSY_CORE, ClientMeter, add_judgement, judge

from .fake_engine import FakeAsyncEngine, FakeEngine

SMALL = workloads.synthetic(input_tokens=8, output_tokens=4)


def test_a_saturated_load_process_or_late_requests_make_a_level_client_bound():
    quiet = {"client_busiest_core": 0.2, "client_processes": 1, "dispatch_delay_p99_ms": 0.5, "ttft_p50_ms": 40.0}
    assert judge(quiet) == ""
    busy = judge({**quiet, "client_busiest_core": BUSY_CORE + 0.05})
    assert busy.startswith("client-bound") and "80% of a core" in busy and "workers=N" in busy
    late = judge({**quiet, "dispatch_delay_p99_ms": 30.0})
    assert "30.0 ms late" in late
    # late, but a small share of a long TTFT (a slow server): not the client's doing
    assert judge({**quiet, "dispatch_delay_p99_ms": 30.0, "ttft_p50_ms": 2000.0}) == ""
    assert judge({"client_busiest_core": math.nan}) == ""  # nothing measured, nothing claimed


def test_the_summary_carries_each_levels_client_cpu_and_judgement():
    summary = pd.DataFrame({"mode": ["concurrency", "concurrency"], "level": [1, 64],
                            "dispatch_delay_p99_ms": [0.1, 0.2], "ttft_p50_ms": [5.0, 9.0]})
    client = pd.DataFrame({"phase": ["concurrency 1", "concurrency 64"], "client_processes": [1, 1],
                           "client_cpu_cores": [0.1, 0.95], "client_busiest_core": [0.1, 0.95]})
    out = add_judgement(summary, client)
    assert list(out["client_bound"]) == [False, True] and out["client_note"].iloc[1].startswith("client-bound")


def test_the_meter_reads_each_process_at_a_levels_edges():
    me = psutil.Process()
    meter = ClientMeter(lambda: [me])
    meter.begin()
    sum(i * i for i in range(300_000))  # some CPU to count
    meter.end("concurrency 1")
    row = meter.rows[0]
    assert row["phase"] == "concurrency 1" and row["client_processes"] == 1 and row["client_cpu_cores"] > 0
    off = ClientMeter(enabled=False)
    off.begin()
    off.end("concurrency 1")
    assert off.frame().empty


def test_only_a_client_of_a_server_is_judged_by_its_cpu():
    inproc = labkit.bench(FakeEngine(), concurrency=[2], requests_per_level=4, workload=SMALL, warmup=0,
                          progress=False)
    assert inproc.client.empty  # an engine in this process: its CPU is the engine's, not the client's
    remote = labkit.bench(FakeAsyncEngine(), concurrency=[2], requests_per_level=4, workload=SMALL, warmup=0,
                          progress=False)
    s = remote.summary.iloc[0]
    assert s["client_processes"] == 1 and "client_bound" in s and s["dispatch_delay_p99_ms"] >= 0


def test_workers_need_a_server():
    import pytest

    with pytest.raises(labkit.InvalidInput, match="runs inside this process"):
        labkit.bench(FakeEngine(), concurrency=[2], requests_per_level=2, workload=SMALL, progress=False, workers=2)


def test_ray_workers_need_ray_and_a_well_formed_count(monkeypatch):
    import sys

    import pytest

    from labkit.loadgen.ray_workers import ray_actors

    assert ray_actors("ray") is None and ray_actors("ray:3") == 3
    for bad in ("ray:0", "ray:x", "dask"):
        with pytest.raises(labkit.InvalidInput, match="'ray' or 'ray:N'"):
            ray_actors(bad)
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    with pytest.raises(labkit.InvalidInput, match=r"labkit\[ray\]"):
        labkit.bench(FakeAsyncEngine(), concurrency=[1], requests_per_level=1, workload=SMALL, progress=False,
                     workers="ray")
