"""Other tools' benchmark results in labkit's summary frame, to overlay them on one plot.

- vLLM's serving benchmark (``vllm bench serve --save-result`` / ``vllm.benchmarks.serve``)
  saves one JSON object per run with ``max_concurrency``, ``request_throughput``,
  ``output_throughput`` and ``median_ttft_ms``-style keys;
- ``llama-bench -o json`` prints a list of tests with ``n_prompt``, ``n_gen`` and ``avg_ts``;
- GuideLLM (``guidellm run --output kind=json``) writes ``benchmarks``, one per strategy,
  each with its ``duration`` and distributions under ``metrics`` (``successful``: median,
  mean, percentiles). Its per-request "inter token latency" is (last token - first token) /
  (tokens - 1): vLLM's and labkit's TPOT. Its "time per output token" is (last token - send)
  / tokens, TTFT included: no labkit figure, so it is left out. It keeps no chunk times (only
  the first, the last and their count), so ITL, the gaps between chunks, stays empty;
- AIPerf (``aiperf profile``) writes ``profile_export_aiperf.json``: one run, each metric
  with its ``unit``, ``avg`` and percentiles. Its "inter token latency" is per request,
  (E2E - TTFT) / (tokens - 1): vLLM's and labkit's TPOT; its "inter chunk latency" is ITL.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from ..errors import InvalidInput


def _read(source: str | Path | dict | list) -> Any:
    if isinstance(source, dict | list):
        return source
    path = Path(source)
    if not path.exists():
        raise InvalidInput(f"No result file at {path}.")
    text = path.read_text()
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return [json.loads(line) for line in text.splitlines() if line.strip()]


def from_vllm_bench(source: str | Path | dict | list) -> pd.DataFrame:
    """Rows of the labkit summary frame from vLLM's serving-benchmark JSON."""
    data = _read(source)
    rows = []
    for run in data if isinstance(data, list) else [data]:
        level = run.get("max_concurrency")
        mode = "concurrency" if level is not None else "rate"
        if level is None:
            level = run.get("request_rate")
        row: dict[str, Any] = {"engine": f"vllm bench ({run.get('backend', 'vllm')})", "source": "vllm bench serve",
                               "mode": mode, "level": level, "completed": run.get("completed"),
                               "duration_s": run.get("duration"), "req_per_s": run.get("request_throughput"),
                               "output_tok_per_s": run.get("output_throughput"),
                               "total_tok_per_s": run.get("total_token_throughput")}
        for metric in ("ttft", "tpot", "itl", "e2el"):
            name = "e2e" if metric == "e2el" else metric
            for stat, key in (("median", "p50"), ("mean", "mean"), ("p90", "p90"), ("p99", "p99")):
                if f"{stat}_{metric}_ms" in run:
                    row[f"{name}_{key}_ms"] = run[f"{stat}_{metric}_ms"]
        rows.append(row)
    return pd.DataFrame(rows)


def from_llama_bench(source: str | Path | dict | list) -> pd.DataFrame:
    """Rows of the summary frame from ``llama-bench -o json`` (one user, no HTTP)."""
    data = _read(source)
    rows = []
    for test in data if isinstance(data, list) else [data]:
        gen, prompt = int(test.get("n_gen", 0)), int(test.get("n_prompt", 0))
        kind = f"tg{gen}" if gen else f"pp{prompt}"
        rows.append({"engine": "llama-bench", "source": "llama-bench", "mode": "concurrency", "level": 1,
                     "test": kind, "threads": test.get("n_threads"),
                     "output_tok_per_s": test.get("avg_ts") if gen else None,
                     "prompt_tok_per_s": test.get("avg_ts") if prompt and not gen else None,
                     "model": test.get("model_filename")})
    return pd.DataFrame(rows)


def _dist(metrics: dict, key: str, scale: float = 1.0) -> dict[str, float]:
    d = (metrics.get(key) or {}).get("successful") or {}
    pct = d.get("percentiles") or {}
    out = {"p50": d.get("median"), "mean": d.get("mean"), "p90": pct.get("p90"), "p99": pct.get("p99")}
    return {k: v * scale for k, v in out.items() if v is not None}


def _guidellm_level(strategy: dict) -> tuple[str, Any]:
    kind = strategy.get("type_")
    if kind == "synchronous":
        return "concurrency", 1
    if kind == "concurrent":
        return "concurrency", strategy.get("streams")
    if kind == "throughput":
        return "concurrency", strategy.get("max_concurrency")
    return "rate", strategy.get("rate")


def from_guidellm(source: str | Path | dict | list) -> pd.DataFrame:
    """Rows of the summary frame from GuideLLM's JSON report (one per benchmark/strategy)."""
    data = _read(source)
    rows = []
    for b in data.get("benchmarks", []) if isinstance(data, dict) else []:
        m, duration = b.get("metrics", {}), float(b.get("duration") or 0)
        mode, level = _guidellm_level((b.get("config") or {}).get("strategy") or {})
        done = (m.get("request_totals") or {}).get("successful")
        out_total = ((m.get("output_token_count") or {}).get("successful") or {}).get("total_sum")
        row: dict[str, Any] = {"engine": "guidellm", "source": "guidellm", "mode": mode, "level": level,
                               "completed": done, "duration_s": duration,
                               "req_per_s": done / duration if done and duration else None,
                               "output_tok_per_s": out_total / duration if out_total and duration else None}
        for name, key, scale in (("ttft", "time_to_first_token_ms", 1), ("tpot", "inter_token_latency_ms", 1),
                                 ("e2e", "request_latency", 1000)):
            row |= {f"{name}_{k}_ms": v for k, v in _dist(m, key, scale).items()}
        rows.append(row)
    if not rows:
        raise InvalidInput("No GuideLLM benchmarks in this file (expected a 'benchmarks' list).")
    return pd.DataFrame(rows)


def from_aiperf(source: str | Path | dict | list) -> pd.DataFrame:
    """One row of the summary frame from AIPerf's ``profile_export_aiperf.json``."""
    d = _read(source)
    if not isinstance(d, dict) or "request_throughput" not in d:
        raise InvalidInput("Not an AIPerf profile export (expected profile_export_aiperf.json).")

    def stat(key: str, which: str = "avg") -> Any:
        return (d.get(key) or {}).get(which)

    phase = next(iter((d.get("input_config") or {}).get("phases") or [{}]), {})
    rate = phase.get("request_rate")
    row: dict[str, Any] = {"engine": "aiperf", "source": "aiperf", "mode": "rate" if rate else "concurrency",
                           "level": rate or phase.get("concurrency"), "completed": stat("completed_request_count"),
                           "duration_s": stat("benchmark_duration"), "req_per_s": stat("request_throughput"),
                           "output_tok_per_s": stat("output_token_throughput")}
    for name, key in (("ttft", "time_to_first_token"), ("tpot", "inter_token_latency"),
                      ("itl", "inter_chunk_latency"), ("e2e", "request_latency")):
        for ours, theirs in (("p50", "p50"), ("mean", "avg"), ("p90", "p90"), ("p99", "p99")):
            if stat(key, theirs) is not None:
                row[f"{name}_{ours}_ms"] = stat(key, theirs)
    return pd.DataFrame([row])
