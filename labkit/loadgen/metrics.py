"""Latency and throughput metrics, defined as in vLLM's serving benchmark.

For one request, with token arrival times measured from the moment it was sent:

- **TTFT** (time to first token): arrival time of the first output token.
- **E2E** (end-to-end latency): time until the last byte of the response.
- **ITL** (inter-token latency): the gaps between consecutive token arrivals; a chunk that
  carries several tokens counts once (its gap is the ITL of that chunk).
- **TPOT** (time per output token): ``(E2E - TTFT) / (output_tokens - 1)``; undefined for
  one-token outputs.

For one load level, over the requests that succeeded (a request that raised nothing but
got no token failed, as in ``vllm bench serve``: see ``drivers.finish_record``):

- **duration**: from the first request sent to the last response finished;
- **req/s** = requests / duration; **output tok/s** = output tokens / duration;
- percentiles (p50, p90, p99) of TTFT, TPOT, ITL (over all gaps of all requests), E2E;
- **prefix hit rate**: prompt tokens the engine said it served from its prefix cache, over
  the prompt tokens sent (requests whose engine reported it: both servers do in their usage,
  vLLM in process per request);
- **user tok/s**: ``1000 / TPOT p50``, the speed at which one user sees tokens stream;
- **goodput** (optional SLO in ms for TTFT/TPOT/E2E): requests meeting every SLO / duration.

Open-loop (rate) levels also report how well the client kept to its schedule, as
coordinated omission would otherwise hide it (a client that falls behind sends late, and
the server's queue looks shorter than the load asked for):

- **dispatch delay**: actual send time minus scheduled send time, p50/p99;
- **sent rate** against the **scheduled rate** of the same arrival draws; ``rate_short`` when
  the client sent at under 95% of it (the level did not apply the load it names);
- TTFT and E2E **from the scheduled time** (``ttft_sched_*``, ``e2e_sched_*``): the latency a
  user arriving on schedule saw.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from .intervals import FIGURES, over_rounds

PERCENTILES = (50, 90, 99)
#: finish reasons of requests stopped before their end (a halt, an engine shutting down):
#: unmeasured, never errors
UNMEASURED_FINISH = ("cancelled", "abort")


def request_metrics(token_times_s: list[float], e2e_s: float, n_tokens: int | None = None) -> dict[str, Any]:
    """TTFT, TPOT and ITL of one request from its token arrival times. ``n_tokens``: how many
    tokens the engine said it generated, where it said (a chunk may carry several: TPOT is per
    token, as ``vllm bench serve`` counts it; ITL stays the gaps between arrivals)."""
    times = list(token_times_s)
    ttft = times[0] if times else None
    itl = [b - a for a, b in zip(times, times[1:], strict=False) if b > a]
    n = n_tokens if n_tokens is not None else len(times)
    tpot = (e2e_s - ttft) / (n - 1) if ttft is not None and n > 1 else None
    return {"ttft_s": ttft, "tpot_s": tpot, "itl_s": itl, "e2e_s": e2e_s}


def _pct(values: list[float] | np.ndarray, prefix: str) -> dict[str, float]:
    arr = np.asarray([v for v in values if v is not None and not pd.isna(v)], dtype=float)
    if arr.size == 0:
        return {f"{prefix}_p{p}_ms": float("nan") for p in PERCENTILES} | {f"{prefix}_mean_ms": float("nan")}
    out = {f"{prefix}_p{p}_ms": float(np.percentile(arr, p) * 1000) for p in PERCENTILES}
    out[f"{prefix}_mean_ms"] = float(arr.mean() * 1000)
    return out


def _schedule(sent: pd.DataFrame, ok: pd.DataFrame) -> dict[str, Any]:
    """How an open-loop level kept to its schedule (see the module's docstring)."""
    timed = sent.dropna(subset=["scheduled_s", "start_s"]).sort_values("scheduled_s")
    out: dict[str, Any] = {}
    if len(timed) > 1:
        sched = timed["scheduled_s"].iloc[-1] - timed["scheduled_s"].iloc[0]
        sent_span = timed["start_s"].max() - timed["start_s"].min()
        out["scheduled_rate"] = (len(timed) - 1) / sched if sched > 0 else float("nan")
        out["sent_rate"] = (len(timed) - 1) / sent_span if sent_span > 0 else float("nan")
        out["rate_short"] = bool(out["sent_rate"] < 0.95 * out["scheduled_rate"])
    late = (ok["start_s"] - ok["scheduled_s"]).clip(lower=0.0)
    out |= _pct((ok["ttft_s"] + late).tolist(), "ttft_sched")
    out |= _pct((ok["e2e_s"] + late).tolist(), "e2e_sched")
    return out


def _dispatch(sent: pd.DataFrame) -> dict[str, float]:
    """The client's own delay between a request being ready to leave and leaving (runs saved
    before ``ready_s`` existed: open-loop levels from their schedule)."""
    ready = sent["ready_s"] if "ready_s" in sent and sent["ready_s"].notna().any() else sent.get("scheduled_s")
    if ready is None or ready.isna().all():
        return {}
    delay = (sent["start_s"] - ready).dropna().clip(lower=0.0)
    return {f"dispatch_delay_p{p}_ms": float(np.percentile(delay, p) * 1000) for p in (50, 99)}


def summarize(requests: pd.DataFrame, slo_ms: dict[str, float] | None = None) -> pd.DataFrame:
    """One row per level from the per-request frame (see ``BenchResult.requests``). A level
    run in several rounds gets the mean of its rounds' figures, each with a 95% interval
    over rounds (``<figure>_lo``/``_hi``, see :mod:`labkit.loadgen.intervals`), and its
    counts summed."""
    if requests.empty:
        return pd.DataFrame()
    if "round" not in requests:
        requests = requests.assign(round=0)
    rows = []
    for (mode, level), grp in requests.groupby(["mode", "level"], sort=False):
        rounds = [_level_row(mode, level, g, slo_ms) for _, g in grp.groupby("round", sort=True)]
        rows.append(rounds[0] if len(rounds) == 1 else _pool_rounds(rounds))
    return pd.DataFrame(rows)


_COUNTS = ("requests", "completed", "errors", "unmeasured", "input_tokens", "output_tokens", "duration_s",
           "cached_tokens")


def _pool_rounds(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One level's rounds as one row: counts summed, figures averaged with their interval
    over the rounds that sent requests (``rounds_used``). A round whose requests all failed
    counts, with its zero throughput; one the sweep stopped before sending measured nothing."""
    frame = pd.DataFrame(rounds)
    used = frame[frame["requests"] > 0]
    row: dict[str, Any] = {"mode": rounds[0]["mode"], "level": rounds[0]["level"], "rounds": len(rounds),
                           "rounds_used": len(used)}
    for col in frame.columns.drop(["mode", "level"]):
        values = frame[col] if col in _COUNTS else used[col]
        if col in _COUNTS:
            row[col] = values.sum()
        elif values.dtype == bool or col == "rate_short":
            row[col] = bool(values.fillna(False).astype(bool).any())  # short in any round
        else:
            row[col] = float(pd.to_numeric(values, errors="coerce").mean())
    for fig in FIGURES:
        if fig in used:
            est = over_rounds(pd.to_numeric(used[fig], errors="coerce").tolist())
            row[f"{fig}_lo"], row[f"{fig}_hi"] = est.lo, est.hi
    return row


def _prefix_hits(ok: pd.DataFrame) -> dict[str, Any]:
    """Prompt tokens served from the prefix cache, and their share of the prompts, over the
    requests whose engine reported it; nothing when none did."""
    if "cached_tokens" not in ok or ok["cached_tokens"].isna().all():
        return {}
    known = ok[ok["cached_tokens"].notna()]
    cached = known["cached_tokens"].sum()
    return {"cached_tokens": int(cached),
            "prefix_hit_rate": float(cached / max(1, known["input_tokens"].fillna(0).sum()))}


def by_turn(requests: pd.DataFrame) -> pd.DataFrame:
    """Multi-turn sessions: one row per level and turn of the requests that succeeded (see
    ``BenchResult.turns``); empty for workloads without sessions."""
    if requests.empty or "turn" not in requests or requests["turn"].isna().all():
        return pd.DataFrame()
    ok = requests[requests["error"].isna() & requests["ttft_s"].notna()]
    rows = []
    for (mode, level, turn), g in ok.groupby(["mode", "level", "turn"], sort=True):
        hits = _prefix_hits(g)
        rows.append({"mode": mode, "level": level, "turn": int(turn), "requests": len(g),
                     "input_tokens_mean": float(g["input_tokens"].astype(float).mean()),
                     "cached_tokens_mean": hits["cached_tokens"] / g["cached_tokens"].notna().sum() if hits else None,
                     "prefix_hit_rate": hits.get("prefix_hit_rate"),
                     "ttft_p50_ms": float(g["ttft_s"].median() * 1000),
                     "ttft_p90_ms": float(g["ttft_s"].quantile(0.9) * 1000),
                     "tpot_p50_ms": float(g["tpot_s"].median() * 1000) if g["tpot_s"].notna().any() else None})
    return pd.DataFrame(rows)


def _level_row(mode: str, level: float, grp: pd.DataFrame, slo_ms: dict[str, float] | None) -> dict[str, Any]:
    """The figures of one level (one round of it) from its requests."""
    # Not sent (the sweep stopped first), cancelled mid-way, or aborted by the engine (vLLM's,
    # as it shuts down): unmeasured, not errors, and never timed as if they had finished.
    reason = grp["finish_reason"].astype(str)
    unmeasured = reason.str.startswith("not sent") | reason.isin(UNMEASURED_FINISH)
    sent = grp[~unmeasured]
    ok = sent[sent["error"].isna()]
    row: dict[str, Any] = {"mode": mode, "level": level, "requests": len(sent),
                           "completed": len(ok), "errors": int(sent["error"].notna().sum()),
                           "unmeasured": int(unmeasured.sum())}
    if ok.empty:
        if len(sent):  # sent, and every one failed: the level served nothing, at whatever load
            row.update(req_per_s=0.0, output_tok_per_s=0.0, total_tok_per_s=0.0)
            if slo_ms:
                row["goodput_req_per_s"] = 0.0
        return row
    start = ok["start_s"].min()
    end = (ok["start_s"] + ok["e2e_s"]).max()
    duration = max(end - start, 1e-9)
    row.update(duration_s=duration, req_per_s=len(ok) / duration,
               input_tokens=int(ok["input_tokens"].fillna(0).sum()),
               output_tokens=int(ok["output_tokens"].sum()),
               output_tok_per_s=ok["output_tokens"].sum() / duration,
               total_tok_per_s=(ok["output_tokens"].sum() + ok["input_tokens"].fillna(0).sum()) / duration)
    row |= _pct(ok["ttft_s"].tolist(), "ttft")
    row |= _pct(ok["tpot_s"].tolist(), "tpot")
    # The speed one user sees while tokens stream (the Pareto front's per-user axis).
    row["user_tok_per_s"] = 1000 / row["tpot_p50_ms"] if row["tpot_p50_ms"] > 0 else float("nan")
    row |= _pct([g for lst in ok["itl_s"] for g in lst], "itl")
    row |= _pct(ok["e2e_s"].tolist(), "e2e")
    row |= _prefix_hits(ok)
    if "turn" in ok and ok["turn"].notna().any():  # multi-turn: the first turn against the rest
        first = ok["turn"] == 1
        row["ttft_p50_ms_first_turn"] = float(ok.loc[first, "ttft_s"].median() * 1000)
        row["ttft_p50_ms_later_turns"] = float(ok.loc[~first, "ttft_s"].median() * 1000)
    row |= _dispatch(sent)
    if mode in ("rate", "trace") and "scheduled_s" in sent and sent["scheduled_s"].notna().any():
        row |= _schedule(sent, ok)
    if slo_ms:
        good = np.ones(len(ok), dtype=bool)
        for metric, limit in slo_ms.items():
            col = ok[f"{metric}_s"].astype(float)
            # A one-token output has no TPOT and meets any (vLLM's goodput counts it 0); a
            # missing TTFT or E2E is no latency at all, and NaN <= limit is False.
            col = col.fillna(0.0) if metric == "tpot" else col
            good &= col.to_numpy() * 1000 <= limit
        row["goodput_req_per_s"] = float(good.sum()) / duration
    return row
