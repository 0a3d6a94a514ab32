"""What an engine offers beyond the :class:`~labkit.engines.base.Engine` protocol, declared.

An engine lists its capabilities as base classes, e.g.
``class VllmEngine(Engine, Submits, Scores, ReportsKv)``. The load generator and
``compare`` ask ``isinstance(engine, Submits)``: never an engine's name, never ``hasattr``,
never a private attribute. A new engine gets the fast paths by declaring what it implements,
without touching ``loadgen/`` or ``comparison.py``.

Every engine already has ``stream``, ``tokenize``, ``health``, ``cancel`` and
``memory_scope`` (the base class gives safe defaults for the last three).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .base import Conversation, Submission, Token

__all__ = ["Submits", "AsyncStreams", "Scores", "ReportsKv", "KV_KEYS"]


class Submits(ABC):
    """Takes requests with callbacks and returns at once (in-process vLLM): a load generator
    then needs no thread per user, and requests given together enter one scheduler step."""

    @abstractmethod
    def submit(self, requests: Sequence[Submission]) -> None:
        """Start ``requests``; each one's ``on_token`` runs per token and ``on_done(error or
        None)`` once, on the engine's own thread. A request that fails its checks gets
        ``on_done(error)``; raising is only for an engine that cannot take any (closed)."""


class AsyncStreams(ABC):
    """Streams on asyncio (the HTTP engines): all users of a load level run from one event
    loop, so a wave of requests leaves in one burst and the client costs little CPU."""

    @abstractmethod
    def astream(self, prompt: str | Conversation, **params: Any) -> AsyncIterator[Token]:
        """``stream`` as an async iterator, on the running event loop."""

    @abstractmethod
    async def aclose(self) -> None:
        """Release what the running event loop holds (call before that loop ends)."""


class Scores(ABC):
    """Teacher forcing: log-probabilities of a given continuation (logprob parity needs it)."""

    @abstractmethod
    def score(self, prompt_ids: list[int], continuation_ids: list[int], k: int = 20) -> list[dict[int, float]]:
        """Top-k logprobs (always including the forced token) at each continuation position."""

    @abstractmethod
    def text_ids(self, text: str) -> list[int]:
        """Token ids of plain text: no BOS, no special tokens (windows of a reference text)."""


#: The keys a KV account may hold; each is optional.
KV_KEYS = ("kv_capacity_tokens", "kv_used_tokens", "kv_used_fraction", "running", "waiting",
           "n_tokens_max", "kv_engines")  # kv_engines: under data parallelism, how many share it


class ReportsKv(ABC):
    """Gives its own account of its KV cache: "used" memory is not "needed" memory (vLLM
    reserves its whole cache at start), so these readings say what a load level really used."""

    @abstractmethod
    def kv_account(self) -> dict[str, float]:
        """The KV facts right now, keyed by :data:`KV_KEYS` (empty when it tells nothing).
        Cheap enough to call every few seconds during a level; never raises."""

    def server_snapshot(self) -> dict[str, float]:
        """The engine's own view for the telemetry timeline: its KV account and the metrics of
        :data:`labkit.engines.prometheus.SERVER_METRICS` by their shared names, from one
        reading. Never raises; by default the KV account alone."""
        return self.kv_account()
