"""The engine protocol, its result types and the one registry of engines.

Lifecycle of an engine: ``load(name, ...)`` creates and starts it (loads weights or starts
and health-checks a server); ``generate`` / ``chat`` / ``stream`` / ``tokenize`` serve
requests and are safe to call from several threads at once (that is how the load generator
applies concurrency); ``close()`` gives every byte and process back. Engines know how to
generate; they know nothing about load shapes or metrics.

>>> import labkit
>>> with labkit.load("llama.cpp", model="smollm2-135m") as llm:
...     out = llm.generate(["Why do people use vLLM?"], max_tokens=16)
"""

from __future__ import annotations

import importlib
import platform
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from ..errors import EngineError, InvalidInput

Message = dict[str, str]
Conversation = list[Message]


@dataclass(frozen=True)
class SamplingParams:
    """What every engine is asked to do for one request. Greedy (temperature 0) by default."""

    max_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    logprobs: int | None = None  # top-k log-probabilities per generated token
    ignore_eos: bool = False  # keep generating to max_tokens (fixed output lengths for benchmarks)
    stop: tuple[str, ...] = ()

    def __post_init__(self):
        if not isinstance(self.max_tokens, int) or self.max_tokens <= 0:
            raise InvalidInput(f"max_tokens must be a positive integer, got {self.max_tokens!r}.")
        if self.temperature < 0:
            raise InvalidInput(f"temperature must be >= 0, got {self.temperature!r}.")
        if not 0 < self.top_p <= 1:
            raise InvalidInput(f"top_p must be in (0, 1], got {self.top_p!r}.")
        if self.logprobs is not None and not (isinstance(self.logprobs, int) and 0 < self.logprobs <= 20):
            raise InvalidInput(f"logprobs must be an integer from 1 to 20 (top-k), got {self.logprobs!r}.")


@dataclass
class Token:
    """One streamed token: what arrived and when (seconds since the request was sent)."""

    text: str
    token_id: int | None
    t_s: float
    logprob: float | None = None
    top_logprobs: dict[int, float] | None = None
    finish_reason: str | None = None
    #: on a request's last (text-less) token: prompt tokens the engine served from its prefix
    #: cache, as it reported them (None: it did not say)
    cached_tokens: int | None = None
    #: on the same token: how many tokens the prompt was, as the engine counted them
    prompt_tokens: int | None = None
    #: and how many it generated, as it counted them (a server may stream fewer chunks, or
    #: ids, than tokens: llama-server holds a token back until its UTF-8 character is whole)
    completion_tokens: int | None = None


@dataclass
class Submission:
    """One request for an engine's ``submit`` (engines that take requests with callbacks,
    such as in-process vLLM): a raw prompt or a conversation, sampling keywords (see
    :class:`SamplingParams`) and two callbacks, ``on_token(Token)`` and ``on_done(error or None)``.

    ``t0``: ``time.perf_counter()`` when the caller counts the request as sent; each token's
    ``t_s`` is measured from it, so a caller timing the whole request from the same moment
    gets a TTFT and an end-to-end time on one clock. None: the moment the engine starts on
    this request (before tokenizing it)."""

    prompt: str | Conversation
    on_token: Callable[[Token], None]
    on_done: Callable[[Exception | None], None]
    params: dict[str, Any] = field(default_factory=dict)
    t0: float | None = None


@dataclass
class Generation:
    """One finished request.

    ``ttft_s`` is the time from sending the request to the first token; ``token_times_s``
    holds, for every generated token, its arrival time since the request was sent (a chunk
    that carries several tokens gives them the same time).
    """

    prompt: str | Conversation
    text: str
    token_ids: list[int] | None
    prompt_token_ids: list[int] | None
    ttft_s: float | None
    token_times_s: list[float]
    e2e_s: float
    finish_reason: str | None
    logprobs: list[dict[int, float]] | None = None  # per generated token: top-k id -> logprob
    token_logprobs: list[float] | None = None  # per generated token: logprob of the chosen one
    engine: str = ""
    started_at: float = 0.0  # time.time() when the request was sent
    #: tokens generated as the engine counted them, where it said (see Token.completion_tokens)
    reported_tokens: int | None = None

    @property
    def n_tokens(self) -> int:
        if self.reported_tokens is not None:
            return self.reported_tokens
        return len(self.token_ids) if self.token_ids is not None else len(self.token_times_s)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class EngineInfo:
    """Everything needed to say later exactly what produced a number."""

    engine: str
    engine_version: str
    model: str
    model_path: str
    model_sha256: str | None
    args: dict[str, Any] = field(default_factory=dict)
    threads: int | None = None
    device: str = "cpu"
    url: str | None = None
    pid: int | None = None  # root of the engine's process tree, for memory sampling
    concurrency: str = "batched"  # "batched" or "sequential" (one sequence at a time)
    log_path: str | None = None  # where the engine's own output went
    build: str | None = None  # which native build runs it, and why it was chosen

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def _repr_html_(self) -> str:
        rows = "".join(f"<tr><th style='text-align:left'>{k}</th><td style='text-align:left'>{v}</td></tr>"
                       for k, v in self.to_dict().items())
        return f"<table>{rows}</table>"


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def check_prompts(prompts: Sequence[Any], what: str = "prompts") -> list[Any]:
    if isinstance(prompts, str | dict):
        raise InvalidInput(f"{what} must be a list (got a single {type(prompts).__name__}); "
                           f"wrap it: [{what[:-1]}].")
    items = list(prompts)
    if not items:
        raise InvalidInput(f"{what} is empty: give at least one.")
    for i, item in enumerate(items):
        if isinstance(item, str) and not item:
            # llama.cpp asserts on it, servers answer 400 or generate from nothing: one rule.
            raise InvalidInput(f"{what}[{i}] is an empty string; give at least one character.")
    return items


def check_conversation(conv: Any) -> Conversation:
    if not isinstance(conv, list) or not conv or not all(
            isinstance(m, dict) and "role" in m and "content" in m for m in conv):
        raise InvalidInput("A chat conversation is a non-empty list of {'role': ..., 'content': ...} "
                           f"messages; got {conv!r:.120}.")
    return conv


class Engine(ABC):
    """One loaded model in one engine. Subclasses register themselves in :data:`ENGINES`."""

    name: ClassVar[str]
    #: Extra text for `labkit engines` / error messages.
    summary: ClassVar[str] = ""
    #: The model format it loads, "gguf" or "hf": which side of a paired model= it takes
    #: (``model={"llama.cpp": "x.gguf", "vllm": "org/name"}``). None: it loads no model.
    model_format: ClassVar[str | None] = None

    def __init__(self) -> None:
        self._closed = False

    # --- what subclasses implement -------------------------------------------------------
    @property
    @abstractmethod
    def info(self) -> EngineInfo: ...

    @abstractmethod
    def _stream(self, prompt: str | Conversation, params: SamplingParams, chat: bool,
                t0: float) -> Iterator[Token]:
        """Yield tokens of one request; ``t0`` is perf_counter() when it was sent."""

    @abstractmethod
    def tokenize(self, text: str | Conversation, *, chat: bool = False) -> list[int]:
        """Token ids this engine feeds the model for a raw prompt or a chat conversation."""

    @abstractmethod
    def _close(self) -> None: ...

    def _generate_many(self, prompts: list[Any], params: SamplingParams, chat: bool) -> list[Generation]:
        """Default: one request after another. Engines that batch override this."""
        return [self._collect(p, params, chat) for p in prompts]

    # --- the public protocol -------------------------------------------------------------
    def generate(self, prompts: Sequence[str], **params: Any) -> list[Generation]:
        """Complete raw prompts (no chat template). Keyword args: see :class:`SamplingParams`."""
        items = check_prompts(prompts)
        for p in items:
            if not isinstance(p, str):
                raise InvalidInput(f"generate() takes strings; use chat() for conversations (got {p!r:.80}).")
        self._check_open()
        return self._generate_many(items, SamplingParams(**_tupled(params)), False)

    def chat(self, conversations: Sequence[Conversation], **params: Any) -> list[Generation]:
        """Answer conversations; the engine applies the model's own chat template."""
        items = [check_conversation(c) for c in check_prompts(conversations, "conversations")]
        self._check_open()
        return self._generate_many(items, SamplingParams(**_tupled(params)), True)

    def stream(self, prompt: str | Conversation, **params: Any) -> Iterator[Token]:
        """Stream one request token by token; a list of messages is sent as a chat."""
        chat = not isinstance(prompt, str)
        if chat:
            check_conversation(prompt)
        self._check_open()
        sp = SamplingParams(**_tupled(params))
        return self._stream(prompt, sp, chat, time.perf_counter())

    def cancel(self) -> None:
        """Stop the generations in flight (their streams end with finish_reason
        "cancelled"); later ones run normally. Engines that cannot stop one mid-way let it
        finish: this is what Ctrl-C in a sweep calls."""
        return None  # the default: nothing to cancel mid-way

    def health(self) -> str | None:
        """Why this engine cannot serve any more (None while it can). Cheap: the load
        generator asks after every failed request, to stop a sweep at a dead engine."""
        return "the engine is closed" if self.closed else None

    def caveats(self) -> list[str]:
        """What a reader of this engine's measurements must know (limits, approximations);
        the load generator puts them in every result's manifest."""
        if self.info.concurrency == "sequential":
            return [f"{self.name} serves one sequence at a time: concurrent users queue, so TTFT "
                    "includes waiting; compare with llama-server for batching."]
        return []

    def log_tail(self, lines: int = 30) -> str:
        """The end of the engine's own log, for error messages ("" if it keeps none)."""
        from ._output import tail

        return tail(self.info.log_path, lines) if self.info.log_path else ""

    def close(self) -> None:
        """Free the model and stop every process the engine started. Safe to call twice."""
        if not self._closed:
            self._closed = True
            self._close()

    def memory_scope(self):
        """What :class:`labkit.memory.MemorySampler` should measure for this engine, or None
        when its memory is out of reach (a remote server)."""
        return None

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<{type(self).__name__} {self.name!r} ({state})>"

    # --- helpers for subclasses ----------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise EngineError(f"The {self.name} engine is closed; load it again with "
                              f"labkit.load({self.name!r}, ...).")

    def _collect(self, prompt: str | Conversation, params: SamplingParams, chat: bool) -> Generation:
        """Run one request through ``_stream`` and assemble its Generation."""
        started = time.time()
        t0 = time.perf_counter()
        tokens = list(self._stream(prompt, params, chat, t0))
        return assemble(self.name, prompt, tokens, time.perf_counter() - t0, started,
                        self._prompt_ids(prompt, chat))

    def _prompt_ids(self, prompt: str | Conversation, chat: bool) -> list[int] | None:
        try:
            return self.tokenize(prompt, chat=chat)
        except Exception:
            return None


def reported_tokens(tokens: list[Token]) -> int | None:
    """How many tokens the engine said it generated (its usage count), or None. The last
    count: a server may send a running one on every chunk (vLLM with
    --enable-force-include-usage starts at 0)."""
    return next((t.completion_tokens for t in reversed(tokens) if t.completion_tokens is not None), None)


def assemble(engine: str, prompt: Any, tokens: list[Token], e2e_s: float, started: float,
             prompt_ids: list[int] | None) -> Generation:
    """Build a Generation from streamed tokens (the last Token may be a finish marker only)."""
    real = [t for t in tokens if t.token_id is not None or t.text]
    finish = next((t.finish_reason for t in reversed(tokens) if t.finish_reason), None)
    ids = [t.token_id for t in real]
    reported = reported_tokens(tokens)
    # Ids are kept only when there is one per token generated: a server that held some back
    # (a multi-byte character split over tokens) would shift every comparison after them.
    whole = all(i is not None for i in ids) and (reported is None or reported == len(ids))
    has_lp = whole and bool(real) and all(t.top_logprobs is not None for t in real)
    return Generation(
        prompt=prompt,
        text="".join(t.text for t in real),
        token_ids=ids if whole else None,
        prompt_token_ids=prompt_ids,
        ttft_s=real[0].t_s if real else None,
        token_times_s=[t.t_s for t in real],
        e2e_s=e2e_s,
        finish_reason=finish,
        logprobs=[t.top_logprobs for t in real] if has_lp else None,
        token_logprobs=[t.logprob for t in real] if has_lp else None,
        engine=engine,
        started_at=started,
        reported_tokens=reported,
    )


def _tupled(params: dict[str, Any]) -> dict[str, Any]:
    if "stop" in params and params["stop"] is not None:
        stop = params["stop"]
        params = {**params, "stop": (stop,) if isinstance(stop, str) else tuple(stop)}
    elif "stop" in params:
        params = {**params, "stop": ()}
    return params


# --- the registry ---------------------------------------------------------------------------
# Names map to "module:Class" so that importing labkit never imports torch or vLLM.
ENGINES: dict[str, str] = {
    "llama.cpp": "labkit.engines.llamacpp:LlamaCppEngine",
    "vllm": "labkit.engines.vllm:VllmEngine",
    "llama-server": "labkit.engines.servers:LlamaServerEngine",
    "vllm-server": "labkit.engines.servers:VllmServerEngine",
    "openai": "labkit.engines.openai:OpenAIEngine",
    "mock-server": "labkit.engines.mock:MockServerEngine",
}


def engine_class(name: str) -> type[Engine]:
    if name not in ENGINES:
        raise InvalidInput(f"Unknown engine {name!r}. Known engines: {', '.join(ENGINES)}.")
    module, cls = ENGINES[name].split(":")
    return getattr(importlib.import_module(module), cls)


def load(engine: str, **kwargs: Any) -> Engine:
    """Create and start an engine by registry name.

    >>> llm = load("llama.cpp", model="smollm2-135m", threads=2)
    >>> srv = load("llama-server", model="smollm2-135m", parallel=8)
    >>> ext = load("openai", url="http://127.0.0.1:8000/v1", model="name")
    >>> pair = load("vllm", model={"llama.cpp": "m-Q4_K_M.gguf", "vllm": "org/m"})

    A dict ``model=`` pairs a GGUF with a Hugging Face model explicitly; each engine takes
    its side, once the pair is checked to tokenize alike (see ``labkit.models.paired``).
    """
    cls = engine_class(engine)
    if isinstance(kwargs.get("model"), dict) and cls.model_format is not None:
        from .. import models

        kwargs["model"] = models.paired(kwargs["model"], cls.model_format,
                                        allow_token_mismatch=kwargs.pop("allow_token_mismatch", False))
    from .._procs import STARTING

    with STARTING:  # builds, conversions and servers it starts included (see STARTING)
        return cls(**kwargs)
