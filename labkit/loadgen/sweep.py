"""``sweep()``: engines x settings x quantizations x load levels, on one Pareto front.

A grid names, per engine, the values of its load-time arguments to try::

    {"llama-server": {"parallel": [4, 8], "model": ["smollm2-135m", "smollm2-135m:Q8_0"]},
     "vllm-server":  {"max_num_seqs": [8, 32]}}

Each combination is one *point*: the engine is loaded once with those settings, and every
load level (and every round of ``repeats``) runs on that one load; nothing else makes an
engine restart. Every point gets the same prompts, so the points are comparable. Each
point's run is written to its own folder as it goes, and ``front.csv`` is rewritten after
each point, so an interrupted sweep keeps every point it finished.

The front is over (per-user tok/s, total output tok/s): a row is on it when no other row is
at least as good on both and better on one. That is the trade a deployment makes: more users
per machine, or faster tokens per user.
"""

from __future__ import annotations

import html
import inspect
import itertools
import json
import math
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..engines.base import engine_class, load
from ..errors import InvalidInput, LabkitError
from .config import BenchConfig
from .result import BenchResult
from .run import bench
from .slo import SLO
from .workloads import Workload

#: The columns of a point's rows that a front shows first (after the settings).
_FIGURES = ["mode", "level", "rounds", "completed", "errors", "output_tok_per_s", "output_tok_per_s_lo",
            "output_tok_per_s_hi", "user_tok_per_s", "req_per_s", "ttft_p50_ms", "ttft_p99_ms",
            "tpot_p50_ms", "tpot_p99_ms", "e2e_p99_ms", "goodput_req_per_s", "peak_pss_bytes",
            "peak_gpu_mem_bytes"]


@dataclass(frozen=True)
class Point:
    """One engine with one combination of settings."""

    engine: str
    settings: dict[str, Any]

    @property
    def label(self) -> str:
        shown = ", ".join(f"{k}={v}" for k, v in self.settings.items())
        return f"{self.engine} ({shown})" if shown else self.engine


@dataclass
class Front:
    """What a sweep measured: ``table`` has one row per (point, level) with the settings as
    columns, the level's figures, ``slo_met`` (with an SLO), ``kld`` (quantized GGUF points),
    ``partial`` (a level cut short by Stop: kept, never on the front) and ``on_front``. ``failed``:
    points whose engine did not load, refused the load or died, with the reason (a point whose
    engine died keeps the levels it finished).
    ``stopped``: "completed" or why the sweep ended early (the finished points are kept)."""

    table: pd.DataFrame
    results: dict[str, BenchResult] = field(default_factory=dict, repr=False)
    failed: dict[str, str] = field(default_factory=dict)
    slo: SLO | None = None
    stopped: str = "completed"
    settings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what a reader of the table must know

    @property
    def pareto(self) -> pd.DataFrame:
        """The rows on the front, best per-user speed first."""
        if "on_front" not in self.table:  # nothing measured (every point failed)
            return self.table
        return self.table[self.table["on_front"]].sort_values("user_tok_per_s", ascending=False)

    def to_frame(self) -> pd.DataFrame:
        return self.table

    def _repr_html_(self) -> str:
        notes = [f"<b>{html.escape(self.stopped)}</b>: the points finished before are kept"] \
            if self.stopped != "completed" else []
        notes += [f"<b>{html.escape(p)}</b> failed: {html.escape(why)}" for p, why in self.failed.items()]
        if self.slo is not None:
            notes.append(f"SLO: {html.escape(self.slo.describe())}")
        notes += [html.escape(n) for n in self.notes]
        cols = ["point", *self.settings, *[c for c in _FIGURES if c in self.table], "slo_met", "kld", "partial", "on_front"]
        t = self.table[[c for c in dict.fromkeys(cols) if c in self.table]]
        t = t.astype({c: object for c in self.settings if c in t}).where(t.notna(), np.nan)  # None: blank
        return "".join(f"<p>{n}</p>" for n in notes) + t.to_html(
            index=False, float_format=lambda x: f"{x:,.4g}", na_rep="")


def sweep(grid: dict[str, dict[str, Sequence[Any] | Any]], *, concurrency: Sequence[int] | int | None = None,
          rate: Sequence[float] | float | None = None, slo: SLO | dict[str, float] | None = None,
          repeats: int = 1, workload: Workload | None = None, requests_per_level: int = 16,
          duration_s: float = 20.0, warmup: int = 2, kld: bool | None = None,
          out: str | Path | None = None, progress: bool = True,
          stop_event: threading.Event | None = None,
          on_point_done: Callable[[Front], None] | None = None, **engine_kwargs: Any) -> Front:
    """Measure every combination of ``grid``'s settings at every load level.

    ``grid``: ``{engine: {argument: [values]}}`` (a single value counts as one). Every
    argument is checked against the engine before anything loads. ``concurrency``/``rate``,
    ``requests_per_level``, ``duration_s``, ``workload``, ``repeats``: as in :func:`labkit.bench`,
    the same for every point. ``slo``: adds ``slo_met`` per row. ``kld``: measure each GGUF
    model's KLD against F16 (default: when a model names a quantization, ``"name:Q8_0"``).
    ``out``: one folder per point and ``front.csv``. Ctrl-C or ``stop_event`` ends the sweep
    with every finished point kept; ``on_point_done`` receives the front so far after each.
    ``engine_kwargs`` (e.g. ``model=``, ``threads=``) go to every point's engine, unless the
    grid sets that argument itself.

    >>> front = sweep({"llama-server": {"parallel": [2, 4]}}, concurrency=[1, 4],
    ...               slo=SLO(ttft_p99_ms=2000), repeats=3)
    >>> front.table; labkit.plots.pareto(front)
    """
    points = grid_points(grid)
    for engine in grid:
        _check_arguments(engine, list(engine_kwargs))
    slo = SLO.of(slo) if slo is not None else None
    # The levels are checked here, before the first engine loads.
    config = BenchConfig(concurrency, rate, requests_per_level, duration_s, workload, warmup,
                         repeats=repeats)
    bench_args = {"concurrency": config.concurrency, "rate": config.rate, "repeats": repeats,
                  "requests_per_level": requests_per_level, "duration_s": duration_s,
                  "workload": config.workload, "warmup": warmup, "progress": progress}
    stop = stop_event or threading.Event()
    walk = _Walk(points, bench_args, slo, Path(out) if out else None, stop,
                 common=engine_kwargs, on_point_done=on_point_done)
    front = walk.run()
    quants = _names_quants(points) or ":" in str(engine_kwargs.get("model", ""))
    if (kld if kld is not None else quants) and not front.table.empty and front.stopped == "completed":
        _add_kld(front, points, engine_kwargs, progress, stop)
        walk.save(front)
    return front


def grid_points(grid: dict[str, dict[str, Any]]) -> list[Point]:
    """Every combination of the grid, engine by engine; each argument checked against the
    engine (the error lists the valid ones)."""
    if not isinstance(grid, dict) or not grid:
        raise InvalidInput('A sweep grid is {engine: {argument: [values]}}, e.g. {"llama-server": '
                           '{"parallel": [4, 8]}}; got ' + repr(grid)[:80] + ".")
    points = []
    for engine, settings in grid.items():
        settings = settings or {}
        if not isinstance(settings, dict):
            raise InvalidInput(f"The grid's entry for {engine!r} must be a dict of argument: [values], "
                               f"got {type(settings).__name__}.")
        _check_arguments(engine, list(settings))
        values = {k: list(v) if isinstance(v, list | tuple) else [v] for k, v in settings.items()}
        empty = [k for k, v in values.items() if not v]
        if empty:
            raise InvalidInput(f"{engine}: no values to try for {', '.join(empty)}.")
        for combo in itertools.product(*values.values()):
            point = Point(engine, dict(zip(values, combo, strict=True)))
            if point not in points:
                points.append(point)
    return points


def _check_arguments(engine: str, names: list[str]) -> None:
    cls = engine_class(engine)
    params = inspect.signature(cls.__init__).parameters
    valid = [n for n, p in params.items() if n != "self" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
    unknown = [n for n in names if n not in valid]
    if unknown and any(p.kind == p.VAR_KEYWORD for p in params.values()) and engine == "vllm":
        unknown = [n for n in unknown if n not in _vllm_engine_args()]
        valid.append("or any field of vllm's EngineArgs")
    if unknown:
        raise InvalidInput(f"{engine} has no argument {', '.join(map(repr, unknown))}; its arguments are "
                           f"{', '.join(valid)}.")


def _vllm_engine_args() -> set[str]:
    """What ``vllm.LLM(**kwargs)`` accepts beyond labkit's named arguments."""
    import dataclasses

    from vllm.engine.arg_utils import EngineArgs

    return {f.name for f in dataclasses.fields(EngineArgs)}


def _names_quants(points: list[Point]) -> bool:
    return any(":" in str(p.settings.get("model", "")) for p in points)


class _Walk:
    """Loads each point's engine in turn and benchmarks it; saves after every point."""

    def __init__(self, points: list[Point], bench_args: dict[str, Any], slo: SLO | None,
                 out: Path | None, stop: threading.Event | None, *, common: dict[str, Any] | None = None,
                 on_point_done: Callable[[Front], None] | None = None):
        self.points, self.bench_args, self.slo, self.out, self.stop = points, bench_args, slo, out, stop
        self.common = common or {}  # engine arguments for every point (the grid's own win)
        self.on_point_done = on_point_done
        self.rows: list[pd.DataFrame] = []
        self.results: dict[str, BenchResult] = {}
        self.failed: dict[str, str] = {}
        self.settings = list(dict.fromkeys(k for p in points for k in p.settings))

    def run(self) -> Front:
        stopped = "completed"
        for i, point in enumerate(self.points):
            if self.stop.is_set():
                stopped = "interrupted"
                break
            try:
                res = self._measure(i, point)
            except KeyboardInterrupt:  # while an engine loaded or closed: what it measured is kept
                stopped = "interrupted"
                break
            if res is not None and res.ended == "interrupted":  # (the caller's event is theirs)
                stopped = res.ended
                break
            if res is not None and res.ended != "completed":  # its engine died: its levels are
                self.failed[point.label] = res.ended  # kept, marked, and the next point runs
            so_far = self._front(stopped)
            self.save(so_far)
            if self.on_point_done is not None:
                self.on_point_done(so_far)
        front = self._front(stopped)
        self.save(front)
        return front

    def _measure(self, i: int, point: Point) -> BenchResult | None:
        folder = self.out / f"{i:02d}-{point.engine}" if self.out else None
        try:
            engine = load(point.engine, **{**self.common, **point.settings})
        except LabkitError as e:  # one setting the engine refuses does not end the sweep
            self.failed[point.label] = f"{type(e).__name__}: {e}"
            return None
        # A point's own stop: its engine dying stops that point, not the sweep (nor the
        # caller's event, which the next sweep would find set); the caller's Stop reaches it.
        point_stop = threading.Event()
        with engine, _forwarded(self.stop, point_stop):
            try:
                res = bench(engine, out=folder, stop_event=point_stop, **self.bench_args)
            except LabkitError as e:  # refused for this point (a workload past its context)
                self.failed[point.label] = f"{type(e).__name__}: {e}"
                return None
            # kept before the engine closes: a Ctrl-C while it shuts down must not lose it
            self.results[point.label] = res
            if not res.summary.empty:
                self.rows.append(self._rows(point, res))
        return res

    def _rows(self, point: Point, res: BenchResult) -> pd.DataFrame:
        s = res.summary.copy()
        s.insert(0, "point", point.label)
        for k in self.settings:
            s[k] = [point.settings.get(k)] * len(s)
        if self.slo is not None:
            s["slo_met"] = [self.slo.met(r, from_schedule=r["mode"] != "concurrency") and r.get("errors", 0) == 0
                            for _, r in s.iterrows()]
        return s

    def _front(self, stopped: str) -> Front:
        table = pd.concat(self.rows, ignore_index=True) if self.rows else pd.DataFrame()
        if not table.empty:
            # A level cut short by Stop is kept, marked, and never on the front.
            table["partial"] = table.get("unmeasured", pd.Series(0, index=table.index)).fillna(0) > 0
            table["on_front"] = False
            table.loc[~table["partial"], "on_front"] = on_front(table[~table["partial"]])
        return Front(table, dict(self.results), dict(self.failed), self.slo, stopped, self.settings)

    def save(self, front: Front) -> None:
        if self.out is None:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        front.table.to_csv(self.out / "front.csv", index=False)
        (self.out / "sweep.json").write_text(json.dumps({
            "points": [{"engine": p.engine, "settings": p.settings, "folder": f"{i:02d}-{p.engine}"}
                       for i, p in enumerate(self.points)],
            "failed": front.failed, "stopped": front.stopped,
            "slo": front.slo.to_dict() if front.slo else None, "notes": front.notes}, indent=2, default=str))


@contextmanager
def _forwarded(outer: threading.Event, inner: threading.Event) -> Iterator[None]:
    """Set ``inner`` when ``outer`` is set, while the block runs (a poll every 0.2 s: a
    Stop button is pressed by a person)."""
    done = threading.Event()

    def forward() -> None:
        while not done.is_set():
            if outer.wait(0.2):
                inner.set()
                return

    thread = threading.Thread(target=forward, name="labkit-sweep-stop", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join(timeout=5)


def on_front(table: pd.DataFrame, x: str = "user_tok_per_s", y: str = "output_tok_per_s") -> pd.Series:
    """Whether each row is on the Pareto front of ``x`` and ``y`` (both higher is better): no
    other row is at least as good on both and better on one. Rows missing either are not."""
    xs, ys = table.get(x, pd.Series(np.nan, index=table.index)), table.get(y, pd.Series(np.nan, index=table.index))
    pts = np.column_stack([pd.to_numeric(xs, errors="coerce"), pd.to_numeric(ys, errors="coerce")])
    ok = ~np.isnan(pts).any(axis=1)
    result = np.zeros(len(table), dtype=bool)
    for i in np.flatnonzero(ok):
        others = pts[ok]
        dominated = ((others >= pts[i]).all(axis=1) & (others > pts[i]).any(axis=1)).any()
        result[i] = not dominated
    return pd.Series(result, index=table.index)


def _add_kld(front: Front, points: list[Point], common: dict[str, Any], progress: bool,
             stop: threading.Event) -> None:
    """KLD against F16 for the GGUF models of the sweep's llama.cpp points. The front is
    measured already: a KLD step that fails, or is stopped (Ctrl-C, ``stop``, checked between
    base models), leaves the KLDs it has, says why in the notes and marks the front stopped,
    instead of losing the front."""
    from ..comparison import KLD_SOURCE_NOTE
    from ..models import DEFAULT_MODEL

    gguf = {p.label: str(p.settings.get("model", common.get("model", DEFAULT_MODEL))) for p in points
            if engine_class(p.engine).model_format == "gguf" and p.label not in front.failed}
    if not gguf:
        return
    kld, why = _kld_by_base(list(gguf.values()), progress, stop)
    front.table["kld"] = [kld.get(gguf.get(label, ""), math.nan) for label in front.table["point"]]
    sources = sorted({m for m in gguf.values() if math.isnan(kld.get(m, 0.0))})
    if sources:
        front.notes.append(KLD_SOURCE_NOTE.format(names=", ".join(sources)))
    if why is not None:
        missing = sorted(set(gguf.values()) - set(kld))
        front.notes.append(f"KLD against F16 incomplete ({why}): none for {', '.join(missing)}; "
                           "every point's speed was measured and is kept.")
        front.stopped = "interrupted" if why == "interrupted" else f"KLD step failed: {why}"


def _kld_by_base(models: list[str], progress: bool, stop: threading.Event) -> tuple[dict[str, float], str | None]:
    """KLD of each model, one base model (and its F16) at a time; what was measured, and why
    it ended early (None: it did not)."""
    from ..comparison import kld_to_f16

    bases: dict[str, list[str]] = {}
    for m in dict.fromkeys(models):
        bases.setdefault(m.split(":")[0], []).append(m)
    kld: dict[str, float] = {}
    try:
        for names in bases.values():
            if stop.is_set():
                return kld, "interrupted"
            kld.update(kld_to_f16(names, progress=progress))
    except KeyboardInterrupt:
        return kld, "interrupted"
    except Exception as e:  # the front is worth more than one KLD figure
        return kld, f"{type(e).__name__}: {e}"
    return kld, None
