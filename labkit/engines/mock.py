"""``mock-server``: labkit's own OpenAI-compatible server, with no model behind it.

It streams ``max_tokens`` chunks per request after ``ttft_ms``, ``token_delay_ms`` apart
(``jitter``: each delay drawn uniformly within that fraction of it), so the only work on
the machine is the client's. :func:`labkit.calibrate` drives it to find what one labkit
client process (and N of them) can sustain; with no delays it answers each request in one
write, as fast as a server possibly could, so a run against it is client-bound by design.

Run alone: ``python -m labkit.engines.mock --port 8000 --token-delay-ms 20``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
from typing import Any

from .. import __version__
from ..errors import InvalidInput
from .base import EngineInfo
from .defaults import as_flags
from .servers import Launch, _ManagedServer

MODEL = "labkit-mock"
#: with an API key (``api_key=``), the mock answers 401 to requests without it, as a gateway does
KEY_VARIABLE = "LABKIT_MOCK_API_KEY"


class MockServerEngine(_ManagedServer):
    """``load("mock-server", token_delay_ms=20)``: the loopback mock, started and owned."""

    name = "mock-server"
    server_name = "mock-server"
    summary = "labkit's loopback OpenAI server with no model (fixed or random token delays)"

    def __init__(self, *, token_delay_ms: float = 0.0, ttft_ms: float = 0.0, jitter: float = 0.0,
                 seed: int = 0, host: str = "127.0.0.1", port: int | None = None,
                 startup_timeout_s: float = 60.0, log_dir: str | None = None, api_key: str | None = None):
        args = {"token_delay_ms": token_delay_ms, "ttft_ms": ttft_ms, "jitter": jitter, "seed": seed}
        _check(args)
        cmd = [sys.executable, "-m", "labkit.engines.mock", *as_flags(args)]
        super().__init__(cmd, Launch(host, port, startup_timeout_s, MODEL, log_dir=log_dir,
                                     api_key=api_key, key_variable=KEY_VARIABLE))
        self._info = EngineInfo(
            engine=self.name, engine_version=f"labkit {__version__}", model=MODEL, model_path="",
            model_sha256=None, args={**args, "host": host, "port": self.port}, threads=1,
            url=self.url, pid=self._proc.pid, log_path=str(self._proc.log_path))

    def caveats(self) -> list[str]:
        return ["No model: the mock streams placeholder text, one chunk per token; its numbers "
                "measure the client (and the loopback), not an engine."]


def _check(args: dict[str, Any]) -> None:
    for key in ("token_delay_ms", "ttft_ms"):
        v = args[key]
        if isinstance(v, bool) or not isinstance(v, int | float) or v < 0:
            raise InvalidInput(f"{key} must be a number of milliseconds >= 0, got {v!r}.")
    if not isinstance(args["jitter"], int | float) or not 0 <= args["jitter"] <= 1:
        raise InvalidInput(f"jitter must be a fraction in 0..1 (each delay drawn within "
                           f"that share of token_delay_ms), got {args['jitter']!r}.")


# --- the server (runs in its own process) ---------------------------------------------------
class _Replies:
    """Pre-rendered SSE chunks, so a reply costs the server a few writes and no JSON work."""

    def __init__(self, token_delay_s: float, ttft_s: float, jitter: float, seed: int):
        self.token_delay_s, self.ttft_s, self.jitter = token_delay_s, ttft_s, jitter
        self.rng = random.Random(seed)
        self._token: dict[bool, bytes] = {c: _sse(_chunk(c, " tok", None)) for c in (False, True)}

    def delay(self) -> float:
        if not self.jitter:
            return self.token_delay_s
        return self.token_delay_s * (1 + self.jitter * (2 * self.rng.random() - 1))

    def tail(self, chat: bool, prompt_tokens: int, n: int) -> bytes:
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": n,
                 "total_tokens": prompt_tokens + n}
        return _sse(_chunk(chat, "", "length")) + _sse({**_chunk(chat, None, None), "choices": [],
                                                         "usage": usage}) + b"data: [DONE]\n\n"

    async def stream(self, response: Any, chat: bool, prompt_tokens: int, n: int) -> None:
        if not self.token_delay_s and not self.ttft_s:  # as fast as a server could: one write
            await response.write(self._token[chat] * n + self.tail(chat, prompt_tokens, n))
            return
        await asyncio.sleep(self.ttft_s)
        for i in range(n):
            if i:
                await asyncio.sleep(self.delay())
            await response.write(self._token[chat])
        await response.write(self.tail(chat, prompt_tokens, n))


def _chunk(chat: bool, text: str | None, finish: str | None) -> dict[str, Any]:
    if chat:
        choice = {"index": 0, "delta": {} if text is None else {"content": text}, "finish_reason": finish}
        return {"id": "mock", "object": "chat.completion.chunk", "model": MODEL, "choices": [choice]}
    choice = {"index": 0, "text": text or "", "finish_reason": finish}
    return {"id": "mock", "object": "text_completion", "model": MODEL, "choices": [choice]}


def _sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def _prompt_words(body: dict[str, Any], chat: bool) -> int:
    if chat:
        return sum(len(str(m.get("content", "")).split()) for m in body.get("messages") or [])
    return len(str(body.get("prompt", "")).split())


def app(replies: _Replies) -> Any:
    from aiohttp import web

    async def complete(request: web.Request) -> web.StreamResponse:
        chat = request.path.endswith("/chat/completions")
        try:
            body = await request.json()
            n = int(body.get("max_tokens") or 16)
        except (ValueError, TypeError):
            return web.json_response({"error": {"message": "a JSON body with an integer max_tokens"}}, status=400)
        words = _prompt_words(body, chat)
        if not body.get("stream"):
            await asyncio.sleep(replies.ttft_s + replies.token_delay_s * max(n - 1, 0))
            text = " tok" * n
            choice = {"index": 0, "finish_reason": "length",
                      **({"message": {"role": "assistant", "content": text}} if chat else {"text": text})}
            return web.json_response({"id": "mock", "model": MODEL, "choices": [choice], "usage": {
                "prompt_tokens": words, "completion_tokens": n, "total_tokens": words + n}})
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await replies.stream(response, chat, words, n)
        await response.write_eof()
        return response

    async def models(_: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": MODEL, "object": "model",
                                                              "owned_by": "labkit-mock"}]})

    async def health(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def version(_: web.Request) -> web.Response:
        return web.json_response({"version": f"labkit-mock {__version__}"})

    key = os.environ.get(KEY_VARIABLE)

    @web.middleware
    async def require_key(request: web.Request, handler: Any) -> web.StreamResponse:
        if key and request.path != "/health" and request.headers.get("Authorization") != f"Bearer {key}":
            return web.json_response({"error": {"message": "a valid API key is required"}}, status=401)
        return await handler(request)

    application = web.Application(middlewares=[require_key])
    application.add_routes([web.post("/v1/completions", complete), web.post("/v1/chat/completions", complete),
                            web.get("/v1/models", models), web.get("/health", health),
                            web.get("/version", version)])
    return application


def main(argv: list[str] | None = None) -> int:
    from aiohttp import web

    p = argparse.ArgumentParser(prog="python -m labkit.engines.mock", description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--token-delay-ms", type=float, default=0.0)
    p.add_argument("--ttft-ms", type=float, default=0.0)
    p.add_argument("--jitter", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    try:
        _check({"token_delay_ms": a.token_delay_ms, "ttft_ms": a.ttft_ms, "jitter": a.jitter})
    except InvalidInput as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    replies = _Replies(a.token_delay_ms / 1000, a.ttft_ms / 1000, a.jitter, a.seed)
    web.run_app(app(replies), host=a.host, port=a.port, print=None, access_log=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
