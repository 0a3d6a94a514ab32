"""Client capacity: what each load generator sustains against the same loopback mock server.

labkit's mock server (``mock-server``: no model, each reply written at once) answers as fast
as a server could, so the figures are the clients': requests per second (replies of 4
tokens) and streamed chunks per second (replies of 256), at one concurrency, for labkit
with 1, 2 and 4 load processes, ``vllm bench serve`` (this venv) and, where ``--peers`` names
a venv that has them, GuideLLM and AIPerf (install them there, not here:
``python -m venv V && V/bin/pip install guidellm aiperf``). Every client runs as a child
process, so its CPU seconds (start-up included) are counted the same way, with those of
the processes it starts. Then labkit's self-check: it must fire on a run made client-bound
on purpose and stay quiet on one that is not.

    python benchmarks/client_capacity.py --peers /tmp/peers [--users 64] [--requests 512]

Prints ratios to labkit with one worker, measured in this run; ``--out`` writes them as JSON.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import psutil

import labkit
from labkit.loadgen import from_aiperf, from_guidellm, from_vllm_bench, workloads

SHORT, LONG = 4, 256


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _tree_cpu(root: psutil.Process) -> float:
    return sum(sum(p.cpu_times()[:2]) for p in [root, *root.children(recursive=True)])


def _timed(cmd: list[str], server: psutil.Process, cwd: str | None = None) -> tuple[float, float, float]:
    """Run a client to the end: (wall s, its CPU s with its children, the server's CPU s)."""
    cpu0, srv0, t0 = _children_cpu(), _tree_cpu(server), time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=900)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed: {r.stderr[-1500:]}")
    return wall, _children_cpu() - cpu0, _tree_cpu(server) - srv0


def labkit_cmd(url: str, users: int, n: int, tokens: int, workers: int, out: Path) -> list[str]:
    code = ("import sys, labkit; from labkit.loadgen import workloads\n"
            "if __name__ == '__main__':\n"
            f"    e = labkit.load('openai', url={url!r})\n"
            f"    labkit.bench(e, concurrency=[{users}], requests_per_level={n}, warmup=0, progress=False,"
            f" workers={workers}, out={str(out)!r},"
            f" workload=workloads.synthetic(input_tokens=16, output_tokens={tokens}))\n")
    return [sys.executable, "-c", code]


def vllm_cmd(url: str, tokenizer: str, users: int, n: int, tokens: int, out: Path) -> list[str]:
    return [sys.executable, "-c", "import sys; from vllm.benchmarks.serve import add_cli_args, main; "
            "from vllm.utils.argparse_utils import FlexibleArgumentParser as P; p = P(); add_cli_args(p); "
            "main(p.parse_args(sys.argv[1:]))",
            "--backend", "vllm", "--base-url", url[: -len("/v1")], "--endpoint", "/v1/completions",
            "--model", "labkit-mock", "--tokenizer", tokenizer, "--dataset-name", "random",
            "--random-input-len", "16", "--random-output-len", str(tokens), "--ignore-eos",
            "--num-prompts", str(n), "--max-concurrency", str(users), "--disable-tqdm",
            "--save-result", "--result-dir", str(out.parent), "--result-filename", out.name]


def guidellm_cmd(peers: Path, url: str, tokenizer: str, users: int, n: int, tokens: int, out: Path) -> list[str]:
    return [str(peers / "bin" / "guidellm"), "run",
            "--backend", f"kind=openai_http,target={url[: -len('/v1')]},request_format=/v1/completions",
            "--profile", f"kind=concurrent,streams={users}", "--constraint", f"kind=max_requests,count={n}",
            "--data", f"kind=synthetic_text,prompt_tokens=16,output_tokens={tokens}",
            "--tokenizer", f"kind=huggingface_auto,model={tokenizer}", "--output", f"kind=json,path={out}",
            "--disable-console-interactive"]


def aiperf_cmd(peers: Path, url: str, tokenizer: str, users: int, n: int, tokens: int, out: Path) -> list[str]:
    return [str(peers / "bin" / "aiperf"), "profile", "--model", "labkit-mock", "--url", url[: -len("/v1")],
            "--endpoint-type", "completions", "--streaming", "--concurrency", str(users),
            "--request-count", str(n), "--prompt-input-tokens-mean", "16",
            "--prompt-output-tokens-mean", str(tokens), "--tokenizer", tokenizer,
            "--artifact-dir", str(out), "--ui-type", "none"]


def _figures(tool: str, out: Path) -> pd.Series:
    if tool.startswith("labkit"):
        return labkit.BenchResult.load(out).summary.iloc[0]
    if tool == "vllm bench serve":
        return from_vllm_bench(out).iloc[0]
    if tool == "guidellm":
        return from_guidellm(out).iloc[0]
    return from_aiperf(out / "profile_export_aiperf.json").iloc[0]


def _commands(url: str, tokenizer: str, args: argparse.Namespace, n: int, tokens: int) -> dict:
    """Each client's command line, given where its results go."""
    users = args.users
    tools = {f"labkit (workers={w})": (lambda o, w=w: labkit_cmd(url, users, n, tokens, w, o)) for w in (1, 2, 4)}
    tools["vllm bench serve"] = lambda o: vllm_cmd(url, tokenizer, users, n, tokens, o)
    if args.peers:
        tools["guidellm"] = lambda o: guidellm_cmd(args.peers, url, tokenizer, users, n, tokens, o)
        tools["aiperf"] = lambda o: aiperf_cmd(args.peers, url, tokenizer, users, n, tokens, o)
    return tools


def capacity(url: str, server: psutil.Process, tokenizer: str, args: argparse.Namespace) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind, tokens, n in (("requests", SHORT, args.requests * 4), ("chunks", LONG, args.requests)):
            for tool, make in _commands(url, tokenizer, args, n, tokens).items():
                folder = Path(tmp) / f"{kind}-{len(rows)}"
                folder.mkdir()
                out = folder if tool == "aiperf" or tool.startswith("labkit") else folder / "r.json"
                wall, cpu, srv = _timed(make(out), server, cwd=tmp)
                f = _figures(tool, out)
                rows.append({"workload": kind, "tool": tool, "completed": f.get("completed"),
                             "req_per_s": f["req_per_s"], "chunks_per_s": f["req_per_s"] * tokens,
                             "ttft_p50_ms": f.get("ttft_p50_ms"), "client_cpu_s": cpu, "wall_s": wall,
                             "server_cpu_s": srv})
                print(f"  {kind:8s} {tool:22s} {f['req_per_s']:8.1f} req/s {f['req_per_s'] * tokens:9.0f} chunks/s "
                      f"client CPU {cpu:5.1f} s (wall {wall:4.1f} s), mock server CPU {srv:4.1f} s", flush=True)
    return rows


def self_check() -> dict:
    """The self-check on purpose: a fast mock and many users (client-bound) against a slow
    mock and few (not)."""
    w = workloads.synthetic(input_tokens=16, output_tokens=LONG)
    with labkit.load("mock-server") as fast:
        bound = labkit.bench(fast, concurrency=[64], requests_per_level=512, workload=w, warmup=0, progress=False)
    with labkit.load("mock-server", token_delay_ms=20, ttft_ms=50) as slow:
        quiet = labkit.bench(slow, concurrency=[8], requests_per_level=16, workload=workloads.synthetic(
            input_tokens=16, output_tokens=32), warmup=0, progress=False)
    out = {}
    for name, res in (("client-bound on purpose", bound), ("not client-bound", quiet)):
        s = res.summary.iloc[0]
        out[name] = {k: s[k] for k in ("client_bound", "client_busiest_core", "dispatch_delay_p99_ms", "ttft_p50_ms")}
        print(f"  {name:24s} client_bound={s['client_bound']} (busiest process {s['client_busiest_core']:.0%} of a "
              f"core, dispatch p99 {s['dispatch_delay_p99_ms']:.1f} ms, TTFT p50 {s['ttft_p50_ms']:.1f} ms)")
        if s["client_note"]:
            print(f"    {s['client_note']}")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--users", type=int, default=64)
    p.add_argument("--requests", type=int, default=512, help="per run of 256-token replies (x4 for 4-token ones)")
    p.add_argument("--peers", type=Path, help="a venv with guidellm and aiperf installed")
    p.add_argument("--out", type=Path, help="write the figures here as JSON")
    args = p.parse_args()
    from labkit.engines.defaults import vllm_model_source

    tokenizer = str(vllm_model_source("smollm2-135m", False)[0])
    from labkit.environment import environment

    print(f"{psutil.cpu_count()} cores ({environment()['cpu']}); {args.users} users", flush=True)
    with labkit.load("mock-server") as mock:
        rows = capacity(mock.url, psutil.Process(mock.info.pid), tokenizer, args)
    table = pd.DataFrame(rows)
    for kind, g in table.groupby("workload", sort=False):
        base = g[g["tool"] == "labkit (workers=1)"].iloc[0]
        for _, r in g.iterrows():
            metric = "req_per_s" if kind == "requests" else "chunks_per_s"
            print(f"{kind}: {r['tool']} / labkit (workers=1) = {r[metric] / base[metric]:.2f}")
    print("self-check:")
    checks = self_check()
    if args.out:
        args.out.write_text(json.dumps({"cores": psutil.cpu_count(), "users": args.users, "rows": rows,
                                        "self_check": checks, "time": time.strftime("%Y-%m-%dT%H:%M:%S")},
                                       indent=2, default=str))


if __name__ == "__main__":
    main()
