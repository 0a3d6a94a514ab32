"""A fake engine behind the real Engine interface, for the fast tier: tokens come from a
counter, and it can be told to die after N requests (as a killed server does)."""

from __future__ import annotations

import threading
import time
import zlib

from labkit.engines.base import Engine, EngineInfo, Token
from labkit.errors import EngineError


class FakeEngine(Engine):
    name = "fake"
    summary = "a fake for unit tests"

    def __init__(self, die_after: int | None = None, token_s: float = 0.0):
        super().__init__()
        self.die_after = die_after
        self.token_s = token_s
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
        if self.die_after is not None and n > self.die_after:
            raise EngineError("Cannot reach http://127.0.0.1:1/v1 (ConnectError)")
        return self._tokens(params, t0)

    def _tokens(self, params, t0):
        for i in range(params.max_tokens):
            if self.token_s:
                time.sleep(self.token_s)  # the fake's "compute", not synchronisation
            if t0 <= self._cancelled_at:
                yield Token("", None, time.perf_counter() - t0, finish_reason="cancelled")
                return
            yield Token(f" w{i}", i, time.perf_counter() - t0)
        yield Token("", None, time.perf_counter() - t0, finish_reason="length")

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
