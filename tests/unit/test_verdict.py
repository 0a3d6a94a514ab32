"""The verdict table from canned runs: every claim, keyed by id, in a fixed order."""

from __future__ import annotations

import pandas as pd
import pytest

import labkit
from labkit.loadgen.capacity import Capacity
from labkit.loadgen.result import REQUEST_COLUMNS, BenchResult, RequestRecord
from labkit.verdict import CLAIMS, verdict

BIG = {"name": "26B", "num_hidden_layers": 46, "hidden_size": 4608, "num_attention_heads": 32,
       "num_key_value_heads": 16, "head_dim": 128, "vocab_size": 256000, "intermediate_size": 36864,
       "num_parameters": 27_000_000_000}


def _run(engine: str, tok_s: dict[int, float | list[float]], prompts: str = "p", ttft: float = 0.1,
         tpot: float = 0.01, pss_gib: float = 1.0, failed: int = 0, device: str = "cpu",
         vram_gib: float | None = None) -> BenchResult:
    """A canned run: per level one speed, or one per round; ``failed`` requests of each level
    (of two) end in an error."""
    rows = []
    for level, speeds in tok_s.items():
        for rnd, speed in enumerate(speeds if isinstance(speeds, list) else [speeds]):
            for i in range(2):  # two requests of 10 tokens, both over the same second of the level
                err = {"finish_reason": "error", "error": "HTTP 500: engine died"} if i < failed else {}
                r = RequestRecord("concurrency", level, i, start_s=0.0, started_at=0.0, ttft_s=ttft * (1 + rnd / 50),
                                  tpot_s=tpot * (1 + rnd / 50), itl_s=[0.01], e2e_s=20 / speed, input_tokens=8,
                                  output_tokens=10, prompt_sha=f"{prompts}{level}-{rnd}-{i}", round=rnd, **err)
                rows.append(r.to_row())
    mem = pd.DataFrame({"t_s": [0.0], "pss_bytes": [pss_gib * 2**30], "phase": ["concurrency 1"]})
    if vram_gib is not None:
        mem["vram_process_bytes"] = vram_gib * 2**30
    args = {"parallel": 8} if engine == "llama-server" else \
        {"max_num_seqs": 256, "dtype": "bfloat16", "kv_cache_gb": 1} if engine.startswith("vllm") else {}
    manifest = {"engine": {"engine": engine, "device": device, "model_path": "", "model": "m-q4",
                           "threads": 2, "args": {**args, "context": 2048}},
                "environment": {"cpu": "test CPU"}}
    return BenchResult(pd.DataFrame(rows, columns=REQUEST_COLUMNS), mem, manifest)


def test_the_verdict_fills_every_claim_in_order_and_recommends_from_the_numbers():
    runs = {"llama.cpp": _run("llama.cpp", {1: 50.0}), "llama-server": _run("llama-server", {1: 45.0, 8: 150.0}),
            "vllm": _run("vllm", {1: 30.0, 8: 200.0}), "vllm-server": _run("vllm-server", {1: 28.0, 8: 180.0})}
    plan = labkit.fit(BIG, quant="IQ3_S", gpu_memory="12GiB", context=4096)
    v = verdict(runs, plan, users=8)
    assert list(v.table["claim"]) == [c.text for c in CLAIMS.values()]
    holds = dict(zip(CLAIMS, v.table["claim holds here"], strict=True))
    assert holds["multi-user"] == "yes"  # vllm-server 180 > llama-server 150
    assert holds["single-user"] == "n/a"  # the same TTFT and TPOT: no latency difference to judge
    assert holds["cpu"] == "no" and holds["api"] == "n/a"
    assert holds["26b-on-12gb"] == "yes"
    # The answer names the engine, the settings to run it with and the numbers behind them.
    assert ("use vllm-server with max_num_seqs 256 at dtype bfloat16, KV cache 1 GiB, model m-q4, threads=2, "
            "context 2048: 180.0 output tok/s") in v.recommendation
    assert "against 150.0 output tok/s" in v.recommendation
    assert "For a single user, use llama.cpp in process with model m-q4, threads=2" in v.recommendation
    assert "One round each, so these defaults do not separate" in v.recommendation
    slo = verdict(runs, plan, users=8, slo=labkit.SLO(ttft_p99_ms=1000))
    assert ("Within TTFT p99 <= 1000 ms, llama-server, vllm and vllm-server (a tie) served the most users: 8"
            in slo.recommendation)


def test_runs_fed_different_prompts_are_flagged_in_the_table_and_first_in_the_html():
    runs = {"llama.cpp": _run("llama.cpp", {1: 50.0}), "llama-server": _run("llama-server", {1: 45.0, 8: 150.0}),
            "vllm": _run("vllm", {1: 30.0, 8: 200.0}, prompts="other"),
            "vllm-server": _run("vllm-server", {1: 28.0, 8: 180.0})}
    v = verdict(runs, labkit.fit(BIG, quant="IQ3_S", gpu_memory="12GiB", context=4096), users=8)
    assert len(v.warnings) == 1 and v.warnings[0].startswith("vllm and llama.cpp were not fed the same prompts")
    assert (v.table["same prompts"] == "no: see the warning").all()
    assert v._repr_html_().index("not fed the same prompts") < v._repr_html_().index("<table")
    assert "NOT COMPARABLE" in labkit.plots.throughput(runs).layout.title.text
    assert "NOT COMPARABLE" not in labkit.plots.throughput({"a": runs["llama.cpp"]}).layout.title.text
    alike = {n: _run(n, {1: 40.0}) for n in ("llama.cpp", "llama-server", "vllm", "vllm-server")}
    assert (verdict(alike, labkit.fit(BIG, quant="IQ3_S", gpu_memory="12GiB", context=4096),
                    users=1).table["same prompts"] == "yes").all()


def test_overlapping_intervals_make_the_verdict_say_no_clear_difference():
    runs = {"llama.cpp": _run("llama.cpp", {1: [50.0, 40.0, 45.0]}),
            "llama-server": _run("llama-server", {1: [45.0] * 3, 8: [150.0, 175.0, 160.0]}),
            "vllm": _run("vllm", {1: [30.0, 31.0, 29.0], 8: [200.0] * 3}),
            "vllm-server": _run("vllm-server", {1: [28.0] * 3, 8: [170.0, 155.0, 180.0]})}
    v = verdict(runs, labkit.fit(BIG, quant="IQ3_S", gpu_memory="12GiB", context=4096), users=8)
    row = v.table.set_index("claim").loc["multi-user"]
    assert row["claim holds here"] == "n/a" and "no clear difference" in row["comment"]
    assert "[" in row["measured here"]  # the interval is shown beside the figure
    assert "no clear difference" in v.recommendation and "use llama.cpp in process" in v.recommendation
    assert "judged on 95% intervals over 3 rounds" in v.recommendation


def _four(llama_ttft: float, llama_tpot: float, vllm_ttft: float, vllm_tpot: float, rounds: int = 3):
    speeds = [40.0] * rounds
    return {"llama.cpp": _run("llama.cpp", {1: speeds}, ttft=llama_ttft, tpot=llama_tpot),
            "llama-server": _run("llama-server", {1: speeds, 8: speeds}),
            "vllm": _run("vllm", {1: speeds, 8: speeds}, ttft=vllm_ttft, tpot=vllm_tpot),
            "vllm-server": _run("vllm-server", {1: speeds, 8: speeds})}


def test_single_user_latency_is_judged_on_ttft_and_tpot_apart():
    plan = labkit.fit(BIG, quant="IQ3_S", gpu_memory="12GiB", context=4096)
    single = lambda runs: verdict(runs, plan, users=8).table.set_index("claim").loc["single-user latency"]  # noqa: E731
    split = single(_four(0.6, 0.010, 0.1, 0.040))  # llama.cpp: slow prefill, fast decode (as measured here)
    assert split["claim holds here"] == "n/a"
    assert split["comment"].startswith("split: vLLM is faster to the first token, llama.cpp per token")
    assert "below about 17 output tokens" in split["comment"]  # (600 - 100) / (40 - 10)
    both = single(_four(0.1, 0.010, 0.6, 0.040))
    assert both["claim holds here"] == "yes" and "faster both to the first token and per token" in both["comment"]
    same = single(_four(0.1, 0.010, 0.1, 0.040))
    assert same["claim holds here"] == "n/a" and "no clear difference in TTFT" in same["comment"]
    runs = _four(0.6, 0.010, 0.1, 0.040)
    runs["vllm"] = _run("vllm", {8: 200.0})  # no level of 1 user
    missing = single(runs)
    assert missing["claim holds here"] == "n/a" and missing["measured here"].startswith("not measured")


def test_the_slo_row_counts_the_users_each_engine_served_within_it():
    runs = {"llama.cpp": _run("llama.cpp", {1: 50.0}), "llama-server": _run("llama-server", {1: 45.0, 8: 150.0}),
            "vllm": _run("vllm", {1: 30.0, 8: 200.0}), "vllm-server": _run("vllm-server", {1: 28.0, 8: 180.0})}
    plan = labkit.fit(BIG, quant="IQ3_S", gpu_memory="12GiB", context=4096)
    # e2e is 20/speed seconds: 8 users on llama-server take 133 ms, on vllm-server 111 ms.
    row = verdict(runs, plan, users=8, slo=labkit.SLO(e2e_p99_ms=125)).table.set_index("claim").loc[
        "users served within a latency SLO"]
    assert "vllm-server 8" in row["measured here"] and "llama-server 0," in row["measured here"]
    assert row["claim holds here"] == "yes" and "lower bound" in row["comment"]
    none = verdict(runs, plan, users=8).table.set_index("claim").loc["users served within a latency SLO"]
    assert none["claim holds here"] == "n/a" and none["measured here"].startswith("not measured")


def test_memory_is_judged_per_user_served_with_kv_used_against_reserved():
    runs = {"llama.cpp": _run("llama.cpp", {1: 50.0}, pss_gib=0.2),
            "llama-server": _run("llama-server", {1: 45.0, 8: 150.0}, pss_gib=0.4),
            "vllm": _run("vllm", {1: 30.0, 8: 200.0}, pss_gib=3.0),
            "vllm-server": _run("vllm-server", {1: 28.0, 8: 180.0}, pss_gib=3.2)}
    runs["vllm-server"].kv = pd.DataFrame({"phase": ["concurrency 8"], "kv_used_fraction": [0.03],
                                           "kv_capacity_tokens": [46592]})
    plan = labkit.fit(BIG, quant="IQ3_S", gpu_memory="12GiB", context=4096)
    # e2e 20/speed s: within 125 ms vllm and vllm-server serve 8 users, llama-server none
    row = verdict(runs, plan, users=8, slo=labkit.SLO(e2e_p99_ms=125)).table.set_index("claim").loc[
        "memory efficiency"]
    assert row["measured here"].startswith("peak PSS per user served within the SLO: llama.cpp -")
    assert "vllm-server 0.40 GiB (3.20 / 8)" in row["measured here"]
    assert row["claim holds here"] == "n/a"  # no llama.cpp engine served a user within it
    assert "vllm-server used at most 3.0% of the 46,592 tokens it reserved" in row["comment"]
    loose = verdict(runs, plan, users=8, slo=labkit.SLO(e2e_p99_ms=1000)).table.set_index("claim").loc[
        "memory efficiency"]
    assert "llama-server 0.05 GiB (0.40 / 8)" in loose["measured here"] and loose["claim holds here"] == "yes"
    # data parallel: the fraction is the fullest engine's, of its share, not of all engines' tokens
    runs["vllm-server"].kv["kv_engines"] = 2.0
    row = verdict(runs, plan, users=8, slo=labkit.SLO(e2e_p99_ms=125)).table.set_index("claim").loc[
        "memory efficiency"]
    assert ("vllm-server used at most 3.0% of its share of the KV cache in its fullest of 2 engines "
            "(23,296 of 46,592 tokens)") in row["comment"]


def test_multi_turn_runs_differ_in_later_turns_by_design_and_only_a_real_mismatch_is_flagged():
    from labkit.loadgen.result import MULTI_TURN_NOTE, fed_alike

    def sessions(engine: str, later_tokens: int, later_sha: str = "t2") -> BenchResult:
        rows = [RequestRecord("concurrency", 1, i, start_s=0.0, ttft_s=0.1, tpot_s=0.01, e2e_s=1.0,
                              input_tokens=8 if i % 2 == 0 else later_tokens, output_tokens=10,
                              prompt_sha="t1" if i % 2 == 0 else later_sha, turn=i % 2 + 1).to_row() for i in range(4)]
        return BenchResult(pd.DataFrame(rows, columns=REQUEST_COLUMNS), pd.DataFrame(), {"engine": {"engine": engine}})

    # Each engine's own replies make its second turns longer or shorter: a note, not a mismatch.
    assert fed_alike({"a": sessions("a", 30), "b": sessions("b", 34)}) == [MULTI_TURN_NOTE]
    assert "NOT COMPARABLE" not in labkit.plots.throughput({"a": sessions("a", 30), "b": sessions("b", 34)}).layout.title.text
    # Different scripted messages are a mismatch all the same.
    found = fed_alike({"a": sessions("a", 30), "b": sessions("b", 30, later_sha="other")})
    assert found[0] == MULTI_TURN_NOTE and "not fed the same prompts in 2 of 4" in found[1]


def test_a_measured_card_run_replaces_the_plan_in_the_26b_row():
    from labkit.card import CardRun

    runs = {"llama.cpp": _run("llama.cpp", {1: 50.0}), "llama-server": _run("llama-server", {1: 45.0, 8: 150.0}),
            "vllm": _run("vllm", {1: 30.0, 8: 200.0}), "vllm-server": _run("vllm-server", {1: 28.0, 8: 180.0})}
    plan = labkit.fit(BIG, quant="IQ3_S", gpu_memory="12GiB", context=4096)

    def row(measured_gib):
        run = CardRun("synthetic:26b:IQ3_S", "IQ3_S", "NVIDIA H100", 12.0, 43, 46, 11.86, measured_gib, 14.1, 64.5)
        t = verdict(runs, plan, users=8, card=run).table.set_index(pd.Index(list(CLAIMS)))
        return t.loc["26b-on-12gb"]

    fits, over, unread = row(11.5), row(12.4), row(None)
    assert fits["claim holds here"] == "yes" and "used 11.50 GiB of VRAM (fits 12 GiB" in fits["measured here"]
    assert "labkit.card.measure" in fits["source"] and "14.1 tok/s at 1 user" in fits["measured here"]
    assert over["claim holds here"] == "no" and "does not fit 12 GiB" in over["measured here"]
    assert unread["claim holds here"] == "n/a" and "fit not measured" in unread["measured here"]


def _matrix(engine: str, statuses: dict[str, str]):
    from labkit.apicheck import Conformance
    from labkit.apicheck.checks import CHECKS

    rows = [{"engine": engine, "group": c.group, "feature": c.feature, "status": statuses.get(c.feature, "supported"),
             "evidence": f"evidence for {c.feature}", "model": "", "seconds": 0.1} for c in CHECKS]
    return Conformance(pd.DataFrame(rows), {engine: "flags of " + engine})


def test_the_api_and_tool_rows_come_from_the_conformance_matrix():
    from labkit.apicheck import Conformance

    runs = {"llama.cpp": _run("llama.cpp", {1: 50.0}), "llama-server": _run("llama-server", {1: 45.0, 8: 150.0}),
            "vllm": _run("vllm", {1: 30.0, 8: 200.0}), "vllm-server": _run("vllm-server", {1: 28.0, 8: 180.0})}
    plan = labkit.fit(BIG, quant="IQ3_S", gpu_memory="12GiB", context=4096)
    api = Conformance.combine([
        _matrix("vllm-server", {}),
        _matrix("llama-server", {"n > 1": "missing", "an unknown model": "partial", "tool_choice required": "wrong"})])
    t = verdict(runs, plan, users=8, api=api).table.set_index(pd.Index(list(CLAIMS)))
    assert t.loc["api", "claim holds here"] == "yes"
    assert t.loc["api", "measured here"].startswith("vllm-server: 19 supported; llama-server: 17 supported, 1 partial, 1 missing")
    assert "n > 1 (vllm-server supported, llama-server missing)" in t.loc["api", "comment"]
    assert t.loc["tools", "claim holds here"] == "no"
    assert "llama-server tool_choice required: wrong (evidence for tool_choice required)" in t.loc["tools", "comment"]
    assert "flags of vllm-server" in t.loc["tools", "source"]
    without = verdict(runs, plan, users=8).table.set_index(pd.Index(list(CLAIMS)))
    assert without.loc["tools", "measured here"].startswith("not measured")
    assert without.loc["api", "claim holds here"] == "n/a"


def test_the_memory_row_takes_kv_use_from_telemetry_read_during_the_levels():
    runs = {"llama.cpp": _run("llama.cpp", {1: 50.0}), "llama-server": _run("llama-server", {1: 45.0, 8: 150.0}),
            "vllm": _run("vllm", {1: 30.0, 8: 200.0}), "vllm-server": _run("vllm-server", {1: 28.0, 8: 180.0})}
    runs["llama-server"].telemetry = pd.DataFrame({
        "t_s": [1.0, 1.0, 2.0], "phase": ["concurrency 8"] * 3, "source": ["server"] * 3,
        "metric": ["kv_capacity_tokens", "kv_used_fraction", "kv_used_fraction"], "value": [16384.0, 0.25, 0.125]})
    plan = labkit.fit(BIG, quant="IQ3_S", gpu_memory="12GiB", context=4096)
    t = verdict(runs, plan, users=8).table.set_index(pd.Index(list(CLAIMS)))
    assert "llama-server used at most 25.0% of the 16,384 tokens it reserved" in t.loc["memory", "comment"]


def test_a_figure_not_measured_is_n_a_and_never_hides_the_ones_that_were():
    runs = {"llama.cpp": _run("llama.cpp", {1: 50.0}), "llama-server": _run("llama-server", {1: 45.0}),
            "vllm": _run("vllm", {8: 300.0}), "vllm-server": _run("vllm-server", {1: 28.0, 8: 180.0})}
    plan = labkit.fit(BIG, quant="IQ3_S", gpu_memory="12GiB", context=4096)
    t = verdict(runs, plan, users=8).table.set_index("claim")
    multi = t.loc[CLAIMS["multi-user"].text]  # llama-server ran no level of 8 users
    assert multi["claim holds here"] == "n/a" and "not measured" in multi["comment"]
    best = t.loc[CLAIMS["throughput"].text]  # vllm at 1 user is missing: its 8 users still count
    assert "vLLM 300" in best["measured here"] and best["claim holds here"] == "yes"


def test_capacities_must_share_one_slo_and_say_what_each_search_proved():
    plan = labkit.fit(BIG, quant="IQ3_S", gpu_memory="12GiB", context=4096)
    runs = _four(0.6, 0.010, 0.1, 0.040)
    slo = labkit.SLO(ttft_p99_ms=2000)

    def cap(engine, users, confirmed=True, stopped="the answer was found and confirmed", slo=slo, by="users"):
        return Capacity(engine, slo, by, users, pd.DataFrame(), stopped, confirmed, 1.0)

    caps = {"llama-server": cap("llama-server", 4, confirmed=False, stopped="the answer was found"),
            "vllm-server": cap("vllm-server", 8, stopped="interrupted")}
    row = verdict(runs, plan, users=8, capacities=caps).table.set_index("claim").loc[CLAIMS["users-at-slo"].text]
    assert "confirmed" not in row["source"]
    assert "not confirmed by a repeat: llama-server" in row["comment"]
    assert "search cut short, a lower bound: vllm-server (interrupted)" in row["comment"]
    capped = {**caps, "vllm-server": cap("vllm-server", 8, stopped="every level up to max_level=8 met the SLO")}
    row = verdict(runs, plan, users=8, capacities=capped).table.set_index("claim").loc[CLAIMS["users-at-slo"].text]
    assert "a lower bound: vllm-server (every level up to max_level=8" in row["comment"]
    other = {**caps, "vllm-server": cap("vllm-server", 8, slo=labkit.SLO(ttft_p99_ms=500))}
    with pytest.raises(labkit.InvalidInput, match="different SLOs"):
        verdict(runs, plan, users=8, capacities=other)
    with pytest.raises(labkit.InvalidInput, match="searched by request rate"):
        verdict(runs, plan, users=8, capacities={**caps, "vllm-server": cap("vllm-server", 8.0, by="rate")})


def test_an_engine_that_failed_its_level_is_not_ranked_and_the_verdict_warns():
    runs = {"llama.cpp": _run("llama.cpp", {1: 50.0}), "llama-server": _run("llama-server", {1: 45.0, 8: 150.0}),
            "vllm": _run("vllm", {1: 30.0, 8: 200.0}), "vllm-server": _run("vllm-server", {1: 28.0, 8: 900.0})}
    runs["vllm-server"] = _run("vllm-server", {1: 28.0, 8: 900.0}, failed=1)  # 1 of 2 failed at every level
    runs["vllm-server"].ended = "engine died: killed"
    v = verdict(runs, labkit.fit(BIG, quant="IQ3_S", gpu_memory="12GiB", context=4096), users=8)
    # Its one survivor at 900 tok/s must not win: no recommendation for 8 users.
    assert "For 8 concurrent users: no recommendation" in v.recommendation
    assert "vllm-server failed (1 of 2 requests)" in v.recommendation and "use llama-server" not in v.recommendation
    assert any(w.startswith("vllm-server ended early (engine died: killed)") for w in v.warnings)
    assert any("vllm-server: 2 of 4 requests failed (at level 1, 8)" in w for w in v.warnings)
    row = v.table.set_index(pd.Index(list(CLAIMS))).loc["multi-user"]
    assert row["claim holds here"] == "n/a" and "vllm-server failed (1 of 2 requests)" in row["measured here"]
    assert "900" not in v.table.set_index(pd.Index(list(CLAIMS))).loc["throughput", "measured here"]
    assert (v.table["same prompts"] == "yes").all()  # a failure is no prompt mismatch


def test_engines_on_different_devices_are_warned_and_vram_counts_in_the_memory_row():
    runs = {"llama.cpp": _run("llama.cpp", {1: 50.0}), "llama-server": _run("llama-server", {1: 45.0, 8: 150.0}),
            "vllm": _run("vllm", {1: 30.0, 8: 200.0}, device="cuda", pss_gib=1.0, vram_gib=20.0),
            "vllm-server": _run("vllm-server", {1: 28.0, 8: 180.0}, device="cuda", pss_gib=1.0, vram_gib=20.0)}
    v = verdict(runs, labkit.fit(BIG, quant="IQ3_S", gpu_memory="12GiB", context=4096), users=8)
    assert any(w.startswith("the engines ran on different devices (llama.cpp cpu, llama-server cpu, vllm cuda")
               for w in v.warnings)
    t = v.table.set_index(pd.Index(list(CLAIMS)))
    assert t.loc["memory", "measured here"].startswith("peak PSS + VRAM (NVML, per process)")
    assert "vllm-server 2.62 GiB (21.00 / 8)" in t.loc["memory", "measured here"]
    # vLLM on CUDA says nothing of its CPU support
    assert t.loc["cpu", "claim holds here"] == "n/a" and "says nothing of its CPU support" in t.loc["cpu", "comment"]


def test_the_gguf_row_says_when_vllm_loaded_the_gguf_itself():
    runs = _four(0.1, 0.01, 0.1, 0.01)
    runs["vllm"].manifest["engine"]["args"]["gguf_loader"] = "used"
    t = verdict(runs, labkit.fit(BIG, quant="IQ3_S", gpu_memory="12GiB", context=4096), users=8).table
    row = t.set_index(pd.Index(list(CLAIMS))).loc["gguf"]
    assert row["claim holds here"] == "no" and "both loaded the GGUF" in row["measured here"]
    assert "converted" not in row["measured here"]


def test_the_26b_row_needs_a_plan_for_a_card_and_names_the_real_quant_and_dtype():
    runs = _four(0.1, 0.01, 0.1, 0.01)
    row = lambda plan: verdict(runs, plan, users=8).table.set_index(pd.Index(list(CLAIMS))).loc["26b-on-12gb"]  # noqa: E731
    no_card = row(labkit.fit(BIG, quant="IQ3_S", context=4096, system_memory="64GiB"))
    assert no_card["claim holds here"] == "n/a" and no_card["measured here"].startswith("not planned for a card")
    planned = row(labkit.fit(BIG, quant="Q2_K", gpu_memory="12GiB", context=4096, dtype="float16"))
    assert planned["measured here"].startswith("llama.cpp Q2_K: fits with") and "vLLM float16: does not fit" in \
        planned["measured here"]
    tiny = row(labkit.fit(BIG, quant="IQ3_S", gpu_memory="0.5GiB", context=4096, system_memory="64GiB"))
    assert tiny["claim holds here"] == "no" and "does not fit the 0.5 GiB GPU" in tiny["measured here"]


def test_memory_shared_with_another_in_process_engine_is_a_warning():
    runs = _four(0.1, 0.01, 0.1, 0.01)
    runs["llama.cpp"].memory["shared_process"] = "another in-process engine was alive in this process (vllm (m))"
    v = verdict(runs, labkit.fit(BIG, quant="IQ3_S", gpu_memory="12GiB", context=4096), users=8)
    assert any(w.startswith("llama.cpp's memory is not its own: another in-process engine") for w in v.warnings)
