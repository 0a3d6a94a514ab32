"""The load generator, metrics, memory timeline and results on disk, with real engines."""

from __future__ import annotations

import json
import os
import signal
import threading

import numpy as np
import pytest

import labkit
from labkit import workloads
from labkit.errors import EngineError, InvalidInput
from labkit.loadgen import BenchResult, from_llama_bench, from_vllm_bench

from .conftest import MODEL

SMALL = workloads.synthetic(input_tokens=32, output_tokens=8)


@pytest.fixture(scope="module")
def llama_run(llama, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    return labkit.bench(llama, concurrency=[1, 2], requests_per_level=3, workload=SMALL, out=out,
                        progress=False), out


def test_workload_has_exact_input_lengths_and_is_seeded(llama):
    a = workloads.synthetic(input_tokens=64, output_tokens=8, seed=3).build(llama, 4)
    b = workloads.synthetic(input_tokens=64, output_tokens=8, seed=3).build(llama, 4)
    assert [r.prompt for r in a] == [r.prompt for r in b]
    assert all(len(llama.tokenize(r.prompt)) == 64 for r in a)
    c = workloads.chat(input_tokens=96, output_tokens=8).build(llama, 3)
    assert all(len(llama.tokenize(r.prompt, chat=True)) == 96 for r in c)


def test_summary_token_counts_equal_the_request_rows(llama_run):
    res, _ = llama_run
    req, summ = res.requests, res.summary
    assert len(req) == 6 and req["error"].isna().all()
    assert (req["output_tokens"] == 8).all()  # ignore_eos gives fixed output lengths
    for _, row in summ.iterrows():
        rows = req[req["level"] == row["level"]]
        assert row["output_tokens"] == rows["output_tokens"].sum()
        assert row["input_tokens"] == rows["input_tokens"].sum() == 32 * len(rows)


def test_tpot_and_itl_follow_from_the_token_times(llama_run):
    res, _ = llama_run
    for _, r in res.requests.iterrows():
        itl = r["itl_s"]
        assert len(itl) == r["output_tokens"] - 1
        # TTFT + all gaps = time of the last token, which is at most E2E
        assert r["ttft_s"] + sum(itl) <= r["e2e_s"] + 1e-6
        assert r["tpot_s"] == pytest.approx((r["e2e_s"] - r["ttft_s"]) / (r["output_tokens"] - 1))
    all_itl = [g for lst in res.requests["itl_s"] for g in lst]
    s = res.summary.iloc[0]
    assert s["itl_p50_ms"] > 0 and np.isfinite(s["tpot_p50_ms"])
    assert min(all_itl) > 0


def test_memory_timeline_covers_every_phase(llama_run):
    res, _ = llama_run
    phases = set(res.memory["phase"])
    assert {"warm-up", "concurrency 1", "concurrency 2"} <= phases
    peaks = res.memory_peaks()
    assert (peaks["rss_bytes"] > 0).all()
    assert (peaks["pss_bytes"] > 0).all()  # read at least at the edges of every phase
    assert "vram_used_bytes" not in res.memory.columns  # no GPU here: absent, not zero


def test_results_round_trip_and_carry_their_environment(llama_run):
    res, out = llama_run
    back = BenchResult.load(out)
    assert len(back.requests) == len(res.requests)
    assert back.summary["output_tokens"].tolist() == res.summary["output_tokens"].tolist()
    m = json.loads((out / "manifest.json").read_text())
    assert m["engine"]["engine"] == "llama.cpp" and m["engine"]["model_sha256"]
    assert m["environment"]["libraries"]["llama-cpp-python"]
    assert "one sequence at a time" in " ".join(m["caveats"])
    assert "<table" in res._repr_html_()


def test_bench_loads_by_name_and_records_the_load_phase():
    res = labkit.bench("llama-server", model=MODEL, threads=1, context=256, concurrency=[1],
                       requests_per_level=2, workload=SMALL, progress=False)
    assert "load" in set(res.memory["phase"])
    assert res.memory[res.memory["phase"] == "load"]["rss_bytes"].max() > 0
    assert res.kv["kv_capacity_tokens"].max() > 0  # llama-server's own account


def test_more_users_more_throughput_on_vllm_server(vllm_server):
    res = labkit.bench(vllm_server, concurrency=[1, 8], requests_per_level=8,
                       workload=workloads.synthetic(input_tokens=32, output_tokens=16), progress=False)
    s = res.summary.set_index("level")
    assert s.loc[8, "output_tok_per_s"] > s.loc[1, "output_tok_per_s"]
    print(f"vllm-server output tok/s: 1 user {s.loc[1, 'output_tok_per_s']:.1f}, "
          f"8 users {s.loc[8, 'output_tok_per_s']:.1f}")
    assert "kv_used_fraction" in res.kv.columns


def test_server_killed_midway_keeps_finished_rows_and_marks_failures(tmp_path):
    srv = labkit.load("llama-server", model=MODEL, threads=1, context=256)
    try:
        def kill_after_first_level(partial):
            os.killpg(srv.process.pgid, signal.SIGKILL)

        res = labkit.bench(srv, concurrency=[1, 2], requests_per_level=3, workload=SMALL,
                           out=tmp_path, progress=False, on_level_done=kill_after_first_level)
    finally:
        srv.close()
    rows = [json.loads(line) for line in (tmp_path / "requests.jsonl").read_text().splitlines()]
    first = [r for r in rows if r["level"] == 1]
    second = [r for r in rows if r["level"] == 2]
    assert len(first) == 3 and all(r["error"] is None and r["output_tokens"] == 8 for r in first)
    # The sweep stops at the first failure, once the engine says it is gone: what was in
    # flight failed, the rest was never sent at the dead port.
    failed = [r for r in second if r["error"]]
    unsent = [r for r in second if r["finish_reason"] == "not sent: engine died"]
    assert len(second) == 3 and 1 <= len(failed) <= 2 and len(failed) + len(unsent) == 3
    assert res.ended == "engine died: llama-server was killed by SIGKILL"
    assert json.loads((tmp_path / "run.json").read_text())["ended"] == res.ended
    s = res.summary.set_index("level")
    assert s.loc[1, "completed"] == 3 and s.loc[2, "errors"] == len(failed)
    assert s.loc[2, "unmeasured"] == len(unsent)


def test_a_refused_engine_leaves_no_sampler_and_a_remote_one_no_memory_timeline():
    with pytest.raises(InvalidInput, match="workers=2 sends requests from 2 processes"):
        labkit.bench("llama.cpp", model=MODEL, context=256, workers=2, progress=False)
    assert "labkit-memory" not in {t.name for t in threading.enumerate()}  # the load's sampler stopped
    with labkit.load("mock-server") as mock:
        res = labkit.bench("openai", url=mock.url, concurrency=[2], requests_per_level=4, workload=SMALL,
                           progress=False, workers=2)
    # A server elsewhere: neither this process nor its load workers are the engine's memory.
    assert res.ended == "completed" and res.summary["completed"].iloc[0] == 4 and res.memory.empty
    assert "labkit-memory" not in {t.name for t in threading.enumerate()}


def test_bad_input_fails_before_any_load(llama):
    for kwargs in ({"concurrency": [0]}, {"concurrency": [-2]}, {"rate": [0]},
                   {"requests_per_level": 0}, {"kv_interval_s": 0}):
        with pytest.raises(InvalidInput):
            labkit.bench(llama, progress=False, **kwargs)
    with pytest.raises(InvalidInput, match="output_tokens"):
        workloads.chat(output_tokens=0)
    with pytest.raises(InvalidInput, match="no prompts"):
        workloads.prompts([])
    closed = labkit.load("llama.cpp", model=MODEL, threads=1, context=256)
    closed.close()
    with pytest.raises(EngineError, match="closed"):
        labkit.bench(closed, progress=False)


def test_unreachable_server_fails_before_the_sweep():
    srv = labkit.load("llama-server", model=MODEL, threads=1, context=256)
    srv.process.stop()
    try:
        with pytest.raises(EngineError, match="cannot serve: llama-server was killed by SIGTERM"):
            labkit.bench(srv, concurrency=[1], progress=False)
    finally:
        srv.close()


def test_poisson_rate_mode(llama_server):
    res = labkit.bench(llama_server, rate=[4], duration_s=2, workload=SMALL, progress=False, seed=1)
    s = res.summary.iloc[0]
    assert s["mode"] == "rate" and s["completed"] >= 1 and s["errors"] == 0


def test_imports_of_other_tools_results():
    vb = from_vllm_bench({"backend": "vllm", "max_concurrency": 8, "completed": 32,
                          "duration": 10.0, "request_throughput": 3.2, "output_throughput": 204.8,
                          "median_ttft_ms": 120.0, "median_tpot_ms": 30.0, "p99_ttft_ms": 300.0})
    assert vb.loc[0, "level"] == 8 and vb.loc[0, "ttft_p50_ms"] == 120.0
    lb = from_llama_bench([{"n_prompt": 0, "n_gen": 64, "avg_ts": 173.2, "n_threads": 2},
                           {"n_prompt": 512, "n_gen": 0, "avg_ts": 900.0, "n_threads": 2}])
    assert lb.loc[0, "output_tok_per_s"] == 173.2 and lb.loc[1, "test"] == "pp512"


def test_in_process_vllm_closed_loop_and_poisson_through_submit(vllm_engine):
    """In-process vLLM is driven by callbacks on its own loop thread (engine.submit)."""
    res = labkit.bench(vllm_engine, concurrency=[1, 4], requests_per_level=4, workload=SMALL,
                       progress=False)
    req = res.requests
    assert len(req) == 8 and req["error"].isna().all() and (req["output_tokens"] == 8).all()
    assert all(len(r["itl_s"]) == 7 for _, r in req.iterrows())
    s = res.summary.set_index("level")
    assert s.loc[4, "output_tokens"] == 32
    rate = labkit.bench(vllm_engine, rate=[8], duration_s=1, workload=SMALL, progress=False, seed=2)
    assert rate.summary.iloc[0]["errors"] == 0 and rate.summary.iloc[0]["completed"] >= 1


def test_refused_requests_become_rows_and_the_level_goes_on(vllm_engine):
    too_long = "word " * 3000  # more tokens than the engine's context
    wl = workloads.prompts([too_long, "Hello there", too_long, "Tell me a story"], output_tokens=8)
    res = labkit.bench(vllm_engine, concurrency=[2], requests_per_level=4, workload=wl, warmup=0,
                       progress=False)
    req = res.requests.sort_values("index")
    assert req["error"].notna().tolist() == [True, False, True, False]
    assert "context" in req["error"].iloc[0]
    assert (req[req["error"].isna()]["output_tokens"] == 8).all()


def test_bench_against_a_generic_openai_url(llama_server, tmp_path):
    eng = labkit.load("openai", url=llama_server.url)
    eng.flavor = "generic"  # a server labkit does not know: no tokenizer, no KV account for it
    try:
        with pytest.raises(EngineError, match="cannot ask it for token ids"):
            eng.tokenize("hello")
        res = labkit.bench(eng, concurrency=[1], requests_per_level=2, out=tmp_path / "g",
                           workload=workloads.synthetic(input_tokens=16, output_tokens=8), progress=False)
    finally:
        eng.close()
    assert res.summary["completed"].iloc[0] == 2 and res.ended == "completed"
    assert any("usage count" in c for c in res.manifest["caveats"])


def test_a_refused_workload_leaves_no_run_folder(llama, tmp_path):
    with pytest.raises(InvalidInput, match="shorter than the base prompt"):
        labkit.bench(llama, concurrency=[1], requests_per_level=1, out=tmp_path / "never",
                     workload=workloads.chat(input_tokens=2, output_tokens=4), progress=False)
    assert not (tmp_path / "never").exists()


def test_repeats_give_intervals_that_contain_the_point_estimates(llama_server, tmp_path):
    res = labkit.bench(llama_server, concurrency=[1, 2], requests_per_level=3, workload=SMALL,
                       repeats=3, out=tmp_path, progress=False)
    req = res.requests
    assert sorted(req["round"].unique()) == [0, 1, 2]
    assert req["prompt_sha"].nunique() == 3 * 2 * 3  # every round new prompts: no cached prefill
    s = res.summary
    assert list(s["rounds"]) == [3, 3] and list(s["completed"]) == [9, 9]
    for fig in ("output_tok_per_s", "ttft_p50_ms", "tpot_p50_ms", "e2e_p99_ms"):
        assert ((s[f"{fig}_lo"] <= s[fig]) & (s[fig] <= s[f"{fig}_hi"])).all(), fig
    again = BenchResult.load(tmp_path).summary  # the rounds survive the trip to disk
    assert list(again["rounds"]) == [3, 3]
