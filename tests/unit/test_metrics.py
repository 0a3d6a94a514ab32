"""Request metrics and level summaries, as vLLM's serving benchmark defines them."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from labkit.loadgen.metrics import request_metrics, summarize
from labkit.loadgen.result import REQUEST_COLUMNS, BenchResult, RequestRecord


def test_ttft_tpot_and_itl_of_one_request():
    m = request_metrics([0.5, 0.6, 0.6, 0.9], e2e_s=1.0)
    assert m["ttft_s"] == 0.5 and m["e2e_s"] == 1.0
    assert m["tpot_s"] == pytest.approx((1.0 - 0.5) / 3)
    assert m["itl_s"] == pytest.approx([0.1, 0.3])  # a chunk of two tokens counts once
    one = request_metrics([0.2], e2e_s=0.2)
    assert one["tpot_s"] is None and one["itl_s"] == []
    assert request_metrics([], e2e_s=0.3)["ttft_s"] is None


def _rec(index, start, ttft, e2e, out, error=None, level=2):
    r = RequestRecord("concurrency", level, index, start_s=start, started_at=1e9 + start,
                      input_tokens=10, output_tokens=out, error=error)
    if error is None:
        r.ttft_s, r.e2e_s, r.tpot_s, r.itl_s = ttft, e2e, (e2e - ttft) / max(1, out - 1), [0.01]
    return r.to_row()


def test_a_level_summary_counts_errors_apart_and_divides_by_the_level_duration():
    rows = [_rec(0, 0.0, 0.1, 1.0, 10), _rec(1, 0.0, 0.2, 2.0, 20), _rec(2, 1.0, None, None, 0, "boom")]
    s = summarize(pd.DataFrame(rows, columns=REQUEST_COLUMNS), {"ttft": 150}).iloc[0]
    assert s["completed"] == 2 and s["errors"] == 1
    assert s["output_tokens"] == 30
    assert s["output_tok_per_s"] == pytest.approx(30 / 2.0)  # first sent at 0, last done at 2
    assert s["ttft_p50_ms"] == pytest.approx(150.0)
    assert s["goodput_req_per_s"] == pytest.approx(1 / 2.0)  # only the 100 ms TTFT meets the SLO


def test_a_result_survives_save_and_load(tmp_path):
    rows = [_rec(i, 0.1 * i, 0.05, 0.5, 8) for i in range(3)]
    res = BenchResult(pd.DataFrame(rows, columns=REQUEST_COLUMNS), pd.DataFrame(),
                      {"engine": {"engine": "fake"}}, slo_ms={"e2e": 400.0})
    res.ended = "interrupted"
    back = BenchResult.load(res.save(tmp_path / "r"))
    assert back.ended == "interrupted" and back.slo_ms == {"e2e": 400.0}
    assert back.requests[["index", "output_tokens"]].values.tolist() == [[0, 8], [1, 8], [2, 8]]
    assert back.requests["itl_s"].iloc[0] == [0.01]
    assert math.isclose(back.summary["e2e_p50_ms"].iloc[0], 500.0)


def test_a_result_saved_over_another_keeps_none_of_its_optional_files(tmp_path):
    rows = [_rec(i, 0.1 * i, 0.05, 0.5, 8) for i in range(2)]
    old = BenchResult(pd.DataFrame(rows, columns=REQUEST_COLUMNS), pd.DataFrame(), {"engine": {"engine": "a"}},
                      kv=pd.DataFrame({"t_s": [0.0], "kv_used_fraction": [0.5]}))
    old.save(tmp_path / "r")
    new = BenchResult(pd.DataFrame(rows[:1], columns=REQUEST_COLUMNS), pd.DataFrame(), {"engine": {"engine": "b"}})
    back = BenchResult.load(new.save(tmp_path / "r"))
    assert back.kv.empty and not (tmp_path / "r" / "kv.csv").exists() and len(back.requests) == 1


def test_a_requests_tokens_are_what_the_engine_counted_when_chunks_carry_several():
    from labkit.engines.base import Token
    from labkit.loadgen.drivers import finish_record
    from labkit.loadgen.result import RequestRecord

    chunks = [Token("😀", 233, 0.1, completion_tokens=3), Token("😃", 234, 0.4),
              Token("", None, 0.4, completion_tokens=7)]  # a running count: the last one holds
    rec = finish_record(RequestRecord("concurrency", 1, 0), chunks, 0.7, None)
    assert rec.output_tokens == 7  # not the 2 chunks that carried them
    assert rec.tpot_s == pytest.approx((0.7 - 0.1) / 6) and rec.itl_s == pytest.approx([0.3])


def test_a_request_the_engine_aborted_is_unmeasured_not_timed():
    rows = [_rec(0, 0.0, 0.1, 1.0, 10), _rec(1, 0.0, 0.05, 0.3, 2)]
    rows[1]["finish_reason"] = "abort"  # vLLM's, as its engine core shuts down under it
    s = summarize(pd.DataFrame(rows, columns=REQUEST_COLUMNS)).iloc[0]
    assert (s["completed"], s["errors"], s["unmeasured"]) == (1, 0, 1)
    assert s["ttft_p50_ms"] == pytest.approx(100.0)  # the cut-short one is not in the figures


def test_a_request_that_got_no_token_is_an_error_not_a_latency_sample():
    from labkit.engines.base import Token
    from labkit.loadgen.drivers import finish_record

    good = [Token(" a", 1, 0.1), Token(" b", 2, 0.2), Token("", None, 0.2, finish_reason="length")]
    cut = finish_record(RequestRecord("concurrency", 1, 1, start_s=0.0), [], 30.0, None)  # closed, nothing sent
    empty = finish_record(RequestRecord("concurrency", 1, 2, start_s=0.0),
                          [Token("", None, 0.5, finish_reason="stop", completion_tokens=0)], 0.5, None)
    assert cut.error.startswith("NoOutput") and "finish reason" in cut.error
    assert empty.error == "NoOutput: the engine finished (stop) without generating a token"
    rows = [finish_record(RequestRecord("concurrency", 1, 0, start_s=0.0), good, 0.2, None).to_row(),
            cut.to_row(), empty.to_row()]
    s = summarize(pd.DataFrame(rows, columns=REQUEST_COLUMNS), {"ttft": 500}).iloc[0]
    assert (s["completed"], s["errors"]) == (1, 2)
    assert s["req_per_s"] == pytest.approx(1 / 0.2)  # the 30 s empty stream is no request served


def test_a_stream_cut_off_before_its_finish_is_an_error_not_a_short_output():
    from labkit.engines.base import Token
    from labkit.loadgen.drivers import finish_record

    # a proxy closed the stream after two tokens of 64: no finish reason, no [DONE]
    cut = finish_record(RequestRecord("concurrency", 1, 0, start_s=0.0), [Token(" a", 1, 0.1), Token(" b", 2, 0.2)],
                        0.2, None)
    assert cut.error == "Truncated: the stream ended after 2 token(s) without a finish reason (cut off?)"


def test_a_server_whose_first_token_ends_the_output_is_timed_at_its_finish():
    from labkit.engines.base import Token
    from labkit.loadgen.drivers import finish_record

    # vLLM's server on an end-of-generation first token: an empty delta with finish "stop",
    # and its usage counts the one token; in process the EOS token comes with its id.
    eos = [Token("", None, 0.3, finish_reason="stop"), Token("", None, 0.3, completion_tokens=1)]
    rec = finish_record(RequestRecord("concurrency", 1, 0), eos, 0.31, None)
    assert rec.error is None and rec.ttft_s == 0.3 and rec.output_tokens == 1 and rec.tpot_s is None
    halted = finish_record(RequestRecord("concurrency", 1, 1), [Token("", None, 0.1, finish_reason="cancelled")],
                           0.1, None)
    assert halted.error is None  # unmeasured by its finish reason, not an error


def test_goodput_counts_a_request_without_ttft_as_missing_the_slo():
    rows = [_rec(0, 0.0, 0.1, 1.0, 10), _rec(1, 0.0, 0.1, 1.0, 1)]
    rows[1]["ttft_s"], rows[1]["tpot_s"] = None, None  # a run saved before such requests were errors
    s = summarize(pd.DataFrame(rows, columns=REQUEST_COLUMNS), {"ttft": 500, "tpot": 1}).iloc[0]
    assert s["goodput_req_per_s"] == pytest.approx(0.0)  # tpot 100 ms > 1 ms; no TTFT fails
    s = summarize(pd.DataFrame(rows, columns=REQUEST_COLUMNS), {"ttft": 500}).iloc[0]
    assert s["goodput_req_per_s"] == pytest.approx(1 / 1.0)  # only the timed one


def test_a_run_with_users_and_rates_joins_memory_and_client_onto_both_kinds_of_level():
    from labkit.loadgen.result import phase_name

    rows = [RequestRecord(mode, level, i, start_s=i * 0.1, ttft_s=0.1, tpot_s=0.01, itl_s=[0.01], e2e_s=1.0,
                          input_tokens=5, output_tokens=10, finish_reason="length").to_row()
            for mode, level in (("concurrency", 8), ("rate", 2.0)) for i in range(2)]
    requests = pd.DataFrame(rows, columns=REQUEST_COLUMNS)
    assert requests["level"].dtype == float  # 8 became 8.0 next to the rate
    # the phases as the samplers named them while each level ran (Concurrency: int users)
    memory = pd.DataFrame({"t_s": [0, 1, 2, 3], "rss_bytes": [1e9, 2e9, 3e9, 4e9],
                           "phase": ["concurrency 8", "concurrency 8", "rate 2.0/s", "rate 2.0/s"]})
    client = pd.DataFrame([{"phase": p, "client_processes": 1, "client_cpu_cores": 0.5, "client_busiest_core": 0.5}
                           for p in ("concurrency 8", "rate 2.0/s")])
    s = BenchResult(requests, memory, {"engine": {"engine": "x"}}, client=client).summary.set_index("mode")
    assert s.loc["concurrency", "phase"] == "concurrency 8"
    assert s.loc["concurrency", "peak_rss_bytes"] == 2e9 and s.loc["rate", "peak_rss_bytes"] == 4e9
    assert s["client_busiest_core"].tolist() == [0.5, 0.5]
    assert phase_name("concurrency", 8.0) == phase_name("concurrency", 8) == "concurrency 8"
    assert phase_name("rate", 2) == phase_name("rate", 2.0) == "rate 2.0/s"
