"""Model architectures as llama.cpp stores them: which tensors a config implies, and which
ggml type llama-quantize gives each.

Both the memory planner (:mod:`labkit.planner`) and the synthetic-model writer
(:mod:`labkit.synthetic`) read this one table, so a synthetic GGUF holds exactly the bytes
the planner counts. The quantization mix follows ``llama_tensor_get_type`` in llama.cpp's
``src/llama-quant.cpp`` (the vendored version labkit builds) for the common file types; a
test compares it with what llama-quantize really writes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from .errors import InvalidInput

__all__ = ["Arch", "TensorSpec", "from_config", "tensors", "gguf_metadata", "quant_type",
           "ARCHES", "BASE_TYPE"]

# HF model_type -> (GGUF architecture, HF architectures entry)
ARCHES: dict[str, tuple[str, str]] = {
    "llama": ("llama", "LlamaForCausalLM"),
    "mistral": ("llama", "MistralForCausalLM"),
    "qwen2": ("qwen2", "Qwen2ForCausalLM"),
    "qwen3": ("qwen3", "Qwen3ForCausalLM"),
    "qwen3_moe": ("qwen3moe", "Qwen3MoeForCausalLM"),
    "gemma3_text": ("gemma3", "Gemma3ForCausalLM"),
}


# llama.cpp sets these architectures' sliding-window layout in code, not in the GGUF
# (src/models/*.cpp: load_swa_pattern(ml, N, dense_first)): N - 1 sliding layers and one
# global, or with dense_first the global one first. A window in any other architecture's
# GGUF (a Mistral v0.1 converted as "llama", Phi-3, whose window llama.cpp switches off) is
# not applied by llama.cpp at all.
LLAMACPP_SWA: dict[str, tuple[int, bool]] = {
    "gemma2": (2, False), "gemma3": (6, False), "gemma3n": (5, False), "gemma-embedding": (6, False),
    "cohere2": (4, False), "cohere2moe": (4, True), "gpt-oss": (2, False), "afmoe": (4, False),
    "exaone4": (4, False), "exaone-moe": (4, False), "olmo2": (4, False), "plamo3": (8, False),
    "smallthinker": (4, True), "laguna": (4, True), "mellum": (4, False), "muse-glimmer": (4, False),
}


def flat_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """A config with its ``text_config`` (a multimodal model's language model) read as the
    top level, the top level's own keys winning."""
    return {**cfg.get("text_config", {}), **{k: v for k, v in cfg.items() if k != "text_config"}}


def hf_window(cfg: dict[str, Any]) -> int | None:
    """The sliding window vLLM applies for a Hugging Face config: ``sliding_window`` unless
    ``use_sliding_window`` says no (Qwen2's configs carry a window they do not use); a Mistral
    config without the key gets transformers' default, 4096."""
    cfg = flat_config(cfg)
    if "use_sliding_window" in cfg and not cfg["use_sliding_window"]:
        return None
    window = cfg["sliding_window"] if "sliding_window" in cfg else (4096 if cfg.get("model_type") == "mistral" else None)
    return int(window) if window else None


@dataclass
class TensorSpec:
    name: str
    shape: tuple[int, ...]  # ggml order: the contiguous (row) dimension first
    ggml_type: str  # e.g. "Q4_K", "F16", "F32"

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class Arch:
    """The architecture facts that decide tensor shapes and memory."""

    model_type: str
    gguf_arch: str
    n_layers: int
    hidden: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    ffn: int
    vocab: int
    tied: bool
    qkv_bias: bool = False
    qk_norm: bool = False
    n_experts: int = 0
    n_experts_used: int = 0
    moe_ffn: int = 0
    sliding_window: int | None = None
    swa_pattern: int = 0  # every Nth layer is global (Gemma 3: 6); 0 with a window: every layer slides
    swa_dense_first: bool = False  # the global layer opens each period (llama.cpp's dense_first)
    swa_layers: tuple[bool, ...] | None = None  # per layer, True = sliding, where a GGUF says so
    llamacpp_swa: bool = True  # llama.cpp applies the window (only for architectures it knows slide)
    max_context: int = 4096
    rope_theta: float = 10000.0
    rms_eps: float = 1e-5

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def is_swa_layer(self, i: int) -> bool:
        """Whether layer ``i`` attends within the sliding window (its KV is window-sized).
        A window without a pattern (Mistral v0.1) applies to every layer."""
        if not self.sliding_window:
            return False
        if self.swa_layers is not None and i < len(self.swa_layers):
            return self.swa_layers[i]
        if not self.swa_pattern:
            return True
        return bool(i % self.swa_pattern) if self.swa_dense_first else bool((i + 1) % self.swa_pattern)


def _int(cfg: dict, key: str, default: Any = None, *, positive: bool = True) -> int:
    value = cfg.get(key, default)
    if value is None:
        raise InvalidInput(f"The model config lacks {key!r}, which this shape needs.")
    if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value:
        raise InvalidInput(f"The model config's {key!r} must be a whole number, got {value!r}.")
    if positive and value <= 0:
        raise InvalidInput(f"The model config's {key!r} must be positive, got {value}.")
    return int(value)


def _float(cfg: dict, key: str, default: float) -> float:
    value = cfg.get(key) or default
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise InvalidInput(f"The model config's {key!r} must be a positive number, got {value!r}.")
    return float(value)


def from_config(cfg: dict[str, Any]) -> Arch:
    """An :class:`Arch` from a Hugging Face ``config.json`` dict, checked field by field."""
    if not isinstance(cfg, dict):
        raise InvalidInput(f"A model config must be a dict, got {type(cfg).__name__}.")
    cfg = flat_config(cfg)
    model_type = cfg.get("model_type", "llama")
    if model_type == "gemma3":
        model_type = "gemma3_text"
    if model_type not in ARCHES:
        raise InvalidInput(f"Unknown model_type {model_type!r}; labkit knows {', '.join(ARCHES)}.")
    hidden = _int(cfg, "hidden_size")
    heads = _int(cfg, "num_attention_heads")
    head_dim = cfg.get("head_dim")
    if head_dim is None:
        if hidden % heads:
            raise InvalidInput(f"num_attention_heads ({heads}) does not divide hidden_size "
                               f"({hidden}); give head_dim explicitly if that is intended.")
        head_dim = hidden // heads
    kv = _int(cfg, "num_key_value_heads", heads)
    if heads % kv:
        raise InvalidInput(f"num_key_value_heads ({kv}) must divide num_attention_heads ({heads}).")
    n_experts = _int(cfg, "num_experts", 0, positive=False) if model_type == "qwen3_moe" else 0
    gemma = model_type == "gemma3_text"
    swa = hf_window(cfg)  # (Mistral v0.1's has no use_sliding_window flag, and slides every layer)
    return Arch(
        model_type=model_type, gguf_arch=ARCHES[model_type][0],
        n_layers=_int(cfg, "num_hidden_layers"), hidden=hidden, n_heads=heads, n_kv_heads=kv,
        head_dim=_int({"head_dim": head_dim}, "head_dim"),
        ffn=_int(cfg, "intermediate_size", 4 * hidden), vocab=_int(cfg, "vocab_size"),
        tied=bool(cfg.get("tie_word_embeddings", gemma)),
        qkv_bias=model_type == "qwen2" or bool(cfg.get("attention_bias", False)),
        qk_norm=model_type in ("qwen3", "qwen3_moe", "gemma3_text"),
        n_experts=n_experts,
        n_experts_used=_int(cfg, "num_experts_per_tok", 8) if n_experts else 0,
        moe_ffn=_int(cfg, "moe_intermediate_size") if n_experts else 0,
        sliding_window=int(swa) if swa else None,
        swa_pattern=int(cfg.get("sliding_window_pattern", 6)) if gemma and swa else 0,
        llamacpp_swa=gemma,  # llama.cpp's "llama" and "qwen2" architectures never slide
        max_context=_int(cfg, "max_position_embeddings", 4096) if cfg.get("max_position_embeddings") else 4096,
        rope_theta=_float(cfg, "rope_theta", 10000.0),
        rms_eps=_float(cfg, "rms_norm_eps", 1e-6),
    )


def tensors(a: Arch) -> list[TensorSpec]:
    """Every tensor llama.cpp stores for ``a``, in GGUF order, at F16 (norms and biases F32)."""
    h, hd, q, kv = a.hidden, a.head_dim, a.n_heads * a.head_dim, a.n_kv_heads * a.head_dim
    ts = [TensorSpec("token_embd.weight", (h, a.vocab), "F16")]
    for i in range(a.n_layers):
        p = f"blk.{i}."
        ts.append(TensorSpec(p + "attn_norm.weight", (h,), "F32"))
        ts += [TensorSpec(p + "attn_q.weight", (h, q), "F16"),
               TensorSpec(p + "attn_k.weight", (h, kv), "F16"),
               TensorSpec(p + "attn_v.weight", (h, kv), "F16")]
        if a.qkv_bias:
            ts += [TensorSpec(p + "attn_q.bias", (q,), "F32"), TensorSpec(p + "attn_k.bias", (kv,), "F32"),
                   TensorSpec(p + "attn_v.bias", (kv,), "F32")]
        if a.qk_norm:
            ts += [TensorSpec(p + "attn_q_norm.weight", (hd,), "F32"),
                   TensorSpec(p + "attn_k_norm.weight", (hd,), "F32")]
        ts.append(TensorSpec(p + "attn_output.weight", (q, h), "F16"))
        if a.gguf_arch == "gemma3":
            ts.append(TensorSpec(p + "post_attention_norm.weight", (h,), "F32"))
        ts.append(TensorSpec(p + "ffn_norm.weight", (h,), "F32"))
        if a.n_experts:
            e, f = a.n_experts, a.moe_ffn
            ts += [TensorSpec(p + "ffn_gate_inp.weight", (h, e), "F32"),
                   TensorSpec(p + "ffn_gate_exps.weight", (h, f, e), "F16"),
                   TensorSpec(p + "ffn_up_exps.weight", (h, f, e), "F16"),
                   TensorSpec(p + "ffn_down_exps.weight", (f, h, e), "F16")]
        else:
            ts += [TensorSpec(p + "ffn_gate.weight", (h, a.ffn), "F16"),
                   TensorSpec(p + "ffn_up.weight", (h, a.ffn), "F16"),
                   TensorSpec(p + "ffn_down.weight", (a.ffn, h), "F16")]
        if a.gguf_arch == "gemma3":
            ts.append(TensorSpec(p + "post_ffw_norm.weight", (h,), "F32"))
    ts.append(TensorSpec("output_norm.weight", (h,), "F32"))
    if not a.tied:
        ts.append(TensorSpec("output.weight", (h, a.vocab), "F16"))
    return ts


def gguf_metadata(a: Arch, context: int | None = None) -> dict[str, Any]:
    """The ``{arch}.*`` keys llama.cpp reads to build ``a``."""
    p = a.gguf_arch
    md: dict[str, Any] = {
        f"{p}.context_length": context or a.max_context,
        f"{p}.embedding_length": a.hidden,
        f"{p}.block_count": a.n_layers,
        f"{p}.feed_forward_length": a.ffn,
        f"{p}.attention.head_count": a.n_heads,
        f"{p}.attention.head_count_kv": a.n_kv_heads,
        f"{p}.attention.key_length": a.head_dim,
        f"{p}.attention.value_length": a.head_dim,
        f"{p}.attention.layer_norm_rms_epsilon": a.rms_eps,
        f"{p}.rope.freq_base": a.rope_theta,
        f"{p}.vocab_size": a.vocab,
    }
    if p == "llama":
        md[f"{p}.rope.dimension_count"] = a.head_dim
    if a.n_experts:
        md[f"{p}.expert_count"] = a.n_experts
        md[f"{p}.expert_used_count"] = a.n_experts_used
        md[f"{p}.expert_feed_forward_length"] = a.moe_ffn
    if a.sliding_window:
        md[f"{p}.attention.sliding_window"] = a.sliding_window
    return md


# --- llama-quantize's mix -------------------------------------------------------------------

# The type most tensors get under each file type (llama_model_quantize_impl's switch).
BASE_TYPE = {
    "F32": "F32", "F16": "F16", "BF16": "BF16", "Q8_0": "Q8_0", "Q4_0": "Q4_0", "Q4_1": "Q4_1",
    "Q5_0": "Q5_0", "Q5_1": "Q5_1", "Q2_K": "Q2_K", "Q2_K_S": "Q2_K", "Q3_K_S": "Q3_K",
    "Q3_K_M": "Q3_K", "Q3_K_L": "Q3_K", "Q4_K_S": "Q4_K", "Q4_K_M": "Q4_K", "Q5_K_S": "Q5_K",
    "Q5_K_M": "Q5_K", "Q6_K": "Q6_K", "IQ2_XXS": "IQ2_XXS", "IQ2_XS": "IQ2_XS", "IQ2_S": "IQ2_XS",
    "IQ2_M": "IQ2_S", "IQ3_XXS": "IQ3_XXS", "IQ3_XS": "IQ3_S", "IQ3_S": "IQ3_S", "IQ3_M": "IQ3_S",
    "IQ1_S": "IQ1_S", "IQ1_M": "IQ1_M", "IQ4_NL": "IQ4_NL", "IQ4_XS": "IQ4_XS",
    "TQ1_0": "TQ1_0", "TQ2_0": "TQ2_0",
}
_UNQUANTIZED = ("F32", "F16", "BF16")


def _more_bits(i: int, n: int) -> bool:
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def _block(ggml_type: str) -> int:
    from .gguf_header import GGML_SIZES

    return GGML_SIZES[ggml_type][0]


def _fallback(ggml_type: str, row: int) -> str:
    """tensor_type_fallback: a row that is not a whole number of blocks takes a legacy type."""
    if row % _block(ggml_type) == 0:
        return ggml_type
    legacy = {"TQ1_0": "Q8_0", "TQ2_0": "Q8_0", "IQ2_XXS": "Q4_0", "IQ2_XS": "Q4_0",
              "IQ2_S": "Q4_0", "IQ3_XXS": "Q4_0", "IQ3_S": "Q4_0", "IQ1_S": "Q4_0", "IQ1_M": "Q4_0",
              "Q2_K": "Q4_0", "Q3_K": "Q4_0", "IQ4_XS": "IQ4_NL", "Q4_K": "Q5_0", "Q5_K": "Q5_1",
              "Q6_K": "Q8_0"}.get(ggml_type, "F16")
    return legacy if row % _block(legacy) == 0 else "F16"


def _layer(name: str) -> int:
    parts = name.split(".")
    return int(parts[1]) if len(parts) > 1 and parts[0] == "blk" and parts[1].isdigit() else 0


def quant_type(t: TensorSpec, quant: str, a: Arch) -> str:
    """The ggml type llama-quantize gives tensor ``t`` of ``a`` under file type ``quant``."""
    if quant not in BASE_TYPE:
        raise InvalidInput(f"Unknown quantization {quant!r}; known: {', '.join(BASE_TYPE)}.")
    name = t.name
    # Not quantized at all: 1-D tensors (norms, biases) and MoE routers stay F32.
    if len(t.shape) < 2 or "norm" in name or "ffn_gate_inp" in name:
        return "F32"
    base = BASE_TYPE[quant]
    if base in _UNQUANTIZED:
        return base
    new = base
    gqa = a.n_heads // max(1, a.n_kv_heads)
    n, i = a.n_layers, _layer(name)
    is_output = name == "output.weight" or (a.tied and name == "token_embd.weight")
    if is_output:
        if t.shape[0] % _block(base):
            new = "Q8_0"
        elif quant in ("IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ2_S", "IQ2_M", "IQ1_M"):
            new = "Q5_K"
        elif base != "Q8_0":
            new = "Q6_K"
    elif name == "token_embd.weight":
        if quant in ("IQ2_XXS", "IQ2_XS", "IQ1_S", "IQ1_M"):
            new = "Q2_K"
        elif quant in ("IQ2_S", "IQ2_M", "IQ3_XXS"):
            new = "IQ3_S"
        elif quant in ("TQ1_0", "TQ2_0"):
            new = "Q4_K"
    elif quant in ("IQ2_XXS", "IQ2_XS", "IQ1_S", "IQ2_S", "IQ2_M", "IQ1_M"):
        new = _very_low_bits(name, quant, new, i=i, n=n, gqa=gqa, a=a)
    elif ".attn_v." in name:
        new = _attn_v(quant, new, i, n, gqa, a)
    elif ".attn_k." in name and a.n_experts == 8:
        new = "Q8_0"
    elif (".attn_k." in name or ".attn_q." in name) and quant in ("IQ3_XS", "IQ3_XXS"):
        new = "IQ3_XXS" if quant == "IQ3_XS" else "IQ2_S"
    elif (".ffn_gate" in name or ".ffn_up" in name) and quant == "IQ3_XS":
        new = "IQ3_XXS" if n // 8 <= i < 7 * n // 8 else new
    elif ".ffn_down" in name:
        new = _ffn_down(quant, new, i, n)
    elif ".attn_output." in name:
        if a.n_experts == 8 and quant in ("Q2_K", "IQ3_XS", "IQ3_XXS", "Q3_K_S", "Q3_K_M",
                                          "IQ4_NL", "Q4_K_S", "Q4_K_M", "IQ3_S", "IQ3_M", "IQ4_XS"):
            new = "Q5_K"
        elif a.n_experts != 8:
            new = {"Q2_K": "Q3_K", "IQ3_XXS": "IQ3_S", "Q3_K_M": "Q4_K", "Q3_K_L": "Q5_K",
                   "IQ3_M": "Q4_K"}.get(quant, new)
    return _fallback(new, t.shape[0])


def _attn_v(quant: str, new: str, i: int, n: int, gqa: int, a: Arch) -> str:
    if quant == "Q2_K":
        new = "Q4_K" if gqa >= 4 else "Q3_K"
    elif quant == "Q2_K_S" and gqa >= 4 or quant in ("IQ3_XS", "IQ3_S") and gqa >= 4 or quant == "IQ3_M":
        new = "Q4_K"
    elif quant == "Q3_K_M":
        new = "Q5_K" if i < 2 else "Q4_K"
    elif quant == "Q3_K_L" or quant in ("IQ4_NL", "IQ4_XS") and gqa >= 4:
        new = "Q5_K"
    elif quant in ("Q4_K_M", "Q5_K_M") and _more_bits(i, n):
        new = "Q6_K"
    elif quant == "Q4_K_S" and i < 4:
        new = "Q5_K"
    if a.gguf_arch == "llama" and a.n_layers == 80 and new in ("Q3_K", "Q4_K"):
        new = "Q5_K"  # llama.cpp's LLM_TYPE_70B rule: 8 heads share each attn_v
    if a.n_experts == 8:
        new = "Q8_0"
    return new


def _very_low_bits(name: str, quant: str, new: str, *, i: int, n: int, gqa: int, a: Arch) -> str:
    """The IQ1/IQ2 branch: a few roles get more bits, the rest keep the base type."""
    iq2s = quant in ("IQ2_S", "IQ2_M")
    if ".attn_v." in name:
        return "Q4_K" if gqa >= 4 or a.n_experts >= 4 else ("IQ3_S" if iq2s else "Q2_K")
    if ".attn_k." in name and a.n_experts == 8:
        return "Q4_K"
    if ".ffn_down" in name and i < n // 8:
        return "IQ3_S" if iq2s else "Q2_K"
    if ".attn_output." in name:
        if a.n_experts == 8:
            return "Q5_K"
        if quant in ("IQ1_S", "IQ1_M"):
            return "IQ2_XXS"
        if iq2s:
            return "IQ3_S"
    return new


def _ffn_down(quant: str, new: str, i: int, n: int) -> str:
    if quant == "Q2_K":
        return "Q3_K"
    if quant == "Q2_K_S":
        return "Q4_K" if i < n // 8 else new
    if quant == "IQ3_XXS":
        return "Q4_K" if i < n // 8 else "Q3_K"  # without an importance matrix
    if quant == "Q3_K_M":
        return "Q5_K" if i < n // 16 else "Q4_K"
    if quant == "IQ3_M" and i < n // 8:
        return "Q4_K"
    if quant == "Q3_K_L":
        return "Q5_K"
    if quant in ("Q4_K_M", "Q5_K_M") and _more_bits(i, n):
        return "Q6_K"
    if quant in ("IQ4_NL", "IQ4_XS") and i < n // 8:
        return "Q5_K"  # without an importance matrix, as labkit quantizes
    if quant == "Q4_K_S" and i < n // 8:
        return "Q5_K"
    return new
