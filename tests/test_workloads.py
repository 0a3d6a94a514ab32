"""Real workloads: ShareGPT sampled exactly as vLLM's benchmark samples it, on real engines."""

from __future__ import annotations

import pytest

import labkit
from labkit.errors import InvalidInput
from labkit.loadgen import workloads
from labkit.loadgen.workloads import _sharegpt_pairs, sample_sharegpt, sharegpt_file

from .conftest import MODEL


def test_sharegpt_samples_the_requests_vllm_bench_serve_samples():
    from transformers import AutoTokenizer
    from vllm.benchmarks.datasets import ShareGPTDataset

    tok = AutoTokenizer.from_pretrained(str(labkit.models.hf_dir(MODEL)))
    for seed, fixed in ((0, None), (7, 32)):
        theirs = ShareGPTDataset(dataset_path=str(sharegpt_file()), random_seed=seed).sample(
            tok, 40, output_len=fixed)
        ours = sample_sharegpt(_sharegpt_pairs(None), lambda t: len(tok(t).input_ids), 40, seed, fixed)
        assert [(s.prompt, s.prompt_len, s.expected_output_len) for s in theirs] == ours


def test_sharegpt_requests_on_an_engine_cycle_through_the_sample(llama):
    w = workloads.sharegpt(n=5, seed=0)
    reqs = w.build(llama, 7)
    assert [r.prompt for r in reqs[5:]] == [r.prompt for r in reqs[:2]]  # n=5 samples, cycled
    assert all(r.input_tokens == len(llama.tokenize(r.prompt)) for r in reqs)
    assert all(r.max_tokens >= 4 and r.input_tokens + r.max_tokens <= 2048 for r in reqs)
    assert [r.prompt for r in w.build(llama, 2, start=5)] == [r.prompt for r in reqs[5:]]
    res = labkit.bench(llama, concurrency=[2], requests_per_level=4, workload=workloads.sharegpt(
        n=4, output_tokens=4), progress=False, warmup=0)
    s = res.summary.iloc[0]
    assert s["completed"] == 4 and s["output_tokens"] == 16 and res.manifest["workload"]["kind"] == "sharegpt"


def test_sharegpt_bad_input():
    with pytest.raises(InvalidInput, match="positive number of conversations"):
        workloads.sharegpt(n=0)
    with pytest.raises(InvalidInput, match="No ShareGPT file at"):
        _sharegpt_pairs("/nonexistent/sharegpt.json")


def test_shared_prefix_requests_share_exactly_the_prefix_ids(llama):
    w = workloads.shared_prefix(prefix_tokens=64, suffix_tokens=8, output_tokens=4, groups=2)
    reqs = w.build(llama, 6)
    assert all(r.input_tokens == 72 for r in reqs)
    ids = [llama.tokenize(r.prompt) for r in reqs]
    for g in (0, 1):
        group = ids[g::2]
        assert all(x[:64] == group[0][:64] for x in group)  # the group's prefix, id for id
        assert len({tuple(x[64:]) for x in group}) == len(group)  # every suffix its own
    assert ids[0][:64] != ids[1][:64]
    assert [r.prompt for r in w.build(llama, 2, start=4)] == [r.prompt for r in reqs[4:]]
    with pytest.raises(InvalidInput, match="does not fit the engine's context"):
        workloads.shared_prefix(prefix_tokens=4000).build(llama, 1)
    with pytest.raises(InvalidInput, match="groups must be a positive integer"):
        workloads.shared_prefix(groups=0)


def test_long_context_prompts_have_exactly_each_length_and_are_checked_against_the_context(llama):
    reqs = workloads.long_context(input_tokens=[64, 300], output_tokens=4).build(llama, 4)
    assert [r.input_tokens for r in reqs] == [64, 300, 64, 300]
    assert all(len(llama.tokenize(r.prompt)) == r.input_tokens for r in reqs)
    with pytest.raises(InvalidInput, match=r"input_tokens \[8192\] \+ 4 output tokens do not fit"):
        workloads.long_context(input_tokens=[64, 8192], output_tokens=4).build(llama, 1)


def _trace_file(tmp_path, lines):
    import json

    path = tmp_path / "trace.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def test_a_trace_is_replayed_at_its_times_with_shared_blocks(llama_server, tmp_path):
    lines = [{"timestamp": t, "input_length": 40, "output_length": 4, "hash_ids": ids}
             for t, ids in ((1000, [1]), (1250, [1]), (1300, [2]), (1700, [1]), (2000, []), (2300, [2]))]
    w = workloads.trace(_trace_file(tmp_path, lines), block_tokens=16)
    ids = [llama_server.tokenize(r.prompt) for r in w.build(llama_server, 6)]
    assert all(len(x) == 40 for x in ids)
    assert ids[0][:17] == ids[1][:17] == ids[3][:17] and ids[2][:17] == ids[5][:17]  # block 1, block 2
    assert ids[0][:17] != ids[2][:17]
    res = labkit.bench(llama_server, workload=w, progress=False, warmup=0)
    req = res.requests.sort_values("index")
    assert list(req["mode"].unique()) == ["trace"] and len(req) == 6 and req["error"].isna().all()
    assert list(req["scheduled_s"] - req["scheduled_s"].iloc[0]) == pytest.approx([0, 0.25, 0.3, 0.7, 1.0, 1.3])
    assert (req["start_s"] >= req["scheduled_s"] - 1e-6).all()  # never early; how late is recorded
    s = res.summary.iloc[0]
    assert s["mode"] == "trace" and s["level"] == 1.0 and s["dispatch_delay_p99_ms"] >= 0
    fast = labkit.bench(llama_server, workload=workloads.trace(_trace_file(tmp_path, lines), speedup=2.0),
                        progress=False, warmup=0).requests.sort_values("index")
    assert (fast["scheduled_s"] - fast["scheduled_s"].iloc[0]).iloc[-1] == pytest.approx(0.65)


def test_a_bad_trace_names_its_line(tmp_path):
    ok = {"timestamp": 0, "input_length": 8, "output_length": 4}
    with pytest.raises(InvalidInput, match=r"trace.jsonl:2: timestamp 5 ms is earlier"):
        workloads.trace(_trace_file(tmp_path, [{**ok, "timestamp": 10}, {**ok, "timestamp": 5}]))
    with pytest.raises(InvalidInput, match=r"trace.jsonl:1 has no output_length"):
        workloads.trace(_trace_file(tmp_path, [{"timestamp": 0, "input_length": 8}]))
    with pytest.raises(InvalidInput, match="A trace sets its own arrival times"):
        labkit.bench("llama.cpp", workload=workloads.trace(_trace_file(tmp_path, [ok])), concurrency=[2])


def _shared(engine, seed):
    w = workloads.shared_prefix(prefix_tokens=256, suffix_tokens=8, output_tokens=4, groups=1, seed=seed)
    res = labkit.bench(engine, concurrency=[1], requests_per_level=4, workload=w, warmup=0, progress=False)
    return res.requests.sort_values("start_s"), res.summary.iloc[0]


@pytest.mark.parametrize("name", ["llama-server", "vllm-server", "vllm"])
def test_the_prefix_cache_serves_the_shared_prefix_as_the_engine_reports(name, engine_by_name):
    req, s = _shared(engine_by_name(name), seed=hash(name) % 1000 + 100)
    cached = list(req["cached_tokens"])
    assert cached[0] < 256 <= min(cached[1:]) + 16  # the first pays for the prefix; vLLM caches whole blocks
    assert s["prefix_hit_rate"] > 0.5 and s["cached_tokens"] == sum(cached)
    assert req["ttft_s"].iloc[1:].median() < req["ttft_s"].iloc[0]  # a cached prefix is not prefilled again


def test_with_the_prefix_cache_off_nothing_is_served_from_it():
    with labkit.load("llama-server", model=MODEL, prefix_cache=False) as off:
        req, s = _shared(off, seed=5)
    assert list(req["cached_tokens"]) == [0, 0, 0, 0] and s["prefix_hit_rate"] == 0


def _sessions(engine, seed):
    w = workloads.multi_turn(turns=3, system_tokens=256, user_tokens=48, output_tokens=8, think_time_s=0, seed=seed)
    res = labkit.bench(engine, concurrency=[1], requests_per_level=6, workload=w, warmup=0, progress=False)
    return res.requests.sort_values("index"), res.turns.set_index("turn")


@pytest.mark.parametrize("name", ["llama-server", "vllm-server"])
def test_a_sessions_later_turns_are_served_from_the_prefix_cache(name, engine_by_name):
    req, turns = _sessions(engine_by_name(name), seed=hash(name) % 1000 + 200)
    assert req["error"].isna().all() and list(req["turn"]) == [1, 2, 3] * 2
    later = req[req["turn"] > 1]
    # Each later turn finds the session's system prompt and earlier turns in the cache (vLLM
    # on CPU caches whole blocks of 128 tokens), and so starts sooner than its first turn.
    previous = req["input_tokens"].shift(1)[req["turn"] > 1]
    assert (later["cached_tokens"] >= previous // 128 * 128).all() and (later["cached_tokens"] >= 256).all()
    assert turns.loc[2:, "prefix_hit_rate"].min() > 0.5
    assert turns.loc[2:, "ttft_p50_ms"].max() < turns.loc[1, "ttft_p50_ms"]


def test_without_the_prefix_cache_a_session_prefills_its_history_every_turn():
    with labkit.load("llama-server", model=MODEL, prefix_cache=False) as off:
        req, turns = _sessions(off, seed=7)
    assert list(req["cached_tokens"]) == [0] * 6 and (turns["prefix_hit_rate"] == 0).all()
    assert turns["input_tokens_mean"].is_monotonic_increasing
