"""Load shapes and the pacer, with a driver that records what it was asked to send."""

from __future__ import annotations

import threading
import warnings

import numpy as np
import pytest

from labkit.loadgen.config import BenchConfig
from labkit.loadgen.drivers import Driver, Job
from labkit.loadgen.result import RequestRecord
from labkit.loadgen.shapes import Concurrency, Pacer, Rate
from labkit.loadgen.workloads import Request


class RecordingDriver(Driver):
    """Finishes requests in the order they were sent, on the sending thread, after the send
    that carried them returned (as an engine would), and records every wave."""

    def __init__(self):
        super().__init__(None, 0.0)
        self.waves: list[list[int]] = []
        self.pending: list[Job] = []
        self.most_in_flight = 0
        self.draining = False

    def send(self, jobs):
        self.waves.append([j.record.index for j in jobs])
        self.pending += jobs
        self.most_in_flight = max(self.most_in_flight, len(self.pending))
        if self.draining:
            return  # the loop below finishes it
        self.draining = True
        while self.pending:
            job = self.pending.pop(0)
            job.on_done(job.record)
        self.draining = False


def _job(i, finished):
    return Job(Request("p", 4, 1), RequestRecord("concurrency", 2, i), finished)


def _run(shape, stop_after: int | None = None):
    driver, seen, stop = RecordingDriver(), [], threading.Event()

    def on_record(rec):
        seen.append(rec.index)
        if stop_after is not None and len(seen) >= stop_after:
            stop.set()

    Pacer(driver, stop).run(shape, _job, on_record)
    return driver, seen


def test_closed_loop_sends_a_first_wave_then_one_per_completion_never_more_than_users():
    driver, seen = _run(Concurrency(3, 10))
    assert driver.waves[0] == [0, 1, 2]  # the first wave in one call
    assert driver.waves[1:] == [[i] for i in range(3, 10)]
    assert seen == list(range(10))
    assert driver.most_in_flight == 3


def test_a_closed_level_with_fewer_requests_than_users_still_has_every_user_in_flight():
    # 8 users with requests_per_level=3 once ran 3 users labelled 8.
    driver, seen = _run(Concurrency(8, 3))
    assert driver.waves == [list(range(8))] and seen == list(range(8))
    assert driver.most_in_flight == 8


def test_a_multi_turn_level_starts_one_session_per_user_at_once():
    # 8 users, 4 requests of 2 turns: 8 sessions, all 8 in flight from the start (was 4).
    shape = Concurrency(8, 4)
    assert shape.sessions(2) == 8 and shape.requests(2) == 16 and shape.first_wave(2) == 8
    driver, seen = RecordingDriver(), []
    Pacer(driver, threading.Event()).run(shape, _job, lambda r: seen.append(r.index), turns=2)
    assert driver.waves[0] == [2 * s for s in range(8)] and driver.most_in_flight == 8
    assert sorted(seen) == list(range(16))


def test_config_warns_when_a_level_sends_more_than_requests_per_level():
    with pytest.warns(UserWarning, match=r"concurrency 64: 64 requests"):
        cfg = BenchConfig(concurrency=[1, 64], requests_per_level=32)
    assert [s.requests(1) for s in cfg.shapes()] == [32, 64]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        BenchConfig(concurrency=[1, 32], requests_per_level=32)  # nothing raised: no warning


def test_stop_ends_sending_and_the_requests_in_flight_still_finish():
    driver, seen = _run(Concurrency(2, 10), stop_after=1)
    assert driver.waves == [[0, 1]] and seen == [0, 1]


def test_poisson_arrivals_are_seeded_inside_the_duration_and_sent_one_at_a_time():
    a = Rate(20.0, 0.5, np.random.default_rng(7))
    b = Rate(20.0, 0.5, np.random.default_rng(7))
    assert a.arrivals() == b.arrivals() and a.count() == len(a.arrivals()) > 0
    assert all(0 < t < 0.5 for t in a.arrivals()) and list(a.arrivals()) == sorted(a.arrivals())
    assert a.first_wave() == 0 and a.after_completion() == 0
    driver, seen = _run(a)
    assert driver.waves == [[i] for i in range(a.count())]
    assert seen == list(range(a.count()))


def test_config_orders_levels_and_draws_the_same_arrivals_for_the_same_seed():
    cfg = BenchConfig(concurrency=[1, 4], rate=[2.0, 5.0], duration_s=3, seed=3)
    shapes = cfg.shapes()
    assert [(s.mode, s.level) for s in shapes] == [("concurrency", 1), ("concurrency", 4),
                                                   ("rate", 2.0), ("rate", 5.0)]
    assert [s.phase for s in shapes] == ["concurrency 1", "concurrency 4", "rate 2.0/s", "rate 5.0/s"]
    again = BenchConfig(concurrency=[1, 4], rate=[2.0, 5.0], duration_s=3, seed=3).shapes()
    assert shapes[3].arrivals() == again[3].arrivals()
    assert BenchConfig().levels == [1] and BenchConfig(concurrency=4).levels == [4]
    assert cfg.warmup_shape().count() == 2 and BenchConfig(warmup=0).warmup_shape() is None
