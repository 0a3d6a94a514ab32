"""BenchConfig: what one sweep measures, checked once, before anything is loaded or written."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import InvalidInput
from .shapes import Concurrency, LoadShape, Rate, Replay
from .workloads import Trace, Workload, chat


def _levels(value: Any) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, Sequence) and not isinstance(value, str) else [value]


class NoArrivals(InvalidInput):
    """A rate level whose Poisson draw over ``duration_s`` holds no request."""


@dataclass
class BenchConfig:
    """The levels of a sweep and how they are measured (see :func:`labkit.bench`).

    ``concurrency``: closed-loop levels, ``requests_per_level`` requests each. ``rate``:
    Poisson arrival rates (requests per second), ``duration_s`` each. With neither, one user.
    """

    concurrency: Sequence[int] | int | None = None
    rate: Sequence[float] | float | None = None
    requests_per_level: int = 32
    duration_s: float = 30.0
    workload: Workload | None = None
    warmup: int = 2
    slo_ms: dict[str, float] | None = None
    memory_interval_s: float = 0.1
    #: None: the KV account is read once at each level's end, never during it (each read is a
    #: scrape of the server); with telemetry on, telemetry's readings are the KV account
    kv_interval_s: float | None = None
    progress: bool = True
    seed: int = 0
    #: the index of the first measured request's prompt: a series of sweeps on one engine
    #: (a capacity search) passes its running count, so no prompt is ever sent twice
    first_request: int = 0
    #: how many rounds over the levels: each figure then gets a 95% interval over rounds
    #: (see labkit.loadgen.intervals)
    repeats: int = 1
    #: the telemetry timeline (labkit.loadgen.telemetry): server metrics, CPU by process role,
    #: GPU; read every ``telemetry_interval_s``. Off by default: a server scrape costs the
    #: server time (vLLM: ~11 ms to render /metrics).
    telemetry: bool = False
    telemetry_interval_s: float = 2.0
    #: load processes (labkit.loadgen.workers): 1 sends every request from this process;
    #: "ray" or "ray:N": Ray actors (labkit.loadgen.ray_workers) on the cluster at ray_address
    workers: int | str = 1
    ray_address: str | None = None
    levels: list[int] = field(init=False)
    rates: list[float] = field(init=False)

    def __post_init__(self) -> None:
        replay = isinstance(self.workload, Trace)
        if replay and (self.concurrency is not None or self.rate is not None):
            raise InvalidInput("A trace sets its own arrival times: give no concurrency or rate with "
                               "workloads.trace() (its speedup= scales the times).")
        if self.concurrency is None and self.rate is None and not replay:
            self.concurrency = [1]
        self.levels = [self._users(c) for c in _levels(self.concurrency)]
        self.rates = [self._rate(r) for r in _levels(self.rate)]
        if not self.levels and not self.rates and not replay:
            raise InvalidInput("Give at least one concurrency level or rate.")
        if not isinstance(self.requests_per_level, int | np.integer) or self.requests_per_level <= 0:
            raise InvalidInput(f"requests_per_level must be a positive integer, got {self.requests_per_level!r}.")
        if not isinstance(self.first_request, int | np.integer) or self.first_request < 0:
            raise InvalidInput(f"first_request must be a non-negative integer, got {self.first_request!r}.")
        if isinstance(self.workers, str):
            from .ray_workers import ray_actors

            ray_actors(self.workers)  # "ray" or "ray:N", refused before an engine is loaded
        elif isinstance(self.workers, bool) or not isinstance(self.workers, int | np.integer) or self.workers < 1:
            raise InvalidInput(f"workers must be a whole number of load processes >= 1, 'ray' or 'ray:N', "
                               f"got {self.workers!r}.")
        if not isinstance(self.telemetry_interval_s, int | float) or not self.telemetry_interval_s > 0:
            raise InvalidInput(f"telemetry_interval_s must be a positive number of seconds, got "
                               f"{self.telemetry_interval_s!r}.")
        if isinstance(self.repeats, bool) or not isinstance(self.repeats, int | np.integer) or self.repeats < 1:
            raise InvalidInput(f"repeats must be a positive integer (rounds over the levels), got {self.repeats!r}.")
        if self.rates and self.duration_s <= 0:
            raise InvalidInput(f"duration_s must be positive, got {self.duration_s}.")
        if self.kv_interval_s is not None and self.kv_interval_s <= 0:
            raise InvalidInput(f"kv_interval_s must be positive (seconds) or None, got {self.kv_interval_s}.")
        self.workload = self.workload or chat(output_tokens=64)
        if not isinstance(self.workload, Workload):
            raise InvalidInput("workload must be a labkit Workload (see labkit.workloads), got "
                               f"{type(self.workload).__name__}.")
        self._warn_short_levels()
        bad = [k for k in (self.slo_ms or {}) if k not in ("ttft", "tpot", "e2e")]
        if bad:
            raise InvalidInput(f"slo_ms keys are ttft, tpot and e2e (milliseconds), not {bad}.")
        if self.rates and not replay:
            # Arrivals are drawn from the seed, so a level that would send nothing is known now,
            # before anything is measured; it would measure nothing and say nothing.
            empty = sorted({s.level for s in self.shapes() if isinstance(s, Rate) and s.count() == 0})
            if empty:
                raise NoArrivals(
                    f"rate {', '.join(f'{r:g}' for r in empty)} req/s over duration_s={self.duration_s:g} s "
                    f"draws no request at all (seed {self.seed}; {empty[0] * self.duration_s:.2g} expected). "
                    "Raise duration_s (or the rate) so that every rate level sends requests.")

    def _warn_short_levels(self) -> None:
        """A level of N users sends at least one session per user, so that N are in flight and
        its rows mean N users: say so where that is more than ``requests_per_level``."""
        turns = self.workload.turns
        wanted = self.requests_per_level
        raised = {c: Concurrency(c, wanted).requests(turns) for c in self.levels}
        raised = {c: n for c, n in raised.items() if c > -(-wanted // turns)}
        if raised:
            each = ", ".join(f"concurrency {c}: {n} requests" for c, n in raised.items())
            warnings.warn(f"requests_per_level={wanted} is fewer than one {'session' if turns > 1 else 'request'} "
                          f"per user at some levels; each sends one per user instead ({each}), so that "
                          f"every user is in flight. Raise requests_per_level to measure more.", stacklevel=5)

    @staticmethod
    def _users(c: Any) -> int:
        if isinstance(c, bool) or not isinstance(c, int | np.integer) or c <= 0:
            raise InvalidInput(f"Concurrency levels must be positive integers, got {c!r}.")
        return int(c)

    @staticmethod
    def _rate(r: Any) -> float:
        if isinstance(r, bool) or not isinstance(r, int | float | np.number) or r <= 0:
            raise InvalidInput(f"Request rates must be positive (requests per second), got {r!r}.")
        return float(r)

    def shapes(self) -> list[LoadShape]:
        """Every level in sweep order: concurrency levels, then rates (arrivals drawn from
        ``seed``, so a rerun sends at the same times), round after round: drift over time
        (a machine warming up, a neighbour's load) then spreads over every level alike."""
        rng = np.random.default_rng(self.seed)
        shapes: list[LoadShape] = []
        for r in range(self.repeats):
            level_shapes = ([Concurrency(c, self.requests_per_level) for c in self.levels]
                            + [Rate(x, self.duration_s, rng) for x in self.rates])
            if isinstance(self.workload, Trace):
                level_shapes = [Replay(self.workload.arrivals(), self.workload.speedup)]
            for shape in level_shapes:
                shape.round = r
            shapes += level_shapes
        return shapes

    def warmup_shape(self) -> Concurrency | None:
        if self.warmup <= 0:
            return None
        return Concurrency(min(self.warmup, max(self.levels or [1])), self.warmup)

    def describe(self) -> dict[str, Any]:
        """The manifest's account of the sweep."""
        return {"workload": self.workload.describe(),
                "levels": {"concurrency": self.levels, "rate": self.rates,
                           "trace": [self.workload.speedup] if isinstance(self.workload, Trace) else []},
                "requests_per_level": self.requests_per_level, "duration_s": self.duration_s,
                "warmup_requests": self.warmup, "seed": self.seed, "slo_ms": self.slo_ms,
                "first_request": self.first_request, "repeats": self.repeats,
                "telemetry_interval_s": self.telemetry_interval_s if self.telemetry else None,
                "workers": self.workers, "ray_address": self.ray_address}
