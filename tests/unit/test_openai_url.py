"""Credentials and a query in an openai engine's URL go with every request and into no
record (a fake server on 127.0.0.1 that notes what each request carried)."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator

import pytest
from aiohttp import web

import labkit
from labkit.errors import InvalidInput

from .fake_server import serve

SEEN: list[tuple[str, str | None, dict[str, str]]] = []  # (path, Authorization, query) per request


def _note(request: web.Request) -> None:
    SEEN.append((request.path, request.headers.get("Authorization"), dict(request.query)))


async def _models(request: web.Request) -> web.Response:
    _note(request)
    return web.json_response({"object": "list", "data": [{"id": "m", "object": "model", "owned_by": "someone"}]})


async def _completions(request: web.Request) -> web.StreamResponse:
    _note(request)
    r = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await r.prepare(request)
    for text, finish in (("hi", None), ("", "length")):
        chunk = {"choices": [{"index": 0, "text": text, "finish_reason": finish}]}
        await r.write(f"data: {json.dumps(chunk)}\n\n".encode())
    await r.write(b"data: [DONE]\n\n")
    return r


@pytest.fixture
def server() -> Iterator[str]:
    """The fake on 127.0.0.1; yields its host:port."""
    for url in serve([web.get("/v1/models", _models), web.post("/v1/completions", _completions)]):
        SEEN.clear()
        yield url.removeprefix("http://").removesuffix("/v1")


async def _astream(eng) -> list:
    out = [tok async for tok in eng.astream("hello", max_tokens=2)]
    await eng.aclose()
    return out


def test_credentials_and_query_in_the_url_are_sent_but_never_recorded(server):
    eng = labkit.load("openai", url=f"http://user:s%40cret@{server}/v1?tenant=t1")
    try:
        assert eng.generate(["hello"], max_tokens=2)[0].text == "hi"
        asyncio.run(_astream(eng))  # the load generator's path (aiohttp)
        recorded = json.dumps(eng.info.to_dict())
    finally:
        eng.close()
    want = "Basic " + base64.b64encode(b"user:s@cret").decode()
    assert [p for p, _, _ in SEEN] == ["/v1/models", "/v1/completions", "/v1/completions"]  # (no /version here)
    assert all(auth == want and query == {"tenant": "t1"} for _, auth, query in SEEN)
    assert f"http://{server}/v1" in recorded
    assert "cret" not in recorded and "user" not in recorded and "tenant" not in recorded


def test_credentials_in_the_url_and_an_api_key_are_refused_together(server):
    with pytest.raises(InvalidInput, match="not both"):
        labkit.load("openai", url=f"http://user:pw@{server}/v1", api_key="k")


def test_conformance_reaches_the_server_as_the_engine_does(server):
    """The conformance client carries the URL's credentials and query too (a gateway's
    ?api-version= that it dropped made every check fail), and its report names no secret."""
    from labkit.apicheck.matrix import _target

    client, how = _target(f"http://user:s%40cret@{server}/v1?tenant=t1", 5.0)
    try:
        assert client.get("/models").status == 200
    finally:
        client.close()
    want = "Basic " + base64.b64encode(b"user:s@cret").decode()
    assert SEEN[-1] == ("/v1/models", want, {"tenant": "t1"})
    assert "cret" not in how and "tenant" not in how
