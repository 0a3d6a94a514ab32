"""Is the client the bottleneck? labkit watches its own load during every level.

A Python load generator runs its requests on one event loop, so one process can use one
core; when its loop is saturated, requests leave late and streamed chunks wait to be read,
and the latencies it reports are its own, not the server's (vLLM issue 39963 shows its
own benchmark doing this at long context, silently). Two readings decide it, per level:

- the **dispatch delay** (``start_s - ready_s`` of each request, in the summary as
  ``dispatch_delay_p50_ms``/``_p99_ms``): how long a request that could leave waited for the
  client to send it;
- the **client CPU** of each load process (psutil CPU times at the level's edges): one at
  :data:`BUSY_CORE` of a core has no room left.

The summary then says ``client_bound`` and why (``client_note``). :func:`labkit.calibrate`
measures where those limits lie on a machine, against the loopback mock server.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import pandas as pd
import psutil

#: a load process at this share of one core or more has little room left: its event loop queues
#: work (and on a small machine the server takes the rest of the core)
BUSY_CORE = 0.75
#: a dispatch delay p99 above this many milliseconds ...
LATE_MS = 10.0
#: ... and above this share of the level's TTFT p50 distorts what the level reports
LATE_SHARE = 0.1


class ClientMeter:
    """CPU seconds of the load processes (this one, and any workers), read at a level's edges."""

    def __init__(self, processes: Callable[[], Sequence[psutil.Process]] | None = None, enabled: bool = True):
        self.processes = processes or (lambda: [psutil.Process()])
        self.enabled = enabled
        self._start: tuple[float, dict[int, float]] | None = None
        self.rows: list[dict[str, Any]] = []

    def _read(self) -> dict[int, float]:
        out = {}
        for p in self.processes():
            try:
                t = p.cpu_times()
                out[p.pid] = t.user + t.system
            except psutil.Error:  # a worker that ended: its share is lost, not the level
                continue
        return out

    def begin(self) -> None:
        if self.enabled:
            self._start = (time.perf_counter(), self._read())

    def end(self, phase: str) -> None:
        if self._start is None:
            return
        t0, before = self._start
        wall, after = time.perf_counter() - t0, self._read()
        self._start = None
        used = [after[pid] - before[pid] for pid in after if pid in before]
        if wall <= 0 or not used:
            return
        self.rows.append({"phase": phase, "client_processes": len(used),
                          "client_cpu_cores": sum(used) / wall, "client_busiest_core": max(used) / wall})

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows)


def judge(row: dict[str, Any] | pd.Series) -> str:
    """Why one level's figures are the client's rather than the server's ("" if they are not)."""
    why = []
    busiest = row.get("client_busiest_core", math.nan)
    if not pd.isna(busiest) and busiest >= BUSY_CORE:
        n = int(row.get("client_processes", 1) or 1)
        why.append(f"a load process used {busiest:.0%} of a core" + (f" (of {n} processes)" if n > 1 else ""))
    late, ttft = row.get("dispatch_delay_p99_ms", math.nan), row.get("ttft_p50_ms", math.nan)
    if not pd.isna(late) and late > max(LATE_MS, 0.0 if pd.isna(ttft) else LATE_SHARE * ttft):
        why.append(f"requests left up to {late:.1f} ms late (dispatch delay p99; TTFT p50 {ttft:.1f} ms)")
    if not why:
        return ""
    return ("client-bound: " + "; ".join(why) + ". These figures are partly labkit's own limit: "
            "use bench(workers=N) or a bigger client machine (labkit.calibrate() says what one "
            "process sustains).")


def add_judgement(summary: pd.DataFrame, client: pd.DataFrame) -> pd.DataFrame:
    """The summary with each level's client CPU, and ``client_bound``/``client_note``."""
    if summary.empty:
        return summary
    if not client.empty:
        if "phase" not in summary.columns:
            from .result import phase_name

            summary = summary.assign(phase=[phase_name(m, lv) for m, lv in
                                            zip(summary["mode"], summary["level"], strict=True)])
        # a level run in rounds: its busiest round speaks for it
        summary = summary.merge(client.groupby("phase", sort=False).max(numeric_only=True).reset_index(),
                                on="phase", how="left")
    notes = [judge(r) for _, r in summary.iterrows()]
    return summary.assign(client_bound=[bool(n) for n in notes], client_note=notes)
