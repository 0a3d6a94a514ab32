"""``capacity()``: how many users (or requests per second) an engine serves within an SLO.

The search walks load levels on one loaded engine: it grows the level geometrically from
``start`` until a level breaks the SLO, then bisects between the last level that met it and
the first that did not, and finally repeats the answer once to confirm it. Each level is an
ordinary :func:`labkit.bench` run with prompts of its own (no prompt is sent twice, so no
level gets a free prefix-cache hit), and the result keeps the whole curve it walked.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..engines.base import Engine, load
from ..errors import InvalidInput
from .config import NoArrivals
from .result import BenchResult
from .run import bench
from .slo import SLO
from .workloads import Workload, chat

_PROBE_START = 2_000_000  # the probe's prompts are numbered apart from every measured one
_BY = ("users", "rate")


@dataclass
class Capacity:
    """The answer of a capacity search, with the levels it measured on the way.

    ``users`` (or ``rate`` with ``by="rate"``): the largest level that met the SLO, 0 when
    none did. ``goodput``: requests per second that met the SLO at that level. ``levels``:
    one row per level run, in order, with the step that chose it (grow, bisect, confirm),
    whether it met the SLO and the figures it was judged on. ``stopped``: why the search
    ended. ``results``: every level's full :class:`BenchResult`.
    """

    engine: str
    slo: SLO
    by: str
    answer: float
    levels: pd.DataFrame
    stopped: str
    confirmed: bool
    elapsed_s: float
    results: list[BenchResult] = field(default_factory=list, repr=False)
    saturated_at: float | None = None  # first level whose throughput stopped rising

    @property
    def users(self) -> int | None:
        return int(self.answer) if self.by == "users" else None

    @property
    def rate(self) -> float | None:
        return float(self.answer) if self.by == "rate" else None

    @property
    def table(self) -> pd.DataFrame:
        return self.levels

    def to_frame(self) -> pd.DataFrame:
        return self.levels

    @property
    def goodput(self) -> float:
        rows = self._answer_rows()
        return float(rows["goodput_req_per_s"].iloc[-1]) if not rows.empty else 0.0

    @property
    def closest(self) -> pd.Series | None:
        """The measured level that came nearest to the SLO (the smallest worst ratio of value
        to bound): what to look at when no level met it."""
        if "slo_ratio" not in self.levels:  # no level measured
            return None
        judged = self.levels.dropna(subset=["slo_ratio"])
        return None if judged.empty else judged.loc[judged["slo_ratio"].idxmin()]

    def _answer_rows(self) -> pd.DataFrame:
        if self.levels.empty or self.answer <= 0 or "met" not in self.levels:
            return self.levels.iloc[0:0]
        return self.levels[(self.levels["level"] == self.answer) & self.levels["met"].eq(True)]

    def summary_line(self) -> str:
        if self.answer > 0:
            head = (f"{self.engine}: {_amount(self.answer, self.by)} within {self.slo.describe()} "
                    f"(goodput {self.goodput:.2f} req/s; "
                    f"{'confirmed by a repeat' if self.confirmed else 'not confirmed by a repeat'})")
        else:
            near = self.closest
            head = f"{self.engine}: no level met {self.slo.describe()}"
            if near is not None:
                head += f"; closest: {_amount(near['level'], self.by)}, {_worst(self.slo, near, self.by)}"
        return f"{head}. Search ended: {self.stopped}."

    def to_dict(self) -> dict[str, Any]:
        return {"engine": self.engine, "slo": self.slo.to_dict(), "by": self.by,
                self.by: self.answer, "goodput_req_per_s": self.goodput, "confirmed": self.confirmed,
                "stopped": self.stopped, "saturated_at": self.saturated_at, "elapsed_s": self.elapsed_s,
                "levels": json.loads(self.levels.to_json(orient="records"))}

    def _repr_html_(self) -> str:
        judged = [SLO.scheduled(b) for b in self.slo.bounds] if self.by == "rate" else []
        cols = ["step", "level", "met", "completed", "errors", "output_tok_per_s",
                *self.slo.bounds, *judged, "goodput_req_per_s"]
        table = self.levels[[c for c in cols if c in self.levels.columns]]
        return (f"<p><b>{self.summary_line()}</b></p>"
                + table.to_html(index=False, float_format=lambda x: f"{x:,.1f}"))


def _amount(level: float, by: str) -> str:
    if by == "rate":
        return f"{level:g} req/s"
    return f"{level:g} user" + ("" if level == 1 else "s")


def _worst(slo: SLO, row: pd.Series, by: str) -> str:
    """The bound a level missed by most, with the value it was judged on."""
    judged = slo.judge(row, from_schedule=by == "rate")
    name = max(judged, key=lambda k: (judged[k]["value"] or math.inf) / judged[k]["bound"])
    value = judged[name]["value"]
    shown = SLO.scheduled(name) if by == "rate" and SLO.scheduled(name) in row else name
    return f"{shown} {value:,.0f} ms (bound {judged[name]['bound']:g})" if value is not None \
        else f"{name}: no completed request"


@dataclass
class _Search:
    """Which level to measure next, from what was met so far (grow, bisect, confirm)."""

    by: str
    start: float
    growth: float
    max_level: float
    resolution: float  # rate searches stop bisecting at this relative gap
    confirm: bool = True  # repeat the answer once before accepting it
    good: float = 0.0  # largest level that met the SLO (0: none yet)
    bad: float | None = None  # smallest level that broke it
    last: float | None = None
    confirmed: bool = False
    confirming: bool = False
    history: list[tuple[float, bool]] = field(default_factory=list)

    def next(self) -> tuple[str, float] | None:
        if self.confirming:
            return None
        if self.bad is None:
            if self.last is None:
                return "grow", self.start
            if self.last >= self.max_level:
                return None
            grown = self._round(self.last * self.growth, up=True)
            if grown <= self.last:  # rounding ate a small growth: take it unrounded
                grown = self.last * self.growth
            return "grow", min(grown, self.max_level)
        mid = self._round((self.good + self.bad) / 2)
        if not self.good < mid < self.bad:  # rounding lands on a level already judged
            mid = (self.good + self.bad) / 2
        if self._narrow() or not self.good < mid < self.bad:
            if self.good <= 0 or self.confirmed or not self.confirm:
                return None
            self.confirming = True
            return "confirm", self.good
        return "bisect", mid

    def tell(self, step: str, level: float, met: bool) -> None:
        self.history.append((level, met))
        self.last = level
        if step == "confirm":
            self.confirming = False
            if met:
                self.confirmed = True
                return
            # The repeat broke the SLO: the answer lies below it after all.
            self.bad = level
            self.good = max((lv for lv, ok in self.history if ok and lv < level), default=0.0)
            return
        if met:
            self.good = max(self.good, level)
        else:
            self.bad = level if self.bad is None else min(self.bad, level)

    def _narrow(self) -> bool:
        assert self.bad is not None
        if self.by == "users":
            return self.bad - self.good <= 1
        if self.good <= 0:  # not even the start met it: look three halvings below, no further
            return self.bad <= self.start / self.growth ** 3
        return self.bad - self.good <= self.resolution * self.good

    def _round(self, value: float, up: bool = False) -> float:
        if self.by == "users":
            return float(math.ceil(value) if up else max(1, round(value)))
        return float(f"{value:.3g}")


def capacity(engine: Engine | str, *, slo: SLO | dict[str, float], workload: Workload | None = None,
             by: str = "users", start: float | None = None, max_level: float | None = None,
             growth: float = 2.0, rounds: int = 2, min_requests: int = 8, duration_s: float = 20.0,
             resolution: float = 0.1, budget_s: float | None = None, confirm: bool = True,
             warmup: int = 2, out: str | Path | None = None, progress: bool = True, seed: int = 0,
             first_request: int = 0, stop_event: threading.Event | None = None,
             on_level_done: Callable[[Capacity], None] | None = None, **engine_kwargs: Any) -> Capacity:
    """Find the largest load ``engine`` serves within ``slo``.

    ``by="users"``: closed-loop concurrency (each level sends ``max(min_requests, rounds x
    users)`` requests). ``by="rate"``: Poisson arrivals, ``duration_s`` per level, searched
    to ``resolution`` (relative). ``start``/``max_level``: where growth begins (1 user, 0.5
    req/s) and the largest level tried (256 users, 1000 req/s). ``budget_s``: no level is
    started that would end past it (the result says when the budget cut the search short).
    ``engine`` may be loaded or a registry name (loaded and closed here; ``engine_kwargs`` go
    to :func:`labkit.load`). ``first_request``: the first measured prompt's number (as in
    :func:`labkit.bench`): a search again on a loaded server should start past the prompts the
    last one sent (``first_request=sum(len(r.requests) for r in cap.results)``), or its prefix
    cache serves them. Ctrl-C or ``stop_event`` ends the search with every level kept.

    >>> cap = capacity("llama-server", model="smollm2-135m", parallel=8,
    ...                slo=SLO(ttft_p99_ms=2000, tpot_p99_ms=100))
    >>> cap.users, cap.goodput, cap.levels
    """
    plan = _plan(slo, by=by, start=start, max_level=max_level, growth=growth, rounds=rounds,
                 min_requests=min_requests, resolution=resolution, budget_s=budget_s,
                 duration_s=duration_s, confirm=confirm)
    workload = workload or chat(input_tokens=128, output_tokens=64)
    if not isinstance(workload, Workload):
        raise InvalidInput(f"workload must be a labkit Workload, got {type(workload).__name__}.")
    if isinstance(first_request, bool) or not isinstance(first_request, int | np.integer) or first_request < 0:
        raise InvalidInput(f"first_request must be a non-negative integer, got {first_request!r}.")
    walk = {"workload": workload, "out": out, "progress": progress, "seed": seed, "warmup": warmup,
            "duration_s": duration_s, "stop_event": stop_event, "first_request": first_request,
            "on_level_done": on_level_done}
    if not isinstance(engine, str):
        if engine_kwargs:
            raise InvalidInput(f"Engine options {sorted(engine_kwargs)} only apply when capacity() "
                               "loads the engine by name.")
        return _Walk(engine, plan, **walk).run()
    with load(engine, **engine_kwargs) as loaded:
        return _Walk(loaded, plan, **walk).run()


@dataclass
class _Plan:
    slo: SLO
    search: _Search
    rounds: int
    min_requests: int
    budget_s: float | None


def _plan(slo: SLO | dict[str, float], *, by: str, start: float | None, max_level: float | None,
          growth: float, rounds: int, min_requests: int, resolution: float,
          budget_s: float | None, duration_s: float, confirm: bool) -> _Plan:
    """The search's settings, checked before anything is loaded."""
    slo = SLO.of(slo)
    if by not in _BY:
        raise InvalidInput(f"by must be 'users' (closed-loop concurrency) or 'rate' (Poisson "
                           f"arrivals), got {by!r}.")
    start = (1 if by == "users" else 0.5) if start is None else start
    max_level = (256 if by == "users" else 1000.0) if max_level is None else max_level
    for name, value in (("start", start), ("max_level", max_level)):
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0 \
                or (by == "users" and value != int(value)):
            kind = "a positive whole number of users" if by == "users" else "a positive rate (req/s)"
            raise InvalidInput(f"{name} must be {kind}, got {value!r}.")
    if max_level < start:
        raise InvalidInput(f"max_level ({max_level}) is below start ({start}).")
    if not growth > 1:
        raise InvalidInput(f"growth must be above 1 (each level that meets the SLO is followed by "
                           f"one that many times larger), got {growth!r}.")
    if rounds < 1 or min_requests < 1:
        raise InvalidInput(f"rounds and min_requests must be at least 1, got {rounds} and {min_requests}.")
    if not 0 < resolution < 1:
        raise InvalidInput(f"resolution is a relative gap between 0 and 1, got {resolution!r}.")
    if budget_s is not None and not budget_s > 0:
        raise InvalidInput(f"budget_s must be a positive number of seconds, got {budget_s!r}.")
    if budget_s is not None and by == "rate" and duration_s > budget_s:
        raise InvalidInput(f"budget_s={budget_s:g} is too small for one level: a rate level lasts "
                           f"duration_s={duration_s:g} s.")
    search = _Search(by, float(start), float(growth), float(max_level), float(resolution), confirm)
    return _Plan(slo, search, rounds, min_requests, budget_s)


class _Walk:
    """One capacity search on one loaded engine."""

    def __init__(self, engine: Engine, plan: _Plan, *, workload: Workload, out: str | Path | None,
                 progress: bool, seed: int, warmup: int, duration_s: float, first_request: int,
                 stop_event: threading.Event | None, on_level_done: Callable[[Capacity], None] | None):
        self.engine, self.plan, self.workload = engine, plan, workload
        self.out = Path(out) if out else None
        self.progress, self.seed, self.warmup, self.duration_s = progress, seed, warmup, duration_s
        self.stop, self.on_level_done = stop_event or threading.Event(), on_level_done
        self.search = plan.search
        self.by = self.search.by
        self.rows: list[dict[str, Any]] = []
        self.results: list[BenchResult] = []
        self.next_request = first_request
        self.saturated: float | None = None
        self.t0 = time.monotonic()

    def run(self) -> Capacity:
        probe = self._probe()
        if probe.ended != "completed":
            return self._finish(probe.ended)
        try:
            stopped = self._walk()
        except KeyboardInterrupt:  # a second Ctrl-C, past the one bench() kept for itself
            self.stop.set()
            stopped = "interrupted"
        return self._finish(stopped)

    def _walk(self) -> str:
        """Measure level after level; returns why the search ended."""
        while (step := self.search.next()) is not None:
            kind, level = step
            if self.stop.is_set():
                return "interrupted"
            if self._over_budget(level):
                return f"the budget of {self.plan.budget_s:g} s would have run out during the next level"
            try:
                res = self._measure(kind, level)
            except NoArrivals:
                return (f"{level:g} req/s sends no request in duration_s={self.duration_s:g} s: a longer "
                        "duration_s measures lower rates")
            if res.ended != "completed":
                return res.ended
        return self._why_done()

    def _finish(self, stopped: str) -> Capacity:
        cap = self._capacity(stopped)
        if self.out:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "capacity.json").write_text(json.dumps(cap.to_dict(), indent=2, default=str))
        return cap

    def _probe(self) -> BenchResult:
        """Warm the engine up on prompts of its own and time one request at one user; a
        budget too small for even the first level is refused before the search begins."""
        probe = bench(self.engine, concurrency=[1], requests_per_level=max(1, self.warmup), warmup=0,
                      workload=self.workload, progress=False, seed=self.seed,
                      first_request=_PROBE_START + self.next_request, kv_interval_s=None, stop_event=self.stop)
        e2e = probe.requests["e2e_s"].dropna()
        per_request = float(e2e.median()) if not e2e.empty else 0.0
        first = self._requests(self.search.start)
        if self.plan.budget_s is not None and per_request and self.by == "users":
            # Perfect batching at the first level: a lower bound on its time.
            least = math.ceil(first / self.search.start) * per_request
            if least > self.plan.budget_s:
                raise InvalidInput(
                    f"budget_s={self.plan.budget_s:g} is too small for one level: one request took "
                    f"{per_request:.1f} s here and the first level sends {first} (at least "
                    f"{least:.0f} s). Give budget_s >= {math.ceil(least * 2)} or a shorter workload.")
        return probe

    def _requests(self, level: float) -> int:
        return max(self.plan.min_requests, int(self.plan.rounds * level))

    def _over_budget(self, level: float) -> bool:
        if self.plan.budget_s is None or not self.rows:
            return False
        elapsed = time.monotonic() - self.t0
        last = self.rows[-1]
        if self.by == "rate":  # a rate level lasts duration_s, plus the drain seen last time
            projected = last["wall_s"]
        else:  # the last level's time per round, for as many rounds as the next one needs
            projected = last["wall_s"] * (self._requests(level) / level) / (last["requests"] / last["level"])
        return elapsed + projected > self.plan.budget_s

    def _measure(self, kind: str, level: float) -> BenchResult:
        n = self._requests(level)
        load = {"concurrency": [int(level)], "requests_per_level": n} if self.by == "users" else \
            {"rate": [level], "duration_s": self.duration_s}
        folder = self.out / f"{len(self.rows):02d}-{kind}-{level:g}" if self.out else None
        began = time.monotonic()
        res = bench(self.engine, workload=self.workload, warmup=0, progress=self.progress,
                    seed=self.seed + len(self.rows), first_request=self.next_request, out=folder,
                    kv_interval_s=None, stop_event=self.stop, **load)
        self.next_request += len(res.requests)
        self.results.append(res)
        row = self._row(kind, level, res, time.monotonic() - began)
        self.rows.append(row)
        if row["met"] is not None:
            self.search.tell(kind, level, bool(row["met"]))
        self._note_saturation()
        if self.on_level_done is not None:
            self.on_level_done(self._capacity("running"))
        return res

    def _row(self, kind: str, level: float, res: BenchResult, wall_s: float) -> dict[str, Any]:
        summary = res.summary
        base = {"step": kind, "level": int(level) if self.by == "users" else level,
                "requests": len(res.requests), "wall_s": wall_s}
        if summary.empty or not summary.iloc[0].get("completed"):  # nothing served: no figures
            return base | {"met": False if res.ended == "completed" else None, "completed": 0,
                           "errors": int(res.requests["error"].notna().sum()), "slo_ratio": math.inf,
                           "goodput_req_per_s": 0.0}
        s = summary.iloc[0]
        rate = self.by == "rate"
        judged = self.plan.slo.judge(s, from_schedule=rate)
        complete = res.ended == "completed" and int(s["errors"]) == 0
        ok = res.requests[res.requests["error"].isna() & res.requests["e2e_s"].notna()]
        good = self.plan.slo.good_requests(ok, from_schedule=rate) if not ok.empty else np.zeros(0, dtype=bool)
        row = base | {
            # A level with failed requests does not meet an SLO, whatever its percentiles say.
            "met": (all(j["ok"] for j in judged.values()) and complete) if res.ended == "completed" else None,
            "completed": int(s["completed"]), "errors": int(s["errors"]),
            "req_per_s": float(s["req_per_s"]), "output_tok_per_s": float(s["output_tok_per_s"]),
            "goodput_req_per_s": float(good.sum()) / float(s["duration_s"]),
            "slo_ratio": max((j["value"] if j["value"] is not None else math.inf) / j["bound"]
                             for j in judged.values()),
        }
        if self.by == "users":
            row["per_user_tok_per_s"] = row["output_tok_per_s"] / level
        else:  # did the client apply the load it names? (see loadgen.metrics)
            for name in ("sent_rate", "rate_short", "dispatch_delay_p99_ms"):
                row[name] = s.get(name)
        for name in ("ttft_p50_ms", "ttft_p99_ms", "tpot_p50_ms", "tpot_p99_ms", *self.plan.slo.bounds):
            row[name] = float(s[name]) if name in s and not pd.isna(s[name]) else None
        if rate:  # the figures the level was judged on, beside the plain ones
            row.update({SLO.scheduled(n): j["value"] for n, j in judged.items() if SLO.scheduled(n) in s})
        return row

    def _note_saturation(self) -> None:
        """The first grown level whose throughput rose less than 5% over the one before: more
        users past it mostly queue. Recorded, not a reason to stop: the SLO decides."""
        if self.saturated is not None:
            return
        rows = [r for r in self.rows if r.get("output_tok_per_s") and r["step"] == "grow"]
        for prev, cur in zip(rows, rows[1:], strict=False):
            if cur["output_tok_per_s"] < 1.05 * prev["output_tok_per_s"]:
                self.saturated = cur["level"]
                return

    def _why_done(self) -> str:
        s = self.search
        if s.bad is None:
            return f"every level up to max_level={s.max_level:g} met the SLO"
        if s.good <= 0:
            return f"the first level ({s.start:g}) already broke the SLO" if s.start == s.bad else \
                "no level met the SLO"
        return "the answer was found and confirmed" if s.confirmed else "the answer was found"

    def _capacity(self, stopped: str) -> Capacity:
        levels = pd.DataFrame(self.rows)
        return Capacity(engine=self.engine.info.engine, slo=self.plan.slo, by=self.by,
                        answer=self.search.good, levels=levels, stopped=stopped,
                        confirmed=self.search.confirmed,
                        elapsed_s=time.monotonic() - self.t0, results=list(self.results),
                        saturated_at=self.saturated)
