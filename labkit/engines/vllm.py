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
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import psutil

from .. import models
from .._procs import STARTING, OrphanGuard, own_process_groups
from ..errors import EngineError, InvalidInput, LabkitError
from ..memory import EngineMemory, child_pids, engine_baseline, new_children
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
from .capabilities import ReportsKv, Scores, Submits
from .defaults import (
    check_dtype,
    default_dtype,
    parallelism,
    script_hint,
    vllm_env,
    vllm_gguf_loader,
    vllm_model_source,
    vllm_version,
)
from .prometheus import server_metrics, vllm_kv

_DONE = object()
_CANCEL = object()  # in the inbox: end every request admitted before it ("cancelled")
_CLOSED = "The vllm engine was closed during the request."


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


def _start_llm(kwargs: dict[str, Any], env: dict[str, str], log: Any, directory: Any):
    """``vllm.LLM(**kwargs)`` with ``env`` set while its engine core starts, its log in ``log``."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # read while the engine core starts; restored right after
    try:
        # vLLM's logger binds the stream it sees at import: import and start inside the
        # redirect, and its log (and the engine core's, which inherits it) stays in the file.
        with output_to(log):
            from vllm import LLM

            return LLM(**kwargs)
    except Exception as e:
        raise EngineError(f"vLLM failed to load {directory}: {type(e).__name__}: {e}"
                          f"{script_hint()}\nvLLM's log: {log}\n{tail(log, 15)}") from e
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def prompt_ids(tokenizer: Any, text: str | Conversation, chat: bool) -> list[int]:
    """The ids vLLM feeds for a prompt: encode() with special tokens for a raw prompt; the
    chat template rendered to text, then encoded without adding special tokens again."""
    if not chat:
        return list(tokenizer.encode(text))
    rendered = tokenizer.apply_chat_template(text, add_generation_prompt=True, tokenize=False)
    return list(tokenizer.encode(rendered, add_special_tokens=False))


class VllmEngine(Engine, Submits, Scores, ReportsKv):
    """``vllm.LLM`` in this process (the engine core runs in spawned child processes)."""

    name = "vllm"
    model_format = "hf"
    summary = "vllm.LLM in process (continuous batching)"

    def __init__(self, model: str = models.DEFAULT_MODEL, *, threads: int | None = None,
                 context: int = 2048, kv_cache_gb: float = 1, dtype: str = "auto",
                 enforce_eager: bool = True, max_num_seqs: int = 256, seed: int = 0,
                 gpu_memory_utilization: float | None = None, gguf_loader: bool = False,
                 prefix_cache: bool = True, **llm_kwargs: Any):
        super().__init__()
        version = vllm_version()
        directory, source = vllm_model_source(model, gguf_loader)
        env, threads_used, device = vllm_env(threads, kv_cache_gb)
        dtype = default_dtype() if dtype == "auto" else check_dtype(dtype)
        llm_kwargs.update(parallelism(*(llm_kwargs.pop(k, 1) for k in (
            "tensor_parallel_size", "pipeline_parallel_size", "data_parallel_size")),
            llm_kwargs.pop("distributed_executor_backend", None)))
        kwargs: dict[str, Any] = dict(model=str(directory), max_model_len=context, dtype=dtype,
                                      enforce_eager=enforce_eager, max_num_seqs=max_num_seqs,
                                      seed=seed, enable_prefix_caching=prefix_cache, **source, **llm_kwargs)
        # LLM turns stats off by default, and get_metrics() then fails: the KV account and
        # the telemetry's server metrics need them (their periodic log is switched off).
        kwargs.setdefault("disable_log_stats", False)
        if gpu_memory_utilization is not None:
            kwargs["gpu_memory_utilization"] = gpu_memory_utilization
        if is_synthetic(directory):
            kwargs.setdefault("load_format", "dummy")  # random weights, nothing read from disk
        self._start(kwargs, env, directory, models.label(model))
        _quiet_stats(self._llm.llm_engine)
        self._begin_loop(self._llm.llm_engine, self._llm.get_tokenizer(), context)
        self._info = EngineInfo(
            engine=self.name, engine_version=f"vllm {version}", model=models.label(model),
            model_path=str(directory), model_sha256=None,
            args={"context": context, "kv_cache_gb": kv_cache_gb, "dtype": dtype,
                  "enforce_eager": enforce_eager, "max_num_seqs": max_num_seqs, "seed": seed,
                  "prefix_cache": prefix_cache,
                  "gguf_loader": "used" if gguf_loader else (vllm_gguf_loader() or "available, not used"),
                  **llm_kwargs},
            threads=threads_used, device=device, pid=os.getpid(), concurrency="batched",
            log_path=str(self._log),
        )

    def _begin_loop(self, engine: Any, tokenizer: Any, context: int) -> None:
        """Start the step loop over ``engine`` (an ``LLMEngine``)."""
        self._engine, self._tokenizer, self._context = engine, tokenizer, context
        self._ids = itertools.count()
        self._inbox: queue.Queue = queue.Queue()
        # "Is it open?" and the put into the inbox are one step under this lock, and so is
        # close()'s stop marker: a request can never land behind the marker, where no loop
        # would ever answer it.
        self._gate = threading.Lock()
        self._dead: str | None = None  # why the loop stopped, if it failed
        self._thread = threading.Thread(target=self._loop, name="labkit-vllm-loop", daemon=True)
        self._thread.start()

    def _start(self, kwargs: dict[str, Any], env: dict[str, str], directory: Any, label: str) -> None:
        with STARTING:  # no other engine starts meanwhile: the new children are vLLM's
            before_children = child_pids()
            # vLLM spawns them, not labkit: a guard ends them if this process dies without
            # close(), from the first moment (a kernel killed while a big model loads).
            guard = OrphanGuard.watching(before_children)
            try:
                self._baseline = engine_baseline(f"{self.name} ({label})")
                self._log = log_path("vllm")
                with own_process_groups(guard.group):  # its group: ended with this process
                    self._llm = _start_llm(kwargs, env, self._log, directory)
                # The engine core (and its workers) are the children that appeared while loading.
                self._children = new_children(before_children)
                guard.fix(self._children)
            except BaseException:
                guard.release()  # and it ends whatever the failed load left running
                if hasattr(self, "_baseline"):
                    self._baseline.release()
                raise
        self._guard = guard

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
        self._check_open()
        return prompt_ids(self._tokenizer, text, chat)

    # --- the step loop -------------------------------------------------------------------------
    def _loop(self) -> None:
        active: dict[str, _Pending] = {}
        try:
            while self._admit(active):
                if active:
                    self._step(active)
        except BaseException as e:  # a bug here must not leave every request waiting for ever
            self._die(f"labkit's vLLM step loop failed ({type(e).__name__}: {e}); load the "
                      "engine again.", active)

    def _step(self, active: dict[str, _Pending]) -> None:
        try:
            outputs = self._engine.step()
        except Exception as e:
            for p in active.values():
                p.emit(EngineError(f"vLLM engine failed: {type(e).__name__}: {e}"))
            active.clear()
            return
        self._emit(outputs, active, time.perf_counter())

    def _die(self, reason: str, active: dict[str, _Pending]) -> None:
        """The loop is ending for good: fail what it holds, and whatever comes later."""
        with self._gate:
            self._dead = reason  # read under the gate: nothing enters the inbox after this
        for p in active.values():
            p.emit(EngineError(reason))
        active.clear()
        _fail(_flatten(_take(self._inbox, block=False)), EngineError(reason))

    def _admit(self, active: dict[str, _Pending]) -> bool:
        """Add what waits in the inbox to vLLM (blocking while nothing runs); False on close."""
        items = _flatten(_take(self._inbox, block=not active))
        for i, item in enumerate(items):
            if item is None:  # close(): everything still held or queued fails, nothing hangs
                self._die(_CLOSED, active)
                _fail(items[i + 1:], EngineError(_CLOSED))
                return False
            if item is _CANCEL:
                self._cancel_active(active)
            elif item.refused is not None:  # failed its checks in submit()
                item.emit(item.refused)
            else:
                self._add(item, active)
        return True

    def _add(self, item: _Pending, active: dict[str, _Pending]) -> None:
        try:
            # Outputs carry the id given here (vLLM adds a random suffix internally).
            rid = str(next(self._ids))
            self._engine.add_request(rid, {"prompt_token_ids": item.ids}, item.params)
            active[rid] = item
        except Exception as e:
            item.emit(EngineError(f"vLLM refused the request: {e}"))

    def _cancel_active(self, active: dict[str, _Pending]) -> None:
        """End every running request with finish "cancelled", and have vLLM drop them."""
        self._abort(list(active))
        now = time.perf_counter()
        for p in active.values():
            p.emit(Token("", None, now - p.t0, finish_reason="cancelled"))
            p.emit(_DONE)
        active.clear()

    def _abort(self, rids: list[str]) -> None:
        if not rids:
            return
        try:
            self._engine.abort_request(rids)
        except Exception:
            pass  # their outputs, should any come, find no request here and are dropped

    def _emit(self, outputs: list[Any], active: dict[str, _Pending], now: float) -> None:
        """Hand one step's new tokens to their requests, stamped ``now``. An output that
        cannot be read fails its own request, not the loop that serves everyone."""
        for o in outputs:
            p = active.get(o.request_id)
            if p is None:
                continue
            try:
                finished = _emit_one(o, p, now)
            except Exception as e:
                p.emit(EngineError(f"labkit could not read vLLM's output ({type(e).__name__}: {e})."))
                self._abort([o.request_id])
                finished = True
            if finished:
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
            # Timed from the caller's send time, else from before this request's tokenizing
            # (as a server's TTFT includes it): never from after the whole wave's.
            t0 = r.t0 if r.t0 is not None else time.perf_counter()
            p = _Pending([], None, t0, on_token=r.on_token, on_done=r.on_done)
            try:
                chat = not isinstance(r.prompt, str)
                p.ids = self.tokenize(check_conversation(r.prompt) if chat else r.prompt, chat=chat)
                p.params = self._sampling(SamplingParams(**_tupled(r.params)), len(p.ids))
            except LabkitError as e:
                p.refused = e
            pendings.append(p)
        self._enqueue(pendings)

    def _submit(self, ids: list[int], params: Any, t0: float) -> _Pending:
        pending = _Pending(ids, params, t0)
        self._enqueue(pending)
        return pending

    def _enqueue(self, item: Any) -> None:
        """Into the loop's inbox, if the engine is open and its loop alive (one step: see
        ``_gate``); else the error says why."""
        with self._gate:
            self._check_open()
            if self._dead is not None:
                raise EngineError(self._dead)
            self._inbox.put(item)

    def cancel(self) -> None:
        """End every request vLLM has been given so far with finish "cancelled" (vLLM aborts
        them, freeing their KV cache); requests submitted later run normally."""
        with self._gate:
            if not self.closed and self._dead is None:
                self._inbox.put(_CANCEL)

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

    def text_ids(self, text: str) -> list[int]:
        self._check_open()
        return list(self._tokenizer.encode(text, add_special_tokens=False))

    def kv_account(self) -> dict[str, float]:
        return self._account(with_metrics=False)

    def server_snapshot(self) -> dict[str, float]:
        return self._account(with_metrics=True)

    def _account(self, with_metrics: bool) -> dict[str, float]:
        if self.closed:
            return {}
        snap: dict[str, float] = {}
        try:
            cc = self._engine.vllm_config.cache_config
            if cc.num_gpu_blocks:
                snap["kv_capacity_tokens"] = int(cc.num_gpu_blocks) * int(cc.block_size)
            # with their labels: under data parallelism each engine has its own series
            samples = [(m.name, dict(m.labels or {}), float(m.value)) for m in self._engine.get_metrics()
                       if isinstance(getattr(m, "value", None), int | float)]
            snap.update(vllm_kv(samples))
            if with_metrics:
                snap = {**server_metrics(samples, "vllm"), **snap}
        except Exception:
            pass  # a reading is optional; the sweep goes on without it
        return snap

    def _close(self) -> None:
        try:
            with self._gate:
                self._inbox.put(None)
            if threading.current_thread() is not self._thread:  # (close() from a request's callback)
                self._thread.join(timeout=60)  # the loop reads the marker once the callback returns
            try:
                self._engine.engine_core.shutdown()
            except Exception:
                pass
        finally:  # a Ctrl-C during the shutdown too
            self._guard.release()  # and it ends whatever the shutdown left behind
            self._baseline.release()
        self._engine = None
        self._llm = None
        gc.collect()

    def health(self) -> str | None:
        if self.closed:
            return "the engine is closed"
        if not self._thread.is_alive():  # every request would wait for ever on it
            return self._dead or "labkit's vLLM step loop has stopped; load the engine again."
        for p in self._children:  # the engine core: requests would wait on it for ever
            try:  # (is_running: the same process, not a new one under a reused pid)
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    continue
            except psutil.NoSuchProcess:
                pass
            return f"vLLM's engine core (pid {p.pid}) has exited; see its log: {self._log}"
        return None


def _emit_one(o: Any, p: _Pending, now: float) -> bool:
    """One request's new tokens from one step; True when it finished."""
    c = o.outputs[0]
    lps = c.logprobs or []
    for i, tid in enumerate(c.token_ids):
        top = {int(k): float(v.logprob) for k, v in lps[i].items()} if i < len(lps) else None
        p.emit(Token(c.text if i == 0 else "", int(tid), now - p.t0,
                     top.get(int(tid)) if top else None, top))
    if not o.finished:
        return False
    if o.prompt_logprobs is not None:
        p.emit(("prompt_logprobs", o.prompt_logprobs))
    p.emit(Token("", None, now - p.t0, finish_reason=c.finish_reason,
                 cached_tokens=getattr(o, "num_cached_tokens", None),
                 prompt_tokens=len(o.prompt_token_ids or ()) or None))
    p.emit(_DONE)
    return True


def _take(inbox: queue.Queue, block: bool) -> list[Any]:
    """What waits in ``inbox`` (with ``block``, at least one item, waiting for it)."""
    items = [inbox.get()] if block else []
    try:
        while True:
            items.append(inbox.get_nowait())
    except queue.Empty:
        return items


def _flatten(entries: list[Any]) -> list[Any]:
    """Inbox entries as single items (a submit() puts its requests as one list)."""
    return [i for entry in entries for i in (entry if isinstance(entry, list) else [entry])]


def _fail(items: list[Any], error: Exception) -> None:
    for item in items:
        if isinstance(item, _Pending):
            item.emit(error)


def _quiet_stats(engine: Any) -> None:
    """Keep vLLM's stats for get_metrics() (its Prometheus logger) without the line it logs
    every 10 s while requests run: that would go wherever vLLM's logger writes, a notebook
    too where vLLM was imported before labkit loaded it."""
    try:
        from vllm.v1.metrics.loggers import PrometheusStatLogger

        manager = engine.logger_manager
        manager.stat_loggers = [s for s in manager.stat_loggers if isinstance(s, PrometheusStatLogger)]
    except Exception:
        pass  # another vLLM's internals: its log goes where vLLM's logger writes (labkit's log)
