"""Load from Ray actors on many hosts: ``bench(..., workers="ray", ray_address="auto")``.

The same request code as the local load processes (:func:`labkit.loadgen.drivers.stream_job`),
placed in Ray actors spread over the cluster; Ray does the placement, the transport and the
cleanup, labkit adds no cluster plumbing of its own. ``workers="ray"`` starts one actor per
alive node; ``"ray:N"`` starts N, spread. The pacing stays in this process, and each request
is one actor call that returns its whole record.

One clock across hosts: each actor's ``perf_counter`` is mapped onto this process's at start
(a round trip, its midpoint; the half round trip is the uncertainty, kept in
:attr:`RayDriver.clock_error_s`), so every record's times count from the sweep's origin.

An actor that holds requests and stops answering pings for ``drivers.SILENT_S`` (its event
loop blocked, its process stopped) is killed: its requests end as errors that say so, and
the level ends instead of waiting for them for ever.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from typing import Any

from ..engines.base import Engine
from ..errors import EngineError, InvalidInput
from . import drivers
from .drivers import Driver, Job
from .result import RequestRecord

EXTRA = "pip install 'labkit[ray]' (or: pip install ray)"
NAMESPACE = "labkit"
_MAX_CALLS = 4096  # requests one actor runs at once (its event loop holds them all)


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise InvalidInput(f"workers='ray' needs Ray, which is not installed here: {EXTRA}.") from None
    return ray


def ray_actors(workers: str) -> int | None:
    """``"ray"``: None (one actor per node); ``"ray:N"``: N."""
    if workers == "ray":
        return None
    head, _, count = workers.partition(":")
    if head != "ray" or not count.isdigit() or int(count) < 1:
        raise InvalidInput(f"workers takes a number of processes, 'ray' or 'ray:N' (N Ray actors), got {workers!r}.")
    return int(count)


def _probe(address: str | None) -> None:
    """Refuse a HOST:PORT nothing listens on at once: ray.init would retry it for ever."""
    import socket

    if not address or address == "auto" or "://" in address:
        return  # Ray finds "auto" itself (and says so quickly when there is none)
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=5):
            return
    except (OSError, ValueError) as e:
        raise InvalidInput(f"Cannot reach the Ray cluster at {address!r} ({type(e).__name__}: {e}). Start "
                           "one (`ray start --head`) or give its address: ray_address='HOST:6379'.") from None


class _LoadActor:
    """A client of the server on one host, serving one request per call on its event loop.

    The server's headers (an API key among them) arrive by :meth:`connect`, not as
    constructor arguments: Ray keeps an actor's constructor arguments in its control store,
    to restart it with them."""

    def __init__(self, spec: dict[str, Any]):
        self.spec, self.engine, self.origin = spec, None, 0.0

    def connect(self, headers: dict[str, str]) -> None:
        from ..engines.openai import HttpEngine

        self.engine = HttpEngine.from_spec({**self.spec, "headers": headers})

    async def now(self) -> float:
        # async: it runs on the event loop that runs the requests, so it answers only while
        # that loop turns (RayDriver's pings rely on that)
        return time.perf_counter()

    def set_origin(self, origin: float) -> None:
        self.origin = origin

    async def one(self, request: Any, record: RequestRecord, due: float | None, ready: float | None) -> RequestRecord:
        from .drivers import stream_job

        done: list[RequestRecord] = []
        await stream_job(self.engine, Job(request, record, done.append, due=due, ready=ready), self.origin)
        return done[0]


class RayDriver(Driver):
    """Carries requests to Ray actors: a session's requests go to actor ``session % N``."""

    def __init__(self, engine: Engine, origin: float, workers: str, address: str | None):
        super().__init__(engine, origin)
        ray = self._ray = import_ray()
        self._owns_ray = not ray.is_initialized()
        if self._owns_ray:
            _probe(address)
            from .._procs import STARTING

            try:
                with STARTING:  # a local cluster's processes: not while vLLM takes new children for its own
                    ray.init(address=address, namespace=NAMESPACE, log_to_driver=False, include_dashboard=False)
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise InvalidInput(f"Cannot reach the Ray cluster at {address or 'auto'!r} ({e}). Start one "
                                   "(`ray start --head`) or give its address: ray_address='HOST:6379'.") from None
        self._nodes = [n for n in ray.nodes() if n.get("Alive")]
        count = ray_actors(workers) or len(self._nodes)
        remote = ray.remote(num_cpus=0)(_LoadActor)  # a client mostly waits: do not hold a core
        tag = uuid.uuid4().hex[:8]
        self.names = [f"labkit-load-{tag}-{i}" for i in range(count)]
        spec = engine.client_spec()  # type: ignore[attr-defined]
        headers = spec.pop("headers")
        self._actors = [remote.options(name=n, namespace=NAMESPACE, scheduling_strategy="SPREAD",
                                       max_concurrency=_MAX_CALLS).remote(spec)
                        for n in self.names]
        self._offsets: list[float] = []  # each actor's clock minus ours
        try:
            ray.get([a.connect.remote(headers) for a in self._actors], timeout=120)  # all started
            self.clock_error_s = self._sync_clocks(origin)
        except Exception as e:
            self.close()
            raise EngineError(f"A Ray load actor could not start: {e}") from None
        self._pending: dict[Any, tuple[Job, int]] = {}
        self._pings: dict[int, tuple[Any, float]] = {}  # actor: (unanswered ping, sent at)
        self._answered: dict[int, float] = {}  # actor: when its last ping came back
        self._stuck: dict[int, float] = {}  # actor killed for its silence: how long it was
        self._dead: set[int] = set()  # actors gone (died, or killed as stuck): sent no more
        self._lock = threading.Condition()
        self._closing = threading.Event()
        self._collector = threading.Thread(target=self._collect, name="labkit-ray-collector", daemon=True)
        self._collector.start()

    def _sync_clocks(self, origin: float) -> float:
        """Map each actor's clock onto ours: the quickest of a few round trips, its midpoint.
        Returns the largest half round trip."""
        worst = 0.0
        for actor in self._actors:
            trips = []
            for _ in range(5):
                t0 = time.perf_counter()
                theirs = self._ray.get(actor.now.remote(), timeout=60)
                t1 = time.perf_counter()
                trips.append((t1 - t0, theirs - (t0 + t1) / 2))  # (round trip, their clock - ours)
            rtt, offset = min(trips)
            self._ray.get(actor.set_origin.remote(origin + offset), timeout=60)
            self._offsets.append(offset)
            worst = max(worst, rtt / 2)
        return worst

    def describe(self) -> dict[str, Any]:
        return {"driver": "RayDriver", "ray_actors": self.names, "ray_nodes": len(self._nodes),
                "clock_error_ms": self.clock_error_s * 1000,
                # the client self-check sees this process's CPU only, not the actors' hosts'
                "client_cpu": "the pacing process only"}

    def send(self, jobs: list[Job]) -> None:
        with self._lock:
            live = [i for i in range(len(self._actors)) if i not in self._dead] or list(range(len(self._actors)))
            for job in jobs:
                w = live[job.route % len(live)]  # a session's turns go to one actor, a gone one gets no more
                job.record.worker = w
                # Our times on the actor's clock (its origin is ours mapped there, too).
                due, ready = (None if t is None else t + self._offsets[w] for t in (job.due, job.ready))
                ref = self._actors[w].one.remote(job.request, job.record, due, ready)
                self._pending[ref] = (job, w)
            self._lock.notify()

    def _collect(self) -> None:
        while not self._closing.is_set():
            with self._lock:
                if not self._pending:  # idle between levels: until send() or close() says so
                    self._lock.wait(0.5)
                    continue
                refs = list(self._pending)
            ready, rest = self._ray.wait(refs, num_returns=1, timeout=0.5)
            if ready and rest:  # and every other one already done, in the same pass
                ready += self._ray.wait(rest, num_returns=len(rest), timeout=0)[0]
            for ref in ready:
                with self._lock:
                    job, w = self._pending.pop(ref)
                try:
                    record = self._ray.get(ref)
                except Exception as e:  # the actor died: this request is lost, not the level
                    if isinstance(e, self._ray.exceptions.RayActorError):
                        with self._lock:
                            self._dead.add(w)
                    if w in self._stuck:
                        job.fail(f"EngineError: Ray load actor {w} stopped responding ({self._stuck[w]:.0f} s "
                                 "without answering a ping) with this request in hand, and was killed")
                    else:
                        job.fail(f"EngineError: Ray load actor {w} failed ({type(e).__name__})")
                    continue
                job.adopt(record)
            self._watch()

    def _watch(self) -> None:
        """Ping each actor that holds requests (an async actor answers on the event loop that
        runs them); one silent for ``SILENT_S`` is killed, which ends its requests as errors."""
        now = time.monotonic()
        for w, (ref, sent) in list(self._pings.items()):
            if self._ray.wait([ref], timeout=0)[0]:
                del self._pings[w]
                self._answered[w] = now
            elif now - sent > drivers.SILENT_S:
                del self._pings[w]
                self._stuck[w] = now - sent
                with self._lock:
                    self._dead.add(w)
                self._ray.kill(self._actors[w], no_restart=True)
        with self._lock:
            held = Counter(w for _, w in self._pending.values())
        for w, n in held.items():
            if n >= _MAX_CALLS - 1 and w in self._pings:  # a ping queued behind a full actor
                self._pings[w] = (self._pings[w][0], now)  # proves nothing: do not judge it yet
        for w in set(held) - set(self._pings) - set(self._stuck):
            if now - self._answered.get(w, 0.0) >= drivers.BEAT_S:
                self._pings[w] = (self._actors[w].now.remote(), now)

    def close(self) -> None:
        if hasattr(self, "_collector"):
            self._closing.set()
            with self._lock:
                self._lock.notify()
            self._collector.join(timeout=30)
        for actor in getattr(self, "_actors", []):
            try:
                self._ray.kill(actor)
            except Exception:
                pass
        if self._owns_ray:
            self._ray.shutdown()

