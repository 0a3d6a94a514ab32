"""``bench()``: measure throughput, latency and memory of an engine under load.

The sweep is assembled from parts that each do one thing: a :class:`BenchConfig` (the levels,
checked), load shapes (when requests leave), a driver (how they reach the engine, chosen by
the capabilities it declares) and a session (sampler, manifest, writer, interruption). Whether
requests are batched is the engine's business (vLLM and the servers batch; in-process
llama.cpp serves one at a time, and the result's manifest says so).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..engines.base import Engine, load
from ..errors import InvalidInput
from ..memory import Baseline, EngineMemory, child_pids, new_children, self_memory
from .config import BenchConfig
from .result import BenchResult
from .session import Session, memory_sampler
from .workloads import Workload


class _LoadingScope(EngineMemory):
    """While an engine loads: this process's growth plus any child that appeared."""

    def __init__(self):
        self.before = child_pids()
        super().__init__([], Baseline(*self_memory()))  # not an engine's: held open by none

    def measure(self, detail: bool = True):
        self.roots = new_children(self.before)
        return super().measure(detail)


def bench(engine: Engine | str, *, concurrency: Sequence[int] | int | None = None,
          rate: Sequence[float] | float | None = None, requests_per_level: int = 32,
          duration_s: float = 30.0, workload: Workload | None = None, warmup: int = 2,
          out: str | Path | None = None, slo_ms: dict[str, float] | None = None,
          memory_interval_s: float = 0.1, kv_interval_s: float | None = None,
          progress: bool = True, seed: int = 0, first_request: int = 0, repeats: int = 1,
          telemetry: bool = False, telemetry_interval_s: float = 2.0,
          workers: int | str = 1, ray_address: str | None = None,
          on_level_done: Callable[[BenchResult], None] | None = None,
          after: Callable[[Engine], Any] | None = None,
          stop_event: threading.Event | None = None, **engine_kwargs: Any) -> BenchResult:
    """Measure throughput, latency and memory of ``engine`` under load.

    ``concurrency``: closed-loop levels (N users, each sending its next request when the
    last one finished), ``requests_per_level`` requests each. ``rate``: open-loop Poisson
    arrivals (requests per second) for ``duration_s`` each. ``engine`` may be a loaded engine
    or a registry name (then it is loaded under the "load" memory phase and closed at the
    end; ``engine_kwargs`` go to :func:`labkit.load`). ``out``: a folder that receives the
    manifest and one JSONL line per request as it finishes. ``slo_ms``: e.g.
    ``{"ttft": 500, "tpot": 50}`` adds goodput. ``kv_interval_s``: KV account reads during a
    level (None: at its end only; a /metrics page costs 7-11 ms of server CPU). ``memory_interval_s``:
    how often RSS is read (USS/PSS at phase edges). ``first_request``: the prompts' first number
    (sweeps in a series pass their count: no prompt repeats). ``repeats``: rounds over the
    levels, new prompts each: figures get 95% intervals. ``telemetry=True``: the engine's own
    metrics, CPU by process role and the GPU every ``telemetry_interval_s`` (``res.telemetry``).
    ``workers``: load processes (servers only) when one cannot keep up (``client_bound``);
    ``"ray"``/``"ray:N"``: Ray actors on the cluster at ``ray_address``.
    ``after``: called with an engine bench loaded, once the sweep completed, before closing it;
    it returns ``res.after`` (``after=labkit.conformance``: one server start for both). Ctrl-C (or
    ``stop_event``) stops the sweep and returns what was measured, with unsent requests marked.

    >>> res = bench(engine, concurrency=[1, 8], requests_per_level=16,
    ...             workload=workloads.chat(input_tokens=128, output_tokens=64))
    >>> res.summary[["level", "output_tok_per_s", "ttft_p50_ms"]]
    """
    config = BenchConfig(concurrency, rate, requests_per_level, duration_s, workload, warmup,
                         slo_ms, memory_interval_s, kv_interval_s, progress, seed, first_request,
                         repeats=repeats, telemetry=telemetry, telemetry_interval_s=telemetry_interval_s,
                         workers=workers, ray_address=ray_address)
    hooks = {"out": out, "stop_event": stop_event, "on_level_done": on_level_done}
    if not isinstance(engine, str):
        if after is not None:
            raise InvalidInput("after= runs on the engine bench() loaded by name; with a loaded "
                               "engine, call it yourself after bench().")
        if engine_kwargs:
            raise InvalidInput(f"Engine options {sorted(engine_kwargs)} only apply when bench() "
                               "loads the engine by name.")
        return Session(engine, config, **hooks).run()
    return _load_and_run(engine, engine_kwargs, config, hooks, after)


def _load_and_run(name: str, engine_kwargs: dict[str, Any], config: BenchConfig, hooks: dict[str, Any],
                  after: Callable[[Engine], Any] | None) -> BenchResult:
    """Load ``name`` under the "load" memory phase, run the session, call ``after``, close."""
    sampler = memory_sampler(_LoadingScope(), config.memory_interval_s)
    sampler.start()
    try:
        with sampler.phase("load"):
            loaded = load(name, **engine_kwargs)
    except BaseException:
        sampler.stop()
        raise
    with loaded:
        res = Session(loaded, config, sampler=sampler, **hooks).run()
        if after is not None and res.ended == "completed":
            res.after = after(loaded)
        return res
