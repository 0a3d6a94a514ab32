"""Other tools' benchmark results in labkit's summary frame, to overlay them on one plot.

- vLLM's serving benchmark (``vllm bench serve --save-result`` / ``vllm.benchmarks.serve``)
  saves one JSON object per run with ``max_concurrency``, ``request_throughput``,
  ``output_throughput`` and ``median_ttft_ms``-style keys;
- ``llama-bench -o json`` prints a list of tests with ``n_prompt``, ``n_gen`` and ``avg_ts``.
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
