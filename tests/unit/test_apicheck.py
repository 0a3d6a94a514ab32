"""The conformance checks' grading, against a small fake OpenAI server that answers wrongly
(no engine needed): malformed tool calls are "wrong", a 500 is "wrong", a hang is "missing"."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest
from aiohttp import web

import labkit
from labkit.apicheck.schema import problems
from labkit.errors import InvalidInput

from .fake_server import serve

HANG = asyncio.Event()  # never set: a request that waits on it hangs until the server stops


async def _models(request: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": [{"id": "fake", "object": "model", "owned_by": "fake"}]})


async def _chat(request: web.Request) -> web.Response:
    body = await request.json()
    if "response_format" in body and body["response_format"]["type"] == "json_schema":
        await HANG.wait()
    message: dict = {"role": "assistant", "content": "hello"}
    if body.get("tool_choice") == "required":  # arguments that are not JSON
        message = {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{city: Paris"}}]}
    elif isinstance(body.get("tool_choice"), dict):  # a tool that was not offered
        message = {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "delete_everything", "arguments": "{}"}}]}
    return web.json_response({"object": "chat.completion", "choices": [
        {"index": 0, "message": message, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}})


async def _boom(request: web.Request) -> web.Response:
    return web.json_response({"error": {"message": "boom"}}, status=500)


async def _not_found(request: web.Request) -> web.Response:
    return web.Response(status=404, text="Not Found")




@pytest.fixture
def wrong_server() -> Iterator[str]:
    yield from serve([web.get("/v1/models", _models), web.post("/v1/chat/completions", _chat),
                       web.post("/v1/completions", _boom)])


def test_malformed_answers_are_graded_wrong_and_a_hang_missing(wrong_server):
    m = labkit.conformance(wrong_server, timeout_s=1.0, progress=False)
    row = m.table.set_index("feature")
    assert row.loc["/v1/models", "status"] == "supported"
    assert row.loc["tool_choice required", "status"] == "wrong"
    assert "not a JSON string" in row.loc["tool_choice required", "evidence"]
    assert row.loc["tool_choice named function", "status"] == "wrong"
    assert "'delete_everything'" in row.loc["tool_choice named function", "evidence"]
    assert row.loc["completions", "status"] == "wrong" and "HTTP 500" in row.loc["completions", "evidence"]
    assert row.loc["response_format json_schema", "status"] == "missing"
    assert "timeout" in row.loc["response_format json_schema", "evidence"]
    assert row.loc["chat completions", "status"] == "supported"
    assert len(m.table) == len(labkit.apicheck.checks.CHECKS)  # every check ran to an answer
    assert m.counts().loc[wrong_server, "wrong"] >= 3  # a URL's engine is named by the URL
    html = m._repr_html_()
    assert "<table>" in html and "attached to" in html


def test_a_url_that_is_not_an_openai_server_is_refused_clearly():
    for url in serve([web.get("/v1/models", _not_found)]):
        with pytest.raises(InvalidInput, match=r"does not serve the OpenAI API \(GET /v1/models: HTTP 404"):
            labkit.conformance(url, progress=False)


def test_in_process_engines_are_refused_for_conformance():
    class NoHttp:
        pass

    with pytest.raises(InvalidInput, match="server reached over HTTP"):
        labkit.conformance(NoHttp(), progress=False)


@pytest.mark.parametrize("value, schema, found", [
    ({"name": "a", "age": 3}, {"type": "object", "properties": {"age": {"type": "integer"}}, "required": ["name"]}, []),
    ({"age": 3}, {"type": "object", "required": ["name"]}, ["$: missing required 'name'"]),
    ({"age": True}, {"type": "object", "properties": {"age": {"type": "integer"}}}, ["$.age: true/false"]),
    ({"a": 1, "b": 2}, {"type": "object", "properties": {"a": {}}, "additionalProperties": False}, ["$: unexpected 'b'"]),
    ("Paris", {"type": "object"}, ["$: str 'Paris' where object was expected"]),
    ([1, "x"], {"type": "array", "items": {"type": "integer"}}, ["$[1]: str"]),
    ("c", {"enum": ["a", "b"]}, ["$: 'c' is not one of"]),
])
def test_the_schema_check_names_what_is_wrong(value, schema, found):
    got = problems(value, schema)
    assert len(got) == len(found) and all(g.startswith(f) for g, f in zip(got, found, strict=True))


def test_the_cli_refuses_an_engine_without_an_api():
    from labkit.cli import main

    assert main(["conformance", "--engine", "llama.cpp"]) == 2


def test_json_of_the_matrix_round_trips(wrong_server):
    m = labkit.conformance(wrong_server, timeout_s=1.0, progress=False)
    d = json.loads(json.dumps(m.to_dict(), default=str))
    assert {c["feature"] for c in d["checks"]} == set(m.table["feature"])


@pytest.mark.parametrize("prompts, users, message", [
    ([], [1, 8], "prompts must be a non-empty list"), (["hi", ""], [1], "non-empty strings"),
    (["hi"], [0, 8], r"users must be positive integers, got \[0, 8\]"), (["hi"], [], "users must be positive")])
def test_batch_invariance_refuses_bad_prompts_and_levels_before_generating(prompts, users, message):
    class Untouchable:
        def generate(self, *a, **k):
            raise AssertionError("generated before checking its input")

    with pytest.raises(InvalidInput, match=message):
        labkit.batch_invariance(Untouchable(), prompts, users=users)


def _answer(body: object, status: int = 200, text: str | None = None):
    async def handler(request: web.Request) -> web.Response:
        if text is not None:
            return web.Response(status=status, text=text)
        return web.json_response(body, status=status)
    return handler


def _graded(routes: list[web.RouteDef]) -> dict[str, tuple[str, str]]:
    for url in serve([web.get("/v1/models", _models), *routes]):
        m = labkit.conformance(url, timeout_s=2.0, progress=False)
    return {r["feature"]: (r["status"], r["evidence"]) for r in m.table.to_dict("records")}


ERROR_CHECKS = ("a prompt over the context", "an unknown model", "a parameter of the wrong type")


def test_a_server_that_refuses_every_request_supports_nothing():
    # 401 to everything but /v1/models: no refusal of a bad request proves anything
    got = _graded([web.route("*", "/{tail:.*}", _answer({"error": {"message": "invalid api key"}}, 401))])
    assert {f for f, (status, _) in got.items() if status == "supported"} == {"/v1/models"}
    for feature in ERROR_CHECKS:
        assert got[feature][0] == "not checked", got[feature]
    assert "a valid request failed too (HTTP 401" in got["an unknown model"][1]
    assert got["completions"][0] == "not checked" and "LABKIT_API_KEY" in got["completions"][1]


@pytest.mark.parametrize("body", [{}, {"choices": [{"index": 0}]}, {"choices": [{"index": 0, "message": {}}]}])
def test_an_empty_answer_is_wrong_not_graded_on_what_it_lacks(body):
    got = _graded([web.post("/v1/completions", _answer(body)), web.post("/v1/chat/completions", _answer(body))])
    for feature in ("completions", "chat completions", "seed determinism", "tool_choice auto"):
        assert got[feature][0] == "wrong", (feature, got[feature])


def test_a_200_whose_body_is_not_json_is_wrong():
    got = _graded([web.post("/v1/completions", _answer(None, text="hello")),
                   web.post("/v1/chat/completions", _answer(None, text="hello"))])
    assert got["completions"] == ("wrong", "HTTP 200, but the body is not a JSON object: 'hello'")
    assert got["seed determinism"][0] == "wrong" and got["chat completions"][0] == "wrong"


async def _strict_completions(request: web.Request) -> web.Response:
    """Valid requests answered; an unknown model 404, a wrong type 400, as documented."""
    body = await request.json()
    if body.get("model") != "fake":
        return web.json_response({"error": {"message": f"model {body.get('model')} not found"}}, status=404)
    if not isinstance(body.get("max_tokens"), int):
        return web.json_response({"error": {"message": "max_tokens must be an integer"}}, status=400)
    return web.json_response({"choices": [{"index": 0, "text": " Paris", "finish_reason": "length"}],
                              "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}})


def test_refusals_count_once_a_valid_request_succeeds_and_an_unknown_context_is_not_guessed():
    got = _graded([web.post("/v1/completions", _strict_completions)])
    assert got["an unknown model"] == ("supported", "model 'no-such-model-labkit': HTTP 404: model "
                                                    "no-such-model-labkit not found")
    assert got["a parameter of the wrong type"][0] == "supported"
    assert got["a prompt over the context"][0] == "not checked"  # the server does not say its context
    assert "context length" in got["a prompt over the context"][1]
