"""How a model places tokens (rope base and scaling, sliding window), as a GGUF and a Hugging
Face config each say it, and where the two disagree.

A conversion can keep every weight and the tokenizer and still drop one of these: transformers'
GGUF loader, for one, does not read llama.cpp's ``rope_freqs`` tensor (Llama 3.1's rope
scaling). Such a pair agrees on a short text and drifts apart on longer ones (scaling), or past
a window that only one side applies, so a teacher-forced check of a few hundred tokens cannot
see it. These fields are compared directly instead.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from .arch import LLAMACPP_SWA, flat_config, hf_window
from .gguf_header import GGUFHeader, read_header

__all__ = ["differences", "gguf_window", "hf_window", "infer_llama3", "llama3_factors", "rope_freqs"]

_NONE = ("default", "none", None)


def _rope(cfg: dict[str, Any]) -> tuple[float | None, dict[str, Any]]:
    """(rope base, scaling dict) from a config in either transformers layout: ``rope_theta`` +
    ``rope_scaling`` (before v5) or ``rope_parameters`` (v5; per layer type for Gemma 3, whose
    global layers are the ones llama.cpp's ``freq_base`` describes)."""
    params = cfg.get("rope_parameters") or {}
    if isinstance(params.get("full_attention"), dict):
        params = params["full_attention"]
    theta = cfg.get("rope_theta", params.get("rope_theta"))
    scaling = cfg.get("rope_scaling") or params
    kind = scaling.get("rope_type") or scaling.get("type")
    # Qwen2-VL's "mrope" is the default rope split over sections (llama.cpp: rope.dimension_sections);
    # early Phi-3-128k configs call longrope "su"
    kind = {"mrope": None, "su": "longrope"}.get(kind, kind)
    return (None if theta is None else float(theta)), ({**scaling, "rope_type": kind} if kind not in _NONE else {})


def gguf_window(h: GGUFHeader) -> int | None:
    """The sliding window llama.cpp applies to a GGUF: only for architectures it slides (a
    Phi-3 GGUF carries one that llama.cpp switches off; a Mistral v0.1 one, as "llama", too)."""
    window = h.arch_get("attention.sliding_window") or _DEFAULT_WINDOW.get(h.architecture)
    return int(window) if window and _slides(h) else None


# llama.cpp's window where an early GGUF has no key (src/models/gemma2.cpp: 4096)
_DEFAULT_WINDOW = {"gemma2": 4096}


def llama3_factors(scaling: dict[str, Any], theta: float, dim: int) -> np.ndarray:
    """The per-frequency divisors llama.cpp's converter writes as ``rope_freqs.weight`` for
    Llama 3 rope scaling (convert_hf_to_gguf.py, LlamaModel.generate_extra_tensors)."""
    factor = float(scaling["factor"])
    low, high = float(scaling.get("low_freq_factor", 1.0)), float(scaling.get("high_freq_factor", 4.0))
    old = float(scaling.get("original_max_position_embeddings", 8192))
    out = []
    for i in range(0, dim, 2):
        wavelen = 2 * math.pi * theta ** (i / dim)
        if wavelen < old / high:
            out.append(1.0)
        elif wavelen > old / low:
            out.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.asarray(out)


def infer_llama3(freqs: np.ndarray, theta: float, dim: int) -> dict[str, Any] | None:
    """The Llama 3 rope scaling whose factors are ``freqs`` (a GGUF's ``rope_freqs.weight``),
    for the HF config a conversion writes: the GGUF keeps only the factors, and transformers'
    GGUF loader drops them. The released models' parameters are tried (3.1: factor 8, 3.2: 32;
    low/high frequency factors 1 and 4 over 8192 positions); None if none gives ``freqs``."""
    factor = float(np.max(freqs))
    for low, high, old in ((1.0, 4.0, 8192), (1.0, 4.0, 4096), (1.0, 4.0, 16384)):
        scaling = {"rope_type": "llama3", "factor": factor, "low_freq_factor": low,
                   "high_freq_factor": high, "original_max_position_embeddings": old}
        want = llama3_factors(scaling, theta, dim)
        if want.shape == freqs.shape and np.allclose(freqs, want, rtol=1e-3):
            return scaling
    return None


def rope_freqs(gguf: Path) -> np.ndarray | None:
    """A GGUF's ``rope_freqs.weight`` (Llama 3 scaling), if it has one."""
    return _tensor(read_header(gguf), "rope_freqs.weight")


def _tensor(h: GGUFHeader, name: str) -> np.ndarray | None:
    t = next((t for t in h.tensors if t.name == name), None)
    if t is None or t.type_name != "F32":
        return None if t is None else np.full(1, np.nan)
    return np.fromfile(h.path, dtype="<f4", count=t.n_elements, offset=t.offset)


def _diff(what: str, gguf: Any, hf: Any, diagnosis: str) -> dict[str, Any]:
    return {"probe": what, "llama.cpp": gguf, "converted": hf, "diagnosis": diagnosis}


def differences(gguf: Path, hf_dir: Path, other: str = "the converted config") -> list[dict[str, Any]]:
    """Where the GGUF and the HF folder's config.json place tokens differently, each as a
    probe-like dict whose ``diagnosis`` says it in plain words; empty when they agree."""
    h = read_header(gguf)
    cfg = flat_config(json.loads((Path(hf_dir) / "config.json").read_text()))
    out = []
    theta, scaling = _rope(cfg)
    g_theta = float(h.arch_get("rope.freq_base", 10000.0))
    if theta is not None and not math.isclose(theta, g_theta, rel_tol=1e-4):
        out.append(_diff("rope base", g_theta, theta,
                         f"the rope base differs (llama.cpp {g_theta:g}, {other} {theta:g}): every "
                         "position is encoded differently"))
    out += _scaling(h, scaling, theta if theta is not None else g_theta, cfg, other)
    g_window, window = gguf_window(h), hf_window(cfg)
    if g_window != window:
        first = min(w for w in (g_window, window) if w)
        d = _diff("sliding window", g_window, window,
                  f"only one side attends within a sliding window, or not the same one "
                  f"(llama.cpp {g_window or 'none'}, {other} {window or 'none'}): the two "
                  f"differ on prompts longer than {first} tokens")
        # llama.cpp cannot slide this architecture: the same model up to there, a limit. Where
        # it can, a different window is a conversion that lost or changed it: a failure.
        out.append({**d, "limit": first} if g_window is None and not _slides(h) else d)
    return out


def _slides(h: GGUFHeader) -> bool:
    flags = h.arch_get("attention.sliding_window_pattern")
    return h.architecture in LLAMACPP_SWA or (isinstance(flags, list) and any(flags))


# GGUF key (rope.scaling.*), transformers' key. llama.cpp's converter writes transformers'
# attention_factor as yarn_attn_factor; its attn_factor is another multiplier, on top.
YARN_KEYS = (("original_context_length", "original_max_position_embeddings"),
             ("yarn_attn_factor", "attention_factor"), ("yarn_beta_fast", "beta_fast"),
             ("yarn_beta_slow", "beta_slow"))


def _same_yarn(h: GGUFHeader, scaling: dict[str, Any]) -> bool:
    """YaRN's knobs agree wherever both sides state one."""
    for g_key, hf_key in YARN_KEYS:
        g_val, val = h.arch_get(f"rope.scaling.{g_key}"), scaling.get(hf_key)
        if g_val is not None and val is not None and not math.isclose(float(g_val), float(val), rel_tol=1e-4):
            return False
    return True


def _scaling(h: GGUFHeader, scaling: dict[str, Any], theta: float, cfg: dict[str, Any],
             other: str) -> list[dict[str, Any]]:
    kind = scaling.get("rope_type")
    g_kind = h.arch_get("rope.scaling.type")
    g_kind = None if g_kind in _NONE else str(g_kind)
    g_factor = h.arch_get("rope.scaling.factor")
    freqs = _tensor(h, "rope_freqs.weight")
    long_factors = any(t.name == "rope_factors_long.weight" for t in h.tensors)
    said = f"llama.cpp {g_kind or ('rope_freqs' if freqs is not None else 'none')}, {other} {kind or 'none'}"
    if kind == "llama3":
        dim = int(h.arch_get("rope.dimension_count") or cfg.get("head_dim")
                  or cfg["hidden_size"] // cfg["num_attention_heads"])
        if freqs is None:
            return [_diff("rope scaling", "none", "llama3",
                          f"{other} scales rope as Llama 3 (factor {scaling.get('factor')}) and the GGUF "
                          "has no rope_freqs.weight: positions are encoded differently")]
        want = llama3_factors(scaling, theta, dim)
        if freqs.shape != want.shape or not np.allclose(freqs, want, rtol=1e-3):
            return [_diff("rope scaling", "rope_freqs", "llama3",
                          "the GGUF's rope_freqs.weight is not the Llama 3 scaling the config describes "
                          f"(factor {scaling.get('factor')}): positions are encoded differently")]
        return []
    if kind == "longrope":
        return [] if long_factors else [_diff("rope scaling", g_kind, kind, f"rope scaling differs ({said})")]
    if kind in ("linear", "yarn"):
        same = (g_kind == kind and g_factor is not None
                and math.isclose(float(g_factor), float(scaling.get("factor", 0)), rel_tol=1e-4))
        same = same and (kind != "yarn" or _same_yarn(h, scaling))
        return [] if same else [_diff("rope scaling", g_kind, kind,
                                      f"rope scaling differs ({said}, factor llama.cpp {g_factor}, "
                                      f"{other} {scaling.get('factor')}): positions are encoded differently")]
    if kind == "dynamic":
        start = scaling.get("original_max_position_embeddings") or cfg.get("max_position_embeddings")
        return [_diff("rope scaling", g_kind, kind,
                      f"{other} uses dynamic NTK rope scaling, which llama.cpp does not have: the two "
                      f"differ on prompts longer than {start} tokens")]
    if kind is not None:
        return [_diff("rope scaling", g_kind, kind,
                      f"{other} scales rope as {kind!r}, which labkit cannot check against the GGUF "
                      f"({said})")]
    scaled = (g_kind is not None and g_factor not in (None, 1, 1.0)) or freqs is not None or long_factors
    return [_diff("rope scaling", g_kind or "rope_freqs", None,
                  f"the GGUF scales rope and {other} does not ({said}): positions are encoded "
                  "differently")] if scaled else []
