"""A session: one sweep over one loaded engine, from the manifest to the saved result.

It prepares the memory sampler, the manifest and the request writer, warms the engine up,
runs each level through a :class:`~labkit.loadgen.shapes.Pacer`, reads the engine's KV
account, and, when the sweep is stopped (Ctrl-C, ``stop_event``, an engine that died),
marks every request it did not send and saves what it measured. Every finished request is
on disk the moment it ends.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import pandas as pd

from .. import __version__
from ..engines.base import Engine
from ..engines.capabilities import AsyncStreams, ReportsKv
from ..environment import environment
from ..errors import EngineError
from ..memory import MemorySampler
from .client import ClientMeter
from .config import BenchConfig
from .drivers import Driver, Job, driver_for
from .result import REQUEST_COLUMNS, BenchResult, RequestRecord, RunWriter
from .shapes import LoadShape, Pacer
from .telemetry import Telemetry, kv_readings
from .workers import check_workers
from .workloads import Request

_WARM_UP_START = 1_000_000  # warm-up requests are numbered apart from every measured one


def memory_sampler(scope, interval_s: float) -> MemorySampler:
    # USS/PSS at phase edges only: a page-table walk mid-level stalls the engine being
    # measured (see labkit.memory). RSS is still read every interval.
    return MemorySampler(scope, interval_s, cpu_budget=0)


class Session:
    """One sweep. ``sampler``: a running sampler to reuse (bench() started it to measure the
    load); otherwise the session samples the engine's own memory scope."""

    def __init__(self, engine: Engine, config: BenchConfig, *, out: str | Path | None = None,
                 sampler: MemorySampler | None = None, stop_event: threading.Event | None = None,
                 on_level_done: Callable[[BenchResult], None] | None = None):
        self.engine, self.config, self.out = engine, config, out
        self.sampler, self.on_level_done = sampler, on_level_done
        self.stop = stop_event or threading.Event()
        self.records: list[RequestRecord] = []
        self.kv_rows: list[dict[str, Any]] = []
        self.telemetry: Telemetry | None = None
        # An engine in this process shares its CPU: only a client of a server has its own.
        self.client = ClientMeter(enabled=isinstance(engine, AsyncStreams))
        self.died: str | None = None
        self.counts: dict[tuple[str, float, int], int] = {}  # (mode, level, round): requests
        self.origin = time.perf_counter()
        self._lock = threading.Lock()
        self._checker: threading.Thread | None = None  # a health check after a failed request
        self._checking = self._recheck = False  # one runs; a request failed while it ran
        self._pacer: Pacer | None = None

    # --- the sweep ---------------------------------------------------------------------------
    def run(self) -> BenchResult:
        try:
            self._check_engine()
            check_workers(self.config.workers, self.engine)
        except BaseException:
            self._stop_sampler()  # the one bench() started to measure the load, if any
            raise
        self._start_sampler()
        try:  # before any folder is written: a refused workload (or load processes that could
            # not start, an unreachable Ray cluster) leaves nothing behind, and no thread running
            requests = self.config.workload.build(self.engine, self.config.requests_per_level,
                                                  start=self.config.first_request)
            driver = driver_for(self.engine, self.origin, self.config.workers, self.config.ray_address)
        except BaseException:
            self._stop_sampler()
            raise
        try:
            self.writer = RunWriter(Path(self.out) if self.out else None)
        except BaseException:
            self._stop_sampler()
            driver.close()
            raise
        self.client.processes = driver.processes
        self.manifest = {"labkit_version": __version__, "engine": self.engine.info.to_dict(),
                         "environment": environment(), **self.config.describe(),
                         "caveats": self.engine.caveats(), "load": driver.describe()}
        self.writer.manifest(self.manifest)
        ended = self._sweep(requests, driver)
        res = self.result()
        res.ended, res.interrupted = ended, ended != "completed"
        res.engine_log = self.engine.log_tail() if self.died else ""
        if self.out:
            res.save(self.out)
        return res

    def _sweep(self, requests: list[Request], driver: Driver) -> str:
        """Run every level; returns how the sweep ended."""
        pacer = self._pacer = Pacer(driver, self.stop)
        shapes = self.config.shapes()
        interrupted = False
        try:
            warm = self.config.warmup_shape()
            if warm is not None:
                with self._phase("warm-up"):
                    # Prompts of its own: a warm-up on the first measured prompts would leave
                    # them in a server's prefix cache and make the first level look faster.
                    warm_reqs = self.config.workload.build(self.engine, warm.count(), start=_WARM_UP_START)
                    self._level(pacer, warm, warm_reqs, record=False, label="warm-up")
            self._read_kv("idle")
            self._levels(pacer, shapes, requests)
        except KeyboardInterrupt:
            interrupted = True
            self._halt(pacer)
        finally:
            try:
                self._await_health()
            except KeyboardInterrupt:  # a second Ctrl-C: stop waiting, clean up all the same
                interrupted = True
            self._stop_sampler()
            driver.close()
            stopped = interrupted or self.stop.is_set()
            if stopped:
                self._mark_unsent(shapes)
            self.writer.close()
        if not stopped:
            return "completed"
        return f"engine died: {self.died}" if self.died else "interrupted"

    def _levels(self, pacer: Pacer, shapes: list[LoadShape], requests: list[Request]) -> None:
        first = start = self.config.first_request
        for shape in shapes:
            self._await_health()
            if self.stop.is_set():
                break
            n = shape.requests(self.config.workload.turns)
            # Each level its own prompts (request indices start .. start+n-1): repeating the
            # previous level's would hand servers with a prefix cache free prefills.
            reqs = requests[:n] if start == first and n <= len(requests) else \
                self.config.workload.build(self.engine, n, start=start)
            start += n
            self.counts[(shape.mode, shape.level, shape.round)] = n
            with self._phase(shape.phase), _KvPoller(self, shape.phase):
                self._level(pacer, shape, reqs)
            if self.on_level_done is not None and not self.stop.is_set():
                self.on_level_done(self.result())

    def _level(self, pacer: Pacer, shape: LoadShape, requests: list[Request], record: bool = True,
               label: str | None = None) -> None:
        workload = self.config.workload
        # Sessions for the measured levels; the warm-up's requests go one by one, history-less.
        turns, think_s = (workload.turns, workload.think_time_s) if record else (1, 0.0)
        bar = _progress(shape.requests(turns), label or shape.phase, self.config.progress)
        replies: dict[int, str] = {}  # a session's next turn carries them

        def job(i: int, finished: Callable[[RequestRecord], None]) -> Job:
            req = requests[i % len(requests)]
            sent = workload.to_send(requests, i, replies) if turns > 1 else req
            return Job(sent, RequestRecord(shape.mode, shape.level, i, input_tokens=sent.input_tokens,
                                           prompt_sha=req.fingerprint, round=shape.round,
                                           turn=_turn(i, turns)), finished, session=i // turns)

        def on_record(rec: RequestRecord) -> None:
            if turns > 1:
                replies[rec.index] = rec.reply
            if record:
                self._record(rec)
            if bar is not None:
                bar.update(1)
            if rec.error:
                self._check_alive()

        try:
            pacer.run(shape, job, on_record, turns, think_s)
        finally:
            if bar is not None:
                bar.close()

    # --- what happens to each request ---------------------------------------------------------
    def _record(self, rec: RequestRecord) -> None:
        with self._lock:
            self.records.append(rec)
        self.writer.write(rec)

    def _check_alive(self) -> None:
        """A failed request may be the first sign that the engine died: ask, and stop at once
        instead of firing the rest at a dead port. Asked from a thread of its own, one at a
        time: this runs on the thread that carries the other requests' streams (one event
        loop for every HTTP request), and a health check can take seconds."""
        with self._lock:
            if self.died is not None:
                return
            if self._checking:  # a failure during a check: the engine may have died since
                self._recheck = True
                return
            self._checking, self._recheck = True, False
        pacer = self._pacer
        if pacer is not None:  # no new session starts until the engine has answered
            pacer.hold()
        checker = threading.Thread(target=self._ask_health, args=(pacer,), name="labkit-health", daemon=True)
        try:
            checker.start()
        except RuntimeError:  # no thread to spare: ask here, on the streams' thread, as before
            self._ask_health(pacer)
            return
        self._checker = checker

    def _ask_health(self, pacer: Pacer | None) -> None:
        try:
            while True:
                try:
                    reason = self.engine.health()
                except Exception as e:
                    reason = f"its health check failed ({type(e).__name__}: {e})"
                with self._lock:
                    if reason:
                        self.died = reason
                        self.stop.set()
                    if reason or not self._recheck:
                        self._checking = False
                        return
                    self._recheck = False
        finally:
            if pacer is not None:
                pacer.release()  # what waited leaves now, or (stopped) is left unsent

    def _await_health(self) -> None:
        """Let a health check in progress answer (bounded) before the next level starts or the
        sweep says how it ended."""
        checker = self._checker
        if checker is not None:
            checker.join(timeout=60)

    def _halt(self, pacer: Pacer, settle_s: float = 60.0) -> None:
        """Stop sending, cancel what the engine can cancel, and let the requests in flight
        end (bounded), so no record arrives after the unsent ones are marked."""
        self.stop.set()
        try:
            self.engine.cancel()
            pacer.settle(settle_s)
        except KeyboardInterrupt:  # a second Ctrl-C: stop waiting; what ended is kept
            pass
        except Exception:
            pass

    def _mark_unsent(self, shapes: list[LoadShape]) -> None:
        why = "not sent: engine died" if self.died else "not sent: interrupted"
        done = {(r.mode, r.level, r.round, r.index) for r in self.records}
        turns = self.config.workload.turns
        for shape in shapes:
            key = (shape.mode, shape.level, shape.round)
            for i in range(self.counts.get(key, shape.requests(turns))):
                if (*key, i) not in done:
                    self._record(RequestRecord(shape.mode, shape.level, i, finish_reason=why, round=shape.round,
                                               turn=_turn(i, turns)))

    # --- measurements around the requests -----------------------------------------------------
    def _check_engine(self) -> None:
        if self.engine.closed:
            raise EngineError(f"The {self.engine.name} engine is closed; load it again before benchmarking.")
        reason = self.engine.health()
        if reason:
            raise EngineError(f"The {self.engine.name} engine cannot serve: {reason}.")

    def _start_sampler(self) -> None:
        if self.config.telemetry and self.telemetry is None:
            self.telemetry = Telemetry(self.engine, self.origin, self.config.telemetry_interval_s).start()
        scope = self.engine.memory_scope()
        if self.sampler is None:
            if scope is not None:
                self.sampler = memory_sampler(scope, self.config.memory_interval_s)
                self.sampler.start()
        elif scope is not None:
            self.sampler.retarget(scope)  # from "the process that loaded it" to the engine's own
        else:  # a remote server: this process's memory (and its load workers') is not the engine's
            self.sampler.stop()
            self.sampler = None

    def _stop_sampler(self) -> None:
        if self.sampler is not None:
            self.sampler.stop()
        if self.telemetry is not None:
            self.telemetry.stop()

    @contextmanager
    def _phase(self, name: str):
        tel = self.telemetry
        if tel is not None:  # a reading at each edge: a level shorter than the interval has two
            tel.begin(name)
        self.client.begin()
        try:
            with self.sampler.phase(name) if self.sampler is not None else nullcontext():
                yield
        finally:
            self.client.end(name)
            if tel is not None:
                tel.end()

    @property
    def _polls_kv(self) -> bool:
        # With telemetry on, its readings (at each level's edges and between) are the KV
        # account: a second reader would scrape the server twice as often.
        return self.telemetry is None and isinstance(self.engine, ReportsKv)

    def _read_kv(self, phase: str) -> None:
        if self._polls_kv:
            snap = self.engine.kv_account()
            if snap:
                self.kv_rows.append({"phase": phase, "t_s": time.perf_counter() - self.origin, **snap})

    def result(self) -> BenchResult:
        with self._lock:
            rows = [r.to_row() for r in self.records]
        mem = self.sampler.frame() if self.sampler is not None else pd.DataFrame()
        tel = self.telemetry.frame() if self.telemetry is not None else None
        kv = kv_readings(tel) if tel is not None else pd.DataFrame(self.kv_rows)
        res = BenchResult(pd.DataFrame(rows, columns=REQUEST_COLUMNS), mem, self.manifest,
                          kv, self.config.slo_ms, self.writer.folder, client=self.client.frame())
        if tel is not None:
            res.telemetry, res.telemetry_absent = tel, dict(self.telemetry.absent)
        return res


def _turn(index: int, turns: int) -> int | None:
    """Which turn of its session request ``index`` is (1, 2, ...); None without sessions."""
    return index % turns + 1 if turns > 1 else None


def _progress(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=True)


class _KvPoller:
    """Reads the engine's KV account every ``kv_interval_s`` during a level, and at its end."""

    def __init__(self, session: Session, phase: str):
        self.session, self.phase = session, phase
        self.every_s = session.config.kv_interval_s
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(self.every_s):
            self.session._read_kv(self.phase)

    def __enter__(self):
        if self.every_s is not None and self.session._polls_kv:
            self.thread.start()

    def __exit__(self, *exc):
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join(timeout=5)
        self.session._read_kv(self.phase)
