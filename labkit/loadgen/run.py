"""The load generator: closed-loop concurrency levels and open-loop Poisson rates.

It drives each engine the cheapest way it offers: ``engine.submit`` with callbacks
(in-process vLLM), ``engine.astream`` from one event loop (the HTTP engines), else
``engine.stream`` from a thread per user. Whether requests are batched is the engine's
business (vLLM and the servers batch; in-process llama.cpp serves one at a time,
and the result's manifest says so). Every finished request is written to disk at once, so a
sweep that is interrupted (Ctrl-C, a dying server, failing requests) keeps what it measured.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .. import __version__
from ..engines.base import Engine, Submission, Token, load
from ..environment import environment
from ..errors import EngineError, InvalidInput
from ..memory import EngineMemory, MemorySampler, child_pids, new_children, self_memory
from .kv import kv_snapshot
from .metrics import request_metrics
from .result import REQUEST_COLUMNS, BenchResult, RunWriter, _phase_name
from .workloads import Request, Workload, chat


def _progress(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=True)


def _new_row(req: Request, mode: str, level: Any, index: int, origin: float) -> tuple[dict[str, Any], float]:
    t0 = time.perf_counter()
    return ({"mode": mode, "level": level, "index": index, "start_s": t0 - origin,
             "started_at": time.time(), "input_tokens": req.input_tokens}, t0)


def _finish_row(row: dict[str, Any], tokens: list[Token], e2e: float, error: str | None) -> dict[str, Any]:
    real = [t for t in tokens if t.token_id is not None or t.text]
    finish = next((t.finish_reason for t in reversed(tokens) if t.finish_reason), None)
    row.update(request_metrics([t.t_s for t in real], e2e))
    row.update(output_tokens=len(real), finish_reason=finish, error=error)
    return row


def run_request(engine: Engine, req: Request, mode: str, level: Any, index: int, origin: float) -> dict[str, Any]:
    """Send one request, stream it, and return its row (errors become rows, not exceptions)."""
    row, t0 = _new_row(req, mode, level, index, origin)
    tokens: list[Token] = []
    error = None
    try:
        for tok in engine.stream(req.prompt, max_tokens=req.max_tokens, temperature=0.0,
                                 ignore_eos=req.ignore_eos):
            tokens.append(tok)
    except Exception as e:  # one failing request must not end the sweep
        error = f"{type(e).__name__}: {e}"
    return _finish_row(row, tokens, time.perf_counter() - t0, error)


async def arun_request(engine: Any, req: Request, mode: str, level: Any, index: int, origin: float) -> dict[str, Any]:
    """``run_request`` for engines with ``astream`` (the HTTP engines)."""
    row, t0 = _new_row(req, mode, level, index, origin)
    tokens: list[Token] = []
    error = None
    try:
        async for tok in engine.astream(req.prompt, max_tokens=req.max_tokens, temperature=0.0,
                                        ignore_eos=req.ignore_eos):
            tokens.append(tok)
    except Exception as e:
        error = f"{type(e).__name__}: {e}"
    return _finish_row(row, tokens, time.perf_counter() - t0, error)


class _InFlight:
    """Requests sent to an engine's own loop and not yet finished.

    ``wait()`` returns once ``close()`` has said that no more will be sent and every sent
    one has called ``done()``. Callbacks on the engine's thread call ``done``; the sweep's
    thread waits.
    """

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


class _Sweep:
    """State of one bench() call: rows so far, the writer, the stop flag.

    Engines with ``submit`` (in-process vLLM) take requests with callbacks that run on the
    engine's own loop thread. Engines with ``astream`` (HTTP) are driven from one asyncio
    event loop on one thread:
    a wave of requests leaves in one burst, as from vLLM's serving benchmark, and the client
    costs little CPU. A thread per user there was slow enough, next to a server using every
    core, that a wave trickled out and the server prefilled it in pieces (TTFT 0.6x and
    TPOT 1.1x those of ``vllm bench serve``). Other engines (in-process llama.cpp) get a
    thread per user.
    """

    def __init__(self, engine: Engine, writer: RunWriter, progress: bool):
        self.engine = engine
        self.writer = writer
        self.progress = progress
        self.rows: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.origin = time.perf_counter()
        self.use_async = hasattr(engine, "astream")
        self.use_submit = hasattr(engine, "submit")
        self.died: str | None = None
        self.workers: list[threading.Thread] = []
        self.flight: _InFlight | None = None  # requests on the engine's own loop (submit)

    def record(self, row: dict[str, Any]) -> None:
        with self.lock:
            self.rows.append(row)
        self.writer.write(row)

    def _join(self, threads: list[threading.Thread]) -> None:
        # join() with a timeout so Ctrl-C reaches the main thread while workers run.
        for t in threads:
            while t.is_alive():
                t.join(0.2)

    def _run_async(self, make_coro: Callable[[], Any]) -> None:
        """Run a coroutine on a fresh event loop in its own thread (a notebook's main thread
        already has a running loop), closing the engine's async client before the loop ends."""
        failure: list[BaseException] = []

        async def main() -> None:
            try:
                await make_coro()
            finally:
                await self.engine.aclose()

        def target() -> None:
            try:
                asyncio.run(main())
            except BaseException as e:
                failure.append(e)

        thread = threading.Thread(target=target, name="labkit-bench-loop", daemon=True)
        thread.start()
        self.workers.append(thread)
        self._join([thread])
        if failure:
            raise failure[0]

    def closed_level(self, requests: list[Request], concurrency: int, record: bool = True,
                     label: str | None = None) -> None:
        bar = _progress(len(requests), label or f"concurrency {concurrency}", self.progress)
        users = min(concurrency, len(requests))
        try:
            if self.use_submit:
                self._closed_submit(requests, concurrency, users, record, bar)
            elif self.use_async:
                self._run_async(lambda: self._closed_async(requests, concurrency, users, record, bar))
            else:
                self._closed_threads(requests, concurrency, users, record, bar)
        finally:
            if bar is not None:
                bar.close()

    def halt(self, settle_s: float = 60.0) -> None:
        """Stop sending, cancel what the engine can cancel, and let the requests in flight
        end (bounded), so no row arrives after the unsent ones are marked."""
        self.stop.set()
        try:
            self.engine.cancel()
        except Exception:
            pass
        deadline = time.monotonic() + settle_s
        for t in self.workers:
            t.join(max(0.0, deadline - time.monotonic()))
        if self.flight is not None:
            self.flight.wait(max(0.0, deadline - time.monotonic()))

    def _done(self, row: dict[str, Any], record: bool, bar) -> None:
        if record:
            self.record(row)
        if bar is not None:
            bar.update(1)
        if row.get("error") and self.died is None:
            # A failed request may be the first sign that the engine died: ask, and stop
            # at once instead of firing the rest at a dead port.
            try:
                reason = self.engine.health()
            except Exception as e:
                reason = f"its health check failed ({type(e).__name__}: {e})"
            if reason:
                self.died = reason
                self.stop.set()

    def _submission(self, req: Request, mode: str, level: Any, index: int, record: bool, bar,
                    then: Callable[[], None]):
        """(a request for ``engine.submit`` whose callbacks record its row and then call
        ``then``, a function that records the row of a request the engine refused)."""
        row, t0 = _new_row(req, mode, level, index, self.origin)
        tokens: list[Token] = []

        def finish(error: Exception | None) -> None:
            message = None if error is None else f"{type(error).__name__}: {error}"
            self._done(_finish_row(row, tokens, time.perf_counter() - t0, message), record, bar)

        def on_done(error: Exception | None) -> None:
            finish(error)
            then()

        params = {"max_tokens": req.max_tokens, "temperature": 0.0, "ignore_eos": req.ignore_eos}
        return Submission(req.prompt, tokens.append, on_done, params), finish

    def _closed_submit(self, requests, concurrency, users, record, bar) -> None:
        # The engine's loop thread runs the callbacks: a user whose request finished sends
        # the next one from there, so no thread per user competes with the engine for CPU.
        todo = iter(enumerate(requests))
        taking = threading.Lock()
        flight = self.flight = _InFlight()

        def send(n: int, returning: int = 0) -> None:
            while True:
                with taking:
                    batch = [] if self.stop.is_set() else list(itertools.islice(todo, n))
                flight.add(len(batch))
                flight.done(returning)  # after add: the count must not touch zero in between
                returning = 0
                if not batch:
                    flight.close()
                    return
                made = [self._submission(req, "concurrency", concurrency, i, record, bar, lambda: send(1, 1))
                        for i, req in batch]
                try:
                    self.engine.submit([sub for sub, _ in made])
                    return
                except Exception as e:  # refused before it started: rows with the error, go on
                    for _, refused in made:
                        refused(e)
                    returning = len(made)

        send(users)  # the first wave in one call, so one scheduler step, as LLM.generate
        flight.wait()

    def _poisson_submit(self, requests, rate, arrivals, bar) -> None:
        flight = self.flight = _InFlight()
        start = time.perf_counter()
        try:
            for i, at in enumerate(arrivals):
                delay = start + at - time.perf_counter()
                if delay > 0 and self.stop.wait(delay):  # pacing the arrivals, not syncing
                    break
                sub, refused = self._submission(requests[i % len(requests)], "rate", rate, i, True, bar, flight.done)
                flight.add()
                try:
                    self.engine.submit([sub])
                except Exception as e:
                    refused(e)
                    flight.done()
        finally:
            flight.close()
        flight.wait()

    async def _closed_async(self, requests, concurrency, users, record, bar) -> None:
        todo = iter(enumerate(requests))  # shared by the users; one loop thread, so no lock

        async def user() -> None:
            for i, req in todo:
                if self.stop.is_set():
                    return
                row = await arun_request(self.engine, req, "concurrency", concurrency, i, self.origin)
                self._done(row, record, bar)

        await asyncio.gather(*(user() for _ in range(users)))

    def _closed_threads(self, requests, concurrency, users, record, bar) -> None:
        todo = list(enumerate(requests))
        lock = threading.Lock()

        def worker() -> None:
            while not self.stop.is_set():
                with lock:
                    if not todo:
                        return
                    i, req = todo.pop(0)
                self._done(run_request(self.engine, req, "concurrency", concurrency, i, self.origin), record, bar)

        threads = [threading.Thread(target=worker, daemon=True) for _ in range(users)]
        self.workers += threads
        for t in threads:
            t.start()
        self._join(threads)

    def poisson_level(self, requests: list[Request], rate: float, arrivals: np.ndarray) -> None:
        bar = _progress(len(arrivals), f"rate {rate}/s", self.progress)
        try:
            if self.use_submit:
                self._poisson_submit(requests, rate, arrivals, bar)
            elif self.use_async:
                self._run_async(lambda: self._poisson_async(requests, rate, arrivals, bar))
            else:
                self._poisson_threads(requests, rate, arrivals, bar)
        finally:
            if bar is not None:
                bar.close()

    async def _poisson_async(self, requests, rate, arrivals, bar) -> None:
        start = time.perf_counter()
        tasks = []

        async def one(i: int, req: Request) -> None:
            self._done(await arun_request(self.engine, req, "rate", rate, i, self.origin), True, bar)

        for i, at in enumerate(arrivals):
            delay = start + at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)  # pacing the arrivals, not syncing
            if self.stop.is_set():
                break
            tasks.append(asyncio.create_task(one(i, requests[i % len(requests)])))
        await asyncio.gather(*tasks)

    def _poisson_threads(self, requests, rate, arrivals, bar) -> None:
        threads = []
        start = time.perf_counter()

        def one(i: int, req: Request) -> None:
            self._done(run_request(self.engine, req, "rate", rate, i, self.origin), True, bar)

        for i, at in enumerate(arrivals):
            delay = start + at - time.perf_counter()
            if delay > 0 and self.stop.wait(delay):  # pacing the arrivals, not syncing
                break
            t = threading.Thread(target=one, args=(i, requests[i % len(requests)]), daemon=True)
            t.start()
            threads.append(t)
            self.workers.append(t)
        self._join(threads)


def _check_levels(concurrency, rate, requests_per_level, duration_s) -> tuple[list[int], list[float]]:
    if concurrency is None and rate is None:
        concurrency = [1]
    levels = [] if concurrency is None else list(concurrency if isinstance(concurrency, Sequence) else [concurrency])
    rates = [] if rate is None else list(rate if isinstance(rate, Sequence) else [rate])
    for c in levels:
        if not isinstance(c, int | np.integer) or c <= 0:
            raise InvalidInput(f"Concurrency levels must be positive integers, got {c!r}.")
    for r in rates:
        if not isinstance(r, int | float) or r <= 0:
            raise InvalidInput(f"Request rates must be positive (requests per second), got {r!r}.")
    if not levels and not rates:
        raise InvalidInput("Give at least one concurrency level or rate.")
    if requests_per_level <= 0:
        raise InvalidInput(f"requests_per_level must be positive, got {requests_per_level}.")
    if rates and duration_s <= 0:
        raise InvalidInput(f"duration_s must be positive, got {duration_s}.")
    return [int(c) for c in levels], [float(r) for r in rates]


class _LoadingScope(EngineMemory):
    """While an engine loads: this process's growth plus any child that appeared."""

    def __init__(self):
        self.before = child_pids()
        super().__init__([], self_memory())

    def measure(self, detail: bool = True):
        self.roots = new_children(self.before)
        return super().measure(detail)


def bench(engine: Engine | str, *, concurrency: Sequence[int] | int | None = None,
          rate: Sequence[float] | float | None = None, requests_per_level: int = 32,
          duration_s: float = 30.0, workload: Workload | None = None, warmup: int = 2,
          out: str | Path | None = None, slo_ms: dict[str, float] | None = None,
          memory_interval_s: float = 0.1, kv_interval_s: float | None = 10.0,
          progress: bool = True, seed: int = 0,
          on_level_done: Callable[[BenchResult], None] | None = None,
          stop_event: threading.Event | None = None, **engine_kwargs: Any) -> BenchResult:
    """Measure throughput, latency and memory of ``engine`` under load.

    ``concurrency``: closed-loop levels (N users, each sending its next request when the
    last one finished), ``requests_per_level`` requests each. ``rate``: open-loop Poisson
    arrivals (requests per second) for ``duration_s`` each. ``engine`` may be a loaded engine
    or a registry name (then it is loaded under the "load" memory phase and closed at the
    end; ``engine_kwargs`` go to :func:`labkit.load`). ``out``: a folder that receives the
    manifest and one JSONL line per request as it finishes. ``slo_ms``: e.g.
    ``{"ttft": 500, "tpot": 50}`` adds goodput. ``kv_interval_s``: how often the engine's KV
    account is read during a level; None reads it only at the end of each level. Each
    reading costs a server CPU (vLLM's renders its /metrics page: 11 ms): once a second, it
    raised vLLM's TTFT by 3-5% on 2 cores, hence the default of 10 s. ``memory_interval_s``:
    how often RSS is read; USS/PSS are read at the edges of each phase. Ctrl-C (or ``stop_event``) stops the sweep and
    returns what was measured, with unfinished requests marked.

    >>> res = bench(engine, concurrency=[1, 8], requests_per_level=16,
    ...             workload=workloads.chat(input_tokens=128, output_tokens=64))
    >>> res.summary[["level", "output_tok_per_s", "ttft_p50_ms"]]
    """
    levels, rates = _check_levels(concurrency, rate, requests_per_level, duration_s)
    if kv_interval_s is not None and kv_interval_s <= 0:
        raise InvalidInput(f"kv_interval_s must be positive (seconds) or None, got {kv_interval_s}.")
    workload = workload or chat(output_tokens=64)
    if not isinstance(workload, Workload):
        raise InvalidInput(f"workload must be a labkit Workload (see labkit.workloads), got {type(workload).__name__}.")
    if slo_ms:
        bad = [k for k in slo_ms if k not in ("ttft", "tpot", "e2e")]
        if bad:
            raise InvalidInput(f"slo_ms keys are ttft, tpot and e2e (milliseconds), not {bad}.")
    owned = isinstance(engine, str)
    loading_scope = _LoadingScope() if owned else None
    sampler = _sampler(loading_scope, memory_interval_s) if owned else None
    if owned:
        sampler.start()
        try:
            with sampler.phase("load"):
                engine = load(engine, **engine_kwargs)
        except BaseException:
            sampler.stop()
            raise
    elif engine_kwargs:
        raise InvalidInput(f"Engine options {sorted(engine_kwargs)} only apply when bench() loads the engine by name.")
    try:
        return _bench_loaded(engine, levels, rates, requests_per_level, duration_s, workload, warmup,
                             out, slo_ms, memory_interval_s, progress, seed, sampler, on_level_done,
                             stop_event, kv_interval_s)
    finally:
        if owned:
            engine.close()


def _bench_loaded(engine, levels, rates, requests_per_level, duration_s, workload, warmup, out,
                  slo_ms, memory_interval_s, progress, seed, sampler, on_level_done, stop_event,
                  kv_interval_s) -> BenchResult:
    if engine.closed:
        raise EngineError(f"The {engine.name} engine is closed; load it again before benchmarking.")
    if hasattr(engine, "_get"):  # an HTTP engine: is the server still there?
        engine._get("/v1/models")
    scope = engine.memory_scope()
    if sampler is None:
        sampler = _sampler(scope, memory_interval_s) if scope is not None else None
        if sampler is not None:
            sampler.start()
    elif scope is not None:
        sampler.scope = scope
    try:  # before any folder is written: a refused workload leaves nothing behind
        requests = workload.build(engine, requests_per_level)
    except BaseException:
        if sampler is not None:
            sampler.stop()
        raise
    writer = RunWriter(Path(out) if out else None)
    manifest = {"labkit_version": __version__, "engine": engine.info.to_dict(),
                "environment": environment(), "workload": workload.describe(),
                "levels": {"concurrency": levels, "rate": rates},
                "requests_per_level": requests_per_level, "duration_s": duration_s,
                "warmup_requests": warmup, "seed": seed, "slo_ms": slo_ms,
                "caveats": _caveats(engine, workload)}
    writer.manifest(manifest)
    sweep = _Sweep(engine, writer, progress)
    if stop_event is not None:
        sweep.stop = stop_event
    kv_rows: list[dict[str, Any]] = []
    interrupted = False
    planned: list[tuple[str, Any, int]] = []

    def snapshot_kv(phase: str) -> None:
        snap = kv_snapshot(engine)
        if snap:
            kv_rows.append({"phase": phase, "t_s": time.perf_counter() - sweep.origin, **snap})

    def result() -> BenchResult:
        frame = pd.DataFrame(sweep.rows, columns=REQUEST_COLUMNS)
        mem = sampler.frame() if sampler is not None else pd.DataFrame()
        return BenchResult(frame, mem, manifest, pd.DataFrame(kv_rows), slo_ms, writer.folder, interrupted)

    try:
        if warmup > 0:
            with _phase(sampler, "warm-up"):
                sweep.closed_level(requests[:warmup], min(warmup, max(levels or [1])), record=False,
                                   label="warm-up")
        snapshot_kv("idle")
        rng = np.random.default_rng(seed)
        plan = [("concurrency", c) for c in levels] + [("rate", r) for r in rates]
        for mode, level in plan:
            if sweep.stop.is_set():
                break
            phase = _phase_name(mode, level)
            poller = _KvPoller(snapshot_kv, phase, kv_interval_s)
            with _phase(sampler, phase), poller:
                if mode == "concurrency":
                    planned.append((mode, level, len(requests)))
                    sweep.closed_level(requests, level)
                else:
                    gaps = rng.exponential(1.0 / level, size=int(level * duration_s * 3) + 10)
                    arrivals = np.cumsum(gaps)
                    arrivals = arrivals[arrivals < duration_s]
                    reqs = workload.build(engine, max(1, len(arrivals))) if len(arrivals) > len(requests) else requests
                    planned.append((mode, level, len(arrivals)))
                    sweep.poisson_level(reqs, level, arrivals)
            if on_level_done is not None and not sweep.stop.is_set():
                on_level_done(result())
    except KeyboardInterrupt:
        interrupted = True
        sweep.halt()
    finally:
        if sampler is not None:
            sampler.stop()
        interrupted = interrupted or sweep.stop.is_set()
        if interrupted:
            why = f"engine died: {sweep.died}" if sweep.died else "interrupted"
            _mark_unfinished(sweep, planned, levels, rates, requests_per_level,
                             "not sent: engine died" if sweep.died else "not sent: interrupted")
        writer.close()
    res = result()
    if interrupted:
        res.ended = why
        res.engine_log = engine.log_tail() if sweep.died else ""
    if out:
        res.save(out)
    return res


def _mark_unfinished(sweep: _Sweep, planned, levels, rates, requests_per_level, why: str) -> None:
    done = {(r["mode"], r["level"], r["index"]) for r in sweep.rows}
    counts = {(m, lv): n for m, lv, n in planned}
    for mode, level in [("concurrency", c) for c in levels] + [("rate", r) for r in rates]:
        n = counts.get((mode, level), requests_per_level)
        for i in range(n):
            if (mode, level, i) not in done:
                sweep.record({"mode": mode, "level": level, "index": i, "start_s": None,
                              "started_at": None, "ttft_s": None, "tpot_s": None, "itl_s": [],
                              "e2e_s": None, "input_tokens": None, "output_tokens": 0,
                              "finish_reason": why, "error": None})


def _sampler(scope: EngineMemory, interval_s: float) -> MemorySampler:
    # USS/PSS at phase edges only: a page-table walk mid-level stalls the engine being
    # measured (see labkit.memory). RSS is still read every interval.
    return MemorySampler(scope, interval_s, cpu_budget=0)


def _phase(sampler: MemorySampler | None, name: str):
    return sampler.phase(name) if sampler is not None else nullcontext()


class _KvPoller:
    """Reads the engine's KV account every ``every_s`` during a level, and once at its end."""

    def __init__(self, snap: Callable[[str], None], phase: str, every_s: float | None = 10.0):
        self.snap, self.phase, self.every_s = snap, phase, every_s
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(self.every_s):
            try:
                self.snap(self.phase)
            except Exception:
                continue

    def __enter__(self):
        if self.every_s is not None:
            self.thread.start()

    def __exit__(self, *exc):
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join(timeout=5)
        try:
            self.snap(self.phase)
        except Exception:
            pass


def _caveats(engine: Engine, workload: Workload) -> list[str]:
    notes = []
    if engine.info.concurrency == "sequential":
        notes.append(f"{engine.name} serves one sequence at a time: concurrent users queue, so "
                     "TTFT includes waiting; compare with llama-server for batching.")
    if workload.ignore_eos and getattr(engine, "flavor", None) == "generic":
        notes.append("This server may ignore ignore_eos: output lengths can vary.")
    if getattr(engine, "flavor", None) == "generic":
        notes.append("Token ids are unknown for this server: output tokens are counted as "
                     "streamed chunks, input lengths as whitespace words (approximate), and "
                     "its KV cache account is absent.")
    return notes
