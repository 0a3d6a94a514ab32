"""Load from several processes: ``bench(..., workers=N)``.

One Python process streams a few tens of thousands of chunks a second (see
:func:`labkit.calibrate`); a big server streams more. With ``workers=N`` the pacing stays
here, written once (:mod:`labkit.loadgen.shapes`), and the requests go to N load processes,
each running the asyncio driver against its own client of the same server. A request's
record is filled where it ran and comes back whole (every chunk time, its error), so the
rows are merged by construction and each percentile is computed from all raw rows, never
averaged across workers. Times come from one clock: ``perf_counter`` is the host's
monotonic clock, the same in every process, so each process stamps its requests against
the sweep's own origin.

Workers are started with ``spawn`` (a fork of a process running threads can deadlock),
ignore Ctrl-C (the sweep's owner decides what stops), and leave when their owner is gone.
"""

from __future__ import annotations

import itertools
import multiprocessing as mp
import os
import queue
import signal
import threading
import time
import warnings
from collections import defaultdict
from typing import Any

import psutil

from ..engines.base import Engine
from ..errors import EngineError, InvalidInput
from .drivers import AsyncDriver, Driver, Job

_START_TIMEOUT_S = 120.0  # a worker imports labkit and asks the server /v1/models


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def check_workers(workers: int | str, engine: Engine) -> int | str:
    """Load processes (or "ray", "ray:N": their form is BenchConfig's to check) refused where
    they cannot work and warned where they cannot help."""
    from ..engines.openai import HttpEngine

    ray = isinstance(workers, str)
    if ray:
        from .ray_workers import import_ray

        import_ray()
    if (ray or workers > 1) and not isinstance(engine, HttpEngine):
        senders = "Ray actors" if ray else f"{workers} processes"
        raise InvalidInput(f"workers={workers!r} sends requests from {senders}, each with its own "
                           f"connections to a server; the {engine.name} engine runs inside this "
                           "process. Use a server engine (llama-server, vllm-server, openai).")
    cores = usable_cores()
    if not ray and workers > cores:
        warnings.warn(f"workers={workers} load processes on {cores} usable cores: they compete "
                      "with each other (and with a server on this machine) for CPU; more than "
                      f"{cores} cannot raise what the client sustains.", RuntimeWarning, stacklevel=3)
    return workers


class ProcessDriver(Driver):
    """Carries requests to N load processes: a session's requests (every request, without
    sessions) go to worker ``session % N`` of those alive."""

    def __init__(self, engine: Engine, origin: float, workers: int):
        super().__init__(engine, origin)
        ctx = mp.get_context("spawn")
        self._out: Any = ctx.Queue()
        self._ins: list[Any] = [ctx.Queue() for _ in range(workers)]
        spec = engine.client_spec()  # type: ignore[attr-defined]  (an HttpEngine: check_workers)
        self._procs = [ctx.Process(target=_work, args=(spec, origin, q, self._out, os.getpid(), i),
                                   name=f"labkit-load-{i}", daemon=True) for i, q in enumerate(self._ins)]
        self._pending: dict[int, tuple[Job, int]] = {}  # id: (job, worker)
        self._dead: set[int] = set()
        self._closing = False
        self._lock = threading.Lock()
        self._ids = itertools.count()
        for p in self._procs:
            p.start()
        try:
            self._await_ready()
        except BaseException:
            self._stop_workers()
            raise
        self._collector = threading.Thread(target=self._collect, name="labkit-load-collector", daemon=True)
        self._collector.start()

    def _await_ready(self) -> None:
        ready, deadline = 0, time.monotonic() + _START_TIMEOUT_S
        while ready < len(self._procs):
            try:
                kind, index, detail = self._out.get(timeout=1.0)
            except queue.Empty:
                dead = [i for i, p in enumerate(self._procs) if p.exitcode is not None]
                if dead:  # it crashed while starting: say so now, not after the timeout
                    raise EngineError(f"Load process {dead[0]} exited while starting (exit code "
                                      f"{self._procs[dead[0]].exitcode}). A script that calls bench("
                                      "workers=N) needs `if __name__ == '__main__':` around it.") from None
                if time.monotonic() > deadline:
                    raise EngineError(f"A load process did not start within {_START_TIMEOUT_S:.0f} s.") from None
                continue
            if kind == "failed":
                raise EngineError(f"Load process {index} could not reach the server: {detail}")
            ready += 1

    def describe(self) -> dict[str, Any]:
        return {"driver": "ProcessDriver", "processes": len(self._procs), "clock": "perf_counter (one host)"}

    def processes(self) -> list[psutil.Process]:
        out = [psutil.Process()]
        for p in self._procs:
            try:
                out.append(psutil.Process(p.pid))
            except (psutil.Error, TypeError):
                continue
        return out

    def send(self, jobs: list[Job]) -> None:
        batches: dict[int, list[tuple]] = defaultdict(list)
        with self._lock:
            live = [i for i in range(len(self._procs)) if i not in self._dead] or [0]
            for job in jobs:
                # A session's turns leave from one process; a dead process gets no more.
                jid, w = next(self._ids), live[job.route % len(live)]
                job.record.worker = w
                self._pending[jid] = (job, w)
                batches[w].append((jid, job.request, job.record, job.due, job.ready))
        for w, batch in batches.items():  # a wave leaves as one message per worker
            self._ins[w].put(batch)

    def _collect(self) -> None:
        while True:
            self._fail_lost()  # cheap (exit codes): a death is seen within a message or a second
            try:
                msg = self._out.get(timeout=1.0)
            except queue.Empty:
                continue
            if msg is None:
                return
            _, jid, record = msg
            with self._lock:
                job, _ = self._pending.pop(jid, (None, None))
            if job is not None:
                job.adopt(record)

    def _fail_lost(self) -> None:
        """A worker that died (killed, out of memory) takes its requests in flight with it:
        they end as errors, so the level ends instead of waiting for them forever."""
        dead = {i: p.exitcode for i, p in enumerate(self._procs) if p.exitcode is not None}
        if not dead or self._closing:
            return
        self._dead |= set(dead)
        with self._lock:
            lost = [(jid, job, w) for jid, (job, w) in self._pending.items() if w in dead]
            for jid, _, _ in lost:
                del self._pending[jid]
        for _, job, w in lost:
            job.record.error = f"EngineError: load process {w} ended (exit code {dead[w]}) with this request in hand"
            job.on_done(job.record)

    def close(self) -> None:
        self._closing = True
        self._stop_workers()
        self._out.put(None)
        self._collector.join(timeout=30)

    def _stop_workers(self) -> None:
        for q in self._ins:
            q.put(None)
        for p in self._procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
                p.join(timeout=5)


def _work(spec: dict[str, Any], origin: float, inbox: Any, outbox: Any, owner: int, index: int) -> None:
    """One load process: a client of the server and an asyncio driver, until told to stop."""
    from ..engines.openai import HttpEngine

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the owner's to act on
    try:
        engine = HttpEngine.from_spec(spec)
    except Exception as e:
        outbox.put(("failed", index, f"{type(e).__name__}: {e}"))
        return
    outbox.put(("ready", index, os.getpid()))
    driver = AsyncDriver(engine, origin)
    try:
        while True:
            try:
                batch = inbox.get(timeout=1.0)
            except queue.Empty:
                if os.getppid() != owner:  # the owner is gone: nobody waits for these rows,
                    outbox.cancel_join_thread()  # and a full pipe must not keep this process
                    return
                continue
            if batch is None:
                return
            driver.send([Job(req, rec, lambda r, j=jid: outbox.put(("done", j, r)), due=due, ready=ready)
                         for jid, req, rec, due, ready in batch])
    finally:
        driver.close()
        engine.close()
