"""What this client can drive: ``labkit.calibrate()`` against the loopback mock server.

The mock (:mod:`labkit.engines.mock`) answers as fast as a server possibly could, so every
limit found is the client's: per number of load processes, the most requests a second
(short replies) and streamed chunks a second (long replies) it sustained, with its own
dispatch delay and CPU at that point. A server that streams more than this, on the same
machine and client, is measured by the client's limit, not its own: give ``bench`` more
``workers`` (or a client machine of its own).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from ..errors import EngineError, InvalidInput
from .result import BenchResult
from .run import bench
from .workers import usable_cores
from .workloads import synthetic

#: short replies load the client per request, long ones per streamed chunk
_SHORT, _LONG = 4, 256
_COLUMNS = ["workers", "max_req_per_s", "req_at_users", "max_chunks_per_s", "chunks_at_users",
            "dispatch_delay_p50_ms", "dispatch_delay_p99_ms", "client_cpu_cores", "client_busiest_core"]


@dataclass
class Calibration:
    """Per number of load processes: the most req/s and chunks/s sustained against the mock,
    and the client's dispatch delay and CPU at the chunks/s peak (``table``)."""

    table: pd.DataFrame
    runs: dict[tuple[int, str], BenchResult] = field(default_factory=dict, repr=False)
    cores: int = 0

    def to_frame(self) -> pd.DataFrame:
        return self.table

    def scaling(self) -> pd.Series:
        """Chunks/s of each worker count against one worker's."""
        t = self.table.set_index("workers")["max_chunks_per_s"]
        return t / t.iloc[0]

    def _repr_html_(self) -> str:
        return (f"<p><b>Client calibration</b> against labkit's loopback mock server, {self.cores} "
                "usable cores: what the load generator sustains when the server costs nothing. "
                "A real server's figures near these are the client's limit.</p>"
                + self.table.to_html(index=False, float_format=lambda x: f"{x:,.1f}"))


def calibrate(workers: Sequence[int] | int | None = None, users: Sequence[int] = (16, 64, 256),
              requests_per_level: int = 512, progress: bool = True,
              mock: dict[str, Any] | None = None) -> Calibration:
    """Measure what ``workers`` load processes (default: 1 up to the usable cores, doubling)
    sustain against the mock server at each number of ``users``; ``mock``: options for it
    (``token_delay_ms``, ``ttft_ms``, ``jitter``; none: as fast as it can answer)."""
    counts = _worker_counts(workers)
    from ..engines import load

    rows, runs = [], {}
    with load("mock-server", **(mock or {})) as server:
        for n in counts:
            row: dict[str, Any] = {"workers": n}
            for kind, tokens in (("requests", _SHORT), ("chunks", _LONG)):
                res = bench(server, concurrency=list(users), requests_per_level=requests_per_level,
                            workload=synthetic(input_tokens=16, output_tokens=tokens), warmup=1,
                            progress=progress, workers=n)
                if res.ended != "completed":  # a stopped or failed run has no peak to report
                    if res.ended == "interrupted":
                        raise KeyboardInterrupt
                    raise EngineError(f"Calibration against the mock server failed: {res.ended}.")
                runs[(n, kind)] = res
                row.update(_peak(res.summary, kind))
            rows.append(row)
    return Calibration(pd.DataFrame(rows, columns=_COLUMNS), runs, usable_cores())


def _peak(summary: pd.DataFrame, kind: str) -> dict[str, Any]:
    if kind == "requests":
        best = summary.loc[summary["req_per_s"].idxmax()]
        return {"max_req_per_s": best["req_per_s"], "req_at_users": int(best["level"])}
    best = summary.loc[summary["output_tok_per_s"].idxmax()]
    return {"max_chunks_per_s": best["output_tok_per_s"], "chunks_at_users": int(best["level"]),
            **{k: best.get(k) for k in _COLUMNS[5:]}}


def _worker_counts(workers: Sequence[int] | int | None) -> list[int]:
    if workers is None:
        cores, n, out = usable_cores(), 1, []
        while n <= cores:
            out.append(n)
            n *= 2
        return out
    counts = [workers] if isinstance(workers, int) else list(workers)
    if not counts or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in counts):
        raise InvalidInput(f"workers must be whole numbers of load processes >= 1, got {workers!r}.")
    return counts
