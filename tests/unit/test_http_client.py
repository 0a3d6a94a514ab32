"""The HTTP engines' client: timeouts limit silence, not a whole stream; no connection limit
by default; clear errors (a fake OpenAI server on 127.0.0.1, no engine started)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest
from aiohttp import web

import labkit
from labkit.engines.openai import _raise_http
from labkit.errors import EngineError, InvalidInput

from .fake_server import serve


async def _models(request: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": [{"id": "m", "object": "model", "owned_by": "x"}]})


def _chunk(text: str, finish: str | None = None) -> bytes:
    return f"data: {json.dumps({'choices': [{'index': 0, 'text': text, 'finish_reason': finish}]})}\n\n".encode()


async def _completions(request: web.Request) -> web.StreamResponse:
    prompt = (await request.json())["prompt"]
    r = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await r.prepare(request)
    if prompt == "bad":
        await r.write(b"data: {not json\n\n")
        return r
    await r.write(_chunk("a"))
    if prompt == "stall":  # says nothing more, ever
        await asyncio.Event().wait()
    for _ in range(8 if prompt == "slow" else 1):
        if prompt == "slow":  # a long stream whose chunks come well within the timeout
            await asyncio.sleep(0.2)
        await r.write(_chunk("b"))
    await r.write(_chunk("", "length") + b"data: [DONE]\n\n")
    return r


@pytest.fixture
def url() -> Iterator[str]:
    yield from serve([web.get("/v1/models", _models), web.post("/v1/completions", _completions)])


async def _collect(engine, prompt: str) -> str:
    try:
        return "".join([t.text async for t in engine.astream(prompt, max_tokens=16)])
    finally:
        await engine.aclose()


def test_a_stream_longer_than_the_timeout_is_not_cut_while_data_flows(url):
    with labkit.load("openai", url=url, timeout_s=1.0) as e:
        assert asyncio.run(_collect(e, "slow")) == "a" + "b" * 8


def test_a_silent_stream_times_out_with_an_error_naming_the_timeout(url):
    with labkit.load("openai", url=url, timeout_s=0.5) as e:
        with pytest.raises(EngineError, match=r"no data for timeout_s=0\.5 s"):
            asyncio.run(_collect(e, "stall"))
        with pytest.raises(EngineError, match=r"timeout_s=0\.5"):
            list(e.stream("stall", max_tokens=4))


def test_no_connection_limit_by_default_and_a_warning_beyond_a_set_one(url):
    with labkit.load("openai", url=url) as e:
        async def limit():
            session = e._async_session()
            n = session.connector.limit
            await e.aclose()
            return n
        assert asyncio.run(limit()) == 0 and e.client_spec()["max_connections"] is None
    with labkit.load("openai", url=url, max_connections=1) as e:
        async def text(prompt):
            return "".join([t.text async for t in e.astream(prompt, max_tokens=16)])

        async def two():
            try:
                return await asyncio.gather(text("x"), text("y"))
            finally:
                await e.aclose()
        with pytest.warns(UserWarning, match="max_connections=1"):
            assert asyncio.run(two()) == ["ab", "ab"]
    with pytest.raises(InvalidInput, match="max_connections"):
        labkit.load("openai", url=url, max_connections=0)


def test_a_malformed_event_on_the_sync_path_is_an_engine_error(url):
    with labkit.load("openai", url=url) as e, pytest.raises(EngineError, match="malformed event"):
        list(e.stream("bad", max_tokens=4))


def test_only_a_400_about_the_context_is_taken_for_a_too_long_prompt():
    with pytest.raises(InvalidInput):
        _raise_http("u", 400, "This model's maximum context length is 2048 tokens.")
    with pytest.raises(InvalidInput):
        _raise_http("u", 400, "the request exceeds the available context size")
    with pytest.raises(EngineError) as err:
        _raise_http("u", 400, "top_k must not exceed the maximum of 100")
    assert not isinstance(err.value, InvalidInput)
