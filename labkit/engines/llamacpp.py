"""llama.cpp in process, through llama-cpp-python's ``Llama``.

One ``Llama`` context runs one sequence at a time, so concurrent callers queue on a lock and
``info.concurrency`` says "sequential": for many users compare with ``llama-server``, which
batches across parallel slots. Tokens come from ``Llama.generate`` directly (not
``create_completion``) so every token has its id and its own timestamp, and ``ignore_eos``
is possible for fixed-length benchmarks.
"""

from __future__ import annotations

import ctypes
import difflib
import gc
import inspect
import os
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from .. import models
from .._cache import file_sha256
from ..errors import EngineError, InvalidInput
from ..memory import EngineMemory, engine_baseline
from ._output import log_path, output_to
from .base import Conversation, Engine, EngineInfo, SamplingParams, Token
from .capabilities import Scores
from .defaults import default_threads


def import_llama_cpp():
    """Import llama-cpp-python bound to the llama.cpp build that passed its check on this
    CPU (compiled once for the binding and the tools; see :mod:`labkit.native.llamacpp`).

    The check runs in a child process, so a build that would crash this one (SIGILL in a
    Jupyter kernel) is replaced before it is ever loaded here.
    """
    from ..native.llamacpp import current_build

    build = current_build()
    lib = build.bin_dir
    if "llama_cpp" not in sys.modules:
        os.environ["LLAMA_CPP_LIB_PATH"] = str(lib)
        os.environ["MTMD_CPP_LIB"] = str(lib)
    try:
        import llama_cpp
    except ImportError as e:
        raise EngineError("llama-cpp-python is not installed: run `make test` once, or "
                          "`pip install -r environments/cpu.txt`.") from e
    except (OSError, RuntimeError) as e:
        raise EngineError(f"llama-cpp-python could not load llama.cpp from {lib}: {e}. "
                          "Run `labkit doctor`.") from e
    loaded = Path(getattr(llama_cpp.llama_cpp, "_base_path", lib))
    if loaded.resolve() != lib.resolve():
        raise EngineError(
            f"llama_cpp was imported before labkit chose a checked build, and loaded "
            f"{loaded} instead of {lib}. Restart the kernel and load through labkit first, or "
            f"set LLAMA_CPP_LIB_PATH={lib} before importing llama_cpp.")
    return llama_cpp, build


class LlamaCppEngine(Engine, Scores):
    """llama-cpp-python ``Llama`` in this process."""

    name = "llama.cpp"
    model_format = "gguf"
    summary = "llama-cpp-python in process (one sequence at a time)"

    def __init__(self, model: str = models.DEFAULT_MODEL, *, threads: int | None = None,
                 context: int = 2048, gpu_layers: int = 0, batch: int = 512, seed: int = 0,
                 flash_attn: bool = False, prefix_cache: bool = False, **llama_kwargs: Any):
        super().__init__()
        if threads is not None and threads <= 0:
            raise InvalidInput(f"threads must be positive, got {threads}.")
        if prefix_cache:
            raise InvalidInput("In-process llama.cpp re-evaluates every prompt (no prefix cache: a "
                               "repeated prompt would look faster than a new one); use llama-server "
                               "for prefix caching, or leave prefix_cache= out.")
        llama_cpp, build = import_llama_cpp()
        check_llama_kwargs(llama_cpp.Llama, llama_kwargs)
        self._llama_cpp = llama_cpp
        self._path = models.gguf_path(model)
        self._model_name = models.label(model)
        self._threads = threads or default_threads()
        self._args = {"context": context, "gpu_layers": gpu_layers, "batch": batch, "seed": seed,
                      "flash_attn": flash_attn, "prefix_cache": False, **llama_kwargs}
        self._lock = _OneAtATime()
        self._cancelled_at = float("-inf")  # requests started before this stop at their next token
        self._baseline = engine_baseline(f"{self.name} ({self._model_name})")
        self._log = log_path("llama.cpp")
        try:
            with output_to(self._log):
                self._llm = llama_cpp.Llama(model_path=str(self._path), n_ctx=context, n_batch=batch,
                                            n_threads=self._threads, n_threads_batch=self._threads,
                                            n_gpu_layers=gpu_layers, seed=seed, verbose=False,
                                            flash_attn=flash_attn, **llama_kwargs)
        except BaseException:
            self._baseline.release()  # no engine: it shares this process with none
            raise
        self._note_context(context)
        self._eog = self._llm._model.token_eos()
        self._vocab = self._llm._model.vocab
        self._formatter = _chat_formatter(self._llm)
        self._info = EngineInfo(
            engine=self.name,
            engine_version=f"llama-cpp-python {metadata.version('llama-cpp-python')}",
            model=self._model_name,
            model_path=str(self._path),
            model_sha256=file_sha256(self._path),
            args=self._args,
            threads=self._threads,
            device=_device(llama_cpp, gpu_layers),
            pid=os.getpid(),
            concurrency="sequential",
            log_path=str(self._log),
            build=f"{build.variant}: {build.probe.reason}",
        )

    def _note_context(self, context: int) -> None:
        """llama.cpp rounds the context up (to 256 and a multiple of the padding): say so, and
        report what was used, not what was asked."""
        effective = self._llm.n_ctx()
        if effective != context:
            self._args["context"] = effective
            self._args["context_requested"] = context
            warnings.warn(f"labkit: llama.cpp uses a context of {effective} tokens, not the "
                          f"{context} asked for (it rounds small contexts up).", stacklevel=3)

    @property
    def info(self) -> EngineInfo:
        return self._info

    def memory_scope(self) -> EngineMemory:
        return EngineMemory([], self._baseline)

    @property
    def llama(self):
        """The underlying ``llama_cpp.Llama`` object, for anything labkit does not wrap."""
        self._check_open()
        return self._llm

    # --- tokenization ------------------------------------------------------------------------
    def _render(self, prompt: str | Conversation, chat: bool) -> tuple[list[int], list[str]]:
        if not chat:
            return self._llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=True), []
        if self._formatter is None:
            raise InvalidInput(f"{self._path.name} carries no chat template; use generate() "
                               "with a raw prompt instead of chat().")
        result = self._formatter(messages=prompt)
        ids = self._llm.tokenize(result.prompt.encode("utf-8"), add_bos=not result.added_special,
                                 special=True)
        stop = result.stop if isinstance(result.stop, list) else [result.stop] if result.stop else []
        return ids, stop

    def tokenize(self, text: str | Conversation, *, chat: bool = False) -> list[int]:
        self._check_open()
        return self._render(text, chat)[0]

    # --- generation --------------------------------------------------------------------------
    def _stream(self, prompt, params: SamplingParams, chat: bool, t0: float) -> Iterator[Token]:
        ids, template_stops = self._render(prompt, chat)
        n_ctx = self._llm.n_ctx()
        if len(ids) + params.max_tokens > n_ctx:
            raise InvalidInput(
                f"The prompt has {len(ids)} tokens and max_tokens is {params.max_tokens}, more "
                f"than the context of {n_ctx}. Shorten the prompt, lower max_tokens, or load "
                f"with a larger context=."
            )
        stops = [s for s in (*params.stop, *template_stops) if s]
        return self._run(ids, params, stops, t0)

    def _run(self, ids: list[int], params: SamplingParams, stops: list[str], t0: float) -> Iterator[Token]:
        llm = self._llm
        with self._lock:
            self._check_open()
            if t0 <= self._cancelled_at:  # cancelled while it queued: not even a prefill
                yield Token("", None, time.perf_counter() - t0, finish_reason="cancelled",
                            prompt_tokens=len(ids))
                return
            llm.set_seed(params.seed)
            # reset=True re-evaluates the prompt every time: the KV prefix reuse of
            # llama-cpp-python would make a repeated prompt look faster than a new one.
            llm.reset()
            gen = llm.generate(ids, temp=params.temperature, top_p=params.top_p, top_k=0 if
                               params.temperature else 40, min_p=0.0, repeat_penalty=1.0)
            try:
                finish = yield from self._decode(gen, params, stops, t0)
            finally:
                gen.close()
            yield Token("", None, time.perf_counter() - t0, finish_reason=finish, prompt_tokens=len(ids))

    def _decode(self, gen: Iterator[int], params: SamplingParams, stops: list[str],
                t0: float) -> Iterator[Token]:
        """Tokens from ``gen`` until a stop; returns the finish reason. Text that may be the
        start of a stop string is held back until the next tokens tell (as vLLM does): such a
        token is yielded at its own time with its id and no text, and its text comes with the
        token that resolves it, or not at all when a stop string begins there."""
        out: list[int] = []
        decoded, emitted = "", 0
        for tok in gen:
            now = time.perf_counter() - t0
            if t0 <= self._cancelled_at:
                return "cancelled"
            lp, top = self._logprobs(tok, params.logprobs) if params.logprobs else (None, None)
            if self._llama_cpp.llama_vocab_is_eog(self._vocab, tok) and not params.ignore_eos:
                # The end-of-generation token is output, with no text of its own, as vLLM and
                # llama-server give it: token ids and counts then agree across engines.
                yield Token(decoded[emitted:], tok, now, lp, top)
                return "stop"
            out.append(tok)
            # Only whole UTF-8 characters: a token may end in the middle of one.
            decoded = self._llm.detokenize(out).decode("utf-8", errors="ignore")
            cut = _stop_at(decoded, stops, emitted)
            last = len(out) >= params.max_tokens
            end = cut if cut is not None else len(decoded) if last else len(decoded) - _held(decoded, stops)
            end = max(end, emitted)
            yield Token(decoded[emitted:end], tok, now, lp, top)
            emitted = end
            if cut is not None:
                return "stop"
            if last:
                return "length"
        return "length"

    def _logprobs(self, tok: int, k: int) -> tuple[float, dict[int, float]]:
        """Log-softmax of the logits that produced ``tok`` (the last evaluated position)."""
        n_vocab = self._llm.n_vocab()
        ptr = self._llama_cpp.llama_get_logits_ith(self._llm._ctx.ctx, -1)
        logits = np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), shape=(n_vocab,))
        return _top_logprobs(logits, tok, k)

    def score(self, prompt_ids: list[int], continuation_ids: list[int], k: int = 20) -> list[dict[int, float]]:
        """Teacher forcing: top-k logprobs (always including the forced token) at each
        continuation position, given the prompt and the forced tokens before it."""
        self._check_open()
        llm = self._llm
        if len(prompt_ids) + len(continuation_ids) > llm.n_ctx():
            raise InvalidInput(f"{len(prompt_ids) + len(continuation_ids)} tokens do not fit the "
                               f"context of {llm.n_ctx()}; load with a larger context=.")
        result = []
        with self._lock:
            llm.reset()
            if llm._logits_all:  # loaded with logits_all=True: one batched pass over everything
                ids = list(prompt_ids) + list(continuation_ids)
                llm.eval(ids)
                start = len(prompt_ids) - 1
                for i, tok in enumerate(continuation_ids):
                    result.append(_top_logprobs(llm.scores[start + i], tok, k)[1])
                return result
            llm.eval(prompt_ids)
            for tok in continuation_ids:
                result.append(self._logprobs(tok, k)[1])
                llm.eval([tok])
        return result

    def text_ids(self, text: str) -> list[int]:
        self._check_open()
        return self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)

    def cancel(self) -> None:
        self._cancelled_at = time.perf_counter()

    def _close(self) -> None:
        if self._lock.mine():  # a stream this thread left half-read holds the model: it is
            self._lock.on_release(self._free)  # freed when that stream ends or is collected
            return
        with self._lock:
            self._free()

    def _free(self) -> None:
        self._baseline.release()
        llm, self._llm = self._llm, None
        if llm is not None:
            llm.close()
            del llm
        gc.collect()


def _stop_at(text: str, stops: list[str], start: int) -> int | None:
    """Where the earliest stop string in ``text`` begins (looking from ``start``), or None."""
    found = [i for i in (text.find(s, start) for s in stops) if i >= 0]
    return min(found) if found else None


def _held(text: str, stops: list[str]) -> int:
    """How many characters at the end of ``text`` could begin a stop string."""
    for k in range(min(len(text), max((len(s) for s in stops), default=1) - 1), 0, -1):
        if any(s.startswith(text[-k:]) for s in stops):
            return k
    return 0


def check_llama_kwargs(llama_cls: Any, kwargs: dict[str, Any]) -> None:
    """Refuse keywords ``Llama`` would not apply: it takes ``**kwargs`` and ignores unknown
    ones, so a typo (``n_thread``) or another engine's option (``parallel``) would load
    without effect and be recorded as if applied."""
    params = inspect.signature(llama_cls.__init__).parameters
    named = {n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    ours = {"model_path": "model=", "n_ctx": "context=", "n_batch": "batch=", "n_threads": "threads=",
            "n_threads_batch": "threads=", "n_gpu_layers": "gpu_layers=", "seed": "seed=",
            "verbose": None, "flash_attn": "flash_attn="}
    unknown = sorted(k for k in kwargs if k not in named)
    if unknown:
        hints = [f"{k} (did you mean {m[0]}?)" if (m := difflib.get_close_matches(k, named, 1)) else k
                 for k in unknown]
        raise InvalidInput(f"llama.cpp in process does not take {', '.join(hints)}: llama_cpp.Llama "
                           "would ignore it. Its own options are the parameters of llama_cpp.Llama; "
                           "`parallel` is llama-server's.")
    taken = sorted(k for k in kwargs if k in ours)
    if taken:
        raise InvalidInput(f"labkit sets {', '.join(taken)} itself: give "
                           f"{', '.join(ours[k] or 'nothing' for k in taken)} instead.")


def _device(llama_cpp: Any, gpu_layers: int) -> str:
    """Where the layers run: a CPU-only build ignores gpu_layers."""
    supports = getattr(llama_cpp, "llama_supports_gpu_offload", None)
    offloads = bool(supports()) if supports is not None else True
    return "cuda" if gpu_layers and offloads else "cpu"


def _chat_formatter(llm: Any) -> Any:
    """The model's own chat template (from the GGUF), or None when it carries none."""
    template = llm.metadata.get("tokenizer.chat_template")
    if not template:
        return None
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    eos, bos = llm._model.token_eos(), llm._model.token_bos()
    return Jinja2ChatFormatter(
        template=template,
        eos_token=llm._model.token_get_text(eos) if eos != -1 else "",
        bos_token=llm._model.token_get_text(bos) if bos != -1 else "",
        stop_token_ids=[eos],
    )


def _top_logprobs(logits: np.ndarray, chosen: int, k: int) -> tuple[float, dict[int, float]]:
    x = logits.astype(np.float64)
    m = x.max()
    lse = m + np.log(np.exp(x - m).sum())
    lp = x - lse
    top = np.argpartition(-lp, k)[:k] if k < len(lp) else np.arange(len(lp))
    out = {int(i): float(lp[i]) for i in top[np.argsort(-lp[top])]}
    out.setdefault(int(chosen), float(lp[chosen]))
    return float(lp[chosen]), out


class _OneAtATime:
    """The model serves one request at a time. A stream holds it between tokens, so a request
    started in the thread whose stream is still open would wait for itself for ever: that is
    an error instead."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._owner: int | None = None
        self._after: list = []

    def mine(self) -> bool:
        return self._owner == threading.get_ident()

    def on_release(self, fn) -> None:
        self._after.append(fn)

    def __enter__(self) -> _OneAtATime:
        if self.mine():
            raise EngineError("This llama.cpp engine is still streaming an earlier request in this "
                              "thread: read that stream to its end (or close() it) before starting another.")
        self._lock.acquire()
        self._owner = threading.get_ident()
        return self

    def __exit__(self, *exc: object) -> None:
        after, self._after = self._after, []
        try:
            for fn in after:
                fn()
        finally:
            self._owner = None
            self._lock.release()
