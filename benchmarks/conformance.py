"""The OpenAI-API conformance matrix of both managed servers, and batch invariance of each
engine that batches, on the bundled model: tables, not timings.

    .venv/bin/python benchmarks/conformance.py [--users 8] [--out benchmarks/results]

Writes ``conformance-DATE.md`` and ``.json``: the matrix (engines as columns), what the
model did under each tool check, and per engine how many greedy outputs changed when the
same prompts ran among ``--users`` concurrent users instead of alone.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pandas as pd

import labkit
from labkit.apicheck import TOOL_ARGS, Conformance
from labkit.environment import environment


def md(frame: pd.DataFrame, index: bool = True) -> str:
    """A markdown table (pandas' own needs the tabulate package, which labkit does not install)."""
    f = frame.reset_index() if index else frame
    cells = [[str(v).replace("|", "/").replace("\n", " ") for v in row] for row in f.itertuples(index=False)]
    head = [str(c) for c in f.columns]
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] +
                     ["| " + " | ".join(r) + " |" for r in cells])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=8)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = p.parse_args()
    matrices, invariance = {}, []
    for name in ("llama-server", "vllm-server", "vllm"):
        extra = {"parallel": args.users} if name == "llama-server" else {}
        if name in TOOL_ARGS:
            extra["extra_args"] = TOOL_ARGS[name]
        with labkit.load(name, **extra) as eng:
            if name != "vllm":
                matrices[name] = labkit.conformance(eng)
            inv = labkit.batch_invariance(eng, users=[1, args.users])
            invariance.append(inv.summary().assign(engine=name, notes="; ".join(inv.notes)))
            print(f"{name}: {inv.summary().to_dict('records')}", file=sys.stderr)
    m = Conformance.combine(matrices)
    inv = pd.concat(invariance, ignore_index=True)[["engine", "users", "prompts", "changed_frac",
                                                     "mean_agreement", "earliest_divergence", "notes"]]
    wide = m.table.pivot_table(index=["group", "feature"], columns="engine", values="status", aggfunc="first",
                               sort=False)
    evidence = m.table[m.table["status"] != "supported"][["engine", "feature", "status", "evidence", "model"]]
    stamp = time.strftime("%Y%m%d")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"conformance-{stamp}.json").write_text(json.dumps(
        {"conformance": m.to_dict(), "invariance": inv.to_dict("records")}, indent=1, default=str))
    lines = [f"# Conformance and batch invariance, {stamp}", "", f"Environment: {environment()['cpu']}",
          "", "Servers started with: " + "; ".join(f"{k}: {v}" for k, v in m.flags.items()), "",
          md(wide), "", md(m.counts()), "", "Not supported, with the evidence:", "",
          md(evidence, index=False), "", "Tool checks, what the model did:", "",
          md(m.group("tools")[["engine", "feature", "status", "model"]], index=False), "",
          f"Batch invariance (greedy, 8 prompts, 32 tokens, alone vs {args.users} users):", "",
          md(inv, index=False), ""]
    (args.out / f"conformance-{stamp}.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
