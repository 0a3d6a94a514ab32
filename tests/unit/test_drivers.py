"""Drivers are chosen by declared capability, and every path measures every request."""

from __future__ import annotations

import pytest

import labkit
from labkit.loadgen import workloads
from labkit.loadgen.drivers import (
    AsyncDriver,
    Job,
    SubmitDriver,
    ThreadDriver,
    driver_for,
    run_request,
)
from labkit.loadgen.result import RequestRecord

from .fake_engine import FakeAsyncEngine, FakeEngine, FakeKvEngine, FakeSubmitEngine

SMALL = workloads.synthetic(input_tokens=8, output_tokens=4)


@pytest.mark.parametrize("cls, driver", [(FakeEngine, ThreadDriver), (FakeSubmitEngine, SubmitDriver),
                                         (FakeAsyncEngine, AsyncDriver)])
def test_the_driver_follows_the_declared_capability(cls, driver):
    d = driver_for(cls(), 0.0)
    try:
        assert type(d) is driver
    finally:
        d.close()


@pytest.mark.parametrize("cls", [FakeEngine, FakeSubmitEngine, FakeAsyncEngine])
def test_every_driver_measures_every_request(cls):
    eng = cls()
    res = labkit.bench(eng, concurrency=[1, 4], requests_per_level=8, workload=SMALL, warmup=0,
                       progress=False)
    s = res.summary.set_index("level")
    assert (s["completed"] == 8).all() and (s["errors"] == 0).all()
    assert (s["output_tokens"] == 32).all()
    req = res.requests
    assert req["ttft_s"].notna().all() and (req["e2e_s"] >= req["ttft_s"]).all()
    assert sorted(req[req["level"] == 4]["index"]) == list(range(8))


def test_a_submitting_engine_gets_each_first_wave_in_one_call():
    eng = FakeSubmitEngine()
    labkit.bench(eng, concurrency=[1, 4], requests_per_level=6, workload=SMALL, warmup=0, progress=False)
    assert eng.waves[0] == 1 and 4 in eng.waves and max(eng.waves) == 4
    assert sum(eng.waves) == 12


def test_an_async_engine_is_driven_from_one_loop_and_closed_on_it():
    eng = FakeAsyncEngine()
    labkit.bench(eng, concurrency=[2, 3], requests_per_level=4, workload=SMALL, warmup=1, progress=False)
    assert len(eng.loops) == 1 and eng.aclosed == 1


def test_requests_an_engine_refuses_outright_become_error_records():
    eng = FakeSubmitEngine()
    reqs = SMALL.build(eng, 2)
    eng.close()  # submit() now raises for the whole wave
    got = []
    jobs = [Job(r, RequestRecord("concurrency", 2, i), got.append) for i, r in enumerate(reqs)]
    SubmitDriver(eng, 0.0).send(jobs)
    assert [r.index for r in got] == [0, 1]
    assert all("closed" in r.error and r.output_tokens == 0 for r in got)


def test_the_kv_account_is_read_only_from_engines_that_report_one():
    plain = labkit.bench(FakeEngine(), concurrency=[1], requests_per_level=2, workload=SMALL,
                         warmup=0, progress=False)
    assert plain.kv.empty
    kv = labkit.bench(FakeKvEngine(), concurrency=[1, 2], requests_per_level=2, workload=SMALL,
                      warmup=0, progress=False, kv_interval_s=None)
    assert list(kv.kv["phase"]) == ["idle", "concurrency 1", "concurrency 2"]
    assert kv.kv["kv_used_tokens"].tolist() == [0.0, 2.0, 4.0]


def test_run_request_returns_a_record_with_latencies():
    eng = FakeEngine()
    rec = run_request(eng, SMALL.build(eng, 1)[0])
    assert rec.error is None and rec.output_tokens == 4 and rec.finish_reason == "length"
    assert rec.ttft_s is not None and len(rec.itl_s) <= 3
