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
A worker that dies ends its pipe; one that is alive but stuck (its event loop blocked, the
process stopped) is found by its silence: each worker's loop sends a beat every second, and
one silent for ``drivers.SILENT_S`` with requests in hand is killed, so the level ends with those
requests as errors instead of waiting for them for ever.
"""

from __future__ import annotations

import itertools
import multiprocessing as mp
import multiprocessing.connection as mp_connection
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
from . import drivers
from .drivers import AsyncDriver, Driver, Job
from .result import RequestRecord

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
    sessions) go to worker ``session % N`` of those alive.

    Each worker sends its records back on a pipe of its own, of which it holds the only
    write end: a worker killed mid-message ends its own pipe (EOF) and wedges nobody else's
    (one queue shared by all would leave its lock held, and every other worker blocked)."""

    def __init__(self, engine: Engine, origin: float, workers: int):
        super().__init__(engine, origin)
        ctx = mp.get_context("spawn")
        self._ins: list[Any] = [ctx.Queue() for _ in range(workers)]
        pipes = [ctx.Pipe(duplex=False) for _ in range(workers)]
        self._outs: dict[Any, int] = {r: i for i, (r, _) in enumerate(pipes)}  # reader: worker
        spec = engine.client_spec()  # type: ignore[attr-defined]  (an HttpEngine: check_workers)
        self._procs = [ctx.Process(target=_work, args=(spec, origin, q, w, os.getpid(), i),
                                   name=f"labkit-load-{i}", daemon=True)
                       for i, (q, (_, w)) in enumerate(zip(self._ins, pipes, strict=True))]
        self._pending: dict[int, tuple[Job, int]] = {}  # id: (job, worker)
        self._dead: set[int] = set()  # workers whose pipe has ended: all they sent was read
        self._heard: dict[int, float] = {}  # worker: monotonic time its last message came
        self._stuck: dict[int, float] = {}  # worker killed for its silence: how long it was
        self._closing = threading.Event()
        self._lock = threading.Lock()
        self._ids = itertools.count()
        from .._procs import STARTING

        try:
            with STARTING:  # not while an engine loads: vLLM takes the children that appear then
                for p, (_, w) in zip(self._procs, pipes, strict=True):
                    p.start()
                    w.close()  # the worker's end: here, it would keep a dead worker's pipe from ending
            self._await_ready()
        except BaseException:
            self._stop_workers()
            for reader in self._outs:
                reader.close()
            raise
        self._collector = threading.Thread(target=self._collect, name="labkit-load-collector", daemon=True)
        self._collector.start()

    def _await_ready(self) -> None:
        waiting, deadline = set(self._outs), time.monotonic() + _START_TIMEOUT_S
        while waiting:
            for reader in mp_connection.wait(list(waiting), timeout=1.0):
                index = self._outs[reader]
                try:
                    kind, _, detail = reader.recv()
                except (EOFError, OSError):  # it crashed while starting: say so now, not after the timeout
                    self._procs[index].join(timeout=5)
                    raise EngineError(f"Load process {index} exited while starting (exit code "
                                      f"{self._procs[index].exitcode}). A script that calls bench("
                                      "workers=N) needs `if __name__ == '__main__':` around it.") from None
                if kind == "failed":
                    raise EngineError(f"Load process {index} could not reach the server: {detail}")
                self._heard[index] = time.monotonic()
                waiting.discard(reader)
            if waiting and time.monotonic() > deadline:
                raise EngineError(f"A load process did not start within {_START_TIMEOUT_S:.0f} s.")

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
            if w not in self._dead:  # (all gone: the jobs wait for _fail_lost, not a dead inbox)
                self._ins[w].put(batch)

    def _collect(self) -> None:
        """Records as they come, until close(). A pipe that ends is a worker gone, and
        everything it sent before has been read: its requests still in hand end as errors."""
        open_ = list(self._outs)
        while open_ or not self._closing.is_set():
            if not open_:  # every worker is gone: fail what is sent meanwhile, until close()
                self._closing.wait(1.0)
                self._fail_lost()
                continue
            for reader in mp_connection.wait(open_, timeout=1.0):
                try:
                    kind, jid, record = reader.recv()
                except Exception:  # EOF, or cut off mid-message (OSError): that worker left
                    open_.remove(reader)
                    with self._lock:
                        self._dead.add(self._outs[reader])
                    continue
                self._heard[self._outs[reader]] = time.monotonic()
                if kind == "done":
                    self._adopt(jid, record)
            self._kill_silent()
            self._fail_lost()

    def _kill_silent(self) -> None:
        """Kill a worker that holds requests and has not been heard from for ``SILENT_S``:
        its pipe then ends, and its requests end as errors that say why."""
        now = time.monotonic()
        with self._lock:
            holding = {w for _, w in self._pending.values()}
        for w in holding - self._dead - set(self._stuck):
            silent = now - self._heard.get(w, now)
            if silent > drivers.SILENT_S:
                self._stuck[w] = silent
                self._procs[w].kill()

    def _adopt(self, jid: int, record: RequestRecord | None) -> None:
        with self._lock:
            job, _ = self._pending.pop(jid, (None, None))
        if job is None:
            return
        if record is None:
            job.fail("EngineError: the load process could not send this request's record back")
        else:
            job.adopt(record)

    def _fail_lost(self) -> None:
        """A worker that died (killed, out of memory) took its requests in flight with it:
        they end as errors, so the level ends instead of waiting for them for ever. (Jobs
        sent when every worker is gone land here too, from this thread.)"""
        if self._closing.is_set():
            return
        with self._lock:
            lost = [(jid, job, w) for jid, (job, w) in self._pending.items() if w in self._dead]
            for jid, _, _ in lost:
                del self._pending[jid]
        for _, job, w in lost:
            if w in self._stuck:
                job.fail(f"EngineError: load process {w} stopped responding ({self._stuck[w]:.0f} s "
                         "without a sign of life) with this request in hand, and was killed")
            else:
                job.fail(f"EngineError: load process {w} ended (exit code {self._procs[w].exitcode}) "
                         "with this request in hand")

    def close(self) -> None:
        self._closing.set()
        self._stop_workers()  # their pipes end with them
        self._collector.join(timeout=30)
        for reader in self._outs:
            reader.close()

    def _stop_workers(self) -> None:
        for q in self._ins:
            q.put(None)
        for p in self._procs:
            if p.pid is None:  # never started
                continue
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
                p.join(timeout=5)
        for q in self._ins:  # what a dead worker left unread must not hold this process at exit
            q.cancel_join_thread()
            q.close()


def _work(spec: dict[str, Any], origin: float, inbox: Any, outbox: Any, owner: int, index: int) -> None:
    """One load process: a client of the server and an asyncio driver, until told to stop."""
    from ..engines.openai import HttpEngine

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the owner's to act on
    out = _Outbox(outbox)
    try:
        try:
            engine = HttpEngine.from_spec(spec)
        except Exception as e:
            out.put(("failed", index, f"{type(e).__name__}: {e}"))
            return
        out.put(("ready", index, os.getpid()))
        driver = AsyncDriver(engine, origin)
        try:
            _serve(inbox, driver, out, owner)
        finally:
            driver.close()
            engine.close()
    finally:
        out.close()


def _serve(inbox: Any, driver: AsyncDriver, out: _Outbox, owner: int) -> None:
    beat_at = 0.0
    while True:
        if time.monotonic() >= beat_at:  # sent from the loop: a blocked loop sends none
            driver.call_soon(lambda: out.put(("beat", None, None)))
            beat_at = time.monotonic() + drivers.BEAT_S
        try:
            batch = inbox.get(timeout=drivers.BEAT_S)
        except queue.Empty:
            if os.getppid() != owner:  # the owner is gone: nobody waits for these rows
                return
            continue
        if batch is None:
            return
        driver.send([Job(req, rec, lambda r, j=jid: out.put(("done", j, r)), due=due, ready=ready)
                     for jid, req, rec, due, ready in batch])


class _Outbox:
    """A worker's end of its pipe, written by a thread of its own: a record is handed over
    without blocking the event loop that times the other requests (a pipe write can wait
    for the reader)."""

    def __init__(self, conn: Any):
        self._conn, self._q = conn, queue.SimpleQueue()
        self._thread = threading.Thread(target=self._feed, name="labkit-load-outbox", daemon=True)
        self._thread.start()

    def put(self, msg: tuple) -> None:
        self._q.put(msg)

    def _feed(self) -> None:
        while (msg := self._q.get()) is not None:
            try:
                self._conn.send(msg)
            except OSError:  # the owner is gone: nobody reads
                return
            except Exception:  # this record would not pickle: say so for it, and go on
                self._conn.send((msg[0], msg[1], None))

    def close(self) -> None:
        self._q.put(None)
        self._thread.join(timeout=10)  # what is queued reaches the owner before this process ends
        self._conn.close()
