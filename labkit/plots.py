"""Plotly figures from labkit's tidy frames. Each takes one or more results, so two engines
(or two machines) overlay on one figure; every axis says its unit."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from .errors import InvalidInput
from .loadgen.result import BenchResult


def _labelled(items: Any, one: type, label: Callable[[Any], str]) -> dict[str, Any]:
    """One result, a sequence or a ``{label: result}`` dict, as a dict; repeated labels get
    a prime so two runs of one engine both stay on the figure."""
    if isinstance(items, one):
        items = [items]
    if isinstance(items, dict):
        return items
    out = {}
    for r in items:
        name = label(r)
        while name in out:
            name += "'"
        out[name] = r
    return out


def _results(results: Any, by: str = "machine") -> dict[str, BenchResult]:
    """One result, a sequence, a ``{label: result}`` dict, or :class:`labkit.runs.Runs` (its
    bench runs labelled ``by`` machine, engine or run)."""
    from .runs import Runs

    if isinstance(results, Runs):
        return results.by(by)
    return _labelled(results, BenchResult, lambda r: r.manifest.get("engine", {}).get("engine", "engine"))


def _summary(results) -> pd.DataFrame:
    frames = []
    for label, r in _results(results).items():  # results: already labelled (see callers)
        s = r.summary
        if not s.empty:
            frames.append(s.assign(label=label))
    # (nothing measured yet, a sweep stopped before its first level: an empty figure, not a KeyError)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["mode", "level", "label"])


def _error_bars(g: pd.DataFrame, metric: str) -> dict[str, Any] | None:
    """The 95% interval over rounds as asymmetric error bars, when the run had rounds."""
    if f"{metric}_lo" not in g or g[f"{metric}_lo"].isna().all():
        return None
    return {"type": "data", "symmetric": False, "array": g[f"{metric}_hi"] - g[metric],
            "arrayminus": g[metric] - g[f"{metric}_lo"]}


def throughput(results, metric: str = "output_tok_per_s", by: str = "machine") -> go.Figure:
    """Output tokens/s (or ``req_per_s``) against concurrent users, one line per engine (or,
    for :func:`labkit.runs.load`'s runs, per machine, engine or run: ``by``); error bars are
    the 95% intervals over rounds where the runs had ``repeats``."""
    results = _results(results, by)
    s = _summary(results)
    fig = go.Figure()
    for label, g in s[s["mode"] == "concurrency"].groupby("label", sort=False):
        fig.add_scatter(x=g["level"], y=g[metric], mode="lines+markers", name=label,
                        error_y=_error_bars(g, metric))
    unit = "output tokens/s" if metric == "output_tok_per_s" else "requests/s"
    fig.update_layout(title=f"Throughput vs concurrent users ({unit})", xaxis_title="concurrent users",
                      yaxis_title=unit, template="plotly_white")
    fig.update_xaxes(type="log", dtick=0.30103)
    return _flag_unlike_prompts(fig, results)


def _flag_unlike_prompts(fig: go.Figure, results) -> go.Figure:
    """Engines fed different prompts are not comparable: say so on the figure, in red."""
    from .loadgen.result import MULTI_TURN_NOTE, fed_alike

    # A multi-turn run's later turns differ by design (each engine's own replies): not a flag.
    warnings = [w for w in fed_alike(results) if w != MULTI_TURN_NOTE] if isinstance(results, dict) else []
    if warnings:
        fig.update_layout(title=f"{fig.layout.title.text}: NOT COMPARABLE, different prompts",
                          title_font_color="#b00020")
        fig.add_annotation(text="<br>".join(warnings), xref="paper", yref="paper", x=0, y=1.12,
                           showarrow=False, align="left", font={"color": "#b00020", "size": 11})
    return fig


def latency(results, metrics: Sequence[str] = ("ttft", "tpot"), percentile: str = "p50",
            by: str = "machine") -> go.Figure:
    """TTFT and TPOT percentiles (ms) against concurrent users (``by``: see :func:`throughput`)."""
    results = _results(results, by)
    s = _summary(results)
    fig = go.Figure()
    dashes = ["solid", "dash", "dot"]
    for label, g in s[s["mode"] == "concurrency"].groupby("label", sort=False):
        for i, m in enumerate(metrics):
            fig.add_scatter(x=g["level"], y=g[f"{m}_{percentile}_ms"], mode="lines+markers",
                            name=f"{label} {m.upper()} {percentile}", line={"dash": dashes[i % 3]})
    fig.update_layout(title=f"Latency ({percentile}) vs concurrent users", xaxis_title="concurrent users",
                      yaxis_title="milliseconds", template="plotly_white")
    fig.update_xaxes(type="log", dtick=0.30103)
    fig.update_yaxes(type="log")
    return _flag_unlike_prompts(fig, results)


def memory_timeline(results, column: str = "rss_bytes") -> go.Figure:
    """Memory of each engine's process tree over time (GiB), phases shaded.

    ``column`` is drawn as a line from every sample; PSS, which is read less often (at phase
    edges during a bench, see labkit.memory), is drawn as markers where it was read.
    """
    fig = go.Figure()
    colors = ["rgba(99,110,250,0.08)", "rgba(239,85,59,0.08)"]
    for k, (label, r) in enumerate(_results(results).items()):
        m = r.memory
        if m.empty:
            continue
        line = m.dropna(subset=[column])
        fig.add_scatter(x=line["t_s"], y=line[column] / 1024**3, mode="lines+markers" if len(line) < 50 else "lines",
                        name=f"{label} {column.split('_')[0].upper()}")
        if column != "pss_bytes" and "pss_bytes" in m.columns:
            pss = m.dropna(subset=["pss_bytes"])
            fig.add_scatter(x=pss["t_s"], y=pss["pss_bytes"] / 1024**3, mode="markers", name=f"{label} PSS")
        # An engine's own VRAM is its processes' (NVML per process); the device-wide figure
        # holds whatever else is on the card (and the driver's reserve), and is named so. NVML
        # gives 0 for processes it cannot match (a container's own pid namespace).
        if "vram_process_bytes" in m.columns and (m["vram_process_bytes"] > 0).any():
            fig.add_scatter(x=m["t_s"], y=m["vram_process_bytes"] / 1024**3, mode="lines", name=f"{label} VRAM")
        elif "vram_used_bytes" in m.columns and m["vram_used_bytes"].notna().any():
            fig.add_scatter(x=m["t_s"], y=m["vram_used_bytes"] / 1024**3, mode="lines",
                            name=f"{label}: whole GPU (every process)")
        for i, (_run, g) in enumerate(m.groupby(_stretches(m))):
            name = g["phase"].iloc[0]
            if name == "idle" or k > 0:
                continue
            fig.add_vrect(x0=g["t_s"].min(), x1=g["t_s"].max(), fillcolor=colors[i % 2], line_width=0,
                          annotation_text=name, annotation_position="top left")
    fig.update_layout(title="Memory over time", xaxis_title="seconds since start", yaxis_title="GiB",
                      template="plotly_white")
    return fig


def quant_ladder(table: pd.DataFrame | Any) -> go.Figure:
    """File size vs KL divergence from F16, marker size = decode speed."""
    t = table.table if hasattr(table, "table") else table
    fig = go.Figure()
    speed = t["decode_tok_per_s"].fillna(0)
    fig.add_scatter(x=t["file_mb"], y=t["mean_kld"], mode="markers+text", text=t["quant"],
                    textposition="top center",
                    marker={"size": 10 + 30 * speed / max(1.0, speed.max())},
                    hovertext=[f"{q}: {s:.0f} tok/s" for q, s in zip(t["quant"], speed, strict=True)],
                    name="variants")
    fig.update_layout(title="Quantization ladder: size vs divergence (marker size: decode tok/s)",
                      xaxis_title="file size (MB)", yaxis_title="mean KL divergence vs F16 (nats)",
                      template="plotly_white")
    fig.update_yaxes(type="log")
    return fig


def divergence_histogram(comparison: Any) -> go.Figure:
    """Where outputs start to differ from the reference, per engine: by token index where
    token ids are compared, by character index where they are not (ids unknown, or another
    vocabulary), one panel per unit. Outputs that part only because one engine stopped on a
    token the other does not end on are not divergences: counted in the legend, not plotted."""
    from plotly.subplots import make_subplots

    t = comparison.table
    t = t[t["engine"] != comparison.reference]
    units = [u for u in ("token", "char") if (t["divergence_unit"] == u).any()] or ["token"]
    fig = make_subplots(rows=len(units), cols=1)
    for row, unit in enumerate(units, start=1):
        for engine, g in t[t["divergence_unit"] == unit].groupby("engine", sort=False):
            stopped = g["stopped_differently"].fillna(False).astype(bool)
            fd = g.loc[~stopped, "first_divergence"].dropna()
            extra = f", {int(stopped.sum())} stopped differently" if stopped.any() else ""
            fig.add_histogram(x=fd, name=f"{engine} ({len(g) - len(fd) - int(stopped.sum())} identical{extra})",
                              nbinsx=16, row=row, col=1)
        fig.update_xaxes(title_text="token index" if unit == "token" else "character index", row=row, col=1)
        fig.update_yaxes(title_text="prompts", row=row, col=1)
    fig.update_layout(title="First divergence from the reference", barmode="overlay", template="plotly_white")
    return fig


def capacity(caps: Any) -> go.Figure:
    """A capacity search (or several, as ``{label: Capacity}``): each SLO-bounded percentile
    against the level, the bound as a dashed line, the levels that met it filled, and the
    answer starred. One panel per bound; levels measured twice show their last run."""
    from plotly.colors import qualitative
    from plotly.subplots import make_subplots

    from .loadgen.capacity import Capacity

    caps = _labelled(caps, Capacity, lambda c: c.engine)
    bounds = list(dict.fromkeys(b for c in caps.values() for b in c.slo.bounds))
    fig = make_subplots(rows=1, cols=len(bounds), subplot_titles=bounds)
    palette = qualitative.Plotly
    by = next(iter(caps.values())).by if caps else "users"
    for k, (label, cap) in enumerate(caps.items()):
        if "met" not in cap.levels:  # the search measured no level
            continue
        lv = cap.levels.dropna(subset=["met"]).drop_duplicates("level", keep="last").sort_values("level")
        color = palette[k % len(palette)]
        for col, bound in enumerate(bounds, start=1):
            if bound not in lv:
                continue
            fig.add_scatter(x=lv["level"], y=lv[bound], mode="lines+markers", name=label, legendgroup=label,
                            showlegend=col == 1, line={"color": color},
                            marker={"symbol": ["circle" if m else "circle-open" for m in lv["met"]], "size": 9},
                            row=1, col=col)
            if cap.answer > 0:
                at = lv[lv["level"] == cap.answer]
                fig.add_scatter(x=at["level"], y=at[bound], mode="markers", showlegend=False,
                                marker={"symbol": "star", "size": 16, "color": color},
                                hovertext=f"{label}: {cap.answer:g}", row=1, col=col)
            if bound in cap.slo.bounds:
                fig.add_hline(y=cap.slo.bounds[bound], line_dash="dash", line_color="#b00020", row=1, col=col)
    fig.update_xaxes(type="log", title_text="concurrent users" if by == "users" else "requests/s")
    fig.update_yaxes(title_text="ms", col=1)
    fig.update_layout(title="Capacity search: latency against load (dashed: the SLO; filled: met; star: "
                            "the answer)", template="plotly_white")
    return fig


def pareto(front: Any) -> go.Figure:
    """A sweep's rows: per-user tok/s (how fast one user's tokens stream) against total output
    tok/s (how much the machine serves), one colour per point, or by KLD when the sweep
    measured it; marker size = peak memory; hollow = missed the SLO. The front is the line."""
    t = front.table if hasattr(front, "table") else front
    t = t.dropna(subset=["user_tok_per_s", "output_tok_per_s"])
    if "partial" in t:  # a level cut short by Stop is no point of comparison
        t = t[~t["partial"].astype(bool)]
    fig = go.Figure()
    mem = t.get("peak_pss_bytes", pd.Series(0.0, index=t.index)).fillna(0)
    met = t["slo_met"] if "slo_met" in t else pd.Series(True, index=t.index)
    # Per row, so a group of rows (one point's levels) carries its own markers along.
    t = t.assign(_size=9 + 21 * mem / max(1.0, float(mem.max())),
                 _symbol=["circle" if m else "circle-open" for m in met],
                 _hover=[f"{p}<br>{m} {lv:g}<br>{u:.1f} tok/s per user, {o:.1f} tok/s total<br>"
                         f"peak {b / 1024**3:.2f} GiB"
                         for p, m, lv, u, o, b in zip(t["point"], t["mode"], t["level"], t["user_tok_per_s"],
                                                      t["output_tok_per_s"], mem, strict=True)])
    by_kld = "kld" in t and t["kld"].notna().any()
    for label, g in ([("points", t)] if by_kld else t.groupby("point", sort=False)):
        colour = {"color": g["kld"], "colorscale": "Viridis", "colorbar": {"title": "KLD vs F16"},
                  "line": {"width": 1}} if by_kld else {}
        fig.add_scatter(x=g["user_tok_per_s"], y=g["output_tok_per_s"], mode="markers", name=label,
                        hovertext=list(g["_hover"]), hoverinfo="text",
                        marker={"size": list(g["_size"]), "symbol": list(g["_symbol"]), **colour})
    best = t[t["on_front"]].sort_values("user_tok_per_s")
    fig.add_scatter(x=best["user_tok_per_s"], y=best["output_tok_per_s"], mode="lines", name="Pareto front",
                    line={"color": "#222", "dash": "dot"})
    fig.update_layout(title="Per-user speed vs total throughput (size: peak memory; hollow: missed the SLO)",
                      xaxis_title="per-user output tok/s (1000 / TPOT p50)", yaxis_title="total output tok/s",
                      template="plotly_white")
    return fig


def turns(results: BenchResult | dict[str, BenchResult]) -> go.Figure:
    """Multi-turn sessions: median TTFT by turn, one line per engine and level. Each turn
    carries the whole conversation so far, so without a prefix cache the line climbs with the
    history; with one, later turns prefill only what is new and the line stays flat or falls."""
    fig = go.Figure()
    for name, res in _results(results).items():
        t = res.turns
        if t.empty:  # a run without sessions
            continue
        for (mode, level), g in t.groupby(["mode", "level"], sort=False):
            label = f"{name}, {level:g} users" if mode == "concurrency" else f"{name}, {mode} {level:g}"
            fig.add_scatter(x=g["turn"], y=g["ttft_p50_ms"], mode="lines+markers", name=label,
                            customdata=g[["input_tokens_mean", "cached_tokens_mean"]].to_numpy(),
                            hovertemplate="turn %{x}: TTFT p50 %{y:.0f} ms<br>prompt %{customdata[0]:.0f} "
                                          "tokens, %{customdata[1]:.0f} from the cache<extra></extra>")
    fig.update_layout(title="Time to first token by turn of a session", xaxis_title="turn", xaxis_dtick=1,
                      yaxis_title="TTFT p50 (ms)", template="plotly_white")
    return fig


def workloads(table: pd.DataFrame, metric: str = "output_tok_per_s") -> go.Figure:
    """One bar group per workload, one bar per engine, at each engine's highest level: does
    the winner change with what the requests are? ``table``: rows of engine, workload, level
    and ``metric`` (a bench summary with those two columns added)."""
    top = table[table["level"] == table.groupby(["engine", "workload"])["level"].transform("max")]
    fig = go.Figure()
    for engine, g in top.groupby("engine", sort=False):
        fig.add_bar(x=g["workload"], y=g[metric], name=engine,
                    text=[f"{v:.1f}" for v in g[metric]], textposition="outside")
    unit = {"output_tok_per_s": "output tokens/s", "ttft_p50_ms": "ms", "prefix_hit_rate": "fraction"}
    fig.update_layout(title=f"{metric} by workload, at the most users run", barmode="group",
                      yaxis_title=unit.get(metric, metric), template="plotly_white")
    return fig


def invariance(results: Any) -> go.Figure:
    """The share of greedy outputs that changed when the same prompts ran among N users
    instead of alone, one bar group per level, one bar per engine; hover: mean agreement.
    ``results``: :class:`labkit.apicheck.Invariance` objects, a list or a dict."""
    items = list(results.values()) if isinstance(results, dict) else list(results)
    fig = go.Figure()
    for inv in items:
        s = inv.summary()
        fig.add_bar(x=[f"{u} users" for u in s["users"]], y=s["changed_frac"], name=inv.engine,
                    text=[f"{v:.0%}" for v in s["changed_frac"]], textposition="outside",
                    customdata=s["mean_agreement"], hovertemplate="%{y:.0%} changed, agreement %{customdata:.2f}")
    fig.update_layout(title="Greedy outputs that changed under concurrent load (vs alone)", barmode="group",
                      yaxis_title="fraction of prompts", yaxis_range=[0, 1.1], template="plotly_white")
    return fig


def timeline(result: BenchResult) -> go.Figure:
    """What the client saw and what the server was doing, on one time axis (a run with
    ``telemetry=True``): requests in flight and each request's TTFT; the server's running and
    waiting requests and KV use; CPU use of the engine's processes by role (and the GPU's
    utilisation where there is one); memory by role. A TTFT tail lines up with a queue."""
    from plotly.subplots import make_subplots

    t, req = result.telemetry, result.requests
    if t.empty:
        raise InvalidInput("This run has no telemetry: bench it with telemetry=True.")
    fig = make_subplots(rows=4, cols=1, shared_xaxes=True, vertical_spacing=0.04,
                        subplot_titles=("client: in flight, and TTFT of each request", "server: queue and KV",
                                        "CPU (cores busy) by process; GPU %", "memory (RSS) by process"),
                        specs=[[{"secondary_y": True}], [{"secondary_y": True}], [{}], [{}]])
    done = req.dropna(subset=["start_s", "e2e_s"])
    if not done.empty:
        # Counted on a grid, not at the edges: a user's next request leaves a hair after the
        # last one ended, and edge-by-edge that draws a dip at every hand-over.
        start, end = done["start_s"].to_numpy(), (done["start_s"] + done["e2e_s"]).to_numpy()
        grid = np.linspace(start.min(), end.max(), 400)
        flight = ((start[None, :] <= grid[:, None]) & (grid[:, None] < end[None, :])).sum(axis=1)
        fig.add_scatter(x=grid, y=flight, mode="lines", line_shape="hv", name="in flight", row=1, col=1)
        fig.add_scatter(x=done["start_s"], y=done["ttft_s"] * 1000, mode="markers", name="TTFT ms",
                        marker={"size": 4}, row=1, col=1, secondary_y=True)
    for metric, axis in (("running", False), ("waiting", False), ("kv_used_fraction", True)):
        g = t[(t["source"] == "server") & (t["metric"] == metric)]
        if not g.empty:
            fig.add_scatter(x=g["t_s"], y=g["value"], mode="lines+markers", name=metric, row=2, col=1,
                            secondary_y=axis)
    for (source, metric), g in t[t["metric"].isin(["cpu_util", "machine_cpu_util", "util_pct"])].groupby(
            ["source", "metric"], sort=False):
        name = "GPU util %" if metric == "util_pct" else "CPU machine" if source == "host" else \
            f"CPU {source.split(':', 1)[1]}"
        fig.add_scatter(x=g["t_s"], y=g["value"], mode="lines", name=name, row=3, col=1)
    for source, g in t[t["metric"] == "rss_bytes"].groupby("source", sort=False):
        fig.add_scatter(x=g["t_s"], y=g["value"] / 2**30, mode="lines", name=f"{source.split(':', 1)[1]} GiB",
                        row=4, col=1)
    _phase_bands(fig, t)
    fig.update_yaxes(title_text="requests", row=1, col=1)
    fig.update_yaxes(title_text="TTFT ms", row=1, col=1, secondary_y=True)
    fig.update_yaxes(title_text="requests", row=2, col=1)
    fig.update_yaxes(title_text="KV used", range=[0, 1], row=2, col=1, secondary_y=True)
    fig.update_xaxes(title_text="seconds since the run began", row=4, col=1)
    eng = result.manifest.get("engine", {}).get("engine", "")
    fig.update_layout(height=900, template="plotly_white", title=f"{eng}: client and server, one time axis")
    return fig


def _stretches(frame: pd.DataFrame) -> pd.Series:
    """A number per unbroken run of one phase, in row order: a level measured twice (repeats)
    is two stretches."""
    return (frame["phase"] != frame["phase"].shift()).cumsum()


def _phase_bands(fig: go.Figure, t: pd.DataFrame) -> None:
    """A shaded band per measured level, labelled, across every row: one per stretch of a
    phase (with repeats, a level's rounds are apart, and one band over all of them would
    cover the levels between)."""
    t = t.sort_values("t_s", kind="stable")
    t = t.assign(_stretch=_stretches(t))[t["phase"] != "idle"]
    spans = t.groupby("_stretch", sort=True).agg(phase=("phase", "first"), min=("t_s", "min"), max=("t_s", "max"))
    for i, (_, span) in enumerate(spans.iterrows()):
        phase = span["phase"]
        label = {} if phase == "warm-up" else {"annotation_text": phase, "annotation_position": "top left"}
        fig.add_vrect(x0=span["min"], x1=span["max"], fillcolor="#888" if i % 2 else "#bbb", opacity=0.12,
                      line_width=0, **label)
