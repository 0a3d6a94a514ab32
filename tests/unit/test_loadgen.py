"""The load generator against a fake engine: counts, a dying engine, and interrupts."""

from __future__ import annotations

import json
import threading

import labkit
from labkit.loadgen import workloads

from .fake_engine import FakeEngine

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
