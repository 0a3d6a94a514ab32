"""What this CPU reports, as a fingerprint that native builds and checks are keyed by.

A machine can come back with its disk as it was and a different CPU under it, so nothing
compiled or measured for one CPU may be reused on another: every cache entry that depends
on the instruction set carries :func:`fingerprint` in its key and records :func:`features`.
The flags are only what the CPU *reports*; whether code using them runs is decided by
running it (see :mod:`labkit.native.llamacpp`), since a VM can report AMX and trap it.
"""

from __future__ import annotations

import hashlib
import platform
from functools import cache

__all__ = ["CpuFeatures", "features", "fingerprint"]

# The flags that decide which kernels a build may use, and what a -march=native compiler may
# emit on its own (GFNI for byte shifts, VBMI2 compress, VPOPCNTDQ...). Others
# (vulnerability notes, virtualisation details, AES and carry-less multiply, which no ggml
# code asks for) change between hosts of the same CPU and must not force rebuilds. Arm's are
# Linux's names ("asimddp" is dotprod, "asimdhp" fp16 arithmetic).
RELEVANT = ("sse3", "ssse3", "sse4_1", "sse4_2", "avx", "avx2", "fma", "f16c", "bmi2",
            "avx_vnni", "avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512cd",
            "avx512_vbmi", "avx512vbmi", "avx512_vnni", "avx512vnni", "avx512_bf16",
            "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16", "amx_fp16", "gfni", "avx512ifma",
            "avx512_vbmi2", "avx512_vpopcntdq", "avx512_bitalg", "avx512_vp2intersect",
            "avx_vnni_int8", "avx_ifma", "avx_ne_convert",
            "asimd", "asimddp", "asimdhp", "fphp", "sve", "sve2", "i8mm", "svei8mm", "bf16",
            "svebf16", "sme", "dotprod")


class CpuFeatures(dict):
    """``{"model": ..., "machine": ..., "flags": [...]}`` (JSON-ready)."""


@cache
def features() -> CpuFeatures:
    """The CPU model name, machine type and the instruction-set flags that matter here."""
    try:
        with open("/proc/cpuinfo") as f:
            return read_cpuinfo(f.read())
    except OSError:
        return read_cpuinfo("")


def read_cpuinfo(text: str) -> CpuFeatures:
    """:func:`features` of a ``/proc/cpuinfo`` text (its first processor)."""
    model, flags, arm = "", set(), {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = set(value.split())
        elif key in ("CPU implementer", "CPU part", "CPU variant") and key not in arm:
            arm[key] = value.strip()
    if not model and arm:  # Arm Linux names no model: the core's implementer and part do
        model = " ".join(f"{k.split()[1]} {v}" for k, v in sorted(arm.items()))
    return CpuFeatures(model=model or platform.processor() or platform.machine(),
                       machine=platform.machine(),
                       flags=sorted(f for f in flags if f in RELEVANT))


def fingerprint(feats: dict | None = None) -> str:
    """A short hash of :func:`features`: equal on the same kind of CPU, different otherwise."""
    f = feats if feats is not None else features()
    text = f"{f['machine']}|{f['model']}|{' '.join(sorted(f['flags']))}"
    return hashlib.sha256(text.encode()).hexdigest()[:12]
