"""Telemetry against the real servers: at 8 users the server's own metrics show the batch,
under one set of names for both engines, beside CPU by process role."""

from __future__ import annotations

import pytest

import labkit
from labkit.loadgen import workloads

LOAD = workloads.synthetic(input_tokens=64, output_tokens=48, ignore_eos=True)


@pytest.mark.parametrize("fixture, roles", [("llama_server", {"host:server", "host:labkit_client"}),
                                            ("vllm_server", {"host:api_server", "host:engine_core"})])
def test_a_level_of_8_users_shows_in_the_servers_own_metrics(request, fixture, roles):
    srv = request.getfixturevalue(fixture)
    res = labkit.bench(srv, concurrency=[8], requests_per_level=16, workload=LOAD, warmup=0, progress=False,
                       telemetry=True, telemetry_interval_s=0.25)
    t = res.telemetry
    server = t[(t["source"] == "server") & (t["phase"] == "concurrency 8")]
    assert server[server["metric"] == "running"]["value"].max() > 1
    assert {"waiting", "kv_used_fraction", "generation_tokens_per_s"} <= set(server["metric"])
    assert roles <= set(t["source"])
    busy = t[(t["metric"] == "cpu_util") & (t["phase"] == "concurrency 8")].groupby("source")["value"].max()
    assert all(busy[r] > 0 for r in roles)  # the engine's own processes, not a watchdog, did the work
    s = res.summary.iloc[0]
    assert s["running_mean"] > 0 and s["kv_used_frac_max"] > 0 and s["cpu_util_machine"] > 0
    fig = labkit.plots.timeline(res)
    assert {tr.name for tr in fig.data} >= {"in flight", "TTFT ms", "running", "waiting"}
