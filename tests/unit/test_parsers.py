"""The servers' wire formats, from canned texts: Prometheus pages and streamed SSE chunks."""

from __future__ import annotations

import pytest

from labkit.engines.openai import _chunk_tokens, _logprob_entries, _sse_line
from labkit.engines.prometheus import llamacpp_kv, parse_prometheus, vllm_kv
from labkit.errors import EngineError

VLLM_METRICS = """\
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="smollm2-135m"} 0.25
vllm:num_requests_running{engine="0",model_name="smollm2-135m"} 3.0
vllm:num_requests_waiting{engine="0",model_name="smollm2-135m"} 1.0
vllm:cache_config_info{block_size="16",cache_dtype="auto",num_gpu_blocks="2730"} 1.0
vllm:e2e_request_latency_seconds_bucket{le="+Inf",model_name="smollm2-135m"} 12.0
not a sample line
"""

LLAMA_METRICS = """\
# HELP llamacpp:kv_cache_usage_ratio KV-cache usage. 1 means 100 percent usage.
llamacpp:kv_cache_usage_ratio 0.5
llamacpp:kv_cache_tokens 1024
llamacpp:requests_processing 2
llamacpp:requests_deferred 0
llamacpp:n_tokens_max 300
llamacpp:prompt_tokens_total 4096
"""


def test_prometheus_samples_keep_names_labels_and_values():
    samples = parse_prometheus(VLLM_METRICS)
    assert ("vllm:kv_cache_usage_perc", {"engine": "0", "model_name": "smollm2-135m"}, 0.25) in samples
    assert any(name.endswith("_bucket") and labels["le"] == "+Inf" for name, labels, _ in samples)
    assert len(samples) == 5  # comments and the junk line are skipped


def test_vllm_and_llama_server_metrics_become_one_kv_vocabulary():
    assert vllm_kv(parse_prometheus(VLLM_METRICS)) == {
        "kv_used_fraction": 0.25, "running": 3.0, "waiting": 1.0, "kv_capacity_tokens": 2730 * 16}
    assert llamacpp_kv(parse_prometheus(LLAMA_METRICS)) == {
        "kv_used_fraction": 0.5, "kv_used_tokens": 1024.0, "running": 2.0, "waiting": 0.0,
        "n_tokens_max": 300.0}
    # A vLLM that has not profiled its cache yet says None: no capacity, not a crash.
    assert "kv_capacity_tokens" not in vllm_kv(parse_prometheus(
        'vllm:cache_config_info{block_size="16",num_gpu_blocks="None"} 1.0'))


def test_a_vllm_completion_chunk_gives_one_token_per_id_with_its_logprobs():
    chunk = {"choices": [{"text": " blue", "token_ids": [4321, 17], "finish_reason": None,
                          "logprobs": {"token_logprobs": [-0.1, -0.7],
                                       "top_logprobs": [{"token_id:4321": -0.1, "token_id:9": -2.4},
                                                        {"token_id:17": -0.7}]}}]}
    toks = _chunk_tokens(chunk, chat=False, now=0.5)
    assert [(t.text, t.token_id, t.logprob) for t in toks] == [(" blue", 4321, -0.1), ("", 17, -0.7)]
    assert toks[0].top_logprobs == {4321: -0.1, 9: -2.4} and all(t.t_s == 0.5 for t in toks)


def test_a_llama_server_chat_chunk_reads_ids_from_verbose_and_marks_the_finish():
    chunk = {"choices": [{"delta": {"content": "Hi"}, "finish_reason": "stop",
                          "logprobs": {"content": [{"id": 5, "logprob": -0.2,
                                                    "top_logprobs": [{"id": 5, "logprob": -0.2},
                                                                     {"id": 6, "logprob": -1.9}]}]}}],
             "__verbose": {"tokens": [5]}}
    toks = _chunk_tokens(chunk, chat=True, now=1.0)
    assert [(t.text, t.token_id) for t in toks] == [("Hi", 5), ("", None)]
    assert toks[0].top_logprobs == {5: -0.2, 6: -1.9} and toks[1].finish_reason == "stop"


def test_a_generic_server_chunk_without_ids_is_one_text_token_and_usage_chunks_carry_only_counts():
    toks = _chunk_tokens({"choices": [{"text": "abc"}]}, chat=False, now=0.1)
    assert [(t.text, t.token_id) for t in toks] == [("abc", None)]
    (usage,) = _chunk_tokens({"choices": [], "usage": {"completion_tokens": 3}}, chat=False, now=0.2)
    assert (usage.text, usage.token_id, usage.completion_tokens) == ("", None, 3)


def test_ids_are_kept_only_when_there_is_one_per_token_the_server_counted():
    from labkit.engines.base import Token, assemble

    streamed = [Token("😀", 233, 0.1), Token("😃", 234, 0.2)]  # 3 tokens each: the server sent one id
    held_back = assemble("s", "p", [*streamed, Token("", None, 0.2, completion_tokens=6)], 0.2, 0.0, None)
    assert held_back.token_ids is None and held_back.n_tokens == 6 and held_back.text == "😀😃"
    whole = assemble("s", "p", [*streamed, Token("", None, 0.2, completion_tokens=2)], 0.2, 0.0, None)
    assert whole.token_ids == [233, 234] and whole.n_tokens == 2
    running = [Token("", None, 0.05, completion_tokens=0), Token("😀", 233, 0.1, completion_tokens=3),
               Token("😃", 234, 0.2, completion_tokens=6)]  # a count on every chunk: the last one holds
    assert assemble("s", "p", running, 0.2, 0.0, None).n_tokens == 6


def test_sse_lines_end_at_done_skip_comments_and_raise_a_mid_stream_error():
    assert _sse_line(": keep-alive", False, 0.0, "u") == []
    assert _sse_line("data: [DONE]", False, 0.0, "u") is None
    with pytest.raises(EngineError, match="mid-stream"):
        _sse_line('data: {"error": {"message": "out of memory"}}', False, 0.0, "http://x")


def test_logprob_entries_without_ids_keep_the_values_and_drop_the_unkeyed_top_k():
    entries = _logprob_entries({"token_logprobs": [-0.3], "top_logprobs": [{" the": -0.3}]})
    assert entries == [(-0.3, None)]
    assert _logprob_entries(None) == []


def test_guidellm_and_aiperf_reports_become_summary_rows():
    """Real reports from both tools (run against labkit's mock server, 64 streams, 512
    requests of 256 tokens), in the columns labkit's own summary uses."""
    from pathlib import Path

    from labkit.loadgen import from_aiperf, from_guidellm

    data = Path(__file__).parent / "data"
    g = from_guidellm(data / "guidellm_benchmarks.json").iloc[0]
    assert (g["source"], g["mode"], g["level"]) == ("guidellm", "concurrency", 64)
    assert g["completed"] == 503 and g["req_per_s"] == pytest.approx(503 / g["duration_s"])
    assert g["output_tok_per_s"] == pytest.approx(503 * 256 / g["duration_s"])
    assert 0 < g["ttft_p50_ms"] < g["ttft_p99_ms"] and g["e2e_p50_ms"] > g["ttft_p50_ms"]
    # GuideLLM's inter_token_latency_ms is (last - first) / (tokens - 1): labkit's TPOT; its
    # time_per_output_token_ms counts TTFT in, and it keeps no chunk gaps for an ITL.
    assert g["tpot_p50_ms"] == pytest.approx(0.04304811066272212)
    assert not any(c.startswith("itl_") for c in g.index)
    a = from_aiperf(data / "aiperf_profile_export.json").iloc[0]
    assert (a["source"], a["mode"], a["level"], a["completed"]) == ("aiperf", "concurrency", 64, 512)
    assert a["output_tok_per_s"] == pytest.approx(a["req_per_s"] * 256, rel=0.01)
    assert a["ttft_p50_ms"] > 0 and "tpot_p50_ms" in a.index
    from labkit.errors import InvalidInput

    with pytest.raises(InvalidInput, match="AIPerf"):
        from_aiperf({"benchmarks": []})
    with pytest.raises(InvalidInput, match="GuideLLM"):
        from_guidellm({"request_throughput": {}})


def test_llama_server_gets_the_in_process_samplers_not_its_own_defaults():
    from labkit.engines.base import SamplingParams
    from labkit.engines.openai import HttpEngine

    eng = object.__new__(HttpEngine)  # the request body only: no server needed
    eng.model, eng.flavor, eng.cache_prompt = "m", "llama-server", None
    _, sampled = eng._body("hi", SamplingParams(max_tokens=4, temperature=0.8), chat=False)
    assert (sampled["top_k"], sampled["min_p"], sampled["repeat_penalty"]) == (0, 0.0, 1.0)
    _, greedy = eng._body("hi", SamplingParams(max_tokens=4, temperature=0.0), chat=False)
    assert greedy["top_k"] == 1


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_every_sampler_labkit_does_not_use_is_switched_off_where_the_server_kind_is_known(temperature):
    """A field left out takes the server's default: vLLM's comes from the model's
    generation_config.json (repetition_penalty 1.05 in some), and llama-server runs its
    penalties and DRY before top-k, greedy or not."""
    from labkit.engines.base import SamplingParams
    from labkit.engines.openai import HttpEngine

    eng = object.__new__(HttpEngine)
    eng.model, eng.cache_prompt = "m", None
    params = SamplingParams(max_tokens=4, temperature=temperature)
    eng.flavor = "llama-server"
    _, body = eng._body("hi", params, chat=False)
    assert (body["repeat_penalty"], body["presence_penalty"], body["frequency_penalty"],
            body["dry_multiplier"]) == (1.0, 0.0, 0.0, 0.0)
    eng.flavor = "vllm"
    _, body = eng._body([{"role": "user", "content": "hi"}], params, chat=True)
    assert (body["repetition_penalty"], body["presence_penalty"], body["frequency_penalty"],
            body["top_k"], body["min_p"]) == (1.0, 0.0, 0.0, -1, 0.0)
    eng.flavor = "generic"  # a strict server may refuse fields it does not know: none sent
    _, body = eng._body("hi", params, chat=False)
    assert not {"repetition_penalty", "repeat_penalty", "top_k", "min_p", "dry_multiplier"} & set(body)
