"""labkit's quantization ladder against llama.cpp's own KL-divergence tool, on one machine.

    .venv/bin/python benchmarks/kld_agreement.py [--quants Q8_0,Q4_K_M,Q2_K] [--chunk 256]

The same GGUF files (the bundled model's F16 and its variants, made by llama-quantize) and
the same text (the bundled model's licence). llama.cpp: ``llama-perplexity
--kl-divergence-base`` on F16, then ``--kl-divergence`` on each variant, every chunk of
``--chunk`` tokens. labkit: ``quant_ladder(protocol="llama-perplexity")``. Both with flash
attention off, then both with it on. It prints mean KLD per quant from both and their ratio
(target: within 5%), and writes the table to
benchmarks/results/. A benchmark, not a test; it exits 1 when a ratio misses the target.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

TARGET = 0.05


def llama_perplexity_kld(base: Path, variants: dict[str, Path], text: Path, chunk: int,
                         threads: int, work: Path, flash_attn: bool) -> dict[str, float]:
    """Mean KLD per variant from llama-perplexity, against ``base``'s saved logits."""
    from labkit.native.llamacpp import tool

    exe = str(tool("llama-perplexity"))
    logits = work / "base.kld"
    common = ["-f", str(text), "-c", str(chunk), "-t", str(threads), "--no-warmup",
              "-fa", "on" if flash_attn else "off"]
    r = subprocess.run([exe, "-m", str(base), "--kl-divergence-base", str(logits), *common],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"llama-perplexity (base) failed:\n{r.stderr[-2000:]}")
    out = {}
    for quant, path in variants.items():
        r = subprocess.run([exe, "-m", str(path), "--kl-divergence-base", str(logits), "--kl-divergence",
                            *common], capture_output=True, text=True)
        m = re.search(r"Mean\s+KLD:\s+([-\d.e]+)", r.stdout + r.stderr)
        if r.returncode != 0 or not m:
            raise SystemExit(f"llama-perplexity --kl-divergence on {quant} failed:\n{r.stderr[-2000:]}")
        out[quant] = float(m.group(1))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quants", default="Q8_0,Q4_K_M,Q2_K")
    p.add_argument("--chunk", type=int, default=256)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)

    from labkit import models, quant_ladder
    from labkit.comparison import _license_text
    from labkit.engines.defaults import default_threads

    quants = [q.strip().upper() for q in args.quants.split(",") if q.strip()]
    threads = args.threads or default_threads()
    base = models.variant("smollm2-135m", "F16")
    variants = {q: models.variant("smollm2-135m", q) for q in quants}
    rows, notes = [], []
    for fa in (False, True):  # flash attention moves small KLDs (Q8_0) by ~7%: like with like
        with tempfile.TemporaryDirectory() as tmp:
            text = Path(tmp) / "licence.txt"
            text.write_text(_license_text())
            t0 = time.perf_counter()
            theirs = llama_perplexity_kld(base, variants, text, args.chunk, threads, Path(tmp), fa)
            t1 = time.perf_counter()
        ladder = quant_ladder("smollm2-135m", quants, chunk_tokens=args.chunk, threads=threads,
                              flash_attn=fa, protocol="llama-perplexity", progress=False)
        t2 = time.perf_counter()
        ours = ladder.table.set_index("quant")["mean_kld"].to_dict()
        rows += [{"quant": q, "flash_attn": fa, "llama_perplexity_kld": theirs[q], "labkit_kld": ours[q],
                  "ratio": ours[q] / theirs[q]} for q in quants]
        notes.append(f"flash attention {'on' if fa else 'off'}: llama-perplexity {t1 - t0:.0f} s, "
                     f"labkit {t2 - t1:.0f} s. {ladder.notes[-1]}")
    print(f"{'quant':<8} {'flash attn':>10} {'llama-perplexity':>17} {'labkit':>10} {'ratio':>7}")
    for r in rows:
        print(f"{r['quant']:<8} {'on' if r['flash_attn'] else 'off':>10} {r['llama_perplexity_kld']:17.5f} "
              f"{r['labkit_kld']:10.5f} {r['ratio']:7.3f}")
    print("\n".join(notes))
    from labkit.environment import environment

    out = REPO / "benchmarks" / "results" / f"kld_agreement-{time.strftime('%Y%m%d')}.json"
    out.write_text(json.dumps({"rows": rows, "chunk_tokens": args.chunk, "threads": threads,
                               "notes": notes, "environment": environment()}, indent=1, default=str))
    print(f"written: {out.relative_to(REPO)}")
    return 0 if all(abs(r["ratio"] - 1) <= TARGET for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
