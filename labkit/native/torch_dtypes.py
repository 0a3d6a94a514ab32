"""Which dtypes torch computes well on this CPU, checked in a child process.

vLLM's CPU path runs on torch and oneDNN. Where the CPU computes bf16 natively (AVX512-BF16,
AMX) it is faster than float32; elsewhere oneDNN emulates it and batched decoding was about
5x slower (measured on an AVX2-only EPYC). Reported flags are not enough to decide: a VM can
report an extension and trap it. So a child process multiplies matrices in float32 and
bfloat16, checks the results against each other and times them; a crash there is recorded,
never suffered by the caller. The result is cached per torch version and CPU fingerprint.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict, dataclass
from importlib import metadata

from .._cache import cache_dir, write_atomically
from .._exits import signal_name
from . import cpu

__all__ = ["DtypeCheck", "check", "decide"]

# bf16 counts as native when its matmul is no slower than this multiple of float32's: real
# bf16 kernels ran at 0.3-1.3x float32's time, emulation is several times slower.
_EMULATED_ABOVE = 2.0

# Rounds alternate between the dtypes and the fastest round counts, so a busy machine (a
# compile beside it) slows both alike instead of tipping the decision.
_CHILD = r"""
import json, time, torch
torch.manual_seed(0)
a = torch.randn(256, 1024); b = torch.randn(1024, 1024)
ref = a @ b
pairs = {"float32": (a, b), "bfloat16": (a.bfloat16(), b.bfloat16())}
out = {n: {"s_per_matmul": float("inf"),
           "rel_err": ((x @ y).float() - ref).abs().max().item() / ref.abs().max().item()}
       for n, (x, y) in pairs.items()}
for _ in range(5):
    for name, (x, y) in pairs.items():
        t0 = time.perf_counter()
        for _ in range(4):
            x @ y
        out[name]["s_per_matmul"] = min(out[name]["s_per_matmul"], (time.perf_counter() - t0) / 4)
print(json.dumps(out))
"""


@dataclass
class DtypeCheck:
    """float32 and bfloat16 matmuls in a child process: did they run, agree, and how fast."""

    float32_ok: bool
    bfloat16_ok: bool
    bf16_over_fp32_time: float | None
    reported_bf16: bool  # the CPU reports AVX512-BF16 or AMX-BF16
    reason: str

    @property
    def bfloat16_native(self) -> bool:
        return (self.bfloat16_ok and self.reported_bf16 and self.bf16_over_fp32_time is not None
                and self.bf16_over_fp32_time <= _EMULATED_ABOVE)

    def to_dict(self) -> dict:
        return {**asdict(self), "bfloat16_native": self.bfloat16_native}


def decide(results: dict | None, reported_bf16: bool, failure: str = "") -> DtypeCheck:
    """Judge the child's measurements (None when it crashed: ``failure`` says how)."""
    if results is None:
        return DtypeCheck(False, False, None, reported_bf16, failure)
    fp, bf = results.get("float32", {}), results.get("bfloat16", {})
    fp_ok = fp.get("rel_err", 1.0) < 1e-4
    bf_ok = bf.get("rel_err", 1.0) < 5e-2  # bf16 keeps 8 bits of mantissa
    ratio = (bf["s_per_matmul"] / fp["s_per_matmul"]) if fp_ok and bf_ok else None
    verdict = ("bfloat16 is native here" if reported_bf16 and ratio is not None and
               ratio <= _EMULATED_ABOVE else "bfloat16 is emulated here (or not reported): "
               "vLLM uses float32")
    timing = f"bf16 matmul takes {ratio:.2f}x float32's time; " if ratio is not None else ""
    return DtypeCheck(fp_ok, bf_ok, ratio, reported_bf16, timing + verdict)


def check(recheck: bool = False) -> DtypeCheck:
    """The (cached) dtype check for this CPU and the installed torch."""
    try:
        torch_version = metadata.version("torch")
    except metadata.PackageNotFoundError:
        return DtypeCheck(False, False, None, False, "torch is not installed")
    flags = set(cpu.features()["flags"])
    reported = bool(flags & {"avx512_bf16", "amx_bf16"})
    path = cache_dir("checks") / f"torch-{torch_version}-{cpu.fingerprint()}.json"
    if path.exists() and not recheck:
        try:
            d = json.loads(path.read_text())
            d.pop("bfloat16_native", None)
            return DtypeCheck(**d)
        except (ValueError, TypeError):
            pass
    try:
        proc = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True,
                              timeout=300)
        if proc.returncode < 0:
            result = decide(None, reported,
                            f"the matmul check was killed by {signal_name(proc.returncode)}")
        elif proc.returncode != 0:
            result = decide(None, reported, "the matmul check failed: "
                            + proc.stderr.strip().splitlines()[-1][:300] if proc.stderr.strip()
                            else f"the matmul check exited with {proc.returncode}")
        else:
            result = decide(json.loads(proc.stdout.strip().splitlines()[-1]), reported)
    except subprocess.TimeoutExpired:
        result = decide(None, reported, "the matmul check did not finish in 300 s")
    write_atomically(path, json.dumps(result.to_dict()))  # tests run in parallel processes
    return result
