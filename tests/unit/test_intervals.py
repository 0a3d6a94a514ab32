"""Repeats and uncertainty: intervals over rounds, and comparisons that admit overlap."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from labkit.errors import InvalidInput
from labkit.loadgen.config import BenchConfig
from labkit.loadgen.intervals import Estimate, compare, difference, over_rounds, t95
from labkit.loadgen.metrics import summarize
from labkit.loadgen.result import REQUEST_COLUMNS, RequestRecord


def test_interval_over_rounds_is_a_student_t_interval_around_the_mean():
    est = over_rounds([10.0, 12.0, 14.0])
    assert est.value == pytest.approx(12.0) and est.rounds == 3
    half = 4.303 * 2.0 / math.sqrt(3)  # t(0.975, 2) * sd / sqrt(n)
    assert (est.lo, est.hi) == pytest.approx((12.0 - half, 12.0 + half))
    assert not over_rounds([5.0]).has_interval  # one round: no interval, not a zero-width one
    assert math.isnan(over_rounds([]).value)
    assert t95(100) == pytest.approx(1.984, abs=0.005)


def test_overlapping_intervals_are_no_clear_difference_and_one_round_is_not_judged():
    a, b = Estimate(10, 9, 11, 3), Estimate(10.5, 9.5, 11.5, 3)
    assert compare(a, b) == 0 and "no clear difference" in difference(a, b, "A", "B")
    far = Estimate(20, 19, 21, 3)
    assert compare(far, a) == 1 and compare(a, far) == -1
    assert difference(a, far, "A", "B").startswith("B higher")
    assert compare(Estimate(20), Estimate(10)) is None
    assert "one round" in difference(Estimate(20), Estimate(10), "A", "B")


def _row(round_, index, start, e2e, out):
    r = RequestRecord("concurrency", 1, index, start_s=start, ttft_s=0.1, e2e_s=e2e,
                      tpot_s=(e2e - 0.1) / (out - 1), itl_s=[0.01], input_tokens=8,
                      output_tokens=out, round=round_)
    return r.to_row()


def test_a_level_in_three_rounds_is_their_mean_with_an_interval_that_contains_it():
    rows = [_row(r, i, 10.0 * r + i * dur, dur, 11) for r, dur in enumerate([1.0, 1.25, 0.8])
            for i in range(2)]
    s = summarize(pd.DataFrame(rows, columns=REQUEST_COLUMNS)).iloc[0]
    per_round = [22 / (2 * d) for d in (1.0, 1.25, 0.8)]  # two requests back to back a round
    assert s["rounds"] == 3 and s["completed"] == 6 and s["output_tokens"] == 66
    assert s["output_tok_per_s"] == pytest.approx(sum(per_round) / 3)
    assert s["output_tok_per_s_lo"] < s["output_tok_per_s"] < s["output_tok_per_s_hi"]
    assert s["tpot_p50_ms_lo"] < s["tpot_p50_ms"] < s["tpot_p50_ms_hi"]
    assert s["user_tok_per_s"] == pytest.approx(sum(10 / (d - 0.1) for d in (1.0, 1.25, 0.8)) / 3)


def test_a_round_where_every_request_failed_counts_as_zero_throughput():
    rows = [_row(r, i, 10.0 * r + i, 1.0, 11) for r in (0, 2) for i in range(2)]
    for i in range(2):  # round 1: both sent, both failed
        failed = RequestRecord("concurrency", 1, i, start_s=10.0 + i, input_tokens=8, round=1, error="boom")
        rows.append(failed.to_row())
    s = summarize(pd.DataFrame(rows, columns=REQUEST_COLUMNS), {"e2e": 5000}).iloc[0]
    assert s["rounds"] == 3 and s["rounds_used"] == 3 and (s["completed"], s["errors"]) == (4, 2)
    assert s["req_per_s"] == pytest.approx((1.0 + 0.0 + 1.0) / 3)  # two requests in 2 s a round
    assert s["goodput_req_per_s"] == pytest.approx(2 / 3)
    assert s["req_per_s_lo"] < s["req_per_s"] < s["req_per_s_hi"]  # the rounds disagree
    assert s["e2e_p50_ms"] == pytest.approx(1000.0)  # latencies of the requests that completed


def test_a_round_the_sweep_never_sent_is_left_out_of_the_figures():
    rows = [_row(r, i, 10.0 * r + i, 1.0, 11) for r in (0, 1) for i in range(2)]
    for i in range(2):  # round 2: stopped before it sent anything
        rows.append(RequestRecord("concurrency", 1, i, round=2, finish_reason="not sent: interrupted").to_row())
    s = summarize(pd.DataFrame(rows, columns=REQUEST_COLUMNS)).iloc[0]
    assert s["rounds"] == 3 and s["rounds_used"] == 2 and s["unmeasured"] == 2
    assert s["req_per_s"] == pytest.approx(1.0)


def test_one_round_has_no_interval_columns():
    rows = [_row(0, i, i * 1.0, 1.0, 11) for i in range(2)]
    s = summarize(pd.DataFrame(rows, columns=REQUEST_COLUMNS))
    assert "output_tok_per_s_lo" not in s and "rounds" not in s


def test_repeats_run_the_levels_round_after_round():
    shapes = BenchConfig(concurrency=[1, 4], repeats=3).shapes()
    assert [(s.level, s.round) for s in shapes] == [(1, 0), (4, 0), (1, 1), (4, 1), (1, 2), (4, 2)]
    for bad in (0, -1, 1.5, True):
        with pytest.raises(InvalidInput, match="repeats"):
            BenchConfig(repeats=bad)
