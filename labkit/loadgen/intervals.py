"""Repeats and uncertainty: a figure measured in several rounds, its interval, and whether
two such figures differ.

A round is one pass over the sweep's levels (``bench(..., repeats=3)`` runs the levels three
times, round after round, so drift over time spreads over every level alike). The interval
of a figure is over rounds, not requests: a 95% Student-t interval of the round values
around their mean. Requests within a round share the machine's state of the moment (on
these 2-core machines whole rounds differ by up to ±8%), so resampling requests would give
intervals far narrower than the next run's difference. With one round there is no interval,
and a comparison says so instead of guessing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: The figures of a level that get an interval when it ran in several rounds.
FIGURES = ("req_per_s", "output_tok_per_s", "total_tok_per_s", "user_tok_per_s",
           "ttft_p50_ms", "ttft_p90_ms", "ttft_p99_ms", "tpot_p50_ms", "tpot_p99_ms",
           "itl_p50_ms", "itl_p99_ms", "e2e_p50_ms", "e2e_p99_ms", "goodput_req_per_s")

# Two-sided 95% quantiles of Student's t by degrees of freedom (no scipy in the stack).
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
        9: 2.262, 10: 2.228, 12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042}


def t95(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom (conservative between
    tabulated values: the next smaller df's)."""
    if df >= 31:
        return 1.96 + 2.4 / df  # within 0.3% of the exact value from 31 on
    return _T95[max(k for k in _T95 if k <= df)]


@dataclass(frozen=True)
class Estimate:
    """A figure: its value (the mean of its rounds) and a 95% interval, or no interval
    (``lo``/``hi`` NaN) when it was measured once."""

    value: float
    lo: float = math.nan
    hi: float = math.nan
    rounds: int = 1

    @property
    def has_interval(self) -> bool:
        return not (math.isnan(self.lo) or math.isnan(self.hi))

    def __str__(self) -> str:
        if not self.has_interval:
            return f"{self.value:.1f}"
        return f"{self.value:.1f} [{self.lo:.1f}, {self.hi:.1f}]"


def over_rounds(values: Sequence[float]) -> Estimate:
    """The mean of one figure's round values and its 95% Student-t interval."""
    arr = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    if arr.size == 0:
        return Estimate(math.nan, rounds=0)
    mean = float(arr.mean())
    if arr.size < 2:
        return Estimate(mean, rounds=int(arr.size))
    half = t95(arr.size - 1) * float(arr.std(ddof=1)) / math.sqrt(arr.size)
    return Estimate(mean, mean - half, mean + half, int(arr.size))


def compare(a: Estimate, b: Estimate) -> int | None:
    """+1 when ``a`` is clearly higher than ``b``, -1 clearly lower, 0 when their intervals
    overlap ("no clear difference"). None when either was measured once (no interval: the
    difference may be noise) or not at all."""
    if math.isnan(a.value) or math.isnan(b.value):
        return None
    if not (a.has_interval and b.has_interval):
        return None
    if a.lo > b.hi:
        return 1
    if a.hi < b.lo:
        return -1
    return 0


def difference(a: Estimate, b: Estimate, a_name: str, b_name: str) -> str:
    """"A higher", "B higher", "no clear difference (intervals overlap)" or, with one round,
    the point comparison marked as such."""
    verdict = compare(a, b)
    if verdict == 0:
        return "no clear difference (95% intervals overlap)"
    if verdict is not None:
        return f"{a_name if verdict > 0 else b_name} higher (95% intervals apart)"
    if math.isnan(a.value) or math.isnan(b.value):
        return "not measured"
    return (f"{a_name if a.value >= b.value else b_name} higher in one round (no interval: "
            "repeats=3 says whether it is noise)")
