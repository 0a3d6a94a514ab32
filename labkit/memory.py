"""Memory of an engine: its whole process tree on the CPU, and device memory through NVML.

What counts as "the engine":
- a server: the server's whole process tree (labkit's reaper and everything under it);
- in-process vLLM: the engine-core processes it spawned, plus how much this process grew
  while it loaded (tokenizer, front end);
- in-process llama.cpp: how much this process grew while it loaded (weights, KV, buffers).

RSS double-counts pages shared between processes (torch's libraries in every vLLM process)
and USS leaves them out; PSS shares them fairly, so ``pss_bytes`` is the number to add up.
Without a GPU there are no VRAM columns at all (absent, not zero).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import pandas as pd
import psutil

GiB = 1024**3


class DeviceMemory(Protocol):
    """What labkit needs from NVML; :class:`Nvml` is the real one."""

    def used_bytes(self) -> int: ...

    def process_bytes(self, pids: set[int]) -> int: ...

    def name(self) -> str: ...


class Nvml:
    """Device memory through NVML (nvidia-ml-py), for GPU ``index``."""

    def __init__(self, index: int = 0):
        import pynvml

        pynvml.nvmlInit()
        self._nvml = pynvml
        self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)

    def used_bytes(self) -> int:
        return int(self._nvml.nvmlDeviceGetMemoryInfo(self._handle).used)

    def process_bytes(self, pids: set[int]) -> int:
        total = 0
        for getter in (self._nvml.nvmlDeviceGetComputeRunningProcesses,
                       self._nvml.nvmlDeviceGetGraphicsRunningProcesses):
            try:
                for p in getter(self._handle):
                    if p.pid in pids and p.usedGpuMemory is not None:
                        total += int(p.usedGpuMemory)
            except self._nvml.NVMLError:
                continue
        return total

    def name(self) -> str:
        n = self._nvml.nvmlDeviceGetName(self._handle)
        return n.decode() if isinstance(n, bytes) else str(n)


def nvml() -> DeviceMemory | None:
    """The NVML reader if this machine has an NVIDIA GPU and driver, else None."""
    try:
        return Nvml()
    except Exception:
        return None


def gpu_name() -> str | None:
    dev = nvml()
    return dev.name() if dev else None


@dataclass
class TreeMemory:
    rss_bytes: int
    uss_bytes: int
    pss_bytes: int
    n_processes: int
    pids: set[int] = field(default_factory=set)


def _own(p: psutil.Process) -> tuple[int, int, int]:
    try:
        m = p.memory_full_info()
        return m.rss, m.uss, getattr(m, "pss", m.uss)
    except (psutil.AccessDenied, psutil.ZombieProcess):
        m = p.memory_info()
        return m.rss, m.rss, m.rss


def tree_memory(roots: list[psutil.Process]) -> TreeMemory:
    """Sum of RSS / USS / PSS over ``roots`` and all their descendants."""
    seen: dict[int, psutil.Process] = {}
    for root in roots:
        try:
            for p in [root, *root.children(recursive=True)]:
                seen.setdefault(p.pid, p)
        except psutil.NoSuchProcess:
            continue
    rss = uss = pss = 0
    for p in seen.values():
        try:
            r, u, s = _own(p)
        except psutil.NoSuchProcess:
            continue
        rss, uss, pss = rss + r, uss + u, pss + s
    return TreeMemory(rss, uss, pss, len(seen), set(seen))


def self_memory() -> tuple[int, int, int]:
    """(rss, uss, pss) of this process alone."""
    return _own(psutil.Process(os.getpid()))


@dataclass
class EngineMemory:
    """How to find an engine's memory; made by the engine (see ``Engine.memory_scope``)."""

    roots: list[psutil.Process] = field(default_factory=list)  # child trees that are the engine
    self_baseline: tuple[int, int, int] | None = None  # this process before the engine loaded

    def measure(self) -> TreeMemory:
        tree = tree_memory(self.roots)
        if self.self_baseline is None:
            return tree
        r, u, s = self_memory()
        br, bu, bs = self.self_baseline
        return TreeMemory(tree.rss_bytes + max(0, r - br), tree.uss_bytes + max(0, u - bu),
                          tree.pss_bytes + max(0, s - bs), tree.n_processes + 1,
                          tree.pids | {os.getpid()})


class MemorySampler:
    """Samples an engine's memory every ``interval_s`` on a background thread, by phase.

    >>> sampler = MemorySampler(engine.memory_scope())
    >>> with sampler.running():
    ...     with sampler.phase("level 8"):
    ...         ...  # apply load
    >>> sampler.frame()  # time, phase, rss/uss/pss (+ VRAM columns on a GPU)
    """

    def __init__(self, scope: EngineMemory, interval_s: float = 0.1,
                 device: DeviceMemory | None | bool = True):
        self.scope = scope
        self.interval_s = interval_s
        self.device = nvml() if device is True else (device or None)
        self._phase = "idle"
        self._rows: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = time.perf_counter()
        self._lock = threading.Lock()

    def sample(self) -> dict[str, Any]:
        m = self.scope.measure()
        row: dict[str, Any] = {"t_s": time.perf_counter() - self._t0, "phase": self._phase,
                               "rss_bytes": m.rss_bytes, "uss_bytes": m.uss_bytes,
                               "pss_bytes": m.pss_bytes, "n_processes": m.n_processes}
        if self.device is not None:
            row["vram_used_bytes"] = self.device.used_bytes()
            row["vram_process_bytes"] = self.device.process_bytes(m.pids)
        with self._lock:
            self._rows.append(row)
        return row

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.sample()
            except Exception:  # a process vanishing mid-sample must not end the timeline
                continue

    def start(self) -> MemorySampler:
        self._stop.clear()
        self.sample()
        self._thread = threading.Thread(target=self._run, name="labkit-memory", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
        try:
            self.sample()
        except Exception:
            pass

    @contextmanager
    def running(self) -> Iterator[MemorySampler]:
        self.start()
        try:
            yield self
        finally:
            self.stop()

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Mark samples taken inside the block with ``name`` (one sample at each edge)."""
        previous = self._phase
        self._phase = name
        self.sample()
        try:
            yield
        finally:
            self.sample()
            self._phase = previous

    def frame(self) -> pd.DataFrame:
        with self._lock:
            return pd.DataFrame(self._rows)

    def peaks(self) -> pd.DataFrame:
        """Peak of every memory column per phase."""
        return phase_peaks(self.frame())


def phase_peaks(timeline: pd.DataFrame) -> pd.DataFrame:
    """Peak of every ``*_bytes`` column of a memory timeline, per phase."""
    if timeline.empty:
        return pd.DataFrame()
    cols = [c for c in timeline.columns if c.endswith("_bytes")]
    return timeline.groupby("phase", sort=False)[cols].max().reset_index()
