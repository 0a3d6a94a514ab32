"""One function per feature of the OpenAI API, each sending real requests and grading the
answer against the documented shape.

A check returns an :class:`Outcome`: whether the API does it (``status``), the evidence,
and, kept apart, what the model did with it (``model``): a 135M model that answers a
tool call with a badly chosen city is not a server bug, but a server that accepts
``tool_choice="required"`` and returns text is.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..engines.prometheus import parse_prometheus
from .http import ApiClient, Reply
from .schema import problems

SUPPORTED, PARTIAL, MISSING, WRONG, UNCHECKED = "supported", "partial", "missing", "wrong", "not checked"
STATUSES = (SUPPORTED, PARTIAL, MISSING, WRONG, UNCHECKED)


@dataclass
class Outcome:
    status: str
    evidence: str
    model: str = ""  # what the model did, where that is a separate question


@dataclass(frozen=True)
class Check:
    feature: str
    group: str
    run: Callable[[ApiClient], Outcome]


CHECKS: list[Check] = []


def check(feature: str, group: str) -> Callable[[Callable[[ApiClient], Outcome]], Callable[[ApiClient], Outcome]]:
    def add(fn: Callable[[ApiClient], Outcome]) -> Callable[[ApiClient], Outcome]:
        CHECKS.append(Check(feature, group, fn))
        return fn
    return add


# "strict": true is the API's way to ask that arguments follow the schema (vLLM enforces
# argument schemas only then), so a forced call with invalid arguments is the server's fault.
TOOLS = [{"type": "function", "function": {
    "name": name, "description": what, "strict": True,
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                   "additionalProperties": False}}}
    for name, what in (("get_weather", "The weather in a city"), ("get_time", "The local time in a city"))]
ASK_TOOLS = [{"role": "user", "content": "What is the weather in Paris, and the time in Tokyo?"}]
PERSON = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
          "required": ["name", "age"], "additionalProperties": False}


def refused(r: Reply) -> Outcome | None:
    """The outcome when the server did not answer 2xx: a hang or a 4xx is missing, a 5xx wrong."""
    if r.timed_out:
        return Outcome(MISSING, "timeout: no answer within the check's limit")
    if r.error:
        return Outcome(MISSING, r.error)
    if r.status is not None and r.status >= 500:
        return Outcome(WRONG, f"HTTP {r.status} (a server error, not a client one): {r.message()}")
    if r.status in (401, 403):  # the request was not looked at: nothing is known of the feature
        return Outcome(UNCHECKED, f"HTTP {r.status}: the server refused the client ({r.message()}); "
                                  "give it the key it expects (LABKIT_API_KEY)")
    if not r.ok:
        return Outcome(MISSING, f"HTTP {r.status}: {r.message()}")
    return None


def answered(r: Reply) -> Outcome | None:
    """``refused``, or a 2xx that is no completion at all (a body that is not JSON, or has no
    choices[0]): such an answer is wrong, and the check must not grade its missing fields."""
    if (bad := refused(r)) is not None:
        return bad
    if not isinstance(r.body, dict):
        return Outcome(WRONG, f"HTTP {r.status}, but the body is not a JSON object: {r.text[:80]!r}")
    if not r.choice():
        return Outcome(WRONG, f"HTTP {r.status}, but no choices[0]: {r.text[:80]!r}")
    return None


def _ask(api: ApiClient, path: str, **body: Any) -> Reply:
    return api.post(path, {"model": api.model, **body})


def _chat(api: ApiClient, content: str | list[dict[str, Any]], **body: Any) -> Reply:
    messages = [{"role": "user", "content": content}] if isinstance(content, str) else content
    return _ask(api, "/chat/completions", messages=messages, **body)


# --- endpoints and response shape ---------------------------------------------------------------
@check("/v1/models", "endpoints")
def models(api: ApiClient) -> Outcome:
    r = api.get("/models")
    if (bad := refused(r)) is not None:
        return bad
    ids = [m.get("id") for m in (r.body or {}).get("data") or [] if isinstance(m, dict)]
    if not ids:
        return Outcome(WRONG, "answered, but no model list under data[].id")
    return Outcome(SUPPORTED if api.model in ids else PARTIAL, f"lists {', '.join(map(str, ids[:3]))}")


def _usage_problems(usage: Any) -> list[str]:
    if not isinstance(usage, dict):
        return ["no usage"]
    keys = ("prompt_tokens", "completion_tokens", "total_tokens")
    out = [f"usage.{k} missing" for k in keys if not isinstance(usage.get(k), int)]
    if not out and usage["total_tokens"] != usage["prompt_tokens"] + usage["completion_tokens"]:
        out.append("usage.total_tokens is not prompt + completion")
    return out


def _graded(faults: list[str], ok: str) -> Outcome:
    return Outcome(PARTIAL, "; ".join(faults)) if faults else Outcome(SUPPORTED, ok)


@check("completions", "endpoints")
def completions(api: ApiClient) -> Outcome:
    r = _ask(api, "/completions", prompt="The capital of France is", max_tokens=8, temperature=0)
    if (bad := answered(r)) is not None:
        return bad
    c = r.choice()
    if not isinstance(c.get("text"), str):  # no completion at all: not a detail missing from one
        return Outcome(WRONG, f"no choices[0].text: {r.text[:80]!r}")
    faults = [] if c.get("finish_reason") in ("stop", "length") else [f"finish_reason {c.get('finish_reason')!r}"]
    return _graded(faults + _usage_problems(r.body.get("usage")), "text, finish_reason and usage as documented")


@check("chat completions", "endpoints")
def chat(api: ApiClient) -> Outcome:
    r = _chat(api, "Say hello.", max_tokens=8, temperature=0)
    if (bad := answered(r)) is not None:
        return bad
    msg = r.choice().get("message") or {}
    if not isinstance(msg.get("content"), str):
        return Outcome(WRONG, f"no choices[0].message.content: {r.text[:80]!r}")
    faults = [] if msg.get("role") == "assistant" else [f"message role {msg.get('role')!r}, not 'assistant'"]
    return _graded(faults + _usage_problems(r.body.get("usage")), "assistant message and usage as documented")


def _streamed(r: Reply, chat: bool) -> tuple[str, list[str]]:
    text, faults = "", []
    for ev in r.events:
        for c in (ev or {}).get("choices") or []:
            text += ((c.get("delta") or {}).get("content") or "") if chat else (c.get("text") or "")
    if any(ev is None for ev in r.events):
        faults.append("an event that is not JSON")
    if not r.done:
        faults.append("no data: [DONE] at the end")
    return text, faults


def _stream_check(api: ApiClient, chat: bool) -> Outcome:
    body = {"messages": [{"role": "user", "content": "Say hello."}]} if chat else {"prompt": "Once upon a time"}
    r = api.stream("/chat/completions" if chat else "/completions", {"model": api.model, "max_tokens": 8, **body})
    if (bad := refused(r)) is not None:
        return bad
    text, faults = _streamed(r, chat)
    missing = [] if text else [f"no {'delta.content' if chat else 'text'} in the events"]
    return _graded(faults + missing, f"{len(r.events)} events, then [DONE]")


@check("completions, streamed", "endpoints")
def completions_stream(api: ApiClient) -> Outcome:
    return _stream_check(api, chat=False)


@check("chat completions, streamed", "endpoints")
def chat_stream(api: ApiClient) -> Outcome:
    return _stream_check(api, chat=True)


@check("usage in streams (stream_options.include_usage)", "endpoints")
def stream_usage(api: ApiClient) -> Outcome:
    r = api.stream("/chat/completions", {"model": api.model, "max_tokens": 4, "stream_options": {"include_usage": True},
                                         "messages": [{"role": "user", "content": "Say hello."}]})
    if (bad := refused(r)) is not None:
        return bad
    with_usage = [ev for ev in r.events if isinstance(ev, dict) and isinstance(ev.get("usage"), dict)]
    if not with_usage:
        return Outcome(MISSING, "no event carried usage")
    last = with_usage[-1]
    if faults := _usage_problems(last["usage"]):
        return Outcome(WRONG, "; ".join(faults))
    if last.get("choices"):
        return Outcome(PARTIAL, "usage rides on the last content event, not on a final event with empty choices")
    return Outcome(SUPPORTED, "a final event with empty choices carries usage")


# --- sampling controls ------------------------------------------------------------------------
@check("stop sequences", "sampling")
def stop(api: ApiClient) -> Outcome:
    base = dict(prompt="1, 2, 3, 4,", max_tokens=16, temperature=0)
    ref = _ask(api, "/completions", **base)
    if (bad := answered(ref)) is not None:
        return bad
    text = ref.choice().get("text") or ""
    cut = len(text) // 2
    if len(text.strip()) < 4:
        return Outcome(UNCHECKED, f"the model's reference text {text!r} is too short to cut")
    seq = text[cut:cut + 2]
    want = text[: text.find(seq)]
    r = _ask(api, "/completions", stop=[seq], **base)
    if (bad := answered(r)) is not None:
        return bad
    got, reason = r.choice().get("text"), r.choice().get("finish_reason")
    if got != want:
        return Outcome(WRONG, f"stop={seq!r}: got {got!r}, expected {want!r}")
    if reason != "stop":
        return Outcome(PARTIAL, f"text cut right, but finish_reason {reason!r}")
    return Outcome(SUPPORTED, f"stop={seq!r} cut the text there, finish_reason 'stop'")


@check("finish_reason 'length'", "sampling")
def finish_length(api: ApiClient) -> Outcome:
    r = _ask(api, "/completions", prompt="1, 2, 3, 4, 5,", max_tokens=3, temperature=0)
    if (bad := answered(r)) is not None:
        return bad
    reason, used = r.choice().get("finish_reason"), (r.body.get("usage") or {}).get("completion_tokens")
    if reason == "length":
        return Outcome(SUPPORTED, "max_tokens=3 ended with 'length'")
    return Outcome(WRONG if used == 3 else UNCHECKED, f"max_tokens=3: finish_reason {reason!r} after {used} tokens")


@check("n > 1", "sampling")
def n_choices(api: ApiClient) -> Outcome:
    r = _ask(api, "/completions", prompt="Once upon a time", max_tokens=6, n=2, temperature=1.0)
    if (bad := answered(r)) is not None:
        return bad
    idx = sorted(c.get("index") for c in r.body.get("choices") or [])
    if idx == [0, 1]:
        return Outcome(SUPPORTED, "two choices, index 0 and 1")
    return Outcome(WRONG, f"n=2 accepted, but choices had indexes {idx}")


@check("seed determinism", "sampling")
def seed(api: ApiClient) -> Outcome:
    texts = []
    for _ in range(2):
        r = _ask(api, "/completions", prompt="Once upon a time", max_tokens=16, temperature=1.0, seed=1234)
        if (bad := answered(r)) is not None:
            return bad
        text = r.choice().get("text")
        if not isinstance(text, str):
            return Outcome(WRONG, f"choices[0] has no text: {r.text[:80]!r}")
        texts.append(text)
    if texts[0] == texts[1]:
        return Outcome(SUPPORTED, "temperature 1, seed 1234: the same text twice")
    return Outcome(PARTIAL, f"seed accepted, but two runs differed: {texts[0]!r} vs {texts[1]!r}")


@check("logprobs (completions)", "sampling")
def logprobs_completions(api: ApiClient) -> Outcome:
    r = _ask(api, "/completions", prompt="Once upon a time", max_tokens=3, logprobs=2, temperature=0)
    if (bad := answered(r)) is not None:
        return bad
    lp = r.choice().get("logprobs")
    if not isinstance(lp, dict):
        return Outcome(MISSING, "logprobs=2 accepted, but choices[0].logprobs is empty")
    if isinstance(lp.get("token_logprobs"), list) and isinstance(lp.get("top_logprobs"), list):
        n = min(len(t) for t in lp["top_logprobs"]) if lp["top_logprobs"] else 0
        return _graded([] if n >= 2 else [f"top_logprobs of {n}, 2 asked"], "tokens, token_logprobs and top_logprobs")
    if isinstance(lp.get("content"), list):
        return Outcome(PARTIAL, "logprobs in the chat format (content[]), not the completions one "
                                "(tokens/token_logprobs/top_logprobs)")
    return Outcome(WRONG, f"unrecognised logprobs keys {sorted(lp)}")


@check("logprobs / top_logprobs (chat)", "sampling")
def logprobs_chat(api: ApiClient) -> Outcome:
    r = _chat(api, "Say hello.", max_tokens=3, logprobs=True, top_logprobs=2, temperature=0)
    if (bad := answered(r)) is not None:
        return bad
    content = (r.choice().get("logprobs") or {}).get("content")
    if not isinstance(content, list) or not content:
        return Outcome(MISSING, "logprobs=true accepted, but no logprobs.content")
    ok = all(isinstance(e.get("logprob"), (int, float)) and len(e.get("top_logprobs") or []) == 2 for e in content)
    return Outcome(SUPPORTED, f"{len(content)} tokens, 2 alternatives each") if ok else \
        Outcome(WRONG, "logprobs.content entries lack logprob or 2 top_logprobs")


# --- structured output ------------------------------------------------------------------------
def _json_reply(r: Reply, schema: dict[str, Any] | None) -> Outcome:
    content = (r.choice().get("message") or {}).get("content") or ""
    try:
        value = json.loads(content)
    except ValueError:
        if r.choice().get("finish_reason") == "length":
            return Outcome(PARTIAL, "cut at max_tokens before the JSON closed", model=f"{content[:60]!r}...")
        return Outcome(WRONG, f"not JSON: {content[:80]!r}")
    faults = problems(value, schema) if schema else ([] if isinstance(value, dict) else ["not an object"])
    if faults:
        return Outcome(WRONG, "; ".join(faults[:3]), model=content[:80])
    return Outcome(SUPPORTED, "valid JSON" + (", valid against the schema" if schema else " object"),
                   model=content[:80])


@check("response_format json_object", "structured output")
def json_object(api: ApiClient) -> Outcome:
    r = _chat(api, "Describe a person as JSON with a name and an age.", max_tokens=160, temperature=0,
              response_format={"type": "json_object"})
    return answered(r) or _json_reply(r, None)


@check("response_format json_schema", "structured output")
def json_schema(api: ApiClient) -> Outcome:
    r = _chat(api, "Describe a person as JSON with a name and an age.", max_tokens=160, temperature=0,
              response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON,
                                                                      "strict": True}})
    return answered(r) or _json_reply(r, PERSON)


# --- tools --------------------------------------------------------------------------------------
def _calls(r: Reply, allowed: set[str]) -> tuple[list[str], list[str]]:
    """The tool calls as 'name(args)', and what is wrong with any of them."""
    msg = r.choice().get("message") or {}
    calls, faults = [], []
    if not isinstance(msg.get("tool_calls"), list) or not msg["tool_calls"]:
        return [], [f"no tool_calls; answered text {str(msg.get('content'))[:60]!r}"]
    spec = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
    for c in msg["tool_calls"]:
        fn = c.get("function") or {}
        name, raw = fn.get("name"), fn.get("arguments")
        calls.append(f"{name}({raw})")
        if not isinstance(c.get("id"), str) or c.get("type") != "function":
            faults.append("a call without an id or type 'function'")
        if name not in allowed:
            faults.append(f"called {name!r}, allowed {sorted(allowed)}")
            continue
        try:
            args = json.loads(raw) if isinstance(raw, str) else None
        except ValueError:
            args = None
        if args is None:
            faults.append(f"arguments are not a JSON string: {str(raw)[:40]!r}")
        else:
            faults += [f"arguments {p}" for p in problems(args, spec[name])[:2]]
    return calls, faults


def _tool_outcome(r: Reply, allowed: set[str], forced: bool) -> Outcome:
    if (bad := answered(r)) is not None:
        return bad
    calls, faults = _calls(r, allowed)
    if not calls and not forced:  # under "auto" a text answer is the model's choice
        if not isinstance((r.choice().get("message") or {}).get("content"), str):
            return Outcome(WRONG, "neither tool_calls nor text content in choices[0].message")
        return Outcome(SUPPORTED, "accepted; well-formed answer", model="answered in text, no tool call")
    if faults:
        return Outcome(WRONG, "; ".join(faults[:3]), model=", ".join(calls)[:120])
    return Outcome(SUPPORTED, f"{len(calls)} well-formed call(s), arguments valid against the tool's schema",
                   model=", ".join(calls)[:120])


@check("tool_choice required", "tools")
def tools_required(api: ApiClient) -> Outcome:
    r = _chat(api, ASK_TOOLS, tools=TOOLS, tool_choice="required", max_tokens=96, temperature=0)
    return _tool_outcome(r, {"get_weather", "get_time"}, forced=True)


@check("tool_choice named function", "tools")
def tools_named(api: ApiClient) -> Outcome:
    r = _chat(api, ASK_TOOLS, tools=TOOLS, max_tokens=96, temperature=0,
              tool_choice={"type": "function", "function": {"name": "get_time"}})
    return _tool_outcome(r, {"get_time"}, forced=True)


@check("tool_choice auto", "tools")
def tools_auto(api: ApiClient) -> Outcome:
    r = _chat(api, ASK_TOOLS, tools=TOOLS, tool_choice="auto", max_tokens=96, temperature=0)
    return _tool_outcome(r, {"get_weather", "get_time"}, forced=False)


@check("parallel tool calls", "tools")
def tools_parallel(api: ApiClient) -> Outcome:
    r = _chat(api, ASK_TOOLS, tools=TOOLS, tool_choice="required", parallel_tool_calls=True,
              max_tokens=160, temperature=0)
    out = _tool_outcome(r, {"get_weather", "get_time"}, forced=True)
    if out.status == SUPPORTED:
        n = len(r.choice()["message"]["tool_calls"])
        out.model = f"{n} call(s) for the two questions: " + out.model
    return out


@check("a tool-result turn", "tools")
def tool_result(api: ApiClient) -> Outcome:
    call = {"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": json.dumps({"city": "Paris"})}}
    r = _chat(api, [*ASK_TOOLS, {"role": "assistant", "content": None, "tool_calls": [call]},
                    {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"}],
              tools=TOOLS, max_tokens=24, temperature=0)
    if (bad := answered(r)) is not None:
        return bad
    content = (r.choice().get("message") or {}).get("content")
    if not isinstance(content, str):
        return Outcome(WRONG, "accepted, but no assistant content")
    return Outcome(SUPPORTED, "accepted; the assistant answered", model=content[:80])


# --- errors -------------------------------------------------------------------------------------
def _context(api: ApiClient) -> int | None:
    """The server's context in tokens, where it says (vLLM: /v1/models; llama-server: /props)."""
    r = api.get("/models")
    for m in (r.body or {}).get("data") or [] if r.ok and isinstance(r.body, dict) else []:
        if m.get("id") == api.model and isinstance(m.get("max_model_len"), int):
            return m["max_model_len"]
    p = api.get("/props", root=True)
    if p.ok and isinstance(p.body, dict):
        n = (p.body.get("default_generation_settings") or {}).get("n_ctx")
        return n if isinstance(n, int) else None
    return None


#: what a server may answer a request it refuses for its content (bad request, not found,
#: too large, unprocessable); 401/403/429 say something about the client, not the request
CLIENT_ERRORS = (400, 404, 413, 422)


def _control(api: ApiClient) -> Outcome | None:
    """A valid request first: a server that refuses it too (a missing key, an outage) proves
    nothing by refusing the invalid one."""
    r = _ask(api, "/completions", prompt="hi", max_tokens=2)
    if r.ok:
        return None
    why = r.error or f"HTTP {r.status}: {r.message()}"
    return Outcome(UNCHECKED, f"a valid request failed too ({why}), so a refusal here would prove nothing")


def _client_error(r: Reply, what: str, accepted: str) -> Outcome:
    if r.timed_out or r.error:
        return Outcome(MISSING, f"{what}: {r.error}")
    if r.status is not None and r.status >= 500:
        return Outcome(WRONG, f"{what}: HTTP {r.status} (a server error): {r.message()}")
    if r.ok:
        return Outcome(PARTIAL, f"{what}: {accepted}")
    msg = r.message()
    if r.status not in CLIENT_ERRORS:
        return Outcome(PARTIAL, f"{what}: HTTP {r.status}, not a client error about the request "
                                f"({', '.join(map(str, CLIENT_ERRORS))}): {msg}")
    return Outcome(SUPPORTED if msg else PARTIAL, f"{what}: HTTP {r.status}" + (f": {msg}" if msg else ", no message"))


@check("a prompt over the context", "errors")
def error_context(api: ApiClient) -> Outcome:
    n = _context(api)
    if n is None:  # a guess could be under the real context, and the prompt then a valid one
        return Outcome(UNCHECKED, "the server does not say its context length (vLLM: max_model_len in "
                                  "/v1/models; llama-server: n_ctx in /props)")
    if (bad := _control(api)) is not None:
        return bad
    r = _ask(api, "/completions", prompt="hello " * (n + 16), max_tokens=4)
    return _client_error(r, f"{n + 16} words for a {n}-token context", "accepted (truncated?)")


@check("an unknown model", "errors")
def error_model(api: ApiClient) -> Outcome:
    if (bad := _control(api)) is not None:
        return bad
    r = api.post("/completions", {"model": "no-such-model-labkit", "prompt": "hi", "max_tokens": 2})
    return _client_error(r, "model 'no-such-model-labkit'", "served the request with its own model")


@check("a parameter of the wrong type", "errors")
def error_param(api: ApiClient) -> Outcome:
    if (bad := _control(api)) is not None:
        return bad
    r = _ask(api, "/completions", prompt="hi", max_tokens="many")
    return _client_error(r, "max_tokens='many'", "accepted it")


# --- the server's own view ------------------------------------------------------------------------
def _busy(api: ApiClient) -> int | None:
    """Requests the server is working on, from /slots (llama-server) or /metrics (vLLM)."""
    s = api.get("/slots", root=True)
    if s.ok and isinstance(s.body, list):
        return sum(1 for slot in s.body if isinstance(slot, dict) and slot.get("is_processing"))
    m = api.get("/metrics", root=True)
    if m.ok:
        running = [v for name, _labels, v in parse_prometheus(m.text) if name == "vllm:num_requests_running"]
        return int(sum(running)) if running else None
    return None


@check("a client that disconnects mid-stream frees its slot", "server")
def disconnect(api: ApiClient) -> Outcome:
    import time

    if _busy(api) is None:
        return Outcome(UNCHECKED, "the server offers neither /slots nor vLLM's /metrics to check")
    n = min(_context(api) or 2048, 4096)
    events = 6
    # Usage on every chunk where the server gives it (vLLM): a chunk may carry several tokens.
    r = api.stream("/completions", {"model": api.model, "prompt": "Write a very long story.", "max_tokens": n - 16,
                                    "ignore_eos": True, "stream_options": {"include_usage": True,
                                                                           "continuous_usage_stats": True}},
                   stop_after=events)
    if (bad := refused(r)) is not None:
        return bad
    t0 = time.perf_counter()
    if r.done or len(r.events) < events:
        return Outcome(UNCHECKED, f"the stream ended after {len(r.events)} events, before the client closed it")
    # Idle soon after the close proves nothing if the whole generation would have ended by then
    # (a small model writes a few hundred tokens in a second): the rest must take longer.
    made = [((e or {}).get("usage") or {}).get("completion_tokens") or i + 1 for i, e in enumerate(r.events)]
    took = r.event_s[-1] - r.event_s[1]
    if took <= 0 or made[-1] <= made[1]:
        return Outcome(UNCHECKED, "its events arrived together: the generation's speed, and so how long the "
                                  "rest would take, is unknown")
    rest_s = (n - 16 - made[-1]) * took / (made[-1] - made[1])
    if rest_s < 1.0:
        return Outcome(UNCHECKED, f"the other {n - 16 - made[-1]} tokens would take only {rest_s:.2f} s here: too "
                                  "little to tell a freed slot from a finished generation")
    limit = min(5.0, rest_s / 2)
    while time.perf_counter() - t0 < limit:  # polling a condition, with a deadline
        if _busy(api) == 0:
            return Outcome(SUPPORTED, f"idle {time.perf_counter() - t0:.2f} s after closing a stream of "
                                      f"{n - 16} tokens at its {events}th event (the rest would take {rest_s:.1f} s)")
        time.sleep(0.05)
    return Outcome(WRONG, f"still generating {limit:.1f} s after the client closed the stream "
                          f"(the rest of the generation would take {rest_s:.1f} s)")


@check("/tokenize and /detokenize", "server")
def tokenize(api: ApiClient) -> Outcome:
    # The text alone: vLLM adds the model's BOS by default, and /detokenize would then give it
    # back in front ("<|begin_of_text|>Hello world"), a round trip that is right but reads wrong.
    r = api.post("/tokenize", {"model": api.model, "prompt": "Hello world", "content": "Hello world",
                               "add_special_tokens": False}, root=True)
    if not r.ok:
        return Outcome(MISSING, f"POST /tokenize: {r.error or f'HTTP {r.status}'}")
    ids = (r.body or {}).get("tokens")
    if not isinstance(ids, list) or not ids:
        return Outcome(WRONG, "/tokenize answered without tokens[]")
    d = api.post("/detokenize", {"model": api.model, "tokens": ids}, root=True)
    text = (d.body or {}).get("prompt", (d.body or {}).get("content")) if d.ok else None
    if text is None:
        return Outcome(PARTIAL, f"/tokenize works; /detokenize: {d.error or f'HTTP {d.status}'}")
    ok = text.strip() == "Hello world"
    return Outcome(SUPPORTED if ok else WRONG, f"'Hello world' -> {len(ids)} tokens -> {text!r}")
