"""The SLO and the capacity search: its walk on a predicate, then on a fake engine that queues."""

from __future__ import annotations

import json
import threading

import pandas as pd
import pytest

import labkit
from labkit.errors import InvalidInput
from labkit.loadgen import SLO, workloads
from labkit.loadgen.capacity import Capacity, _Search

from .fake_engine import FakeEngine

SMALL = workloads.synthetic(input_tokens=8, output_tokens=4)


def walk(search: _Search, meets) -> list[tuple[str, float]]:
    steps = []
    while (step := search.next()) is not None:
        steps.append(step)
        search.tell(*step, meets(step[1], len(steps)))
        assert len(steps) < 50, steps
    return steps


def test_users_grow_then_bisect_then_confirm():
    s = _Search("users", 1, 2, 256, 0.1)
    steps = walk(s, lambda level, _: level <= 5)
    assert steps == [("grow", 1), ("grow", 2), ("grow", 4), ("grow", 8), ("bisect", 6), ("bisect", 5),
                     ("confirm", 5)]
    assert s.good == 5 and s.bad == 6 and s.confirmed


def test_a_failed_confirmation_moves_the_answer_down():
    s = _Search("users", 1, 2, 256, 0.1)
    # level 4 meets the SLO the first time, not when repeated (step 7 is its confirmation)
    steps = walk(s, lambda level, n: level <= 3 or (level == 4 and n != 7))
    assert steps[4:] == [("bisect", 6), ("bisect", 5), ("confirm", 4), ("bisect", 3), ("confirm", 3)]
    assert s.good == 3 and s.confirmed


def test_rates_bisect_to_the_resolution_and_stop_below_the_start():
    s = _Search("rate", 0.5, 2, 1000, 0.1)
    walk(s, lambda level, _: level <= 3.3)
    assert 3.0 <= s.good <= 3.3 and (s.bad - s.good) <= 0.1 * s.good and s.confirmed
    never = _Search("rate", 0.5, 2, 1000, 0.1)
    steps = walk(never, lambda level, _: False)
    assert never.good == 0 and [lv for _, lv in steps] == [0.5, 0.25, 0.125, 0.0625]


def test_the_max_level_ends_a_search_that_never_breaks():
    s = _Search("users", 1, 2, 10, 0.1)
    steps = walk(s, lambda level, _: True)
    assert [lv for _, lv in steps] == [1, 2, 4, 8, 10] and s.bad is None and s.good == 10


@pytest.mark.parametrize(("bounds", "message"), [
    ({"ttft_p95_ms": 100}, r"Unknown SLO bound ttft_p95_ms: valid ones are ttft_p50_ms.*e2e_p99_ms"),
    ({"latency_p99_ms": 100}, r"Unknown SLO bound latency_p99_ms"),
    ({"ttft_p99_ms": 0}, r"ttft_p99_ms must be a positive number of milliseconds, got 0"),
    ({"tpot_p50_ms": -5.0}, r"tpot_p50_ms must be a positive"),
    ({"tpot_p50_ms": float("nan")}, r"tpot_p50_ms must be a positive"),
    ({}, r"at least one bound"),
])
def test_bad_slos_name_what_is_valid(bounds, message):
    with pytest.raises(InvalidInput, match=message):
        SLO(**bounds)


def test_slo_parse_judge_and_describe():
    slo = SLO.parse("ttft_p99_ms=2000, tpot_p99_ms=100")
    assert slo == SLO(ttft_p99_ms=2000, tpot_p99_ms=100)
    assert slo.describe() == "TTFT p99 <= 2000 ms, TPOT p99 <= 100 ms"
    assert slo.met({"ttft_p99_ms": 1999.0, "tpot_p99_ms": 100.0})
    assert not slo.met({"ttft_p99_ms": 2001.0, "tpot_p99_ms": 10.0})
    assert not slo.met({"ttft_p99_ms": float("nan"), "tpot_p99_ms": 10.0})  # nothing completed
    with pytest.raises(InvalidInput, match=r"NAME=MILLISECONDS"):
        SLO.parse("ttft_p99_ms")


class OneSlotEngine(FakeEngine):
    """Serves one request at a time, so time to first token grows with the users waiting."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.slot = threading.Lock()

    def _tokens(self, params, t0, prompt_tokens=None):
        with self.slot:
            yield from super()._tokens(params, t0, prompt_tokens)


def test_capacity_on_a_queueing_engine(tmp_path):
    eng = OneSlotEngine(token_s=0.002)
    tight = labkit.capacity(eng, slo=SLO(ttft_p99_ms=5), workload=SMALL, max_level=32, progress=False)
    loose = labkit.capacity(eng, slo={"ttft_p99_ms": 150}, workload=SMALL, max_level=32, progress=False,
                            out=tmp_path / "cap")
    assert loose.users > tight.users
    for cap in (tight, loose):
        lv = cap.levels
        if cap.users:  # the answer met the SLO; the smallest level tried above it did not
            assert lv[lv["level"] == cap.users]["met"].all() and cap.confirmed
        above = lv[lv["level"] > cap.users].groupby("level")["met"].all()  # a repeat may fail
        assert not above.empty and not above.iloc[0]
    assert loose.goodput > 0 and "ttft_p99_ms" in loose.levels
    saved = json.loads((tmp_path / "cap" / "capacity.json").read_text())
    assert saved["users"] == loose.users and len(saved["levels"]) == len(loose.levels)
    # every level is a bench run of its own, none repeating a prompt of another
    shas = [sha for r in loose.results for sha in r.requests["prompt_sha"]]
    assert len(shas) == len(set(shas)) == sum(len(r.requests) for r in loose.results)
    assert (tmp_path / "cap" / "00-grow-1" / "requests.jsonl").exists()


def test_an_slo_no_level_meets_is_an_answer_not_an_error():
    cap = labkit.capacity(OneSlotEngine(token_s=0.002), slo=SLO(e2e_p50_ms=0.001), workload=SMALL,
                          progress=False)
    assert cap.users == 0 and cap.goodput == 0
    assert "no level met E2E p50 <= 0.001 ms; closest: 1 user," in cap.summary_line()
    assert cap.closest["level"] == 1


def test_a_stop_keeps_the_levels_measured():
    stop = threading.Event()
    seen = []

    def after(cap):
        seen.append(len(cap.levels))
        if len(cap.levels) == 2:
            stop.set()

    cap = labkit.capacity(OneSlotEngine(token_s=0.001), slo=SLO(ttft_p99_ms=10_000), workload=SMALL,
                          progress=False, stop_event=stop, on_level_done=after)
    assert cap.stopped == "interrupted" and len(cap.levels) == 2 and seen == [1, 2]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"by": "users", "budget_s": 0.05}, r"budget_s=0.05 is too small for one level: one request took"),
    ({"by": "rate", "budget_s": 5, "duration_s": 20}, r"too small for one level: a rate level lasts"),
    ({"by": "qps"}, r"by must be 'users'"),
    ({"start": 1.5}, r"start must be a positive whole number of users"),
    ({"growth": 1}, r"growth must be above 1"),
    ({"start": 8, "max_level": 4}, r"max_level \(4\) is below start \(8\)"),
])
def test_bad_search_settings(kwargs, message):
    with pytest.raises(InvalidInput, match=message):
        labkit.capacity(OneSlotEngine(token_s=0.01), slo=SLO(ttft_p99_ms=100), workload=SMALL,
                        progress=False, **kwargs)


def test_a_search_always_moves_on_where_rounding_would_repeat_a_level():
    slow = _Search("rate", 0.5, 1.001, 0.52, 0.1)  # 3 significant figures would keep 0.5 for ever
    levels = [lv for _, lv in walk(slow, lambda level, _: True)]
    assert levels == sorted(set(levels)) and levels[-1] == 0.52
    fine = _Search("rate", 0.5, 2, 1000, 0.001)  # rounding the midpoint would land on 100 again
    walk(fine, lambda level, _: level <= 100.3)
    assert fine.good <= 100.3 < fine.bad and fine.bad - fine.good <= 0.001 * fine.good and fine.confirmed


def test_a_rate_level_with_no_arrival_ends_the_search_saying_so():
    cap = labkit.capacity(OneSlotEngine(token_s=0.001), slo=SLO(ttft_p99_ms=10_000), by="rate", start=0.05,
                          max_level=0.1, duration_s=1.0, workload=SMALL, progress=False)
    assert cap.rate == 0 and cap.levels.empty and cap.closest is None
    assert "0.05 req/s sends no request in duration_s=1 s: a longer duration_s" in cap.summary_line()


def test_a_rate_level_shows_the_figures_it_was_judged_on():
    slo = SLO(ttft_p99_ms=2000)
    levels = pd.DataFrame([{"step": "grow", "level": 4.0, "met": False, "completed": 8, "errors": 0,
                            "slo_ratio": 1.25, "ttft_p99_ms": 1500.0, "ttft_sched_p99_ms": 2500.0,
                            "goodput_req_per_s": 1.0}])
    cap = Capacity("fake", slo, "rate", 0.0, levels, "no level met the SLO", False, 1.0)
    assert "closest: 4 req/s, ttft_sched_p99_ms 2,500 ms (bound 2000)" in cap.summary_line()
    assert "ttft_sched_p99_ms" in cap._repr_html_()


def test_a_search_again_from_first_request_sends_none_of_the_last_ones_prompts():
    eng = FakeEngine()
    args = {"slo": SLO(ttft_p99_ms=10_000), "workload": SMALL, "max_level": 2, "progress": False}
    cap = labkit.capacity(eng, **args)
    sent = sum(len(r.requests) for r in cap.results)
    again = labkit.capacity(eng, first_request=sent, **args)
    before = {sha for r in cap.results for sha in r.requests["prompt_sha"]}
    after = {sha for r in again.results for sha in r.requests["prompt_sha"]}
    assert len(after) == sent and not before & after
    with pytest.raises(InvalidInput, match="first_request must be a non-negative integer"):
        labkit.capacity(eng, first_request=-1, **args)


def test_the_capacity_panel_searches_a_loaded_engine_again_on_new_prompts():
    from labkit.widgets import CapacityPanel

    eng = FakeEngine()
    shas = []
    for _ in range(2):
        panel = CapacityPanel(eng)
        panel.max_users.value, panel.input_tokens.value, panel.output_tokens.value = 2, 32, 4
        panel.run()
        panel.wait(60)
        shas.append({sha for r in panel.capacity.results for sha in r.requests["prompt_sha"]})
    assert shas[0] and shas[1] and not shas[0] & shas[1]
