"""The ``labkit`` command: the same functions as the Python API, from a shell."""

from __future__ import annotations

import argparse
import json
import math
import numbers
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any, NoReturn

from .environment import environment
from .errors import InvalidInput, LabkitError

_COMMANDS: dict[str, tuple[Callable[[argparse.Namespace], int], Callable[[argparse.ArgumentParser], None], str]] = {}


def register(name: str, help_text: str, func: Callable[[argparse.Namespace], int],
             add_args: Callable[[argparse.ArgumentParser], None] = lambda p: None) -> None:
    """Make ``func`` the ``labkit NAME`` subcommand; ``add_args`` declares its arguments."""
    _COMMANDS[name] = (func, add_args, help_text)


class _Parser(argparse.ArgumentParser):
    """argparse with labkit's error format: one `labkit: error:` line and exit 2, as for any
    other bad input, instead of a usage block (subparsers are made of this class too)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"labkit: error: {message} (see `{self.prog} --help`)\n")


def _seconds(whole: bool):
    """An argparse type: a number of seconds above 0 (``whole``: an int), else one error line."""
    def parse(value: str) -> float:
        try:
            seconds = int(value) if whole else float(value)
        except ValueError:
            seconds = math.nan
        if not seconds > 0 or math.isinf(seconds):
            raise argparse.ArgumentTypeError(f"takes a {'whole ' if whole else ''}number of seconds above 0, "
                                             f"got {value!r}")
        return seconds

    return parse


def _top_k(value: str) -> int:
    # 0 would read as "off" and pass silently; the engines take 1 to 20 (GenerationParams)
    try:
        k = int(value)
    except ValueError:
        k = 0
    if not 1 <= k <= 20:
        raise argparse.ArgumentTypeError(f"takes a top-k from 1 to 20 (leave it out for none), got {value!r}")
    return k


def _engine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--engine", default="llama.cpp", help="llama.cpp, vllm, llama-server, vllm-server or openai")
    p.add_argument("--model", default="smollm2-135m", help="bundled name, NAME:QUANT, .gguf path or HF directory")
    p.add_argument("--url", help="for --engine openai: the server's base URL (…/v1)")
    p.add_argument("--threads", type=int, help="CPU threads for local engines")
    p.add_argument("--context", type=int, help="context length per sequence")
    p.add_argument("--parallel", type=int, help="llama-server parallel slots")
    p.add_argument("--gpu-layers", type=int, help="llama.cpp layers on the GPU")
    # Accepted only to refuse it with the reason: a key on the command line shows in `ps`.
    p.add_argument("--api-key", help=argparse.SUPPRESS)


API_KEY_VARIABLE = "LABKIT_API_KEY"


# Which engines each common flag applies to: a flag given to another engine is refused, not
# dropped (`--engine openai --threads 4` would otherwise run with the server's own threads).
_LOCAL = frozenset({"llama.cpp", "vllm", "llama-server", "vllm-server"})
FLAG_ENGINES: dict[str, frozenset[str]] = {
    "url": frozenset({"openai"}), "threads": _LOCAL, "context": _LOCAL,
    "parallel": frozenset({"llama-server"}), "gpu_layers": frozenset({"llama.cpp", "llama-server"})}


def check_engine_flags(args: argparse.Namespace, engines: list[str]) -> None:
    """Refuse a common flag that applies to none of ``engines`` (unknown names are left to load())."""
    from .engines.base import ENGINES

    known = [e for e in engines if e in ENGINES]
    for flag, fits in FLAG_ENGINES.items():
        if known and getattr(args, flag, None) is not None and not fits & set(known):
            which = f"--engine {known[0]}" if len(engines) == 1 else f"any of --engines {','.join(engines)}"
            raise InvalidInput(f"--{flag.replace('_', '-')} does not apply to {which}: it is for "
                               f"{', '.join(sorted(fits))}. Remove it.")


def engine_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """Engine keyword arguments from the common flags (only those given); a flag that does not
    apply to ``--engine`` is refused.

    An API key comes only from the environment (``LABKIT_API_KEY``), never from the command
    line, where ``ps`` would show it: the openai engine sends it, and managed servers are
    started requiring it.
    """
    check_engine_flags(args, [args.engine])
    return kwargs_for(args, args.engine)


def kwargs_for(args: argparse.Namespace, engine: str) -> dict[str, Any]:
    """The common flags that apply to ``engine``, as its keyword arguments (unchecked)."""
    import os

    if getattr(args, "api_key", None) is not None:
        raise InvalidInput(f"An API key on the command line shows in `ps` and the shell's history: "
                           f"export it as {API_KEY_VARIABLE} instead (labkit sends it from there).")
    key = os.environ.get(API_KEY_VARIABLE)
    if engine == "openai":
        if not args.url:
            raise LabkitError("--engine openai needs --url (e.g. http://127.0.0.1:8000/v1).")
        kw: dict[str, Any] = {"url": args.url}
        if args.model != "smollm2-135m":
            kw["model"] = args.model
        if key:
            kw["api_key"] = key
        return kw
    kw = {"model": args.model}
    if key and engine in ("llama-server", "vllm-server"):
        kw["api_key"] = key
    for flag in ("threads", "context", "parallel", "gpu_layers"):
        if getattr(args, flag, None) is not None and engine in FLAG_ENGINES[flag]:
            kw[flag] = getattr(args, flag)
    return kw


def _models(args: argparse.Namespace) -> int:
    from .models import list_models

    entries = list_models()
    if args.json:
        for e in entries:
            print(_json(e.to_dict()))
    else:
        width = max(len(e.name) for e in entries)
        for e in entries:
            print(f"{e.name:<{width}}  {e.kind:<9}  {e.size_mb:8.1f} MB  {e.path}"
                  + (f"\n{'':<{width}}  {e.check}" if e.check else ""))
    return 0


def _models_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="one JSON object per model")


register("models", "list bundled models and cached variants", _models, _models_args)


def _generate(args: argparse.Namespace) -> int:
    from .engines import load

    params = {"max_tokens": args.max_tokens, "temperature": args.temperature, "seed": args.seed}
    if args.logprobs is not None:
        params["logprobs"] = args.logprobs
    with load(args.engine, **engine_kwargs(args)) as engine:
        if args.chat:
            outs = engine.chat([[{"role": "user", "content": p}] for p in args.prompts], **params)
        else:
            outs = engine.generate(args.prompts, **params)
        for out in outs:
            if args.json:
                print(_json({**out.to_dict(), "info": engine.info.to_dict()}))
            else:
                print(out.text)
    return 0


def _generate_args(p: argparse.ArgumentParser) -> None:
    _engine_args(p)
    p.add_argument("prompts", nargs="+", help="one or more prompts")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--logprobs", type=_top_k, help="top-k logprobs per token (1 to 20)")
    p.add_argument("--chat", action="store_true", help="send each prompt as a one-message chat")
    p.add_argument("--json", action="store_true", help="one JSON object per prompt")


register("generate", "generate text with one engine", _generate, _generate_args)


def _compare(args: argparse.Namespace) -> int:
    from .comparison import compare
    from .engines import load

    names = [n.strip() for n in args.engines.split(",") if n.strip()]
    if len(names) < 2 or len(set(names)) != len(names):
        raise InvalidInput(f"--engines takes two or more different engines, comma-separated "
                           f"(e.g. llama.cpp,vllm), got {args.engines!r}.")
    prompts = [[{"role": "user", "content": p}] for p in args.prompts] if args.chat else args.prompts
    check_engine_flags(args, names)
    engines: dict[str, Any] = {}
    try:
        for name in names:
            engines[name] = load(name, **kwargs_for(args, name))
        cmp = compare(engines, prompts, max_tokens=args.max_tokens, logprobs=not args.no_logprobs)
    finally:
        for engine in engines.values():
            engine.close()
    if args.json:
        # through pandas' JSON: a missing value is null, not NaN (which is not JSON) or "<NA>"
        print(_json({"reference": cmp.reference, "table": json.loads(cmp.table.to_json(orient="records")),
                     "parity": json.loads(cmp.parity.to_json(orient="records")), "notes": cmp.notes,
                     "engines": {n: e.info.to_dict() for n, e in engines.items()},
                     "environment": environment()}))
        return 0
    for note in cmp.notes:
        print(f"note: {note}")
    print(cmp.table.drop(columns=["text"]).to_string(index=False))
    if not cmp.parity.empty:
        print(cmp.parity.to_string(index=False))
    return 0


def _compare_args(p: argparse.ArgumentParser) -> None:
    _engine_args(p)
    p.add_argument("--engines", required=True, help="two or more engines, e.g. llama.cpp,vllm")
    p.add_argument("prompts", nargs="+", help="one or more prompts")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--chat", action="store_true", help="send each prompt as a one-message chat")
    p.add_argument("--no-logprobs", action="store_true", help="text and tokens only (no teacher forcing)")
    p.add_argument("--json", action="store_true", help="one JSON object: table, parity, notes")


register("compare", "compare the greedy outputs of several engines on the same prompts", _compare,
         _compare_args)


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise LabkitError(f"Expected comma-separated integers like 1,8,32, got {text!r}.") from None


def _float_list(text: str, flag: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise LabkitError(f"{flag} takes comma-separated numbers like 0.5,2,8 (requests per "
                          f"second), got {text!r}.") from None


def _stop_then_raise(stop: threading.Event) -> Callable[[int, Any], None]:
    """A SIGINT handler that also sets the sweep's stop event: a KeyboardInterrupt raised while
    the main thread runs a finalizer is printed and swallowed by Python, and the sweep then ran
    to the end and exited 0 (seen once in the suite); the event stops it either way."""
    def handler(signum: int, frame: Any) -> None:
        stop.set()
        raise KeyboardInterrupt

    return handler


def _bench(args: argparse.Namespace) -> int:
    from .loadgen import bench, workloads

    wl = workloads.named(args.workload, args.input_tokens, args.output_tokens)
    kwargs = engine_kwargs(args)
    rates = _float_list(args.rate, "--rate") if args.rate else None
    _folder_or_new(args.out)  # before the engine loads, not after
    stop = threading.Event()
    # A parent can hand its SIGINT mask down (a blocked signal survives exec); Ctrl-C must work.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    previous = signal.signal(signal.SIGINT, _stop_then_raise(stop))
    try:
        res = bench(args.engine, concurrency=_int_list(args.concurrency) if args.concurrency else None,
                    rate=rates, requests_per_level=args.requests, duration_s=args.duration, workload=wl,
                    out=args.out, progress=not args.json, stop_event=stop, workers=_workers(args.workers),
                    ray_address=args.ray_address, **kwargs)
    finally:
        signal.signal(signal.SIGINT, previous)
    summary = res.summary
    # Threads differ by engine when not given (vLLM keeps a core for its front end): say so.
    eng = res.manifest.get("engine", {})
    if args.json:
        for row in summary.to_dict("records"):  # each row says what measured it, and where
            print(_json({**row, "threads": eng.get("threads"), "engine_version": eng.get("engine_version"),
                         "model": eng.get("model"), "machine": res.manifest.get("environment", {}).get("hostname")}))
    elif not summary.empty:
        cols = ["level", "completed", "errors", "unmeasured", "req_per_s", "output_tok_per_s",
                "ttft_p50_ms", "tpot_p50_ms"]
        print(f"{eng.get('engine', args.engine)} ({eng.get('engine_version', '?')}), model "
              f"{eng.get('model', '?')}, threads {eng.get('threads') or 'the engine default'}")
        print(summary[[c for c in cols if c in summary.columns]].to_string(index=False))
        if args.out:
            print(f"results: {args.out}")
    if res.ended == "completed":
        return _requests_exit(summary, res.requests, f", kept in {args.out}" if args.out else "")
    sent = int(summary["completed"].sum()) if "completed" in summary else 0
    total = len(res.requests)
    kept = f", kept in {args.out}" if args.out else ""
    if res.ended == "interrupted":
        print(f"labkit: interrupted after {sent} of {total} requests{kept}", file=sys.stderr)
        return 130
    print(f"labkit: error: {res.ended}; {sent} of {total} requests measured{kept}.", file=sys.stderr)
    if res.engine_log:
        print("--- last lines of the engine's log ---\n" + res.engine_log, file=sys.stderr)
    return 1


def _folder_or_new(out: str | None) -> None:
    """Refuse an --out that cannot become a folder (a file, or a file above it)."""
    from pathlib import Path

    if not out:
        return
    for path in (Path(out), *Path(out).parents):
        if path.exists():
            if not path.is_dir():
                raise InvalidInput(f"--out {out}: {path} is a file, not a folder. Give a new folder or "
                                   "an existing one.")
            return


def _requests_exit(summary: Any, requests: Any, kept: str) -> int:
    """A sweep that ran to its end: 1 when no request completed (nothing was measured), else
    0, with a warning on stderr when some failed (their figures are not in the table)."""
    completed = int(summary["completed"].sum()) if "completed" in summary else 0
    errors = int(summary["errors"].sum()) if "errors" in summary else 0
    from .loadgen.result import first_error  # (loadgen loads lazily: --help stays quick)

    first = first_error(requests)
    if completed == 0:
        failed = f": all {errors} failed (first: {first})" if errors else ""
        print(f"labkit: error: no request completed{failed}{kept}.", file=sys.stderr)
        return 1
    if errors:
        print(f"labkit: warning: {errors} of {completed + errors} requests failed (first: {first}); the "
              f"figures are those of the {completed} that completed{kept}.", file=sys.stderr)
    return 0


def _bench_args(p: argparse.ArgumentParser) -> None:
    _engine_args(p)
    p.add_argument("--concurrency", help="comma-separated concurrency levels, e.g. 1,8,32")
    p.add_argument("--rate", help="comma-separated Poisson request rates (req/s)")
    p.add_argument("--requests", type=int, default=32, help="requests per concurrency level")
    p.add_argument("--duration", type=float, default=30.0, help="seconds per rate level")
    p.add_argument("--workload", choices=["chat", "synthetic", "sharegpt", "shared-prefix", "long-context",
                                          "multi-turn"],
                   default="chat", help="what the requests are (see labkit.workloads.named)")
    p.add_argument("--input-tokens", type=int, default=None,
                   help="prompt length; the shared prefix for shared-prefix; unused for sharegpt")
    p.add_argument("--output-tokens", type=int, default=64,
                   help="answer length (sharegpt: 0 for each real reply's length)")
    p.add_argument("--out", help="folder for manifest.json, requests.jsonl, summary.csv, memory.csv")
    p.add_argument("--workers", default="1",
                   help="load processes (servers only), or 'ray' / 'ray:N' for Ray actors")
    p.add_argument("--ray-address", help="with --workers ray: the cluster (default: Ray's 'auto')")
    p.add_argument("--json", action="store_true", help="one JSON object per level")


def _workers(value: str) -> int | str:
    return int(value) if value.strip().isdigit() else value.strip()


def _calibrate(args: argparse.Namespace) -> int:
    from .loadgen import calibrate

    cal = calibrate(workers=_int_list(args.workers) if args.workers else None,
                    users=_int_list(args.users), requests_per_level=args.requests, progress=not args.json)
    if args.json:
        print(cal.table.to_json(orient="records"))
    else:
        print(f"against labkit's mock server, {cal.cores} usable cores:")
        print(cal.table.to_string(index=False, float_format=lambda x: f"{x:,.1f}"))
    return 0


def _calibrate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", help="comma-separated load-process counts (default: 1, 2, 4 ... up to the cores)")
    p.add_argument("--users", default="16,64,256", help="comma-separated concurrency levels to try")
    p.add_argument("--requests", type=int, default=512, help="requests per level")
    p.add_argument("--json", action="store_true", help="the table as one JSON list")


register("calibrate", "what this client sustains (req/s, chunks/s) against labkit's mock server",
         _calibrate, _calibrate_args)


register("bench", "measure throughput, latency and memory under load", _bench, _bench_args)


def _capacity(args: argparse.Namespace) -> int:
    from .loadgen import SLO, capacity, workloads

    slo = SLO.parse(args.slo)
    wl = workloads.chat(args.input_tokens, args.output_tokens)
    kwargs = engine_kwargs(args)
    _folder_or_new(args.out)
    stop = threading.Event()
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    previous = signal.signal(signal.SIGINT, _stop_then_raise(stop))
    try:
        cap = capacity(args.engine, slo=slo, workload=wl, by=args.by, start=args.start,
                       max_level=args.max_level, budget_s=args.budget, duration_s=args.duration,
                       out=args.out, progress=not args.json, stop_event=stop, **kwargs)
    finally:
        signal.signal(signal.SIGINT, previous)
    completed, errors = (int(cap.levels[c].sum()) if c in cap.levels else 0 for c in ("completed", "errors"))
    if args.json:
        print(_json({**cap.to_dict(), "environment": environment()}))
    else:
        cols = ["step", "level", "met", "completed", "errors", "output_tok_per_s", *slo.bounds,
                "goodput_req_per_s"]
        print(cap.levels[[c for c in cols if c in cap.levels.columns]].to_string(index=False))
        if completed or not errors:  # else no SLO was judged: the error below says why
            print(cap.summary_line())
    if cap.stopped == "interrupted":
        print("labkit: interrupted; the levels measured are kept", file=sys.stderr)
        return 130
    if cap.stopped.startswith("engine died"):
        print(f"labkit: error: {cap.stopped}", file=sys.stderr)
        return 1
    return _capacity_failures(cap, completed, errors)


def _capacity_failures(cap: Any, completed: int, errors: int) -> int:
    """Failed requests are failures, not latencies that missed the SLO: 1 when no request
    completed at any level, else a warning naming the levels where some failed."""
    from .loadgen.result import first_error

    first = next((e for e in (first_error(r.requests) for r in cap.results) if e), "")
    if errors and not completed:
        print(f"labkit: error: no request completed at any level: all {errors} failed (first: {first}); "
              "the SLO was never judged.", file=sys.stderr)
        return 1
    if errors:
        bad = cap.levels[cap.levels["errors"] > 0]
        where = ", ".join(f"{r.level:g} ({r.errors} of {r.completed + r.errors})" for r in bad.itertuples())
        print(f"labkit: warning: requests failed at level {where} (first: {first}); those levels count "
              "as not meeting the SLO because of the failures, whatever their latencies.", file=sys.stderr)
    return 0


def _capacity_args(p: argparse.ArgumentParser) -> None:
    _engine_args(p)
    p.add_argument("--slo", required=True, help="bounds in ms, e.g. ttft_p99_ms=2000,tpot_p99_ms=100 "
                   "(any of ttft/tpot/itl/e2e at p50/p90/p99)")
    p.add_argument("--by", choices=["users", "rate"], default="users",
                   help="users: closed-loop concurrency; rate: Poisson arrivals (req/s)")
    p.add_argument("--start", type=float, help="first level (default 1 user or 0.5 req/s)")
    p.add_argument("--max-level", type=float, help="largest level tried (default 256 users or 1000 req/s)")
    p.add_argument("--budget", type=float, help="seconds: no level starts that would end past it")
    p.add_argument("--duration", type=float, default=20.0, help="seconds per rate level")
    p.add_argument("--input-tokens", type=int, default=128)
    p.add_argument("--output-tokens", type=int, default=64)
    p.add_argument("--out", help="folder: capacity.json and one bench run folder per level")
    p.add_argument("--json", action="store_true", help="one JSON object: the answer and every level")


register("capacity", "how many users (or req/s) an engine serves within an SLO", _capacity,
         _capacity_args)


def _fit(args: argparse.Namespace) -> int:
    from .planner import fit

    engines = args.engines.split(",")
    plan = fit(args.model, engines=engines, quant=args.quant, dtype=args.dtype, context=args.context,
               users=args.users, gpu_memory=args.gpu_memory, system_memory=args.system_memory)
    if args.json:
        for row in plan.table.to_dict("records"):
            print(_json(row))
    else:
        print(plan.table.to_string(index=False))
    return 0


def _fit_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="smollm2-135m", help="name, .gguf, HF directory or config.json")
    p.add_argument("--engines", default="llama.cpp,vllm")
    p.add_argument("--quant", help="GGUF type for llama.cpp (Q4_K_M, IQ3_S, ...) or vLLM weight type")
    p.add_argument("--dtype", default="auto", help="vLLM weight dtype (auto: bf16 on GPUs and bf16-capable CPUs, else float32)")
    p.add_argument("--context", type=int, default=4096)
    p.add_argument("--users", type=int, default=1)
    p.add_argument("--gpu-memory", help="e.g. 12GiB; omit for CPU only")
    p.add_argument("--system-memory", help="e.g. 64GiB; default: this machine's")
    p.add_argument("--json", action="store_true", help="one JSON object per engine")


register("fit", "plan memory: will a model fit, in which engine", _fit, _fit_args)


def _json(value: Any) -> str:
    """One line of strict JSON for --json: NaN and infinities (a level where nothing
    completed, a figure not measured) become null, which every JSON parser reads; numpy
    numbers become plain ones and anything else its text."""
    return json.dumps(_finite(value), default=str, allow_nan=False)


def _finite(value: Any) -> Any:
    if type(value).__module__ == "numpy" and hasattr(value, "tolist"):  # np.bool_, np.float32, arrays
        value = value.tolist()
    if type(value).__name__ in ("NAType", "NaTType"):  # pandas' missing values
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    return value


def _json_or_text(value: str) -> Any:
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def _run(args: argparse.Namespace) -> int:
    from .runner import run

    params = {name: _json_or_text(value) for name, value in args.param or []}
    if args.grid:
        return _run_grid(args, params)
    folder = run(args.notebook, params, out=args.out, timeout_s=args.timeout)
    stem = args.notebook.rsplit("/", 1)[-1].removesuffix(".ipynb")
    report = folder / (stem + ".html")
    if args.json:
        print(_json({"folder": str(folder), "report": str(report), "notebook": str(folder / (stem + ".ipynb")),
                     "results": str(folder / "results.json"), "manifest": str(folder / "manifest.json")}))
        return 0
    print(f"report: {report}")
    print(f"executed notebook, results.json and manifest.json: {folder}")
    return 0


def _run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("notebook", help="path to a .ipynb")
    p.add_argument("-p", "--param", nargs=2, action="append", metavar=("NAME", "VALUE"),
                   help="override a parameter (VALUE is read as JSON when it parses)")
    p.add_argument("--out", help="run folder (default runs/NAME-TIMESTAMP)")
    p.add_argument("--grid", nargs=2, action="append", metavar=("NAME", "VALUES"),
                   help="run once per value of a parameter (VALUES: a JSON list); several --grid "
                        "flags run every combination, each into OUT/NNN-NAME=VALUE")
    p.add_argument("--json", action="store_true", help="JSON on stdout: the run's files (with --grid: the points)")
    p.add_argument("--timeout", type=_seconds(whole=True), default=1800,
                   help="seconds one cell may run before it is interrupted (default 1800)")


def _run_grid(args: argparse.Namespace, params: dict[str, Any]) -> int:
    from .runner import run_grid

    grid = {}
    for name, values in args.grid:
        parsed = _json_or_text(values)
        if not isinstance(parsed, list) or not parsed:
            raise InvalidInput(f"--grid {name} takes a JSON list of values, e.g. '[1, 4, 16]'; got {values!r}.")
        grid[name] = parsed
    points = run_grid(args.notebook, grid, params, out=args.out, progress=not args.json, timeout_s=args.timeout)
    failed = points[points["error"].notna()]
    if args.json:
        print(points.to_json(orient="records"))
    else:
        print(points.to_string(index=False))
    for _, row in failed.iterrows():
        print(f"labkit: point {row['folder']} failed: {row['error']}", file=sys.stderr)
    return 1 if len(failed) else 0


register("run", "run a notebook headlessly and write its report", _run, _run_args)


def _step(n: int, total: int, what: str, func: Callable[[], Any]) -> Any:
    """Run one setup step, saying what it does and how long it took (on stderr)."""
    import time

    print(f"[{n}/{total}] {what} ...", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    value = func()
    print(f"[{n}/{total}] {what}: done in {time.perf_counter() - t0:.1f} s", file=sys.stderr,
          flush=True)
    return value


def _setup(args: argparse.Namespace) -> int:
    """Build what is cached once per machine, so the first notebook does not wait for it."""
    if args.check:
        return _doctor(args)
    from . import models
    from .native import torch_dtypes
    from .native.llamacpp import current_build

    build = None
    if not args.without_llama_cpp:
        build = _step(1, 4, "llama.cpp: build and check on this CPU (first time: ~4 min on 2 cores)",
                      current_build)
    gguf = _step(2, 4, "bundled model", lambda: models.gguf_path(models.DEFAULT_MODEL))
    hf = _step(3, 4, "convert the bundled model for vLLM and check it against llama.cpp (first time: ~30 s)",
               lambda: models.hf_dir(models.DEFAULT_MODEL, checked=not args.without_llama_cpp))
    from .conversion import read_check

    check = read_check(hf)
    # the dtype check times matmuls: it waits for an idle CPU (make runs this beside a compile)
    dtypes = None if args.without_llama_cpp else _step(
        4, 4, "check torch's float32/bfloat16 kernels for vLLM (first time: ~5 s)", torch_dtypes.check)
    dtype = None if dtypes is None else ("bfloat16" if dtypes.bfloat16_native else "float32")
    if args.json:
        print(_json({"llama_cpp": build.to_dict() if build else None, "bundled_gguf": str(gguf),
                     "vllm_directory": str(hf), "conversion": check.to_dict() if check else None,
                     "vllm_cpu_dtype": dtype, "vllm_cpu_dtype_reason": dtypes.reason if dtypes else None}))
        return 0
    if args.without_llama_cpp:
        return 0
    if build is not None:
        print(build.explain())
    print(f"bundled GGUF:    {gguf}")
    print(f"vLLM directory:  {hf}")
    if check is not None:
        print(f"conversion:      {check.summary()}")
    print(f"vLLM CPU dtype:  {dtype} ({dtypes.reason})")
    return 0


def _setup_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--check", action="store_true", help="re-run the checks (as `labkit doctor`)")
    p.add_argument("--json", action="store_true", help="one JSON object: what was set up (with --check: the checks)")
    p.add_argument("--without-llama-cpp", action="store_true",
                   help="only convert the bundled model, which needs no llama.cpp build (make "
                        "runs this beside the compile)")


register("setup", "build llama.cpp for this CPU, check it, convert the bundled model (cached)",
         _setup, _setup_args)


def _doctor(args: argparse.Namespace) -> int:
    """Re-run every check of this machine's native builds, in child processes."""
    from .environment import environment
    from .errors import EngineError
    from .native import cpu, torch_dtypes
    from .native.llamacpp import current_build

    report: dict[str, Any] = {"cpu": {**cpu.features(), "fingerprint": cpu.fingerprint()}}
    ok = True
    try:
        build = current_build(recheck=True)
        report["llama.cpp"] = build.to_dict()
        ok &= build.probe.ok
    except EngineError as e:
        report["llama.cpp"] = {"error": str(e)}
        ok = False
    dtypes = torch_dtypes.check(recheck=True)
    report["torch"] = dtypes.to_dict()
    ok &= dtypes.float32_ok
    report["gpu"] = environment()["gpu"]
    report["ok"] = bool(ok)
    if args.json:
        print(_json(report))
        return 0 if ok else 1
    print(f"CPU: {report['cpu']['model']} ({report['cpu']['machine']}), fingerprint "
          f"{report['cpu']['fingerprint']}\n     flags: {' '.join(report['cpu']['flags'])}")
    if "error" in report["llama.cpp"]:
        print(f"llama.cpp: FAIL\n{report['llama.cpp']['error']}")
    else:
        print(build.explain())
    print(f"torch: float32 {'ok' if dtypes.float32_ok else 'FAIL'}, bfloat16 "
          f"{'ok' if dtypes.bfloat16_ok else 'FAIL'}: {dtypes.reason}")
    print(f"GPU: {report['gpu'] or 'none'}")
    print("all checks passed" if ok else "some checks FAILED (see above)")
    return 0 if ok else 1


def _doctor_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="one JSON object")


register("doctor", "re-check this machine's llama.cpp build and torch kernels", _doctor,
         _doctor_args)


def _conformance(args: argparse.Namespace) -> int:
    """The OpenAI-API conformance matrix of one server, started here or attached by URL."""
    from .apicheck import TOOL_ARGS, conformance
    from .engines import load

    if args.engine not in ("llama-server", "vllm-server", "openai"):
        raise InvalidInput(f"--engine {args.engine} has no HTTP API to check: use llama-server, "
                           "vllm-server, or openai with --url.")
    kw = engine_kwargs(args)
    if not args.no_tool_flags and args.engine in TOOL_ARGS:
        kw["extra_args"] = TOOL_ARGS[args.engine]
    with load(args.engine, **kw) as srv:
        m = conformance(srv, timeout_s=args.timeout, progress=not args.json)
        info = srv.info.to_dict()
    if args.json:  # verdicts depend on the server's version: say which, and where
        print(_json({**m.to_dict(), "engine": info, "environment": environment()}))
        return 0
    for engine, flags in m.flags.items():
        print(f"{engine}, started with {flags}")
    for r in m.table.to_dict("records"):
        print(f"  {r['status']:<12} {r['feature']:<52} {r['evidence'][:90]}")
    print(m.counts().to_string())
    return 0


def _conformance_args(p: argparse.ArgumentParser) -> None:
    _engine_args(p)
    p.set_defaults(engine="llama-server")
    p.add_argument("--timeout", type=_seconds(whole=False), default=60.0, help="seconds each request may take")
    p.add_argument("--no-tool-flags", action="store_true",
                   help="start the server without the flags the tool checks need (vLLM's parser)")
    p.add_argument("--json", action="store_true", help="one JSON object: flags and every check")


register("conformance", "grade a server's OpenAI API: endpoints, sampling, JSON, tools, errors",
         _conformance, _conformance_args)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="labkit", description="Compare vLLM and llama.cpp on this machine.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (func, args_fn, help_text) in _COMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        args_fn(p)
        p.set_defaults(func=func)
    return parser


def main(argv: list[str] | None = None) -> int:
    import warnings

    # One line per warning on stderr, as labkit words it; no source line under it.
    warnings.formatwarning = lambda message, *_args, **_kw: f"{message}\n"
    args = build_parser().parse_args(argv)
    from .errors import EngineError, NotebookError

    try:
        code = args.func(args)
        sys.stdout.flush()  # here, where a closed pipe is caught, not at exit
        return code
    except BrokenPipeError:
        return _stdout_closed()
    except (EngineError, NotebookError) as e:  # the job failed: not the caller's input
        print(f"labkit: error: {e}", file=sys.stderr)
        return 1
    except LabkitError as e:  # bad input: a model, a flag, a value
        print(f"labkit: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("labkit: interrupted", file=sys.stderr)
        return 130


def _stdout_closed() -> int:
    """The reader of stdout went away (`labkit models --json | head -1`): stop quietly, as a
    Unix filter killed by SIGPIPE does, and exit 141 (128 + SIGPIPE) like one, so that a
    pipeline under `set -o pipefail` sees that not all of the output was read. stdout points
    at /dev/null so that the interpreter's final flush does not fail again (the recipe of
    the Python docs, "Note on SIGPIPE")."""
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 141


if __name__ == "__main__":
    sys.exit(main())
