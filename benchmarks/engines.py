"""Benchmarks that print measured ratios (not tests: speed is never asserted).

    .venv/bin/python benchmarks/engines.py [--only PARTS] [--threads N] [--rounds R] [--out DIR]

1. labkit single-stream llama.cpp decode tok/s vs `llama-bench` tg on the same GGUF, same
   build, same threads                                           (target >= 0.90)
2. labkit in-process vLLM throughput at 32 users vs a bare `LLM.generate` of the same 32
   prompts on the same LLM                                        (target >= 0.97)
3. labkit HTTP metrics vs vLLM's own serving benchmark against the same vLLM server and
   the same prompts (8 users, 64 requests a round): TTFT and TPOT medians over all
   requests of all rounds                                         (target within 5%)
   and the p99 TTFT, pooled likewise                              (target within 10%)
   `--serve-users capacity` runs it at the capacity labkit finds for that server first
   (SLO: TTFT p99 <= 2 s, TPOT p99 <= 100 ms; 128 input, 64 output tokens);
   `--serve-dataset sharegpt` sends both tools the same ShareGPT sample instead.
4. output tok/s per engine at 1 and 32 users: the common-wisdom claim, as ratios.
5. `--only workloads`: the four engines under each named workload (synthetic, sharegpt,
   shared_prefix, multi_turn, long_context) at 1 and 8 users (`--workload-users`): output
   tok/s, TTFT p50 and the prefix-cache hit rate, as a table (`--out` keeps it as markdown).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil

import labkit
import labkit.environment
from labkit import workloads
from labkit.loadgen import from_llama_bench, from_vllm_bench
from labkit.native.llamacpp import tool

OUT_TOKENS = 64


def line(name: str, value: float, target: str) -> None:
    print(f"{name:<62} {value:8.3f}   ({target})", flush=True)


def llama_cpp_vs_llama_bench(threads: int) -> dict:
    gguf = labkit.models.gguf_path("smollm2-135m")
    # Same settings on both sides: threads and flash attention (llama-bench's default is auto).
    r = subprocess.run([str(tool("llama-bench")), "-m", str(gguf), "-t", str(threads), "-p", "0",
                        "-n", str(OUT_TOKENS), "-r", "3", "-fa", "1", "-o", "json"],
                       capture_output=True, text=True, check=True)
    anchor = from_llama_bench(json.loads(r.stdout)).iloc[0]["output_tok_per_s"]
    with labkit.load("llama.cpp", threads=threads, flash_attn=True) as llm:
        llm.generate(["Hello"], max_tokens=8)
        speeds = []
        for _ in range(3):
            g = llm.generate(["Once upon a time"], max_tokens=OUT_TOKENS, ignore_eos=True)[0]
            # decode rate, as llama-bench's tg measures it: tokens after the first over their time
            speeds.append((g.n_tokens - 1) / (g.token_times_s[-1] - g.token_times_s[0]))
    ours = sorted(speeds)[1]
    line("llama.cpp decode tok/s: labkit / llama-bench tg64", ours / anchor, "target >= 0.90")
    print(f"    labkit {ours:.1f} tok/s, llama-bench {anchor:.1f} tok/s, {threads} threads")
    return {"labkit_tok_s": ours, "llama_bench_tok_s": anchor}


def _median(values: list[float]) -> float:
    return float(statistics.median(values))


def vllm_vs_bare_generate(threads: int, users: int, rounds: int) -> dict:
    """Both sides on the same LLM and prompts, interleaved round by round so that drift of
    a shared machine hits both alike; the ratio is of the medians over rounds."""
    from vllm import SamplingParams

    engine = labkit.load("vllm", threads=threads)
    try:
        reqs = workloads.synthetic(input_tokens=128, output_tokens=OUT_TOKENS).build(engine, users)
        prompts = [r.prompt for r in reqs]
        sp = SamplingParams(max_tokens=OUT_TOKENS, temperature=0, ignore_eos=True)
        workload = workloads.prompts(prompts, output_tokens=OUT_TOKENS)

        def bare() -> float:
            t = time.perf_counter()
            outs = engine.llm.generate(prompts, sp, use_tqdm=False)
            return sum(len(o.outputs[0].token_ids) for o in outs) / (time.perf_counter() - t)

        def ours() -> float:
            res = labkit.bench(engine, concurrency=[users], requests_per_level=users, warmup=0,
                               workload=workload, progress=False)
            return float(res.summary.iloc[0]["output_tok_per_s"])

        bare(), ours()  # warm-up: first batches of this shape
        b, o = [], []
        for _ in range(rounds):
            b.append(bare())
            o.append(ours())
    finally:
        engine.close()
    line(f"vLLM in process, {users} users: labkit bench / bare LLM.generate", _median(o) / _median(b),
         "target >= 0.97")
    print(f"    labkit {_fmt(o)} tok/s; LLM.generate {_fmt(b)} tok/s ({rounds} interleaved rounds)")
    return {"labkit_tok_s": o, "bare_tok_s": b}


def _fmt(values: list[float]) -> str:
    return ", ".join(f"{v:.1f}" for v in values)


def _vllm_bench_serve(srv, dataset: list[str], tmp: str, users: int, n: int) -> dict:
    cmd = [sys.executable, "-c", "import sys; from vllm.benchmarks.serve import add_cli_args, main; "
           "from vllm.utils.argparse_utils import FlexibleArgumentParser as P; p = P(); add_cli_args(p); "
           "main(p.parse_args(sys.argv[1:]))",
           "--backend", "vllm", "--base-url", srv.url[: -len("/v1")], "--endpoint", "/v1/completions",
           "--model", srv.model, "--tokenizer", srv.info.model_path, *dataset,
           "--num-prompts", str(n), "--max-concurrency", str(users), "--ignore-eos", "--disable-tqdm",
           "--temperature", "0",  # greedy, as labkit sends (vllm bench no longer defaults to it)
           "--save-result", "--result-dir", tmp, "--result-filename", "vllm.json",
           "--percentile-metrics", "ttft,tpot,itl,e2el", "--save-detailed"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError("vllm bench serve failed: " + r.stderr[-1500:])
    path = Path(tmp) / "vllm.json"
    p50 = from_vllm_bench(path).iloc[0][["ttft_p50_ms", "tpot_p50_ms"]].to_dict()
    d = json.loads(path.read_text())
    # Per request, as vLLM computes them: TPOT = (latency - TTFT) / (out - 1), and the
    # latency is TTFT plus the gaps between chunks.
    ttft = [t * 1000 for t in d["ttfts"]]
    tpot = [sum(itl) * 1000 / (out - 1) for itl, out in zip(d["itls"], d["output_lens"], strict=True) if out > 1]
    return {**p50, "ttft_ms": ttft, "tpot_ms": tpot}


def _capacity_users(srv) -> int:
    """The users labkit's capacity search finds for this server at the common SLO."""
    slo = labkit.SLO(ttft_p99_ms=2000, tpot_p99_ms=100)
    cap = labkit.capacity(srv, slo=slo, workload=workloads.chat(input_tokens=128, output_tokens=OUT_TOKENS),
                          max_level=32, progress=False)
    print(f"    capacity: {cap.summary_line()}")
    return max(1, cap.users or 1)


def _same_requests(srv, dataset: str, n: int, tmp: str) -> tuple[Any, list[str]]:
    """labkit's workload and ``vllm bench serve``'s dataset arguments for the same n requests."""
    if dataset == "sharegpt":  # both sample the same file, with the same seed and filters
        return (workloads.sharegpt(n=n, seed=0, output_tokens=OUT_TOKENS),
                ["--dataset-name", "sharegpt", "--dataset-path", str(workloads.sharegpt_file()),
                 "--sharegpt-output-len", str(OUT_TOKENS), "--seed", "0"])
    reqs = workloads.synthetic(input_tokens=128, output_tokens=OUT_TOKENS).build(srv, n)
    data = Path(tmp) / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": r.prompt, "output_tokens": OUT_TOKENS}) + "\n" for r in reqs))
    return (workloads.prompts([r.prompt for r in reqs], output_tokens=OUT_TOKENS),
            ["--dataset-name", "custom", "--dataset-path", str(data), "--custom-output-len", str(OUT_TOKENS),
             "--skip-chat-template"])


def http_metrics_vs_vllm_bench(threads: int, users: int | str, rounds: int, dataset: str = "synthetic",
                               telemetry_s: float | None = None) -> dict:
    """labkit's HTTP load generator and vLLM's serving benchmark take turns (alternating who
    goes first) against one server with the same prompts. The ratio is of medians over every
    request of every round (pooled), so one slow round moves it less than a median of
    per-round p50s. ``users="capacity"``: at the level labkit's capacity search finds.
    ``telemetry_s``: a third side, labkit with telemetry read at that interval, in the same
    rotation (its cost to the server is its ratio against the other two)."""
    with labkit.load("vllm-server", threads=threads) as srv, tempfile.TemporaryDirectory() as tmp:
        users = _capacity_users(srv) if users == "capacity" else int(users)
        n = max(64, 8 * users)
        workload, data = _same_requests(srv, dataset, n, tmp)
        me = psutil.Process()

        def ours(tel: float | None = None) -> dict:
            cpu, t = sum(me.cpu_times()[:2]), time.perf_counter()
            res = labkit.bench(srv, concurrency=[users], requests_per_level=n, progress=False, workload=workload,
                               telemetry=tel is not None, telemetry_interval_s=tel or 2.0)
            ok = res.requests[res.requests["error"].isna()]
            s = res.summary.iloc[0]
            return {"ttft_p50_ms": s["ttft_p50_ms"], "tpot_p50_ms": s["tpot_p50_ms"],
                    "ttft_ms": (ok["ttft_s"] * 1000).tolist(), "tpot_ms": (ok["tpot_s"].dropna() * 1000).tolist(),
                    "client_cpu": (sum(me.cpu_times()[:2]) - cpu) / (time.perf_counter() - t)}

        ours()  # warm-up
        mine, theirs, watched = [], [], []
        sides = [lambda: mine.append(ours()), lambda: theirs.append(_vllm_bench_serve(srv, data, tmp, users, n))]
        if telemetry_s is not None:
            sides.append(lambda: watched.append(ours(telemetry_s)))
        for i in range(rounds):
            # Rotate who goes first, so whatever the previous run leaves behind (a
            # subprocess exiting, a drained queue) does not always fall on the same side.
            for side in sides[i % len(sides):] + sides[:i % len(sides)]:
                side()
    if watched:
        for m in ("ttft", "tpot"):
            w = _median([v for r in watched for v in r[f"{m}_ms"]])
            for other, name in ((theirs, "vllm bench serve"), (mine, "labkit without telemetry")):
                line(f"vLLM server, {users} users, telemetry every {telemetry_s:g} s: {m.upper()} median "
                     f"labkit / {name}", w / _median([v for r in other for v in r[f"{m}_ms"]]),
                     "target within 0.98..1.02")
    for m in ("ttft", "tpot"):
        a = _median([v for r in mine for v in r[f"{m}_ms"]])
        b = _median([v for r in theirs for v in r[f"{m}_ms"]])
        line(f"vLLM server, {users} users: {m.upper()} median labkit / vllm bench serve", a / b,
             "target within 0.95..1.05")
        if m == "ttft":
            a99, b99 = (float(np.percentile([v for r in side for v in r["ttft_ms"]], 99)) for side in (mine, theirs))
            line(f"vLLM server, {users} users: TTFT p99 labkit / vllm bench serve", a99 / b99,
                 "target within 0.90..1.10")
            print(f"    pooled p99 over {rounds} x {n} requests: labkit {a99:.1f} ms, vllm bench serve {b99:.1f} ms")
        print(f"    pooled over {rounds} x {n} requests: labkit {a:.1f} ms, vllm bench serve {b:.1f} ms; "
              f"per-round p50s: labkit {_fmt([r[f'{m}_p50_ms'] for r in mine])}, "
              f"vllm bench serve {_fmt([r[f'{m}_p50_ms'] for r in theirs])}")
    print(f"    labkit's client (with its memory sampler) used {_median([r['client_cpu'] for r in mine]):.0%} of one core")
    return {"labkit": mine, "vllm_bench": theirs}


def common_wisdom(threads: int, users: int, out: Path | None) -> dict:
    """Output tok/s of every engine with 1 user (8 requests) and ``users`` users (``users``
    requests), chat prompts of 128 tokens, 64 tokens out."""
    speeds: dict[str, dict[int, float]] = {}
    configs = {"llama.cpp": {"threads": threads}, "llama-server": {"threads": threads, "parallel": users},
               "vllm": {"threads": threads}, "vllm-server": {"threads": threads}}
    workload = workloads.chat(input_tokens=128, output_tokens=OUT_TOKENS)
    for name, kw in configs.items():
        speeds[name] = {}
        with labkit.load(name, **kw) as engine:
            levels = [(1, 8)] if name == "llama.cpp" else [(1, 8), (users, users)]
            for level, n in levels:
                res = labkit.bench(engine, concurrency=[level], requests_per_level=n, progress=False,
                                   workload=workload, out=out / f"{name}-{level}" if out else None)
                speeds[name][level] = float(res.summary.iloc[0]["output_tok_per_s"])
        print(f"    {name:<13} " + ", ".join(f"{lv} users {v:.1f} tok/s" for lv, v in speeds[name].items()), flush=True)
    line("output tok/s at 1 user: llama.cpp / vllm", speeds["llama.cpp"][1] / speeds["vllm"][1], "wisdom: > 1")
    line("output tok/s at 1 user: llama-server / vllm-server",
         speeds["llama-server"][1] / speeds["vllm-server"][1], "wisdom: > 1")
    line(f"output tok/s at {users} users: vllm / llama-server", speeds["vllm"][users] / speeds["llama-server"][users], "wisdom: > 1")
    line(f"output tok/s at {users} users: vllm-server / llama-server",
         speeds["vllm-server"][users] / speeds["llama-server"][users], "wisdom: > 1")
    return speeds


def by_workload(threads: int, users: int, out: Path | None) -> list[dict]:
    """Every engine loaded once, every named workload run on it at 1 and ``users`` users
    (8 requests a level; 128 input and 64 output tokens where the workload takes lengths,
    ShareGPT's own lengths otherwise). llama.cpp in process serves one request at a time, so
    its ``users`` level queues them: it is run, and says so by its TTFT."""
    rows = []
    configs = {"llama.cpp": {"threads": threads}, "llama-server": {"threads": threads, "parallel": users},
               "vllm": {"threads": threads}, "vllm-server": {"threads": threads}}
    sizes = {"synthetic": 128, "shared_prefix": 512, "multi_turn": 64, "long_context": 1024}
    for name, kw in configs.items():
        with labkit.load(name, **kw) as engine:
            for w in workloads.NAMES:
                if w == "chat":
                    continue  # the synthetic row stands for unique prompts of one length
                workload = workloads.named(w, input_tokens=sizes.get(w), output_tokens=None if w == "sharegpt"
                                           else OUT_TOKENS)
                res = labkit.bench(engine, concurrency=[1, users], requests_per_level=8, workload=workload,
                                   progress=False, out=out / f"{name}-{w}" if out else None)
                for _, r in res.summary.iterrows():
                    rows.append({"engine": name, "workload": w, "users": int(r["level"]),
                                 "output_tok_per_s": round(float(r["output_tok_per_s"]), 1),
                                 "ttft_p50_ms": round(float(r["ttft_p50_ms"]), 0),
                                 "tpot_p50_ms": round(float(r["tpot_p50_ms"]), 1),
                                 "prefix_hit_rate": round(float(r.get("prefix_hit_rate", float("nan"))), 2),
                                 "errors": int(r["errors"])})
                    print(f"    {name:<13} {w:<14} {rows[-1]['users']:>2} users  {rows[-1]['output_tok_per_s']:7.1f} "
                          f"tok/s  TTFT p50 {rows[-1]['ttft_p50_ms']:6.0f} ms  hit {rows[-1]['prefix_hit_rate']}",
                          flush=True)
    if out:
        import pandas as pd

        out.mkdir(parents=True, exist_ok=True)
        frame = pd.DataFrame(rows)
        engines = list(configs)
        lines = ["| workload | users | " + " | ".join(f"{e} tok/s (TTFT p50 ms, hit)" for e in engines) + " |",
                 "|---|---|" + "---|" * len(engines)]
        for (w, u), g in frame.groupby(["workload", "users"], sort=False):
            cells = []
            for e in engines:
                r = g[g["engine"] == e]
                cells.append("" if r.empty else f"{r.iloc[0]['output_tok_per_s']} ({r.iloc[0]['ttft_p50_ms']:.0f}, "
                                                 f"{r.iloc[0]['prefix_hit_rate']})")
            lines.append(f"| {w} | {u} | " + " | ".join(cells) + " |")
        (out / "workloads.md").write_text("\n".join(lines) + "\n")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--users", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds for the anchor comparisons")
    ap.add_argument("--out", type=Path, help="keep every run's results here")
    ap.add_argument("--serve-dataset", choices=["synthetic", "sharegpt"], default="synthetic",
                    help="the requests of the vllm-serve comparison (both tools sample sharegpt alike)")
    ap.add_argument("--serve-users", default="8",
                    help="users for the vllm-serve comparison: a number, or 'capacity' (labkit's answer)")
    ap.add_argument("--workload-users", type=int, default=8, help="the many-users level of --only workloads")
    ap.add_argument("--telemetry-interval", type=float,
                    help="vllm-serve: also run labkit with telemetry read every S seconds, in the same rotation")
    ap.add_argument("--only", help="comma-separated subset: llama-bench,vllm-generate,vllm-serve,wisdom,workloads")
    args = ap.parse_args()
    only = set(args.only.split(",")) if args.only else {"llama-bench", "vllm-generate", "vllm-serve", "wisdom"}
    results = {"environment": labkit.environment.environment()}
    if "llama-bench" in only:
        results["llama_bench"] = llama_cpp_vs_llama_bench(args.threads)
    if "vllm-generate" in only:
        results["vllm_generate"] = vllm_vs_bare_generate(args.threads, args.users, args.rounds)
    if "vllm-serve" in only:
        results["vllm_serve"] = http_metrics_vs_vllm_bench(args.threads, args.serve_users, args.rounds,
                                                           args.serve_dataset, args.telemetry_interval)
    if "wisdom" in only:
        results["wisdom"] = common_wisdom(args.threads, args.users, args.out)
    if "workloads" in (set(args.only.split(",")) if args.only else set()):
        results["workloads"] = by_workload(args.threads, args.workload_users, args.out)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "ratios.json").write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
