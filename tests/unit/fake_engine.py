"""Fake engines behind the real Engine interface, for the fast tier: tokens come from a
counter, and one can be told to die after N requests (as a killed server does). One subclass
per capability, so the load generator and compare are tested on each path they take."""

from __future__ import annotations

import asyncio
import threading
import time
import zlib

from labkit.engines.base import Engine, EngineInfo, Token
from labkit.engines.capabilities import AsyncStreams, ReportsKv, Scores, Submits
from labkit.errors import EngineError


class FakeEngine(Engine):
    name = "fake"
    summary = "a fake for unit tests"

    def __init__(self, die_after: int | None = None, token_s: float = 0.0, fail_from_message: int | None = None):
        super().__init__()
        self.die_after = die_after
        self.token_s = token_s
        self.fail_from_message = fail_from_message  # refuse conversations this long (a bad request)
        self.seen: list = []  # every prompt, as sent
        self.started = 0
        self._lock = threading.Lock()
        self._cancelled_at = float("-inf")
        self._info = EngineInfo(engine="fake", engine_version="0", model="fake", model_path="",
                                model_sha256=None, concurrency="batched")

    @property
    def info(self) -> EngineInfo:
        return self._info

    def tokenize(self, text, *, chat: bool = False) -> list[int]:
        if not isinstance(text, str):
            text = " ".join(m["content"] for m in text)
        return [1] + [zlib.crc32(w.encode()) % 1000 for w in text.split()]

    def _stream(self, prompt, params, chat, t0):
        with self._lock:
            self.started += 1
            n = self.started
            self.seen.append(prompt)
        if self.die_after is not None and n > self.die_after:
            raise EngineError("Cannot reach http://127.0.0.1:1/v1 (ConnectError)")
        if self.fail_from_message is not None and not isinstance(prompt, str) \
                and len(prompt) >= self.fail_from_message:
            raise EngineError("400 Bad Request: the fake refuses conversations this long")
        return self._tokens(params, t0, len(self.tokenize(prompt)))

    def _tokens(self, params, t0, prompt_tokens=None):
        for i in range(params.max_tokens):
            if self.token_s:
                time.sleep(self.token_s)  # the fake's "compute", not synchronisation
            if t0 <= self._cancelled_at:
                yield Token("", None, time.perf_counter() - t0, finish_reason="cancelled")
                return
            yield Token(f" w{i}", i, time.perf_counter() - t0)
        yield Token("", None, time.perf_counter() - t0, finish_reason="length", prompt_tokens=prompt_tokens)

    def cancel(self) -> None:
        self._cancelled_at = time.perf_counter()

    def health(self) -> str | None:
        if self.die_after is not None and self.started > self.die_after:
            return "fake was killed by SIGKILL"
        return super().health()

    def log_tail(self, lines: int = 30) -> str:
        return "fake log: died"

    def _close(self) -> None:
        pass


class FakeSubmitEngine(FakeEngine, Submits):
    """Takes requests with callbacks, as in-process vLLM does; ``waves`` records how many
    requests each submit() call carried."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.waves: list[int] = []

    def submit(self, requests) -> None:
        self._check_open()
        self.waves.append(len(requests))
        for r in requests:
            threading.Thread(target=self._serve, args=(r,), daemon=True).start()

    def _serve(self, r) -> None:
        try:
            for tok in self.stream(r.prompt, **r.params):
                r.on_token(tok)
        except Exception as e:
            r.on_done(e)
            return
        r.on_done(None)


class FakeAsyncEngine(FakeEngine, AsyncStreams):
    """Streams on asyncio, as the HTTP engines do; ``loops`` records the event loops used."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.loops: set[int] = set()
        self.aclosed = 0

    async def astream(self, prompt, **params):
        self.loops.add(id(asyncio.get_running_loop()))
        for tok in self.stream(prompt, **params):
            await asyncio.sleep(0)  # let other requests of the wave interleave
            yield tok

    async def aclose(self) -> None:
        self.aclosed += 1


class FakeKvEngine(FakeEngine, ReportsKv):
    """Reports a KV account: capacity fixed, use growing with the requests started."""

    def kv_account(self) -> dict[str, float]:
        return {"kv_capacity_tokens": 1024.0, "kv_used_tokens": float(self.started)}


class FakeScoringEngine(FakeEngine, Scores):
    """Scores continuations: the forced token always gets log-probability -0.1."""

    def score(self, prompt_ids, continuation_ids, k: int = 20):
        return [{int(t): -0.1, int(t) + 1: -2.5} for t in continuation_ids]

    def text_ids(self, text: str) -> list[int]:
        return self.tokenize(text)[1:]
