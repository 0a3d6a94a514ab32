"""Memory of an engine: its whole process tree on the CPU, and device memory through NVML.

What counts as "the engine":
- a server: the server's whole process tree (labkit's reaper and everything under it);
- in-process vLLM: the engine-core processes it spawned, plus how much this process grew
  while it loaded (tokenizer, front end);
- in-process llama.cpp: how much this process grew while it loaded (weights, KV, buffers).

RSS double-counts pages shared between processes (torch's libraries in every vLLM process)
and USS leaves them out; PSS shares them fairly, so ``pss_bytes`` is the number to add up.
Without a GPU there are no VRAM columns at all (absent, not zero).

RSS is a counter the kernel keeps; USS and PSS are not: the kernel walks every page table of
the process to compute them, which took 80 ms for in-process vLLM's tree on a 2-core CPU.
Sampled every 100 ms, that walk alone took most of a core from the engine being measured
(labkit's vLLM throughput dropped by a third). So the sampler reads RSS every interval and
USS/PSS only as often as a CPU budget allows (1% of one core by default), plus at every
phase edge; between those readings the USS/PSS cells are empty (NaN).

Under load even that budget was too much: a walk holds the engine's memory-map lock for
its whole 65-80 ms, and on a machine whose cores the engine's threads all use, each one
stalls a step. Against vLLM's server (2 cores, 8 users) walks within 1% of a core raised
TTFT by 5% and TPOT by 2%. ``labkit.bench`` therefore reads USS/PSS only at phase edges
(``cpu_budget=0``), where no request is in flight.
"""

from __future__ import annotations

import os
import threading
import time
import warnings
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import pandas as pd
import psutil

from ._guard import engine_child
from .errors import InvalidInput

GiB = 1024**3


class DeviceMemory(Protocol):
    """What labkit needs from NVML; :class:`Nvml` is the real one. Readers of energy, power,
    utilisation and clocks (``energy_j``, ``power_w``, ``utilization_pct``, ``sm_clock_mhz``)
    are optional: each returns None where the driver does not say."""

    def used_bytes(self) -> int: ...

    def process_bytes(self, pids: set[int]) -> int: ...

    def name(self) -> str: ...


def visible_entries() -> list[str] | None:
    """CUDA_VISIBLE_DEVICES as CUDA reads it: the entries up to the first invalid one ("" or
    "-1": no GPU from there on); None when it is not set (every GPU is visible)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return None
    listed = [d.strip() for d in visible.split(",")]
    return listed[:next((i for i, d in enumerate(listed) if not d or d.startswith("-")), len(listed))]


class Nvml:
    """Device memory through NVML (nvidia-ml-py), over the GPUs CUDA programs here see:
    CUDA_VISIBLE_DEVICES by index or by GPU UUID (or a unique prefix of one), every GPU when
    it is unset. Memory, energy and power are summed over them; ``index`` picks one GPU
    instead. (NVML numbers GPUs in PCI order: with CUDA_DEVICE_ORDER=FASTEST_FIRST, CUDA's
    default, an index can name another card on a machine of mixed GPUs.)"""

    def __init__(self, index: int | None = None):
        import pynvml

        pynvml.nvmlInit()
        self._nvml = pynvml
        self._handles = [pynvml.nvmlDeviceGetHandleByIndex(index)] if index is not None else self._visible()
        if not self._handles:
            raise RuntimeError("CUDA_VISIBLE_DEVICES hides every GPU")
        self._handle = self._handles[0]

    def _visible(self) -> list[Any]:
        n = int(self._nvml.nvmlDeviceGetCount())
        entries = visible_entries()
        if entries is None:
            return [self._nvml.nvmlDeviceGetHandleByIndex(i) for i in range(n)]
        uuids = {}
        for i in range(n):
            u = self._nvml.nvmlDeviceGetUUID(self._nvml.nvmlDeviceGetHandleByIndex(i))
            uuids[i] = u.decode() if isinstance(u, bytes) else str(u)
        picked: list[Any] = []
        for e in entries:  # CUDA too stops at an entry it cannot match to one device
            if e.startswith("MIG-"):  # a MIG instance: its own memory and processes
                try:
                    picked.append(self._nvml.nvmlDeviceGetHandleByUUID(e))
                except self._nvml.NVMLError:
                    break
                continue
            found = [int(e)] if e.isdigit() else [i for i, u in uuids.items() if e.startswith("GPU-")
                                                  and u.startswith(e)]
            if len(found) != 1 or not 0 <= found[0] < n or found[0] in picked:
                break
            picked.append(found[0])
        return [h if not isinstance(h, int) else self._nvml.nvmlDeviceGetHandleByIndex(h) for h in picked]

    def count(self) -> int:
        return len(self._handles)

    def used_bytes(self) -> int:
        return sum(int(self._nvml.nvmlDeviceGetMemoryInfo(h).used) for h in self._handles)

    def process_bytes(self, pids: set[int]) -> int:
        total = 0
        for h in self._handles:
            for getter in (self._nvml.nvmlDeviceGetComputeRunningProcesses,
                           self._nvml.nvmlDeviceGetGraphicsRunningProcesses):
                try:
                    for p in getter(h):
                        if p.pid in pids and p.usedGpuMemory is not None:
                            total += int(p.usedGpuMemory)
                except self._nvml.NVMLError:
                    continue
        return total

    def name(self) -> str:
        n = self._nvml.nvmlDeviceGetName(self._handle)
        return n.decode() if isinstance(n, bytes) else str(n)

    def _each(self, read: Any) -> list[float] | None:
        """``read(handle)`` for every GPU; None when any of them does not say."""
        try:
            return [float(read(h)) for h in self._handles]
        except self._nvml.NVMLError:
            return None

    def energy_j(self) -> float | None:
        """Energy the GPUs used since the driver loaded (a counter: differences are joules)."""
        got = self._each(self._nvml.nvmlDeviceGetTotalEnergyConsumption)  # None before Volta, or in some VMs
        return None if got is None else sum(got) / 1000.0

    def power_w(self) -> float | None:
        got = self._each(self._nvml.nvmlDeviceGetPowerUsage)
        return None if got is None else sum(got) / 1000.0

    def utilization_pct(self) -> float | None:
        """How much of the last sample period a kernel was running (NVML's "GPU utilisation"),
        the mean over the GPUs."""
        got = self._each(lambda h: self._nvml.nvmlDeviceGetUtilizationRates(h).gpu)
        return None if got is None else sum(got) / len(got)

    def sm_clock_mhz(self) -> float | None:
        got = self._each(lambda h: self._nvml.nvmlDeviceGetClockInfo(h, self._nvml.NVML_CLOCK_SM))
        return None if got is None else sum(got) / len(got)


def optional_readings(device: DeviceMemory, names: Sequence[str]) -> dict[str, float]:
    """The optional readers of ``device`` that it has and that answered, by name."""
    out = {}
    for name in names:
        read = getattr(device, name, None)
        value = read() if read else None
        if value is not None:
            out[name] = value
    return out


def nvml() -> DeviceMemory | None:
    """The NVML reader if this machine has an NVIDIA GPU and driver, else None."""
    try:
        return Nvml()
    except Exception:
        return None


def gpu_name() -> str | None:
    """The first visible GPU's name, with the count where there are several ("NVIDIA H100
    x2"): a machine with two cards is not the machine with one."""
    dev = nvml()
    if dev is None:
        return None
    count = dev.count() if isinstance(dev, Nvml) else 1
    return dev.name() + (f" x{count}" if count > 1 else "")


@dataclass
class TreeMemory:
    rss_bytes: int
    uss_bytes: int | None  # None when only RSS was read (detail=False)
    pss_bytes: int | None
    n_processes: int
    pids: set[int] = field(default_factory=set)


def _own(p: psutil.Process, detail: bool = True) -> tuple[int, int | None, int | None]:
    if not detail:
        return p.memory_info().rss, None, None
    try:
        m = p.memory_full_info()
        return m.rss, m.uss, getattr(m, "pss", m.uss)
    except (psutil.AccessDenied, psutil.ZombieProcess):
        m = p.memory_info()
        return m.rss, m.rss, m.rss


def _add(a: int | None, b: int | None) -> int | None:
    return None if a is None or b is None else a + b


def descendants(roots: list[psutil.Process]) -> list[psutil.Process]:
    """``roots`` and all their descendants that are alive (each process once)."""
    seen: dict[int, psutil.Process] = {}
    for root in roots:
        try:
            for p in [root, *root.children(recursive=True)]:
                seen.setdefault(p.pid, p)
        except psutil.NoSuchProcess:
            continue
    return list(seen.values())


def tree_memory(roots: list[psutil.Process], detail: bool = True,
                processes: list[psutil.Process] | None = None) -> TreeMemory:
    """Sum of RSS / USS / PSS over ``roots`` and all their descendants (RSS only, with USS
    and PSS None, when ``detail`` is False: see the module docstring for why).
    ``processes``: the tree already found by :func:`descendants`."""
    members = descendants(roots) if processes is None else processes
    rss = 0
    uss = pss = 0 if detail else None
    pids = set()
    for p in members:
        try:
            r, u, s = _own(p, detail)
        except psutil.NoSuchProcess:
            continue
        rss, uss, pss = rss + r, _add(uss, u), _add(pss, s)
        pids.add(p.pid)
    return TreeMemory(rss, uss, pss, len(pids), pids)


@dataclass(eq=False)
class Baseline:
    """This process's memory when an in-process engine began to load (VRAM through NVML, per
    process, where there is a GPU): the engine's memory is this process's growth since, its
    child processes added. An engine's baseline is open until the engine closes, so that a
    measurement can say when another in-process engine shares the process."""

    rss: int
    uss: int | None
    pss: int | None
    vram: int = 0
    engine: str = ""  # who took it, for the warning

    def release(self) -> None:
        """The engine closed: it no longer shares this process."""
        _OPEN.discard(self)


#: The baselines of in-process engines not closed yet (weak: a collected engine is gone too).
_OPEN: weakref.WeakSet[Baseline] = weakref.WeakSet()
_DEVICE: list[DeviceMemory | None] = []  # this process's NVML reader, found once


def _own_vram() -> int:
    if not _DEVICE:
        _DEVICE.append(nvml())
    dev = _DEVICE[0]
    try:
        return int(dev.process_bytes({os.getpid()})) if dev is not None else 0
    except Exception:
        return 0


def self_memory(detail: bool = True) -> tuple[int, int | None, int | None]:
    """(rss, uss, pss) of this process alone."""
    return _own(psutil.Process(os.getpid()), detail)


def engine_baseline(engine: str) -> Baseline:
    """Take an in-process engine's baseline as it begins to load, and hold it open (until
    :meth:`Baseline.release`, at its close)."""
    base = Baseline(*self_memory(), vram=_own_vram(), engine=engine)
    _OPEN.add(base)
    return base


def sharing(baseline: Baseline) -> list[str]:
    """The other in-process engines open in this process beside the one of ``baseline``."""
    return sorted(b.engine for b in list(_OPEN) if b is not baseline)


def new_children(before: set[int]) -> list[psutil.Process]:
    """Children of this process that were not in ``before`` (a set of pids), leaving out
    multiprocessing's resource tracker (one per Python process, shared by whatever in it
    uses multiprocessing, so it belongs to no engine) and labkit's orphan guards."""
    found = []
    for c in psutil.Process().children():
        if c.pid not in before and engine_child(c):
            found.append(c)
    return found


def child_pids() -> set[int]:
    return {c.pid for c in psutil.Process().children()}


@dataclass
class EngineMemory:
    """How to find an engine's memory; made by the engine (see ``Engine.memory_scope``)."""

    roots: list[psutil.Process] = field(default_factory=list)  # child trees that are the engine
    self_baseline: Baseline | None = None  # this process before the engine loaded (in-process engines)
    #: How long a found process tree is reused. Finding it scans all of /proc (3 ms per root
    #: here), which every 100 ms would cost more than reading the memory itself.
    tree_max_age_s: float = 1.0
    _tree: tuple[float, tuple[int, ...], list[psutil.Process]] | None = field(default=None, repr=False)

    def processes(self) -> list[psutil.Process]:
        """The engine's process tree, found again when older than ``tree_max_age_s`` or when
        the roots changed."""
        key = tuple(r.pid for r in self.roots)
        now = time.monotonic()
        if self._tree is None or self._tree[1] != key or now - self._tree[0] > self.tree_max_age_s:
            self._tree = (now, key, descendants(self.roots))
        return self._tree[2]

    def measure(self, detail: bool = True) -> TreeMemory:
        tree = tree_memory(self.roots, detail, self.processes())
        if self.self_baseline is None:
            return tree
        r, u, s = self_memory(detail)
        base = self.self_baseline
        br, bu, bs = base.rss, base.uss, base.pss

        def grown(now: int | None, base: int | None) -> int | None:
            return None if now is None or base is None else max(0, now - base)

        return TreeMemory(tree.rss_bytes + max(0, r - br), _add(tree.uss_bytes, grown(u, bu)),
                          _add(tree.pss_bytes, grown(s, bs)), tree.n_processes + 1,
                          tree.pids | {os.getpid()})


class MemorySampler:
    """Samples an engine's memory every ``interval_s`` on a background thread, by phase.

    RSS is read at every sample; USS and PSS at the start and end of every phase and
    otherwise as often as ``cpu_budget`` (the fraction of one core the page-table walks may
    take) allows; ``cpu_budget=0`` reads them only at phase edges. Rows without them hold
    NaN there.

    >>> sampler = MemorySampler(engine.memory_scope())
    >>> with sampler.running():
    ...     with sampler.phase("level 8"):
    ...         ...  # apply load
    >>> sampler.frame()  # time, phase, rss/uss/pss (+ VRAM columns on a GPU)
    """

    def __init__(self, scope: EngineMemory, interval_s: float = 0.1,
                 device: DeviceMemory | None | bool = True, cpu_budget: float = 0.01):
        if interval_s <= 0:
            raise InvalidInput(f"interval_s must be positive (seconds), got {interval_s}.")
        if not 0 <= cpu_budget <= 1:
            raise InvalidInput(f"cpu_budget is a fraction of one core in [0, 1] (0: only at phase "
                               f"edges), got {cpu_budget}.")
        self.scope = scope
        self.interval_s = interval_s
        self.cpu_budget = cpu_budget
        self._next_detail = 0.0
        self.device = nvml() if device is True else (device or None)
        self._phase = "idle"
        self._rows: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = time.perf_counter()
        self._lock = threading.Lock()
        self.shared_with = ""  # set at start(): the other in-process engines alive, if any

    def sample(self, detail: bool | None = None) -> dict[str, Any]:
        """Take one sample now; ``detail`` forces (True) or skips (False) USS and PSS, else
        the CPU budget decides."""
        began = time.perf_counter()
        if detail is None:
            detail = self.cpu_budget > 0 and began >= self._next_detail
        m = self.scope.measure(detail)
        if detail and self.cpu_budget > 0:
            # Wait long enough that this walk's cost stays within the budget.
            self._next_detail = began + (time.perf_counter() - began) / self.cpu_budget
        nan = float("nan")
        row: dict[str, Any] = {"t_s": began - self._t0, "phase": self._phase,
                               "rss_bytes": m.rss_bytes,
                               "uss_bytes": nan if m.uss_bytes is None else m.uss_bytes,
                               "pss_bytes": nan if m.pss_bytes is None else m.pss_bytes,
                               "n_processes": m.n_processes}
        if self.shared_with:
            row["shared_process"] = self.shared_with
        if self.device is not None:
            row["vram_used_bytes"] = self.device.used_bytes()
            row["vram_process_bytes"] = max(0, self.device.process_bytes(m.pids) - self._vram_baseline(m))
            row |= {f"gpu_{k}": v for k, v in optional_readings(self.device, ("energy_j", "power_w")).items()}
        with self._lock:
            self._rows.append(row)
        return row

    def _vram_baseline(self, m: TreeMemory) -> int:
        """What this process held on the GPU before an in-process engine loaded."""
        base = self.scope.self_baseline
        return base.vram if base is not None and os.getpid() in m.pids else 0

    def _others(self) -> str:
        """Other in-process engines alive while this scope is measured: its growth since its
        baseline is theirs too (llama.cpp, then vLLM, in one process: vLLM's front end is
        billed to llama.cpp)."""
        if self.scope.self_baseline not in _OPEN:  # not an open in-process engine's (a server's)
            return ""
        others = sharing(self.scope.self_baseline)
        if not others:
            return ""
        return (f"another in-process engine was alive in this process ({', '.join(others)}): the growth "
                "of this process since the engine loaded counts its memory too; measure each in-process "
                "engine in a process of its own (close the other first, or use a server engine)")

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.sample()
            except Exception:  # a process vanishing mid-sample must not end the timeline
                continue

    def _judge_sharing(self) -> None:
        self.shared_with = self._others()
        if self.shared_with:
            warnings.warn(f"labkit: {self.shared_with}.", stacklevel=3)

    def retarget(self, scope: EngineMemory) -> None:
        """Measure ``scope`` from now on (an engine that finished loading: from "this process
        and its new children" to the engine's own processes)."""
        self.scope = scope
        self._judge_sharing()

    def start(self) -> MemorySampler:
        self._judge_sharing()
        self._stop.clear()
        self.sample(detail=True)
        self._thread = threading.Thread(target=self._run, name="labkit-memory", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
        try:
            self.sample(detail=True)
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
        self.sample(detail=True)
        try:
            yield
        finally:
            self.sample(detail=True)
            self._phase = previous

    def frame(self) -> pd.DataFrame:
        with self._lock:
            return pd.DataFrame(self._rows)

    def peaks(self) -> pd.DataFrame:
        """Peak of every memory column per phase."""
        return phase_peaks(self.frame())


def phase_peaks(timeline: pd.DataFrame) -> pd.DataFrame:
    """Peak of every ``*_bytes`` column of a memory timeline, per phase, and the GPU energy
    each phase used (``gpu_energy_j``: the counter's rise across the phase) where NVML has it."""
    if timeline.empty:
        return pd.DataFrame()
    cols = [c for c in timeline.columns if c.endswith("_bytes")]
    g = timeline.groupby("phase", sort=False)
    out = g[cols].max()
    if "gpu_energy_j" in timeline.columns:
        # The counter's rise over each stretch of the phase, summed: with repeats a level's
        # phase comes back each round, and the other levels run in between are not its energy.
        # (In time order: a background sample can be appended after the next phase's edge.)
        timed = timeline.sort_values("t_s", kind="stable") if "t_s" in timeline else timeline
        stretch = (timed["phase"] != timed["phase"].shift()).cumsum()
        rise = timed.groupby(stretch)["gpu_energy_j"].agg(lambda e: e.max() - e.min())
        phase = timed.groupby(stretch)["phase"].first()
        out["gpu_energy_j"] = rise.groupby(phase, sort=False).sum(min_count=1)
        out["gpu_power_w_mean"] = g["gpu_power_w"].mean() if "gpu_power_w" in timeline else float("nan")
    return out.reset_index()
