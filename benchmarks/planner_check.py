"""The memory planner against measured memory, at real sizes, on this machine.

    .venv/bin/python benchmarks/planner_check.py [--shapes qwen2.5-0.5b,llama-3.2-1b,llama-3.2-3b]

For each synthetic shape (real tensor table, random weights) it starts llama-server at
Q4_K_M and F16, and vLLM's server with dummy weights, each at two context lengths, reads
the engine's whole process tree (PSS, so shared pages count once) after a short generation,
and compares with ``labkit.fit`` for the same settings:

- weights: the planner's bytes against the GGUF's tensor bytes (exact by construction);
- KV: the planner's KV growth between the two contexts against the measured growth;
- total: planned against measured PSS.

It prints one table and writes it, with the raw numbers, to benchmarks/results/. A
benchmark, not a test: it takes minutes and its numbers belong to this machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

GiB = 1024**3


def measure(engine: str, model, context: int, **kw) -> dict:
    import labkit

    with labkit.load(engine, model=model, context=context, **kw) as srv:
        srv.generate(["Hello"], max_tokens=4, temperature=0, ignore_eos=True)
        m = srv.memory_scope().measure(detail=True)
    return {"pss_gib": m.pss_bytes / GiB, "rss_gib": m.rss_bytes / GiB}


def main(argv: list[str] | None = None) -> int:
    import pandas as pd

    import labkit
    from labkit import synthetic
    from labkit.engines.defaults import default_dtype
    from labkit.native import cpu

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default="qwen2.5-0.5b,llama-3.2-1b,llama-3.2-3b")
    p.add_argument("--contexts", default="2048,16384")
    p.add_argument("--quants", default="Q4_K_M,F16")
    p.add_argument("--engines", default="llama-server,vllm-server")
    p.add_argument("--kv-gb", type=int, default=2, help="vLLM's KV space (one 16k sequence of a 3B needs 1.75)")
    p.add_argument("--stem", default=f"planner_check-{time.strftime('%Y%m%d')}")
    args = p.parse_args(argv)
    contexts = [int(c) for c in args.contexts.split(",")]
    rows = []
    dtype = default_dtype()
    for shape in args.shapes.split(","):
        for engine in args.engines.split(","):
            quants = args.quants.split(",") if engine == "llama-server" else [None]
            for quant in quants:
                m = synthetic.synthetic(shape, quant=quant)
                got = {}
                for ctx in contexts:
                    t0 = time.perf_counter()
                    kw = {"threads": 2} if engine == "llama-server" else {"kv_cache_gb": args.kv_gb}
                    got[ctx] = measure(engine, m, ctx, **kw)
                    plan = labkit.fit(m, engines=[engine], quant=quant, dtype=dtype, context=ctx,
                                      users=1, cpu_kv_cache_gb=args.kv_gb).row(engine)
                    rows.append({"shape": shape, "engine": engine, "quant": quant or dtype,
                                 "context": ctx, "planned_weights_gib": plan["weights_gib"],
                                 "file_weights_gib": m.weight_bytes / GiB if quant else None,
                                 "planned_kv_gib": plan["kv_total_gib"],
                                 "planned_total_gib": plan["total_gib"],
                                 "measured_pss_gib": got[ctx]["pss_gib"],
                                 "measured_rss_gib": got[ctx]["rss_gib"],
                                 "total_error_pct": 100 * (plan["total_gib"] / got[ctx]["pss_gib"] - 1),
                                 "seconds": time.perf_counter() - t0})
                    print(json.dumps(rows[-1]), flush=True)
                # KV is what grows with the context: compare the growth, planned and measured.
                mine = rows[-len(contexts):]
                for r in mine:
                    r["kv_growth_planned_gib"] = mine[-1]["planned_kv_gib"] - mine[0]["planned_kv_gib"]
                    r["kv_growth_measured_gib"] = got[contexts[-1]]["pss_gib"] - got[contexts[0]]["pss_gib"]
    frame = pd.DataFrame(rows)
    cols = ["shape", "engine", "quant", "context", "planned_weights_gib", "file_weights_gib",
            "kv_growth_planned_gib", "kv_growth_measured_gib", "planned_total_gib",
            "measured_pss_gib", "total_error_pct"]
    table = "\n".join(["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)] + [
        "| " + " | ".join(f"{v:.2f}" if isinstance(v, float) else str(v) for v in row) + " |"
        for row in frame[cols].itertuples(index=False)])
    feats = cpu.features()
    head = (f"Planner check on {feats['model']} ({len(feats['flags'])} relevant flags), "
            f"{time.strftime('%Y-%m-%d')}; vLLM dtype {dtype}, KV space {args.kv_gb} GiB; "
            "llama-server 1 slot.\n\n")
    print(head + table)
    out = REPO / "benchmarks" / "results"
    out.mkdir(exist_ok=True)
    stem = args.stem
    (out / f"{stem}.md").write_text(head + table + "\n")
    (out / f"{stem}.json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
