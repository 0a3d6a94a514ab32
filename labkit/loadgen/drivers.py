"""Drivers: how a request reaches an engine, chosen by what the engine declares.

- :class:`SubmitDriver` for engines that :class:`~labkit.engines.capabilities.Submits`
  (in-process vLLM): callbacks run on the engine's own loop thread, so no thread per user
  competes with the engine for CPU, and a wave given together enters one scheduler step.
- :class:`AsyncDriver` for engines that :class:`~labkit.engines.capabilities.AsyncStreams`
  (the HTTP engines): every request of the sweep runs on one event loop in one thread, so a
  wave leaves in one burst, as from vLLM's serving benchmark. A thread per user there was
  slow enough, next to a server using every core, that a wave trickled out and the server
  prefilled it in pieces (TTFT 0.6x and TPOT 1.1x those of ``vllm bench serve``).
- :class:`ThreadDriver` for any other engine (in-process llama.cpp): a thread per request.

Drivers never pace: :mod:`labkit.loadgen.shapes` says when requests leave. Every request
ends as a :class:`~labkit.loadgen.result.RequestRecord`; an error becomes a record, never an
exception, so one failing request does not end the sweep.
"""

from __future__ import annotations

import asyncio
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psutil

from ..engines.base import Engine, Submission, Token, reported_tokens
from ..engines.capabilities import AsyncStreams, Submits
from .metrics import UNMEASURED_FINISH, request_metrics
from .result import RequestRecord
from .workloads import Request

__all__ = ["Job", "Driver", "SubmitDriver", "AsyncDriver", "ThreadDriver", "driver_for", "run_request"]

# Load senders in other processes (load processes, Ray actors) show every BEAT_S that their
# event loop still turns. One silent for SILENT_S while it holds requests is stuck (its loop
# blocked, its process stopped) and is killed, so its requests end as errors and the level
# ends. Generous: a slow server does not silence a sender (its loop turns while it waits),
# and a false alarm costs the requests that sender holds.
BEAT_S = 1.0
SILENT_S = 60.0


@dataclass
class Job:
    """One request to send: what to send, its record so far, and who to tell when it ends."""

    request: Request
    record: RequestRecord
    on_done: Callable[[RequestRecord], None]
    due: float | None = None  # perf_counter time it was scheduled to leave (open loop)
    ready: float | None = None  # perf_counter time it could leave (see RequestRecord.ready_s)
    session: int | None = None  # which session (user conversation) it belongs to
    ended: bool = False  # on_done was called: a job ends once, whoever ends it first

    def _end(self) -> None:
        if not self.ended:
            self.ended = True
            self.on_done(self.record)

    @property
    def route(self) -> int:
        """What load processes route by: a session's turns all leave from one process."""
        return self.session if self.session is not None else self.record.index

    def begin(self, origin: float) -> float:
        """Stamp the send time (``origin``: the sweep's perf_counter start); returns t0."""
        t0 = time.perf_counter()
        self.record.start_s, self.record.started_at = t0 - origin, time.time()
        if self.due is not None:
            self.record.scheduled_s = self.due - origin
        if self.ready is not None:
            self.record.ready_s = self.ready - origin
        return t0

    def adopt(self, record: RequestRecord) -> None:
        """Take the record another process filled for this job, and hand it on. The session's
        callbacks hold this job's own record object, so it is updated in place."""
        if self.ended:
            return
        if record is not self.record:
            self.record.__dict__.update(record.__dict__)
        self._end()

    def fail(self, error: str) -> None:
        """End this job with ``error`` as its record: it was lost before a record came back."""
        if self.ended:
            return
        self.record.error = error
        self._end()

    def finish(self, tokens: list[Token], t0: float, error: BaseException | None) -> None:
        """Fill the record from the streamed tokens and hand it on."""
        if self.ended:
            return
        finish_record(self.record, tokens, time.perf_counter() - t0, error)
        self._end()

    @property
    def params(self) -> dict:
        r = self.request
        return {"max_tokens": r.max_tokens, "temperature": 0.0, "ignore_eos": r.ignore_eos}


def finish_record(record: RequestRecord, tokens: list[Token], e2e_s: float,
                  error: BaseException | None) -> RequestRecord:
    real = [t for t in tokens if t.token_id is not None or t.text]
    # What the engine counted, where it said: llama-server streams one chunk for the several
    # tokens of a multi-byte character, so chunks alone under-count emoji or CJK output.
    reported = reported_tokens(tokens)
    finish = next((t.finish_reason for t in reversed(tokens) if t.finish_reason), None)
    timed = real or _textless_output(tokens, reported)
    metrics = request_metrics([t.t_s for t in timed], e2e_s, reported)
    record.ttft_s, record.tpot_s = metrics["ttft_s"], metrics["tpot_s"]
    record.itl_s, record.e2e_s = metrics["itl_s"], metrics["e2e_s"]
    record.output_tokens = reported if reported is not None else len(real)
    record.finish_reason = finish
    record.cached_tokens = next((t.cached_tokens for t in tokens if t.cached_tokens is not None), None)
    if record.input_tokens is None:  # a prompt labkit did not count (a session's later turn, a generic URL's)
        record.input_tokens = next((t.prompt_tokens for t in tokens if t.prompt_tokens is not None), None)
    record.reply = "".join(t.text for t in real)
    record.error = f"{type(error).__name__}: {error}" if error is not None else \
        _cut_off(len(real)) if timed and finish is None else \
        None if timed or finish in UNMEASURED_FINISH else _no_output(finish)
    return record


def _cut_off(n: int) -> str:
    """Why tokens that never came to a finish are a failure: every engine labkit drives, and
    every OpenAI-compatible server, ends a whole output with a finish reason; a stream that
    just stops was cut (a server that died, a proxy's timeout) and is not the output asked for."""
    return f"Truncated: the stream ended after {n} token(s) without a finish reason (cut off?)"


def _textless_output(tokens: list[Token], reported: int | None) -> list[Token]:
    """A finish the engine counted tokens for but streamed no text or id with: a server
    whose first token was the end of generation (an empty delta, completion_tokens 1). Its
    finish arrived with that token, so it times the first token. In-process engines stream
    the end-of-generation token with its id, so they never come here with output."""
    if not reported:
        return []
    return [t for t in tokens if t.finish_reason][:1]


def _no_output(finish: str | None) -> str:
    """Why a request that raised nothing yet gave no token is a failure, not a latency sample
    (as ``vllm bench serve``: "Never received a valid chunk to calculate TTFT")."""
    if finish is None:
        return "NoOutput: the stream ended without a token or a finish reason (cut short?)"
    return f"NoOutput: the engine finished ({finish}) without generating a token"


class Driver(ABC):
    """Carries requests to one engine. ``send`` returns at once; each job's ``on_done``
    runs when its request ended, on whatever thread the driver serves it from."""

    def __init__(self, engine: Engine, origin: float):
        self.engine, self.origin = engine, origin

    @abstractmethod
    def send(self, jobs: list[Job]) -> None: ...

    def close(self) -> None:
        """Release what the driver holds (after the last level)."""
        return None

    def describe(self) -> dict[str, Any]:
        """For the manifest: what sent the requests."""
        return {"driver": type(self).__name__, "processes": 1}

    def processes(self) -> list[psutil.Process]:
        """The processes that send the requests (whose CPU says if the client kept up)."""
        return [psutil.Process()]


class SubmitDriver(Driver):
    engine: Submits

    def send(self, jobs: list[Job]) -> None:
        subs = []
        for job in jobs:
            tokens: list[Token] = []
            t0 = job.begin(self.origin)
            # t0 goes with the request: its tokens are timed from the moment its end-to-end
            # time is, not from when the engine had tokenized the whole wave (TPOT absorbed it).
            subs.append(Submission(job.request.prompt, tokens.append,
                                   lambda e, j=job, ts=tokens, t=t0: j.finish(ts, t, e), job.params, t0))
        try:
            self.engine.submit(subs)
        except Exception as e:  # refused before any started (a closed engine): records say so
            for sub in subs:
                sub.on_done(e)


class AsyncDriver(Driver):
    engine: AsyncStreams

    def __init__(self, engine: Engine, origin: float):
        super().__init__(engine, origin)
        # Its own loop in its own thread: a notebook's main thread already runs one.
        self._loop = asyncio.new_event_loop()
        self._tasks: set[asyncio.Task] = set()
        self._thread = threading.Thread(target=self._loop.run_forever, name="labkit-bench-loop",
                                        daemon=True)
        self._thread.start()

    def send(self, jobs: list[Job]) -> None:
        self._loop.call_soon_threadsafe(self._spawn, jobs)  # the whole wave in one loop turn

    def call_soon(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the driver's event loop: it runs only if the loop is turning."""
        self._loop.call_soon_threadsafe(fn)

    def _spawn(self, jobs: list[Job]) -> None:
        for job in jobs:
            task = self._loop.create_task(self._one(job))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _one(self, job: Job) -> None:
        await stream_job(self.engine, job, self.origin)

    def close(self) -> None:
        async def shutdown() -> None:
            for task in list(self._tasks):  # only left when a halt gave up waiting
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self.engine.aclose()

        try:
            asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(timeout=30)
        except Exception:
            pass  # a hung close must not hide the results
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)
            if not self._thread.is_alive():
                self._loop.close()


async def stream_job(engine: AsyncStreams, job: Job, origin: float) -> None:
    """Send one job on the running event loop and finish its record (errors included)."""
    tokens: list[Token] = []
    error = None
    t0 = job.begin(origin)
    try:
        async for tok in engine.astream(job.request.prompt, **job.params):
            tokens.append(tok)
    except Exception as e:
        error = e
    job.finish(tokens, t0, error)


class ThreadDriver(Driver):
    def send(self, jobs: list[Job]) -> None:
        for job in jobs:
            threading.Thread(target=self._one, args=(job,), daemon=True).start()

    def _one(self, job: Job) -> None:
        tokens: list[Token] = []
        error = None
        t0 = job.begin(self.origin)
        try:
            for tok in self.engine.stream(job.request.prompt, **job.params):
                tokens.append(tok)
        except Exception as e:
            error = e
        job.finish(tokens, t0, error)


def driver_for(engine: Engine, origin: float, workers: int | str = 1, ray_address: str | None = None) -> Driver:
    """The cheapest way ``engine`` declares it can be driven (from ``workers`` processes or
    Ray actors: see :mod:`labkit.loadgen.workers` and :mod:`labkit.loadgen.ray_workers`)."""
    if isinstance(workers, str):
        from .ray_workers import RayDriver

        return RayDriver(engine, origin, workers, ray_address)
    if workers > 1:
        from .workers import ProcessDriver

        return ProcessDriver(engine, origin, workers)
    if isinstance(engine, Submits):
        return SubmitDriver(engine, origin)
    if isinstance(engine, AsyncStreams):
        return AsyncDriver(engine, origin)
    return ThreadDriver(engine, origin)


def run_request(engine: Engine, request: Request) -> RequestRecord:
    """Send one request, stream it, and return its record (an error is recorded, not raised)."""
    done: list[RequestRecord] = []
    job = Job(request, RequestRecord("concurrency", 1, 0, input_tokens=request.input_tokens),
              done.append)
    ThreadDriver(engine, time.perf_counter())._one(job)
    return done[0]
