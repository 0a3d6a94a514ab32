"""Load shapes: when the requests of one level leave.

The pacing lives here, once, for every engine: a :class:`Pacer` sends a level's requests as
its shape says and waits for them, and a driver (:mod:`labkit.loadgen.drivers`) only
carries each request to the engine. A shape answers three questions, as guidellm's
strategies do: how many requests leave at once when the level starts, at which times the
others leave, and how many leave each time one finishes.
"""

from __future__ import annotations

import itertools
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from .result import RequestRecord, phase_name

if TYPE_CHECKING:
    from .drivers import Driver, Job

__all__ = ["LoadShape", "Concurrency", "Rate", "Replay", "Pacer"]


class LoadShape(ABC):
    """One load level. ``mode`` and ``level`` name it in results ("concurrency", 8)."""

    mode: ClassVar[str]
    level: float
    round: int = 0  # which pass over the levels (bench's ``repeats``)

    @property
    def phase(self) -> str:
        """The memory sampler's phase name of this level."""
        return phase_name(self.mode, self.level)

    @abstractmethod
    def count(self) -> int:
        """How many requests this level sends."""

    def sessions(self, turns: int) -> int:
        """How many sessions of ``turns`` requests this level starts (a session is one request
        for every workload but multi-turn): each arrival starts one."""
        return self.count()

    def requests(self, turns: int) -> int:
        """How many requests this level sends in all."""
        return self.sessions(turns) * turns

    def first_wave(self, turns: int = 1) -> int:
        """How many sessions start together when the level starts (in one call to the driver)."""
        return 0

    def arrivals(self) -> Sequence[float]:
        """Seconds after the start at which one more request leaves."""
        return ()

    def after_completion(self) -> int:
        """How many sessions start each time one ends."""
        return 0


class Concurrency(LoadShape):
    """Closed loop: ``users`` users, each sending its next request when its last one ended."""

    mode = "concurrency"

    def __init__(self, users: int, requests: int):
        self.level, self._requests = users, requests

    def count(self) -> int:
        return max(int(self.level), self._requests)  # one request per user at least (sessions)

    def sessions(self, turns: int) -> int:
        # Whole sessions (the last one is never cut short), and at least one per user: fewer
        # would run the level below its number of users while its rows say N users
        # (BenchConfig warns when this sends more than requests_per_level).
        return max(int(self.level), -(-self._requests // turns))

    def first_wave(self, turns: int = 1) -> int:
        # Every user starts at once: one session each (sessions() holds at least that many).
        return min(int(self.level), self.sessions(turns))

    def after_completion(self) -> int:
        return 1


class Rate(LoadShape):
    """Open loop: Poisson arrivals, ``per_s`` requests per second on average, for
    ``duration_s`` seconds, whatever the engine's speed (so queues can grow)."""

    mode = "rate"

    def __init__(self, per_s: float, duration_s: float, rng: np.random.Generator):
        self.level = per_s
        gaps = rng.exponential(1.0 / per_s, size=int(per_s * duration_s * 3) + 10)
        times = np.cumsum(gaps)
        self._times = [float(t) for t in times[times < duration_s]]

    def count(self) -> int:
        return len(self._times)

    def arrivals(self) -> Sequence[float]:
        return self._times


class Replay(LoadShape):
    """Open loop at recorded times: a trace (``workloads.trace``), ``level`` its speed-up."""

    mode = "trace"

    def __init__(self, times_s: Sequence[float], speedup: float):
        self.level, self._times = speedup, list(times_s)

    def count(self) -> int:
        return len(self._times)

    def arrivals(self) -> Sequence[float]:
        return self._times


class InFlight:
    """Requests sent and not yet finished. ``wait()`` returns once ``close()`` said no more
    will be sent and every sent one called ``done()``; callbacks on other threads call done."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count = 0
        self._open = True
        self._idle = threading.Event()

    def add(self, n: int = 1) -> None:
        with self._lock:
            self._count += n

    def done(self, n: int = 1) -> None:
        with self._lock:
            self._count -= n
            self._check()

    def close(self) -> None:
        with self._lock:
            self._open = False
            self._check()

    def _check(self) -> None:
        if not self._open and self._count == 0:
            self._idle.set()

    def wait(self, timeout_s: float | None = None) -> None:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while not self._idle.wait(0.2):  # a timeout so Ctrl-C reaches the main thread
            if deadline is not None and time.monotonic() > deadline:
                return


class Pacer:
    """Runs levels through one driver; ``stop`` (set by Ctrl-C, a dead engine or the caller)
    ends sending at once, and the requests in flight still finish."""

    def __init__(self, driver: Driver, stop: threading.Event):
        self.driver, self.stop = driver, stop
        self._flight: InFlight | None = None
        # While held (a health check after a failed request), new sessions wait here, in
        # flight, instead of leaving for an engine that may be dead; the last release() sends
        # them, or, once stop is set, lets them go unsent. (A session's later turns are not
        # held: they follow a reply, not a failure.)
        self._holding = threading.Lock()
        self._holds = 0
        self._deferred: list[tuple[_Level, int, float | None]] = []

    def hold(self) -> None:
        with self._holding:
            self._holds += 1

    def release(self) -> None:
        with self._holding:
            self._holds -= 1
            if self._holds > 0:
                return
            deferred, self._deferred = self._deferred, []
        now = time.perf_counter()
        for level, n, due in deferred:
            try:
                # Ready from now: the hold was labkit's, not a client too slow to send them.
                level.send(n, due, ready=now)  # (an empty batch once stop is set)
            finally:
                level.flight.done(n)

    def defer(self, level: _Level, n: int, due: float | None) -> bool:
        """Keep ``n`` sessions of ``level`` (in flight) until the last release(), if held."""
        with self._holding:
            if self._holds <= 0:
                return False
            level.flight.add(n)
            self._deferred.append((level, n, due))
            return True

    def run(self, shape: LoadShape, job: Callable[[int, Callable[[RequestRecord], None]], Job],
            on_record: Callable[[RequestRecord], None], turns: int = 1, think_s: float = 0.0) -> None:
        """Send the level's sessions of ``turns`` requests (one for every workload but
        multi-turn), ``job(index, finished)`` making request ``index`` (turn ``index % turns``
        of session ``index // turns``), and return when all have finished; ``on_record``
        sees every finished request first. A session's next turn leaves ``think_s`` seconds
        after its previous one ended; a failed turn ends its session, and its later turns
        are recorded as not sent."""
        level = _Level(self, shape, job, on_record, turns, think_s)
        self._flight = level.flight
        level.send(shape.first_wave(turns))
        start = time.perf_counter()
        for at in shape.arrivals():
            delay = start + at - time.perf_counter()
            if (delay > 0 and self.stop.wait(delay)) or self.stop.is_set():  # pacing, not syncing
                break
            level.send(1, due=start + at)
        level.flight.close()
        level.flight.wait()

    def settle(self, timeout_s: float) -> None:
        """Wait (bounded) for the requests in flight after ``stop``."""
        if self._flight is not None:
            self._flight.wait(timeout_s)


class _Level:
    """One level's sessions in flight: which start next, and what follows each request."""

    def __init__(self, pacer: Pacer, shape: LoadShape, job: Callable[[int, Callable[[RequestRecord], None]], Job],
                 on_record: Callable[[RequestRecord], None], turns: int, think_s: float):
        self.pacer, self.shape, self.job, self.on_record = pacer, shape, job, on_record
        self.turns, self.think_s = turns, think_s
        self.sessions = iter(range(shape.sessions(turns)))
        self.taking = threading.Lock()
        self.flight = InFlight()

    def send(self, n: int, due: float | None = None, ready: float | None = None) -> None:
        """Start the next ``n`` sessions (their first turns)."""
        if self.pacer.defer(self, n, due):
            return
        with self.taking:
            batch = [] if self.pacer.stop.is_set() else list(itertools.islice(self.sessions, n))
        self.flight.add(len(batch))
        if batch:
            ready = ready if ready is not None else due if due is not None else time.perf_counter()
            jobs = [self.job(s * self.turns, self.finished) for s in batch]
            for j in jobs:
                j.due, j.ready = due, ready
            try:
                self.pacer.driver.send(jobs)
            except Exception as e:  # not sent (a thread that could not start): failed, not a hang
                for j in jobs:
                    j.fail(f"{type(e).__name__}: {e}")  # (a job that did leave ends once: Job)

    def next_turn(self, index: int) -> None:
        # think_s of the user reading and typing (a wait on stop, so Ctrl-C cuts it short)
        if (self.think_s > 0 and self.pacer.stop.wait(self.think_s)) or self.pacer.stop.is_set():
            self.flight.done()  # never sent: the session's marks say so (Session._mark_unsent)
            return
        job = None
        try:
            job = self.job(index, self.finished)
            job.ready = time.perf_counter()
            self.pacer.driver.send([job])
        except Exception as e:  # not sent (a thread that could not start): a failed turn, not a hang
            if job is None:
                self.flight.done()
                return
            job.fail(f"{type(e).__name__}: {e}")

    def finished(self, record: RequestRecord) -> None:
        self.on_record(record)  # first: it may stop the sweep (a failed request, a dead engine)
        turn = record.index % self.turns
        if turn + 1 < self.turns and record.error is None and not self.pacer.stop.is_set():
            self.flight.add(1)  # the next turn is in flight from now, through its think time
            if self.think_s > 0:
                threading.Thread(target=self.next_turn, args=(record.index + 1,), daemon=True,
                                 name="labkit-think").start()
            else:
                self.next_turn(record.index + 1)
        else:
            if record.error is not None:
                for later in range(record.index + 1, record.index - turn + self.turns):
                    skipped = self.job(later, lambda r: None).record
                    skipped.finish_reason = f"not sent: turn {turn + 1} of its session failed"
                    self.on_record(skipped)
            self.send(self.shape.after_completion())
        self.flight.done()  # after send's add: the count must not touch zero in between
