"""SLO: the latency a deployment promises, as bounds on a level's percentiles.

``SLO(ttft_p99_ms=2000, tpot_p99_ms=100)`` holds at a load level when that level's p99 TTFT
is at most 2 s and its p99 time per output token at most 100 ms. The names are the columns
of :attr:`labkit.BenchResult.summary`, so a bound is checked against exactly what the
summary shows.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from ..errors import InvalidInput
from .metrics import PERCENTILES

METRICS = ("ttft", "tpot", "itl", "e2e")
NAMES = tuple(f"{m}_p{p}_ms" for m in METRICS for p in PERCENTILES)
_LABELS = {"ttft": "TTFT", "tpot": "TPOT", "itl": "ITL", "e2e": "E2E"}


def _parts(name: str) -> tuple[str, int]:
    """``"ttft_p99_ms"`` -> ``("ttft", 99)``."""
    metric, pct, _ = name.split("_")
    return metric, int(pct[1:])


class SLO:
    """Upper bounds, in milliseconds, on latency percentiles of a load level.

    Any of ``{ttft,tpot,itl,e2e}_p{50,90,99}_ms``; at least one. A level meets the SLO
    when every bounded percentile is within its bound (a level with no completed request
    meets nothing).

    >>> slo = SLO(ttft_p99_ms=2000, tpot_p99_ms=100)
    >>> slo.met(res.summary.iloc[0])
    """

    def __init__(self, **bounds_ms: float):
        unknown = [k for k in bounds_ms if k not in NAMES]
        if unknown:
            raise InvalidInput(f"Unknown SLO bound {', '.join(unknown)}: valid ones are "
                               f"{', '.join(NAMES)} (milliseconds).")
        if not bounds_ms:
            raise InvalidInput(f"An SLO needs at least one bound, e.g. SLO(ttft_p99_ms=2000); "
                               f"valid ones are {', '.join(NAMES)}.")
        for name, value in bounds_ms.items():
            if isinstance(value, bool) or not isinstance(value, int | float | np.number) \
                    or not math.isfinite(value) or value <= 0:
                raise InvalidInput(f"SLO bound {name} must be a positive number of milliseconds, "
                                   f"got {value!r}.")
        self.bounds: dict[str, float] = {k: float(v) for k, v in bounds_ms.items()}

    @classmethod
    def of(cls, value: SLO | dict[str, float]) -> SLO:
        """An SLO from an SLO or a dict of bounds (what ``capacity`` and ``sweep`` accept)."""
        if isinstance(value, dict):
            return cls(**value)
        if not isinstance(value, SLO):
            raise InvalidInput(f"slo must be a labkit.SLO or a dict of bounds, got {type(value).__name__}.")
        return value

    @classmethod
    def parse(cls, text: str) -> SLO:
        """From ``"ttft_p99_ms=2000,tpot_p99_ms=100"`` (the command line's form)."""
        bounds: dict[str, float] = {}
        for part in (p.strip() for p in text.split(",")):
            name, eq, value = part.partition("=")
            try:
                if not eq:
                    raise ValueError
                bounds[name.strip()] = float(value)
            except ValueError:
                raise InvalidInput(f"An SLO is written NAME=MILLISECONDS[,NAME=MILLISECONDS], e.g. "
                                   f"ttft_p99_ms=2000,tpot_p99_ms=100; got {part!r}.") from None
        return cls(**bounds)

    @staticmethod
    def scheduled(name: str) -> str:
        """The summary column that bound ``name`` reads on an open-loop level (from each
        request's scheduled time; see :meth:`judge`)."""
        metric, pct = _parts(name)
        return f"{metric}_sched_p{pct}_ms"

    def judge(self, row: pd.Series | dict[str, Any], from_schedule: bool = False) -> dict[str, dict[str, Any]]:
        """Per bound: the level's value, the bound and whether it holds. ``from_schedule``
        (open-loop levels): TTFT and E2E count from when each request was due to leave, so a
        client that fell behind cannot make the server look faster."""
        out = {}
        for name, bound in self.bounds.items():
            sched = self.scheduled(name)
            value = row.get(sched) if from_schedule and sched in row else row.get(name)
            value = None if value is None or pd.isna(value) else float(value)
            out[name] = {"value": value, "bound": bound, "ok": value is not None and value <= bound}
        return out

    def met(self, row: pd.Series | dict[str, Any], from_schedule: bool = False) -> bool:
        """Whether one summary row (one level) meets every bound."""
        return all(j["ok"] for j in self.judge(row, from_schedule).values())

    def good_requests(self, requests: pd.DataFrame, from_schedule: bool = False) -> np.ndarray:
        """Which completed requests met the bounds on their own (for goodput): TTFT, TPOT and
        E2E bounds apply to each request's value (TTFT and E2E from its scheduled time with
        ``from_schedule``); an ITL bound to the same percentile of that request's gaps."""
        good = np.ones(len(requests), dtype=bool)
        late = np.zeros(len(requests))
        if from_schedule and "scheduled_s" in requests:
            late = (requests["start_s"] - requests["scheduled_s"]).clip(lower=0).fillna(0).to_numpy(float)
        for name, bound in self.bounds.items():
            metric, pct = _parts(name)
            if metric == "itl":
                values = [np.percentile(g, pct) if len(g) else np.nan for g in requests["itl_s"]]
            else:
                values = requests[f"{metric}_s"].astype(float).to_numpy()
                if metric in ("ttft", "e2e"):
                    values = values + late
            values = np.asarray(values, dtype=float) * 1000
            # A one-token answer has no TPOT or ITL: nothing to hold against the bound.
            good &= np.where(np.isnan(values), metric in ("tpot", "itl"), values <= bound)
        return good

    def describe(self) -> str:
        """``"TTFT p99 <= 2000 ms, TPOT p99 <= 100 ms"``."""
        parts = []
        for name, bound in self.bounds.items():
            metric, pct = _parts(name)
            parts.append(f"{_LABELS[metric]} p{pct} <= {bound:g} ms")
        return ", ".join(parts)

    def to_dict(self) -> dict[str, float]:
        return dict(self.bounds)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SLO) and other.bounds == self.bounds

    def __hash__(self) -> int:
        return hash(tuple(sorted(self.bounds.items())))

    def __repr__(self) -> str:
        return f"SLO({', '.join(f'{k}={v:g}' for k, v in self.bounds.items())})"
