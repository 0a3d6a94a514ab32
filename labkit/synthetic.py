"""Synthetic models: the shape, tensor types and tokenizer of a real model, random weights.

"Will a 27B run on my 12 GB card, and how fast?" can be measured before downloading 15 GB:
speed and memory depend on shapes and tensor types, not on what the weights say. A
synthetic GGUF has the tensor table :mod:`labkit.arch` derives from the config, at the ggml
types llama-quantize would choose, filled with random values quantized by llama.cpp's own
``ggml_quantize_chunk``; its tokenizer is the bundled model's (padded to the shape's vocab
size). For vLLM it is a config and tokenizer folder loaded with ``load_format="dummy"``, so
no weights are written at all. Its text is noise; everything it produces is marked
synthetic.

>>> m = synthetic("llama-3.2-1b", quant="Q4_K_M")          # doctest: +SKIP
>>> labkit.bench("llama-server", model=m, gpu_layers=99)    # doctest: +SKIP
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import arch
from ._cache import build_atomically, cache_dir, write_atomically
from .errors import InvalidInput, ModelError

__all__ = ["SHAPES", "SyntheticModel", "synthetic", "MARKER"]

MARKER = "labkit-synthetic.json"  # in every synthetic folder: engines and tables read it
_FORMAT = 1  # bump when the files written change, so caches are rebuilt

_LLAMA3 = {"model_type": "llama", "vocab_size": 128256, "rope_theta": 500000.0,
           "rms_norm_eps": 1e-5, "max_position_embeddings": 131072}
_QWEN25 = {"model_type": "qwen2", "vocab_size": 152064, "rope_theta": 1000000.0,
           "rms_norm_eps": 1e-6, "max_position_embeddings": 32768}

#: Named shapes of common families (public config.json values). Any HF config dict works too.
SHAPES: dict[str, dict[str, Any]] = {
    "smollm2-135m": {"model_type": "llama", "hidden_size": 576, "num_hidden_layers": 30,
                     "num_attention_heads": 9, "num_key_value_heads": 3, "intermediate_size": 1536,
                     "vocab_size": 49152, "tie_word_embeddings": True, "rope_theta": 100000.0,
                     "max_position_embeddings": 8192},
    "qwen2.5-0.5b": {**_QWEN25, "hidden_size": 896, "num_hidden_layers": 24,
                     "num_attention_heads": 14, "num_key_value_heads": 2,
                     "intermediate_size": 4864, "vocab_size": 151936, "tie_word_embeddings": True},
    "llama-3.2-1b": {**_LLAMA3, "hidden_size": 2048, "num_hidden_layers": 16,
                     "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64,
                     "intermediate_size": 8192, "tie_word_embeddings": True},
    "llama-3.2-3b": {**_LLAMA3, "hidden_size": 3072, "num_hidden_layers": 28,
                     "num_attention_heads": 24, "num_key_value_heads": 8, "head_dim": 128,
                     "intermediate_size": 8192, "tie_word_embeddings": True},
    "llama-3-8b": {**_LLAMA3, "hidden_size": 4096, "num_hidden_layers": 32,
                   "num_attention_heads": 32, "num_key_value_heads": 8, "intermediate_size": 14336},
    "llama-3-70b": {**_LLAMA3, "hidden_size": 8192, "num_hidden_layers": 80,
                    "num_attention_heads": 64, "num_key_value_heads": 8, "intermediate_size": 28672},
    "mistral-7b": {"model_type": "mistral", "hidden_size": 4096, "num_hidden_layers": 32,
                   "num_attention_heads": 32, "num_key_value_heads": 8, "intermediate_size": 14336,
                   "vocab_size": 32768, "rope_theta": 1000000.0, "max_position_embeddings": 32768,
                   # v0.3 has none; left out, transformers' MistralConfig would give vLLM 4096
                   "sliding_window": None},
    "qwen2.5-7b": {**_QWEN25, "hidden_size": 3584, "num_hidden_layers": 28,
                   "num_attention_heads": 28, "num_key_value_heads": 4, "intermediate_size": 18944},
    "qwen2.5-32b": {**_QWEN25, "hidden_size": 5120, "num_hidden_layers": 64,
                    "num_attention_heads": 40, "num_key_value_heads": 8, "intermediate_size": 27648},
    "qwen3-30b-a3b": {"model_type": "qwen3_moe", "hidden_size": 2048, "num_hidden_layers": 48,
                      "num_attention_heads": 32, "num_key_value_heads": 4, "head_dim": 128,
                      "intermediate_size": 6144, "moe_intermediate_size": 768, "num_experts": 128,
                      "num_experts_per_tok": 8, "vocab_size": 151936, "rope_theta": 1000000.0,
                      "rms_norm_eps": 1e-6, "max_position_embeddings": 40960},
    "gemma-3-1b": {"model_type": "gemma3_text", "hidden_size": 1152, "num_hidden_layers": 26,
                   "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 256,
                   "intermediate_size": 6912, "vocab_size": 262144, "sliding_window": 512,
                   "sliding_window_pattern": 6, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6,
                   "max_position_embeddings": 32768},
    "gemma-3-27b": {"model_type": "gemma3_text", "hidden_size": 5376, "num_hidden_layers": 62,
                    "num_attention_heads": 32, "num_key_value_heads": 16, "head_dim": 128,
                    "intermediate_size": 21504, "vocab_size": 262208, "sliding_window": 1024,
                    "sliding_window_pattern": 6, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6,
                    "max_position_embeddings": 131072},
}


@dataclass
class SyntheticModel:
    """A synthetic model: pass it as ``model=`` to any engine, bench or fit."""

    name: str
    config: dict[str, Any]
    quant: str | None
    gguf: Path | None
    folder: Path
    weight_bytes: int

    synthetic: bool = True

    def __str__(self) -> str:
        return f"synthetic:{self.name}" + (f":{self.quant}" if self.quant else "")

    @property
    def arch(self) -> arch.Arch:
        return arch.from_config(self.config)

    @property
    def n_params(self) -> int:
        return sum(t.n_elements for t in arch.tensors(self.arch))

    def to_dict(self) -> dict[str, Any]:
        return {"model": str(self), "synthetic": True, "shape": self.name, "quant": self.quant,
                "gguf": str(self.gguf) if self.gguf else None, "hf_dir": str(self.folder),
                "weight_bytes": self.weight_bytes, "n_params": self.n_params}

    def _repr_html_(self) -> str:
        a = self.arch
        return (f"<p><b>{self} (synthetic: random weights, real shape)</b>: {a.gguf_arch}, "
                f"{self.n_params / 1e9:.2f} B parameters, {a.n_layers} layers, "
                f"{self.weight_bytes / 1024**3:.2f} GiB of weights as {self.quant or 'vLLM dummy'}</p>")


def _shape(shape: str | dict[str, Any] | Path) -> tuple[str, dict[str, Any]]:
    if isinstance(shape, dict):
        name = str(shape.get("name", "custom"))
        # a file and folder name: "org/tiny" is "org_tiny"
        return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "custom", \
            {k: v for k, v in shape.items() if k != "name"}
    p = Path(str(shape)).expanduser()
    if p.name == "config.json" or p.is_dir():
        f = p if p.name == "config.json" else p / "config.json"
        try:
            return f.parent.name, json.loads(f.read_text())
        except OSError as e:
            raise ModelError(f"Cannot read {f}: {e.strerror}.") from e
        except ValueError as e:
            raise ModelError(f"{f} is not valid JSON ({e}).") from e
    if str(shape) not in SHAPES:
        raise InvalidInput(f"No shape named {shape!r}. Named shapes: {', '.join(SHAPES)}; or pass "
                           "a config dict, or a path to a Hugging Face config.json.")
    return str(shape), dict(SHAPES[str(shape)])


def planned_tensors(config: dict[str, Any], quant: str) -> list[arch.TensorSpec]:
    """The tensor table (names, shapes, ggml types) a synthetic GGUF of ``config`` holds."""
    a = arch.from_config(config)
    return [arch.TensorSpec(t.name, t.shape, arch.quant_type(t, quant, a)) for t in arch.tensors(a)]


def synthetic(shape: str | dict[str, Any] | Path, quant: str | None = "Q4_K_M", *,
              tokenizer: str | Path | None = None, progress: bool = True) -> SyntheticModel:
    """A synthetic model of ``shape`` (a name in :data:`SHAPES`, a config dict or a
    config.json); ``quant`` is any llama-quantize type, or None for a vLLM-only model.

    Written once and cached by shape, type and tokenizer. A model that does not fit the free
    disk is refused before anything is written, with the size it needs.
    """
    name, config = _shape(shape)
    a = arch.from_config(config)  # validates the config, naming any bad field
    quant = quant.upper() if quant else None
    if quant is not None and quant not in arch.BASE_TYPE:
        raise InvalidInput(f"Unknown quantization {quant!r}; known: {', '.join(arch.BASE_TYPE)}.")
    tok = _tokenizer(tokenizer)
    key = hashlib.sha256(json.dumps([config, quant, tok["source_sha256"], _FORMAT],
                                    sort_keys=True).encode()).hexdigest()[:12]
    folder = cache_dir("synthetic") / f"{name}-{quant or 'dummy'}-{key}"
    table = planned_tensors(config, quant or "BF16")
    from .planner import tensor_bytes

    weight_bytes = sum(tensor_bytes(t.shape, t.ggml_type) for t in table)
    if not folder.exists() and quant is not None:
        free = shutil.disk_usage(folder.parent).free
        if weight_bytes * 1.01 + 64 * 2**20 > free:
            raise ModelError(f"A synthetic {name} at {quant} needs {weight_bytes / 1024**3:.2f} GiB "
                             f"of disk and {folder.parent} has {free / 1024**3:.2f} GiB free. Free "
                             "some space, set LABKIT_CACHE to a larger disk, or pick a smaller type.")

    def write(tmp: Path) -> None:
        _write_hf_folder(tmp, name, config, a, tok, quant=quant, weight_bytes=weight_bytes)
        if quant is not None:
            _write_gguf(tmp / f"{name}-{quant}.gguf", name, a, table, tok, quant=quant, progress=progress)

    build_atomically(folder, write)
    gguf = folder / f"{name}-{quant}.gguf" if quant else None
    return SyntheticModel(name, config, quant, gguf, folder, weight_bytes)


def load(folder: str | Path) -> SyntheticModel:
    """The :class:`SyntheticModel` a cached synthetic folder holds (read from its marker)."""
    folder = Path(folder)
    meta = json.loads((folder / MARKER).read_text())
    gguf = folder / meta["gguf"] if meta.get("gguf") else None
    return SyntheticModel(meta["shape"], meta["config"], meta["quant"], gguf, folder,
                          int(meta["weight_bytes"]))


def is_synthetic(path: str | Path) -> bool:
    p = Path(path)
    return (p / MARKER).exists() or (p.parent / MARKER).exists()


# --- tokenizer ------------------------------------------------------------------------------
_TOKENIZER_KEYS = ("tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens",
                   "tokenizer.ggml.token_type", "tokenizer.ggml.merges",
                   "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
                   "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.padding_token_id",
                   "tokenizer.ggml.add_bos_token", "tokenizer.ggml.add_eos_token",
                   "tokenizer.chat_template")


def tokenizer_metadata(gguf_path: str | Path | None = None) -> dict[str, Any]:
    """The tokenizer keys of a GGUF (default: the bundled model's), as a JSON-ready dict."""
    from ._cache import file_sha256
    from .gguf_header import read_header
    from .models import DEFAULT_MODEL, resolve

    path = Path(gguf_path) if gguf_path else resolve(DEFAULT_MODEL)
    meta = read_header(path, decode=_TOKENIZER_KEYS).metadata
    out: dict[str, Any] = {k: meta[k] for k in _TOKENIZER_KEYS if k in meta}
    out["source"] = path.name
    out["source_sha256"] = file_sha256(path)
    return out


def _tokenizer(source: str | Path | None) -> dict[str, Any]:
    """Tokenizer metadata: a JSON file written by :func:`tokenizer_metadata` (the GPU check
    carries one), a GGUF, ``LABKIT_SYNTHETIC_TOKENIZER``, or the bundled model's (cached)."""
    source = source or os.environ.get("LABKIT_SYNTHETIC_TOKENIZER")
    if source and not Path(source).is_file():
        raise InvalidInput(f"tokenizer={str(source)!r} is not a file: give a GGUF whose tokenizer to "
                           "use, or a JSON written by labkit.synthetic.tokenizer_metadata().")
    if source and str(source).endswith(".json"):
        try:
            meta = json.loads(Path(source).read_text())
        except ValueError as e:
            raise InvalidInput(f"{source} is not valid JSON ({e}).") from e
        missing = [k for k in ("tokenizer.ggml.model", "tokenizer.ggml.tokens", "source_sha256")
                   if not isinstance(meta, dict) or k not in meta]
        if missing:
            raise InvalidInput(f"{source} lacks {', '.join(missing)}: write it with "
                               "labkit.synthetic.tokenizer_metadata(GGUF).")
        return meta
    if source:
        return tokenizer_metadata(source)
    cached = cache_dir("synthetic") / "tokenizer-bundled.json"
    if cached.exists():
        return json.loads(cached.read_text())
    meta = tokenizer_metadata()
    write_atomically(cached, json.dumps(meta))  # a second process may be reading it
    return meta


def _padded(tok: dict[str, Any], vocab: int) -> tuple[list[str], list[int]]:
    tokens = list(tok["tokenizer.ggml.tokens"])
    types = list(tok.get("tokenizer.ggml.token_type") or [1] * len(tokens))
    if len(tokens) > vocab:
        raise InvalidInput(f"The shape's vocab_size ({vocab}) is smaller than the tokenizer's "
                           f"({len(tokens)} tokens, from {tok.get('source')}).")
    # Rows past the real tokenizer: never produced by tokenizing, so speed is unaffected.
    tokens += [f"<|synthetic_{i}|>" for i in range(len(tokens), vocab)]
    types += [5] * (vocab - len(types))  # LLAMA_TOKEN_TYPE_UNUSED
    return tokens, types


# --- writing --------------------------------------------------------------------------------
def _write_hf_folder(out: Path, name: str, config: dict[str, Any], a: arch.Arch,
                     tok: dict[str, Any], *, quant: str | None, weight_bytes: int) -> None:
    # The text model's own config, flattened as labkit read it: a multimodal config (Gemma 3
    # 27B-it: model_type "gemma3", sizes in text_config) written as it is, under the text
    # model's type, would have transformers fill every size from its defaults (a 2B).
    text = {k: v for k, v in arch.flat_config(config).items() if k != "vision_config"}
    cfg = {**text, "architectures": [arch.ARCHES[a.model_type][1]], "torch_dtype": "bfloat16",
           "head_dim": a.head_dim, "tie_word_embeddings": a.tied, "model_type": a.model_type}
    cfg.setdefault("bos_token_id", tok.get("tokenizer.ggml.bos_token_id"))
    cfg.setdefault("eos_token_id", tok.get("tokenizer.ggml.eos_token_id"))
    (out / "config.json").write_text(json.dumps(cfg, indent=1))
    (out / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": cfg["bos_token_id"], "eos_token_id": cfg["eos_token_id"]}))
    _write_hf_tokenizer(out, tok)
    (out / MARKER).write_text(json.dumps({
        "synthetic": True, "shape": name, "config": config, "quant": quant,
        "gguf": f"{name}-{quant}.gguf" if quant else None, "weight_bytes": weight_bytes,
        "tokenizer_from": tok.get("source"), "format": _FORMAT}, indent=1))


def _write_hf_tokenizer(out: Path, tok: dict[str, Any]) -> None:
    """A fast-tokenizer folder for vLLM from the GGUF tokenizer keys (GPT-2 style BPE)."""
    if tok.get("tokenizer.ggml.model") != "gpt2":
        raise ModelError(f"Synthetic models take a BPE (gpt2) tokenizer; {tok.get('source')} has "
                         f"{tok.get('tokenizer.ggml.model')!r}.")
    tokens = list(tok["tokenizer.ggml.tokens"])
    types = list(tok.get("tokenizer.ggml.token_type") or [1] * len(tokens))
    special = [{"id": i, "content": t, "special": True, "single_word": False, "lstrip": False,
                "rstrip": False, "normalized": False} for i, (t, ty) in enumerate(zip(tokens, types,
                                                                                      strict=False))
               if ty == 3]
    merges = list(tok.get("tokenizer.ggml.merges") or [])
    tj = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": special,
          "normalizer": None,
          "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                            "use_regex": True},
          "post_processor": None,
          "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                      "use_regex": True},
          "model": {"type": "BPE", "dropout": None, "unk_token": None,
                    "continuing_subword_prefix": None, "end_of_word_suffix": None,
                    "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                    "vocab": {t: i for i, t in enumerate(tokens)},
                    "merges": [m.split(" ", 1) for m in merges]}}
    (out / "tokenizer.json").write_text(json.dumps(tj))
    bos, eos = tok.get("tokenizer.ggml.bos_token_id"), tok.get("tokenizer.ggml.eos_token_id")
    tc = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 131072,
          "bos_token": tokens[bos] if bos is not None else None,
          "eos_token": tokens[eos] if eos is not None else None,
          "add_bos_token": bool(tok.get("tokenizer.ggml.add_bos_token", False))}
    if tok.get("tokenizer.chat_template"):
        tc["chat_template"] = tok["tokenizer.chat_template"]
    (out / "tokenizer_config.json").write_text(json.dumps(tc, indent=1))


class _Quantizer:
    """llama.cpp's own quantizer (``ggml_quantize_chunk`` in libggml-base), through ctypes."""

    def __init__(self, lib_dir: Path | None = None):
        if lib_dir is None:
            from .native.llamacpp import lib_dir as checked

            lib_dir = checked()
        path = Path(lib_dir) / "libggml-base.so"
        if not path.exists():
            raise ModelError(f"{path} is missing: synthetic GGUFs are quantized by llama.cpp's "
                             "libggml-base. Run `labkit setup`.")
        lib = ctypes.CDLL(str(path))
        lib.ggml_quantize_chunk.restype = ctypes.c_size_t
        lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p,
                                            ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
                                            ctypes.c_void_p]
        lib.ggml_row_size.restype = ctypes.c_size_t
        lib.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]
        lib.ggml_quantize_init.argtypes = [ctypes.c_int]
        lib.ggml_quantize_requires_imatrix.restype = ctypes.c_bool
        lib.ggml_quantize_requires_imatrix.argtypes = [ctypes.c_int]
        self.lib = lib

    def rows(self, ggml_type: str, values: np.ndarray) -> np.ndarray:
        """Quantize ``values`` (rows x n_per_row float32) to bytes (rows x row_bytes)."""
        from gguf import GGMLQuantizationType

        t = int(GGMLQuantizationType[ggml_type])
        nrows, n_per_row = values.shape
        row_bytes = self.lib.ggml_row_size(t, n_per_row)
        out = np.empty((nrows, row_bytes), dtype=np.uint8)
        src = np.ascontiguousarray(values, dtype=np.float32)
        self.lib.ggml_quantize_init(t)
        # Types that need an importance matrix get a flat one: quality is not the point.
        imatrix = np.ones(n_per_row, dtype=np.float32) if self.lib.ggml_quantize_requires_imatrix(t) else None
        done = self.lib.ggml_quantize_chunk(t, src.ctypes.data, out.ctypes.data, 0, nrows, n_per_row,
                                            imatrix.ctypes.data if imatrix is not None else None)
        if done != out.nbytes:
            raise ModelError(f"ggml_quantize_chunk wrote {done} bytes for {ggml_type}, expected {out.nbytes}.")
        return out


_TILE_ROWS = 32  # random rows quantized per tensor, then repeated: speed and memory are the same


def _tensor_data(t: arch.TensorSpec, rng: np.random.Generator, q: _Quantizer | None) -> np.ndarray:
    n_per_row = t.shape[0]
    nrows = int(np.prod(t.shape[1:])) if len(t.shape) > 1 else 1
    if "norm" in t.name:
        return np.ones(t.shape[::-1], dtype=np.float32)  # RMSNorm gains of 1 keep activations sane
    if t.name.endswith(".bias"):
        return np.zeros(t.shape[::-1], dtype=np.float32)
    tile = rng.normal(0.0, 0.02, size=(min(nrows, _TILE_ROWS), n_per_row)).astype(np.float32)
    if t.ggml_type == "F32":
        data = tile
    elif t.ggml_type == "F16":
        data = tile.astype(np.float16)
    elif t.ggml_type == "BF16":
        data = (tile.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8).reshape(tile.shape[0], -1)
    else:
        assert q is not None
        data = q.rows(t.ggml_type, tile)
    reps = -(-nrows // data.shape[0])
    full = np.tile(data, (reps, 1))[:nrows]
    return full.reshape(*t.shape[:0:-1], *full.shape[1:]) if len(t.shape) > 2 else full


def _write_gguf(path: Path, name: str, a: arch.Arch, table: list[arch.TensorSpec],
                tok: dict[str, Any], *, quant: str, progress: bool) -> None:
    import gguf

    w = gguf.GGUFWriter(path, a.gguf_arch)
    w.add_name(f"synthetic {name} {quant} (random weights)")
    w.add_string("general.labkit.synthetic", json.dumps({"shape": name, "quant": quant}))
    w.add_file_type(int(gguf.LlamaFileType[f"MOSTLY_{quant}" if quant not in ("F32",) else "ALL_F32"]))
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    for key, value in arch.gguf_metadata(a).items():
        if isinstance(value, float):
            w.add_float32(key, value)
        else:
            w.add_uint32(key, int(value))
    _add_tokenizer(w, tok, a.vocab)
    _add_tensor_infos(w, table)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    _write_tensors(w, table, f"writing synthetic {name} {quant}", progress)
    w.close()


def _add_tokenizer(w: Any, tok: dict[str, Any], vocab: int) -> None:
    tokens, types = _padded(tok, vocab)
    w.add_tokenizer_model(tok["tokenizer.ggml.model"])
    if tok.get("tokenizer.ggml.pre"):
        w.add_tokenizer_pre(tok["tokenizer.ggml.pre"])
    w.add_token_list(tokens)
    w.add_token_types(types)
    if tok.get("tokenizer.ggml.merges"):
        w.add_token_merges(tok["tokenizer.ggml.merges"])
    for key in ("bos_token_id", "eos_token_id", "unknown_token_id", "padding_token_id"):
        if tok.get(f"tokenizer.ggml.{key}") is not None:
            w.add_uint32(f"tokenizer.ggml.{key}", int(tok[f"tokenizer.ggml.{key}"]))
    for key in ("add_bos_token", "add_eos_token"):
        if tok.get(f"tokenizer.ggml.{key}") is not None:
            w.add_bool(f"tokenizer.ggml.{key}", bool(tok[f"tokenizer.ggml.{key}"]))
    if tok.get("tokenizer.chat_template"):
        w.add_chat_template(tok["tokenizer.chat_template"])


def _add_tensor_infos(w: Any, table: list[arch.TensorSpec]) -> None:
    import gguf

    from .planner import tensor_bytes

    for t in table:
        nbytes = tensor_bytes(t.shape, t.ggml_type)
        if t.ggml_type in ("F32", "F16"):
            w.add_tensor_info(t.name, t.shape[::-1], np.dtype(np.float32 if t.ggml_type == "F32"
                                                              else np.float16), nbytes)
        else:
            rows = t.shape[:0:-1]
            w.add_tensor_info(t.name, (*rows, nbytes // max(1, int(np.prod(rows)))), np.dtype(np.uint8),
                              nbytes, raw_dtype=gguf.GGMLQuantizationType[t.ggml_type])


def _write_tensors(w: Any, table: list[arch.TensorSpec], desc: str, progress: bool) -> None:
    from .planner import tensor_bytes

    needs_ggml = any(t.ggml_type not in ("F32", "F16", "BF16") for t in table)
    q = _Quantizer(Path(os.environ["LABKIT_GGML_LIB"]) if os.environ.get("LABKIT_GGML_LIB")
                   else None) if needs_ggml else None
    rng = np.random.default_rng(0)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=sum(tensor_bytes(t.shape, t.ggml_type) for t in table), unit="B",
                   unit_scale=True, desc=desc)
    for t in table:
        data = _tensor_data(t, rng, q)
        w.write_tensor_data(data)
        if bar is not None:
            bar.update(data.nbytes)
    if bar is not None:
        bar.close()
