"""The server's view, on the client's clock: what the engine was doing while labkit measured it.

One thread reads three sources every ``interval_s`` and writes tidy rows (``t_s``, ``phase``,
``source``, ``metric``, ``value``) on the same clock as the request records:

- ``server``: the engine's own metrics under shared names (running, waiting, KV used, and
  rates of prompt/generation tokens, preemptions and prefix-cache hits; see
  :data:`labkit.engines.prometheus.SERVER_METRICS`), from one scrape of /metrics;
- ``host``: CPU use of the engine's processes by role (vLLM's API server against its engine
  core; llama-server; this process for an in-process engine), in cores, from psutil's CPU
  times, and of the whole machine;
- ``gpu``: NVML utilisation, power, energy, memory and SM clock, where there is a GPU.

A source that has nothing to say gives no rows (an absent column, never a zero); why is in
:attr:`Telemetry.absent`. Counters are kept as read and turned into per-second rates by
:func:`rates`.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import pandas as pd
import psutil

from ..engines.capabilities import KV_KEYS, ReportsKv
from ..engines.prometheus import COUNTERS
from ..memory import DeviceMemory, EngineMemory, nvml, optional_readings

#: per-role CPU seconds and the GPU's energy are cumulative too: rates like the server's counters
_CUMULATIVE = COUNTERS | {"cpu_seconds", "machine_cpu_seconds", "energy_j", "cpu_energy_j"}
RAPL = Path("/sys/class/powercap")
#: empty scrapes in a row, with none before them giving metrics, after which a server is taken to have none
SERVER_TRIES = 3


class Telemetry:
    """Samples every source every ``interval_s`` from :meth:`start` to :meth:`stop`; ``phase``
    is set by the session around each level."""

    def __init__(self, engine: Any, origin: float, interval_s: float = 2.0,
                 device: DeviceMemory | None | bool = True):
        self.engine, self.origin, self.interval_s = engine, origin, interval_s
        self.device = nvml() if device is True else (device or None)
        self.phase = "idle"
        self.rows: list[dict[str, Any]] = []
        self.absent: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="labkit-telemetry", daemon=True)
        self._lock = threading.Lock()
        self._reading = threading.RLock()
        self._procs: dict[int, tuple[psutil.Process, str | None]] = {}  # pid: (process, role)
        self._server_misses: int | None = 0  # empty scrapes in a row; None once one gave metrics
        if not isinstance(engine, ReportsKv):
            self.absent["server"] = f"the {engine.name} engine reports no metrics of its own"
        if self.device is None:
            self.absent["gpu"] = "no NVIDIA GPU (NVML found none)"
        self._rapl = _rapl_files()
        if not self._rapl:
            self.absent["cpu_energy"] = f"RAPL is not readable here ({RAPL}/intel-rapl:*/energy_uj)"

    def start(self) -> Telemetry:
        self.sample()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        self.sample()
        if self._server_misses is not None and "server" not in self.absent:
            self._no_server_metrics()  # fewer readings than SERVER_TRIES, none with metrics

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def begin(self, phase: str) -> None:
        """A level starts: a reading at its edge, the first labelled ``phase``. The time
        before it (building prompts, a health check) is not the level's: rates over the
        interval that ends here are the idle time's (see :func:`rates`)."""
        with self._reading:
            self.phase = phase
            self.sample(edge="start")

    def end(self) -> None:
        """The level ends: a reading at its edge, its last; later readings are idle."""
        with self._reading:
            self.sample(edge="end")
            self.phase = "idle"

    def sample(self, edge: str | None = None) -> None:
        """One reading of every source (a failing source is skipped, never raised)."""
        with self._reading:  # one reading at a time, so an edge is never interleaved with another
            t, phase = time.perf_counter() - self.origin, self.phase
            rows: list[tuple[str, str, float]] = []
            for source in (self._server, self._host, self._gpu):
                try:
                    rows += source()
                except Exception:  # a reading is optional: an NVML or /proc error loses this one only
                    continue
            with self._lock:
                self.rows += [{"t_s": t, "phase": phase, "source": s, "metric": m, "value": float(v),
                               "edge": edge} for s, m, v in rows if v is not None]

    def _server(self) -> list[tuple[str, str, float]]:
        if "server" in self.absent:
            return []
        try:
            snap = self.engine.server_snapshot()
        except Exception:  # counted as a reading with nothing in it
            snap = {}
        if snap:
            self._server_misses = None  # it has metrics: a later failed scrape loses one reading only
        elif self._server_misses is not None:
            # One failed scrape (a server busy starting up) is not "no metrics": only several
            # in a row, before any reading came back, stop the scraping.
            self._server_misses += 1
            if self._server_misses >= SERVER_TRIES:
                self._no_server_metrics()
        return [("server", k, v) for k, v in snap.items()]

    def _no_server_metrics(self) -> None:
        self.absent["server"] = (f"the {self.engine.name} engine gave no metrics (a server "
                                 "without /metrics, or one labkit does not know)")

    def _host(self) -> list[tuple[str, str, float]]:
        out: list[tuple[str, str, float]] = []
        busy = psutil.cpu_times()
        out.append(("host", "machine_cpu_seconds", busy.user + busy.system + getattr(busy, "nice", 0.0)))
        if self._rapl:  # package energy counters, microjoules (wraparound shows as a negative rate, dropped)
            try:
                out.append(("host", "cpu_energy_j", sum(int(f.read_text()) for f in self._rapl) / 1e6))
            except (OSError, ValueError):
                pass
        for role, (secs, rss) in self._by_role().items():
            out += [(f"host:{role}", "cpu_seconds", secs), (f"host:{role}", "rss_bytes", rss)]
        return out

    def _by_role(self) -> dict[str, tuple[float, float]]:
        """CPU seconds and RSS of the engine's processes, summed by role (cheap: /proc/PID/stat
        and statm, no page-table walk)."""
        scope = self.engine.memory_scope()  # None: a remote engine, nothing of it runs here
        procs: list[psutil.Process] = list(scope.processes()) if isinstance(scope, EngineMemory) else []
        in_process = isinstance(scope, EngineMemory) and scope.self_baseline is not None
        if in_process:
            procs.append(psutil.Process())  # the engine runs here, beside the client
        procs = list({p.pid: p for p in procs}.values())  # this process may be in the tree too
        by_role: dict[str, tuple[float, float]] = {}
        for p in procs:
            try:
                if p.pid not in self._procs:  # a pid's role does not change: read it once
                    self._procs[p.pid] = (p, _role(p))
                p, role = self._procs[p.pid]
                if role is None:
                    continue
                t, rss = p.cpu_times(), p.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            cpu, mem = by_role.get(role, (0.0, 0.0))
            by_role[role] = (cpu + t.user + t.system, mem + rss)
        if not in_process:
            me = psutil.Process()  # the load generator itself, for comparison
            t = me.cpu_times()
            by_role["labkit_client"] = (t.user + t.system, me.memory_info().rss)
        return by_role

    def _gpu(self) -> list[tuple[str, str, float]]:
        if self.device is None:
            return []
        read = optional_readings(self.device, ("utilization_pct", "power_w", "energy_j", "sm_clock_mhz"))
        return [("gpu", "memory_used_bytes", self.device.used_bytes()),
                *(("gpu", "util_pct" if k == "utilization_pct" else k, v) for k, v in read.items())]

    def frame(self) -> pd.DataFrame:
        """The tidy timeline with counters turned into rates (see :func:`rates`)."""
        with self._lock:
            raw = pd.DataFrame(self.rows, columns=["t_s", "phase", "source", "metric", "value", "edge"])
        return rates(raw)


def _rapl_files() -> list[Path]:
    """The CPU packages' energy counters, where this user may read them: the top-level zones
    named ``package-N`` only. powercap also lists each package's sub-zones (core, uncore,
    dram: ``intel-rapl:0:0``) and, on laptops, ``psys`` (the whole platform) beside them, all
    of which the package total already holds, or holds the package."""
    import re

    zones = [z for z in (sorted(RAPL.iterdir()) if RAPL.is_dir() else [])
             if re.fullmatch(r"intel-rapl:\d+", z.name)]
    files = []
    for z in zones:
        try:
            if (z / "name").read_text().strip().startswith("package"):
                files.append(z / "energy_uj")
        except OSError:
            continue
    readable = []
    for f in files:
        try:
            int(f.read_text())
            readable.append(f)
        except (OSError, ValueError):
            continue
    return readable


def _role(p: psutil.Process) -> str | None:
    """What a process of the engine is, from what it runs: ``in_process`` (an in-process
    engine and the client, one process), ``engine_core`` (vLLM's scheduler and model),
    ``api_server`` (vLLM's HTTP front end), ``server`` (llama-server), ``worker`` (any other
    child); None for labkit's own reaper, which only watches."""
    if p.pid == os.getpid():
        return "in_process"
    name, cmd = p.name(), " ".join(p.cmdline()[:4])
    if "labkit._reaper" in cmd:
        return None
    if "EngineCore" in name or "EngineCore" in cmd:
        return "engine_core"
    if name.startswith("llama-server") or "llama-server" in cmd.split(" -")[0]:
        return "server"
    if "vllm.entrypoints" in cmd or "vllm serve" in cmd:
        return "api_server"
    return "worker"


def kv_readings(telemetry: pd.DataFrame) -> pd.DataFrame:
    """The KV account in the telemetry (its ``server`` rows of :data:`KV_KEYS`), one row per
    reading, as the KV poller writes it: ``phase``, ``t_s`` and a column per key."""
    t = telemetry[(telemetry["source"] == "server") & telemetry["metric"].isin(KV_KEYS)]
    if t.empty:
        return pd.DataFrame()
    wide = t.pivot_table(index=["t_s", "phase"], columns="metric", values="value", aggfunc="last")
    return wide.reset_index()[["phase", "t_s", *[k for k in KV_KEYS if k in wide.columns]]]


def rates(raw: pd.DataFrame) -> pd.DataFrame:
    """Gauges as read; each cumulative metric (server counters, CPU seconds, GPU energy) as
    its per-second rate between consecutive readings (``<metric>_per_s``; CPU seconds become
    ``cpu_util``, in cores busy), at the later reading's time, with the interval it covers in
    ``dt_s``. A counter that went backwards (a restart) gives no rate.

    A rate belongs to a level only when both its readings are inside it: the interval that
    crosses a level's edge (``edge`` "start" or "end" in ``raw``, or a change of phase) is
    the idle time between levels, and is labelled ``idle``."""
    if raw.empty:
        return raw.drop(columns="edge", errors="ignore")
    if "edge" not in raw:
        raw = raw.assign(edge=None)
    cumulative = raw["metric"].isin(_CUMULATIVE)
    out = [raw[~cumulative]]
    for (_source, metric), g in raw[cumulative].groupby(["source", "metric"], sort=False):
        g = g.sort_values("t_s", kind="stable")
        dt = g["t_s"].diff()
        inside = (g["phase"] == g["phase"].shift()) & (g["edge"] != "start") & (g["edge"].shift() != "end")
        name = {"cpu_seconds": "cpu_util", "machine_cpu_seconds": "machine_cpu_util",
                "energy_j": "power_from_energy_w", "cpu_energy_j": "cpu_power_w"}.get(metric, f"{metric}_per_s")
        out.append(g.assign(metric=name, value=g["value"].diff() / dt, dt_s=dt, phase=g["phase"].where(inside, "idle"))
                   .dropna(subset=["value"]).query("value >= 0"))
        if metric == "energy_j":
            out.append(g)  # the counter itself: energy per level is its difference
    frame = pd.concat(out, ignore_index=True).drop(columns="edge")
    # At a level's first reading its gauges are the level's and the rates ending there idle:
    # the idle ones first, so the timeline reads idle, then the level (one stretch each).
    frame["_in_level"] = frame["phase"] != "idle"
    frame = frame.sort_values(["t_s", "_in_level", "source", "metric"], ignore_index=True)
    return frame.drop(columns="_in_level")


def _time_mean(g: pd.DataFrame) -> float:
    """The mean of rates over time: each weighted by the interval it covers (a few-ms edge
    interval counts for its few ms); a plain mean for a timeline saved without ``dt_s``."""
    if "dt_s" not in g or g["dt_s"].isna().any() or not g["dt_s"].sum() > 0:
        return float(g["value"].mean())
    return float((g["value"] * g["dt_s"]).sum() / g["dt_s"].sum())


def per_level(telemetry: pd.DataFrame) -> pd.DataFrame:
    """Per phase: mean running and waiting, peak KV use, CPU use per role and preemptions
    (time-weighted over the intervals inside the phase)."""
    if telemetry.empty:
        return pd.DataFrame()
    t = telemetry
    out: dict[str, pd.Series] = {}
    server = t[t["source"] == "server"]
    for metric, how, col in (("running", "mean", "running_mean"), ("waiting", "mean", "waiting_mean"),
                             ("waiting", "max", "waiting_max"), ("kv_used_fraction", "max", "kv_used_frac_max"),
                             ("preemptions_per_s", _time_mean, "preemptions_per_s")):
        g = server[server["metric"] == metric]
        if not g.empty:
            out[col] = g.groupby("phase")["value"].agg(how) if isinstance(how, str) else \
                g.groupby("phase")[[c for c in ("value", "dt_s") if c in g]].apply(how)
    cpu = t[t["metric"].isin(["cpu_util", "machine_cpu_util"])]
    for source, g in cpu.groupby("source"):
        role = "machine" if source == "host" else source.split(":", 1)[1]
        out[f"cpu_util_{role}"] = g.groupby("phase")[[c for c in ("value", "dt_s") if c in g]].apply(_time_mean)
    return pd.DataFrame(out).reset_index(names="phase") if out else pd.DataFrame()
