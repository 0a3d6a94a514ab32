"""The load generator against a fake engine: counts, a dying engine, and interrupts."""

from __future__ import annotations

import json
import threading
import time

import pytest

import labkit
from labkit.loadgen import workloads

from .fake_engine import FakeEngine, FakeSubmitEngine

SMALL = workloads.synthetic(input_tokens=8, output_tokens=4)


def test_closed_loop_levels_measure_every_request(tmp_path):
    res = labkit.bench(FakeEngine(), concurrency=[1, 3], requests_per_level=6, workload=SMALL,
                       warmup=0, progress=False, out=tmp_path / "run")
    s = res.summary.set_index("level")
    assert list(s.index) == [1, 3]
    assert (s["completed"] == 6).all() and (s["errors"] == 0).all() and (s["unmeasured"] == 0).all()
    assert (s["output_tokens"] == 24).all()
    assert res.ended == "completed"
    assert json.loads((tmp_path / "run" / "run.json").read_text())["ended"] == "completed"


def test_a_dying_engine_stops_the_sweep_and_marks_the_rest_not_sent(tmp_path):
    eng = FakeEngine(die_after=3)
    res = labkit.bench(eng, concurrency=[1, 2], requests_per_level=10, workload=SMALL, warmup=0,
                       progress=False, out=tmp_path / "run")
    assert res.ended == "engine died: fake was killed by SIGKILL"
    assert res.engine_log == "fake log: died"
    s = res.summary.set_index("level")
    assert s.loc[1, "completed"] == 3 and s.loc[1, "errors"] == 1
    assert s.loc[1, "unmeasured"] == 6 and s.loc[2, "unmeasured"] == 10
    assert eng.started == 4  # nothing was sent after the first sign of death
    saved = labkit.BenchResult.load(tmp_path / "run")
    assert saved.ended.startswith("engine died") and len(saved.requests) == 20


def test_stop_event_ends_the_sweep_as_interrupted_with_unmeasured_not_errors():
    stop = threading.Event()
    eng = FakeEngine(token_s=0.002)
    seen = []

    def after_level(res):
        seen.append(len(res.requests))
        stop.set()

    res = labkit.bench(eng, concurrency=[1, 2], requests_per_level=5, workload=SMALL, warmup=0,
                       progress=False, stop_event=stop, on_level_done=after_level)
    assert res.ended == "interrupted" and seen == [5]
    s = res.summary.set_index("level")
    assert s.loc[1, "completed"] == 5 and s.loc[2, "unmeasured"] == 5
    assert (s["errors"] == 0).all()


class _Recording(FakeEngine):
    """Remembers every prompt it was sent."""

    def __init__(self):
        super().__init__()
        self.prompts: list[str] = []

    def _stream(self, prompt, params, chat, t0):
        self.prompts.append(prompt if isinstance(prompt, str) else prompt[-1]["content"])
        return super()._stream(prompt, params, chat, t0)


def test_no_prompt_is_sent_twice_in_a_sweep_warm_up_included():
    """A server's prefix cache would turn a repeated prompt into a free prefill: the warm-up
    and each level get prompts of their own."""
    eng = _Recording()
    labkit.bench(eng, concurrency=[1, 2, 4], requests_per_level=5, workload=SMALL, warmup=2,
                 progress=False)
    assert len(eng.prompts) == 2 + 3 * 5
    assert len(set(eng.prompts)) == len(eng.prompts)


def test_request_i_is_the_same_whatever_the_batch_it_is_built_in():
    eng = FakeEngine()
    whole = SMALL.build(eng, 6)
    assert SMALL.build(eng, 3, start=3) == whole[3:] and SMALL.build(eng, 2) == whole[:2]
    assert workloads.synthetic(8, 4, seed=1).build(eng, 6) != whole  # another seed, other prompts


class SlowSubmitEngine(FakeSubmitEngine):
    """A client that needs 40 ms to hand each request over: it cannot keep a fast schedule."""

    def submit(self, requests) -> None:
        time.sleep(0.04)  # the cost being modelled, not synchronisation
        super().submit(requests)


def test_an_open_loop_level_reports_how_well_it_kept_its_schedule():
    on_time = labkit.bench(FakeEngine(), rate=[20], duration_s=1.0, workload=SMALL, warmup=0,
                           progress=False)
    s = on_time.summary.iloc[0]
    assert on_time.requests["scheduled_s"].notna().all()
    assert not s["rate_short"] and s["sent_rate"] == pytest.approx(s["scheduled_rate"], rel=0.05)
    assert s["ttft_sched_p50_ms"] >= s["ttft_p50_ms"] and s["dispatch_delay_p50_ms"] < 20
    late = labkit.bench(SlowSubmitEngine(), rate=[100], duration_s=1.0, workload=SMALL, warmup=0,
                        progress=False).summary.iloc[0]
    assert late["rate_short"] and late["sent_rate"] < 0.5 * late["scheduled_rate"]
    # a user arriving on schedule waited for the client too: that wait is in their latency
    assert late["ttft_sched_p99_ms"] > late["ttft_p99_ms"] + late["dispatch_delay_p50_ms"] / 2
    closed = labkit.bench(FakeEngine(), concurrency=[2], requests_per_level=4, workload=SMALL, warmup=0,
                          progress=False)
    assert closed.requests["scheduled_s"].isna().all() and "rate_short" not in closed.summary
