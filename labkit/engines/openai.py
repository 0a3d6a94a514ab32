"""Any OpenAI-compatible server, over HTTP with streaming (SSE).

Every request streams, so every chunk gets its own arrival time, even for ``generate``.
``astream`` is the same request on asyncio: the load generator drives all users of a level
from one event loop, as vLLM's serving benchmark does, so a wave of requests leaves in one
burst and the client spends little CPU next to a server on the same cores.
The server's kind is read from ``/v1/models`` (``owned_by``): for llama-server and vLLM the
engine also asks for the generated token ids (``verbose``/``return_tokens`` and
``return_token_ids``) and uses their tokenize endpoints; against other servers token ids
are unknown and only text and timings are reported.
"""

from __future__ import annotations

import asyncio
import json
import time
import warnings
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlencode

import httpx

from ..errors import EngineError, InvalidInput, LabkitError
from .base import (
    Conversation,
    Engine,
    EngineInfo,
    Generation,
    SamplingParams,
    Token,
    _tupled,
    check_conversation,
)
from .capabilities import AsyncStreams, ReportsKv
from .prometheus import llamacpp_kv, parse_prometheus, server_metrics, vllm_kv

# How long a health check waits for /v1/models. A server whose HTTP threads are all busy
# streaming answers it only when one frees up, so a timeout is not taken for death (a
# refused or reset connection is); it keeps a check from holding the sweep for a request's
# full timeout.
_HEALTH_TIMEOUT_S = 30.0


def served_as(served: list[dict[str, Any]], model: str | None, url: str) -> tuple[str, str]:
    """(model, flavor) for a request to ``model`` at a server listing ``served`` (its
    /v1/models entries): the first model when none is named; the flavor from who serves it."""
    ids = [m.get("id") for m in served]
    if model is None:
        if not ids:
            raise EngineError(f"{url} serves no models; pass model=.")
        model = ids[0]
    named = next((m for m in served if model == m.get("id") or model in (m.get("aliases") or [])), None)
    owners = {m.get("owned_by", "") for m in served}
    if named is None and len(owners) > 1:  # which kind of server answers it is unknown: say so
        shown = ", ".join(map(repr, ids[:10])) + (f" and {len(ids) - 10} more" if len(ids) > 10 else "")
        raise InvalidInput(f"{url} does not list model {model!r}; it serves {shown}. "
                           "Pass one of those as model= (or none, for the first).")
    # A name it does not list, where every model it lists is one kind of server's (llama-server
    # answers to any name; Ollama lists "name:latest" for "name"): that kind.
    owner = named.get("owned_by", "") if named is not None else next(iter(owners), "")
    return model, {"llamacpp": "llama-server", "vllm": "vllm"}.get(owner, "generic")


def _split_secrets(url: str) -> tuple[str, str | None, list[tuple[str, str]]]:
    """(the URL without user:password@, query or fragment; the user:password; the query's
    pairs). Those go with every request (a Basic Authorization header, query parameters) but
    are never recorded: a result's manifest, the engine's info and error messages name the
    bare URL. An API key belongs in api_key_env (LABKIT_API_KEY on the command line)."""
    from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

    parts = urlsplit(url)
    userinfo = None
    if "@" in parts.netloc:
        raw, _, host = parts.netloc.rpartition("@")
        user, _, password = raw.partition(":")
        userinfo = f"{unquote(user)}:{unquote(password)}"
        parts = parts._replace(netloc=host)
    query = parse_qsl(parts.query, keep_blank_values=True)
    return urlunsplit(parts._replace(query="", fragment="")), userinfo, query


def _basic(userinfo: str) -> str:
    import base64

    return "Basic " + base64.b64encode(userinfo.encode()).decode()


def _root(url: str) -> str:
    url = url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


class HttpEngine(Engine, AsyncStreams, ReportsKv):
    """An engine reached over HTTP through the OpenAI API: what the ``openai`` engine and the
    managed servers share. Subclasses call :meth:`_connect` once the server answers."""

    #: llama-server's per-request prefix cache switch (None: the server's default)
    cache_prompt: bool | None = None

    def _connect(self, url: str, model: str | None, api_key: str | None,
                 timeout_s: float = 600.0, max_connections: int | None = None,
                 headers: dict[str, str] | None = None) -> None:
        """Attach the HTTP clients to ``url`` and read which server it is (``/v1/models``).

        ``timeout_s``: the longest silence while waiting for a response or between two of its
        chunks (a long stream, or one queued in the server, is not cut off as long as data
        flows). ``max_connections``: None (the default, as in ``vllm bench serve``) opens a
        connection per request in flight; a number caps them, and requests beyond it wait
        inside labkit's client, a wait their TTFT then includes."""
        if not url or not url.startswith(("http://", "https://")):
            raise InvalidInput(f"url must start with http:// or https://, got {url!r}.")
        _check_limits(timeout_s, max_connections)
        if headers is not None and not (isinstance(headers, dict) and all(
                isinstance(k, str) and isinstance(v, str) for k, v in headers.items())):
            # names and types only: a value may be a key
            shown = {str(k): type(v).__name__ for k, v in headers.items()} if isinstance(headers, dict) \
                else type(headers).__name__
            raise InvalidInput(f"headers must map header names to strings, got {shown}.")
        url, userinfo, self._query = _split_secrets(url)
        self.url = _root(url) + "/v1"  # recorded (info, manifest, messages): no credentials, no query
        if userinfo and api_key:
            raise InvalidInput("Give the credentials in the URL (user:password@) or as an API key, not both.")
        headers = {**(headers or {}), **({"Authorization": f"Bearer {api_key}"} if api_key else {}),
                   **({"Authorization": _basic(userinfo)} if userinfo else {})}
        self._client_options: dict[str, Any] = dict(
            timeout=httpx.Timeout(timeout_s, connect=10.0), headers=headers, params=self._query,
            limits=httpx.Limits(max_connections=max_connections,
                                max_keepalive_connections=max_connections),
        )
        self._client = httpx.Client(**self._client_options)
        self._timeout_s, self._max_connections = timeout_s, max_connections
        self._in_flight, self._warned_limit = 0, False
        # One aiohttp session per event loop (a session belongs to the loop that made it).
        self._aclient: tuple[asyncio.AbstractEventLoop, Any] | None = None
        try:
            served = self._served(url)
        except BaseException:
            self._client.close()
            raise
        try:
            self.model, self.flavor = served_as(served, model, self.url)
        except LabkitError:
            self._client.close()
            raise

    def _served(self, url: str) -> list[dict[str, Any]]:
        try:
            listing = self._get("/v1/models")
        except EngineError as e:
            status = getattr(e, "status", None)
            if status is not None:  # it answered, but not as an OpenAI server does
                raise InvalidInput(f"{url} does not serve the OpenAI API (GET /v1/models: HTTP "
                                  f"{status}{': ' + e.body_line if e.body_line else ''}). Give the "
                                  "server's base URL, usually ending in /v1.") from None
            raise
        if not isinstance(listing, dict):
            raise InvalidInput(f"{url} does not serve the OpenAI API (GET /v1/models did not "
                              "answer a JSON object).")
        return listing.get("data") or []

    @property
    def info(self) -> EngineInfo:
        return self._info

    @property
    def http_headers(self) -> dict[str, str]:
        """The headers every request carries (the API key, where one was given)."""
        return dict(self._client_options["headers"])

    @property
    def http_params(self) -> dict[str, str]:
        """The query parameters every request carries (a gateway's ``?api-version=``, taken
        from the URL given)."""
        return dict(self._query or {})

    def client_spec(self) -> dict[str, Any]:
        """What another process needs to reach this server as this engine does (for load
        from several processes): URL, model, headers, limits. It holds the API key, so it is
        handed over in memory only, never written."""
        query = f"?{urlencode(self._query)}" if self._query else ""
        return {"url": self.url + query, "model": self.model, "headers": self.http_headers,
                "timeout_s": self._timeout_s, "max_connections": self._max_connections,
                "cache_prompt": self.cache_prompt}

    @staticmethod
    def from_spec(spec: dict[str, Any]) -> HttpEngine:
        """A client of the server a :meth:`client_spec` describes (an ``openai`` engine)."""
        engine = OpenAIEngine(spec["url"], spec["model"], headers=spec["headers"],
                              timeout_s=spec["timeout_s"], max_connections=spec["max_connections"])
        engine.cache_prompt = spec["cache_prompt"]
        return engine

    # --- HTTP helpers ------------------------------------------------------------------------
    def _get(self, path: str, timeout_s: float | None = None) -> dict[str, Any]:
        return self._request("GET", path, timeout_s=timeout_s)

    def _request(self, method: str, path: str, body: dict | None = None, timeout_s: float | None = None) -> Any:
        url = _root(self.url) + path
        try:
            r = self._client.request(method, url, json=body,
                                     **({"timeout": timeout_s} if timeout_s is not None else {}))
        except httpx.HTTPError as e:
            raise EngineError(f"Cannot reach {url} ({type(e).__name__}: {e}). Is the server "
                              "running and the URL right (it usually ends in /v1)?") from e
        if r.status_code >= 400:
            err = EngineError(f"{method} {url} answered HTTP {r.status_code}: {_one_line(r.text)}")
            err.status, err.body_line = r.status_code, _one_line(r.text, 120)
            raise err
        try:
            return r.json()
        except ValueError as e:
            raise EngineError(f"{url} did not answer JSON: {r.text[:200]!r}") from e

    # --- requests ----------------------------------------------------------------------------
    def _body(self, prompt: str | Conversation, params: SamplingParams, chat: bool) -> tuple[str, dict]:
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": params.max_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "seed": params.seed,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if params.stop:
            body["stop"] = list(params.stop)
        if chat:
            body["messages"] = prompt
            if params.logprobs:
                body["logprobs"] = True
                body["top_logprobs"] = params.logprobs
        else:
            body["prompt"] = prompt
            if params.logprobs:
                body["logprobs"] = params.logprobs
        if params.ignore_eos:
            body["ignore_eos"] = True  # vLLM and llama-server both accept it
        body.update(self._server_fields(params))
        return ("/v1/chat/completions" if chat else "/v1/completions"), body

    def _server_fields(self, params: SamplingParams) -> dict[str, Any]:
        """Fields only vLLM or llama-server know (a strict generic server may refuse them):
        token ids back, and every sampler labkit does not use switched off. A field left out
        takes the server's default, which is not labkit's: vLLM fills it from the model's
        generation_config.json (repetition_penalty 1.05, top_k 50, ...) unless started with
        --generation-config vllm, and penalties and DRY run before llama-server's top-k even
        at temperature 0."""
        if self.flavor == "vllm":
            # top_k -1: "disabled" to every vLLM (0 too since 0.8, and refused before)
            return {"return_token_ids": True, "return_tokens_as_token_ids": True,  # logprobs keyed by id
                    "repetition_penalty": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0,
                    "top_k": -1, "min_p": 0.0}
        if self.flavor != "llama-server":
            return {}
        fields: dict[str, Any] = {"return_tokens": True, "verbose": True,  # ids of each chunk under "__verbose"
                                  "repeat_penalty": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0,
                                  "dry_multiplier": 0.0}
        if self.cache_prompt is not None:
            fields["cache_prompt"] = self.cache_prompt
        if params.temperature == 0:
            fields["top_k"] = 1
        else:  # sample as the in-process engine does: llama-server's defaults add top_k=40, min_p=0.05
            fields.update(top_k=0, min_p=0.0)
        return fields

    def _stream(self, prompt, params: SamplingParams, chat: bool, t0: float) -> Iterator[Token]:
        path, body = self._body(prompt, params, chat)
        return self._sse(path, body, chat, t0)

    def _sse(self, path: str, body: dict, chat: bool, t0: float) -> Iterator[Token]:
        url = _root(self.url) + path
        try:
            with self._client.stream("POST", url, json=body) as r:
                if r.status_code >= 400:
                    r.read()
                    _raise_http(url, r.status_code, r.text)
                for line in r.iter_lines():
                    tokens = _sse_line(line, chat, t0, url)
                    if tokens is None:
                        break
                    yield from tokens
        except httpx.TimeoutException as e:
            raise EngineError(self._timed_out(url, e)) from e
        except httpx.HTTPError as e:
            raise EngineError(f"Request to {url} failed ({type(e).__name__}: {e}).") from e
        except json.JSONDecodeError as e:  # a stream cut mid-event
            raise EngineError(f"{url} sent a malformed event ({type(e).__name__}: {e}).") from e

    async def astream(self, prompt: str | Conversation, **params: Any) -> AsyncIterator[Token]:
        """``stream`` on asyncio: the same request, tokens and timings, without a thread.

        It uses aiohttp, as vLLM's serving benchmark does: per streamed chunk it costs a
        fraction of httpx's async stack, CPU that on a small machine the server is missing.
        """
        chat = not isinstance(prompt, str)
        if chat:
            check_conversation(prompt)
        self._check_open()
        path, body = self._body(prompt, SamplingParams(**_tupled(params)), chat)
        url = _root(self.url) + path
        self._note_in_flight(+1)
        try:
            async for tok in self._apost(url, body, chat):
                yield tok
        finally:
            self._note_in_flight(-1)

    def _note_in_flight(self, step: int) -> None:
        """Count requests in flight (all on one event loop); warn once when more are in flight
        than the connection limit lets out, since the rest wait in this client."""
        self._in_flight += step
        limit = self._max_connections
        if limit is not None and self._in_flight > limit and not self._warned_limit:
            self._warned_limit = True
            warnings.warn(f"labkit: more than max_connections={limit} requests are in flight to "
                          f"{self.url}; the rest wait in labkit's client, and their TTFT includes "
                          "that wait. Load the engine with max_connections=None (no limit).",
                          stacklevel=2)

    async def _apost(self, url: str, body: dict, chat: bool) -> AsyncIterator[Token]:
        import aiohttp

        t0 = time.perf_counter()
        try:
            async with self._async_session().post(url, json=body, params=self._query or None) as r:
                if r.status >= 400:
                    _raise_http(url, r.status, await r.text())
                # Whatever the network hands over at once, read as one piece and timed once
                # (the events in it did arrive together): an await per SSE line cost the
                # client a third of its chunk rate against a server that writes fast.
                pending, now = b"", 0.0
                async for data in r.content.iter_any():
                    now = time.perf_counter() - t0
                    *lines, pending = (pending + data).split(b"\n")
                    for raw in lines:
                        tokens = _sse_data(raw.decode("utf-8").strip(), chat, now, url)
                        if tokens is None:
                            return
                        for tok in tokens:
                            yield tok
                for tok in _sse_data(pending.decode("utf-8").strip(), chat, now, url) or []:
                    yield tok  # a last event the server ended without a newline
        except (aiohttp.ServerTimeoutError, asyncio.TimeoutError) as e:
            raise EngineError(self._timed_out(url, e)) from e
        except aiohttp.ClientError as e:
            raise EngineError(f"Request to {url} failed ({type(e).__name__}: {e}).") from e
        except (UnicodeDecodeError, json.JSONDecodeError) as e:  # a stream cut mid-event
            raise EngineError(f"{url} sent a malformed event ({type(e).__name__}: {e}).") from e

    def _timed_out(self, url: str, e: BaseException) -> str:
        return (f"Request to {url} timed out ({type(e).__name__}{': ' + str(e) if str(e) else ''}): "
                f"no connection within 10 s, or no data for timeout_s={self._timeout_s:g} s.")

    def _async_session(self):
        import aiohttp

        loop = asyncio.get_running_loop()
        if self._aclient is None or self._aclient[0] is not loop:
            # A limit on silence, as the sync client's read timeout, not on the whole stream:
            # total= also counted a long answer's stream and its time queued in the server.
            timeout = aiohttp.ClientTimeout(total=None, sock_read=self._timeout_s, connect=10.0)
            # llama-server ends a streamed response by closing the connection while saying
            # keep-alive, so a reused connection fails the next request ("Can not write request
            # body"). Only vLLM's server gets pooled connections (as from its own benchmark);
            # elsewhere each request opens its own.
            connector = aiohttp.TCPConnector(limit=self._max_connections or 0,  # 0: no limit
                                             force_close=self.flavor != "vllm")
            self._aclient = (loop, aiohttp.ClientSession(timeout=timeout, connector=connector,
                                                         headers=self._client_options["headers"]))
        return self._aclient[1]

    async def aclose(self) -> None:
        """Close the async session of the running event loop (call before that loop ends)."""
        if self._aclient is not None and self._aclient[0] is asyncio.get_running_loop():
            session, self._aclient = self._aclient[1], None
            await session.close()

    def _generate_many(self, prompts: list[Any], params: SamplingParams, chat: bool) -> list[Generation]:
        # All prompts go out at once, as a batching server expects; results keep their order.
        workers = min(len(prompts), 64)
        if workers == 1:
            return [self._collect(prompts[0], params, chat)]
        with ThreadPoolExecutor(workers) as pool:
            return list(pool.map(lambda p: self._collect(p, params, chat), prompts))

    def tokenize(self, text: str | Conversation, *, chat: bool = False) -> list[int]:
        self._check_open()
        if self.flavor == "vllm":
            body: dict[str, Any] = {"model": self.model}
            if chat:
                body.update(messages=text, add_generation_prompt=True)
            else:
                body.update(prompt=text, add_special_tokens=True)
            return self._request("POST", "/tokenize", body)["tokens"]
        if self.flavor == "llama-server":
            if chat:
                text = self._request("POST", "/apply-template", {"messages": text})["prompt"]
            res = self._request("POST", "/tokenize",
                                {"content": text, "add_special": True, "parse_special": True})
            return [t if isinstance(t, int) else t["id"] for t in res["tokens"]]
        raise EngineError(f"{self.url} is not a llama-server or vLLM server, so labkit cannot ask "
                          "it for token ids.")

    def metrics_text(self) -> str:
        """The server's Prometheus /metrics page (empty if it has none)."""
        try:
            r = self._client.get(_root(self.url) + "/metrics")
            return r.text if r.status_code == 200 else ""
        except httpx.HTTPError:
            return ""

    def kv_account(self) -> dict[str, float]:
        return self._account(with_metrics=False)

    def server_snapshot(self) -> dict[str, float]:
        return self._account(with_metrics=True)

    def _account(self, with_metrics: bool) -> dict[str, float]:
        """One scrape of /metrics (and /slots for llama-server): the KV account, and with
        ``with_metrics`` the shared-name server metrics too."""
        if self.flavor == "generic" or self.closed:
            return {}  # a server labkit does not know publishes no metrics it can read
        try:
            samples = parse_prometheus(self.metrics_text())
            snap = vllm_kv(samples) if self.flavor == "vllm" else self._llamacpp_kv(samples)
            if with_metrics:
                snap = {**server_metrics(samples, self.flavor), **snap}
            return snap
        except Exception:
            return {}

    def _llamacpp_kv(self, samples: list) -> dict[str, float]:
        snap = llamacpp_kv(samples)
        # llama-server's /metrics has no capacity; its /slots has each slot's context.
        slots = self.slots()
        snap["kv_capacity_tokens"] = sum(int(s.get("n_ctx", 0)) for s in slots)
        busy = [s for s in slots if s.get("is_processing")]
        snap["running"] = len(busy)
        if "kv_used_fraction" not in snap and snap["kv_capacity_tokens"]:
            # Newer llama-servers export no KV gauge: count the cells of the busy slots (their
            # prompt and what they decoded so far), as vLLM counts the blocks of running
            # requests; an idle slot's kept prefix is reusable cache, not use.
            used = sum(int(s.get("n_prompt_tokens", 0)) + int((s.get("next_token") or [{}])[0].get("n_decoded", 0))
                       for s in busy)
            snap.setdefault("kv_used_tokens", float(used))
            snap["kv_used_fraction"] = used / snap["kv_capacity_tokens"]
        return snap

    def slots(self) -> list[dict[str, Any]]:
        """llama-server's /slots: per-slot state, including the tokens each holds."""
        return self._request("GET", "/slots")

    def health(self) -> str | None:
        reason = super().health()
        if reason is None:
            try:  # bounded well below a request's timeout
                self._get("/v1/models", timeout_s=_HEALTH_TIMEOUT_S)
            except EngineError as e:
                if isinstance(e.__cause__, httpx.TimeoutException):
                    return None  # busy (its HTTP threads all streaming), not gone: no verdict
                return f"the server does not answer ({e})"
        return reason

    def caveats(self) -> list[str]:
        if self.flavor != "generic":
            return []
        return ["This server may ignore ignore_eos: output lengths can vary.",
                "Token ids are unknown for this server: output tokens are its own usage count "
                "where it streams one, else streamed chunks; input lengths are the server's usage "
                "count (absent where it reports none), and its KV cache account is absent."]

    def _close(self) -> None:
        self._client.close()


class OpenAIEngine(HttpEngine):
    """An OpenAI-compatible endpoint, e.g. ``load("openai", url="http://127.0.0.1:8000/v1")``.

    ``api_key_env``: the environment variable holding the API key (or ``api_key=`` itself);
    ``headers``: more headers for every request (a gateway's own). Neither is recorded
    anywhere: the engine's info, a result's manifest and its logs name the endpoint (its URL,
    model and ``/version`` where it serves one), never its credentials.
    """

    name = "openai"
    summary = "any OpenAI-compatible URL (HTTP, streaming)"

    def __init__(self, url: str, model: str | None = None, *, api_key: str | None = None,
                 api_key_env: str | None = None, timeout_s: float = 600.0, max_connections: int | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__()
        self._connect(url, model, _key(api_key, api_key_env), timeout_s, max_connections, headers)
        self._info = EngineInfo(
            engine=self.name, engine_version=self.flavor, model=self.model, model_path="",
            model_sha256=None, url=self.url, threads=None, device="remote",
            args={"url": self.url, "server_version": self._server_version(),
                  "api_key_env": api_key_env, "header_names": sorted(headers or {})})

    def _server_version(self) -> str | None:
        """What the endpoint says it runs (``/version``: vLLM, labkit's mock), if it says."""
        try:
            r = self._client.get(_root(self.url) + "/version", timeout=5.0)
            return str(r.json().get("version")) if r.status_code == 200 else None
        except (httpx.HTTPError, ValueError, AttributeError):
            return None


def _key(api_key: str | None, api_key_env: str | None) -> str | None:
    import os

    if api_key_env is None:
        return api_key
    if api_key is not None:
        raise InvalidInput("Give api_key= or api_key_env=, not both.")
    if not isinstance(api_key_env, str) or not api_key_env:
        raise InvalidInput(f"api_key_env names an environment variable, got {api_key_env!r}.")
    if not os.environ.get(api_key_env):
        raise InvalidInput(f"The environment variable {api_key_env} (api_key_env) is not set or "
                           "empty: export the API key there first.")
    return os.environ[api_key_env]


def _one_line(text: str, limit: int = 300) -> str:
    """A response body cut to one line: an HTML error page says nothing in 500 characters."""
    import re

    flat = re.sub(r"<[^>]+>", " ", text)
    flat = " ".join(flat.split())
    return flat[:limit] + ("..." if len(flat) > limit else "")


def _check_limits(timeout_s: Any, max_connections: Any) -> None:
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, int | float) or not timeout_s > 0:
        raise InvalidInput(f"timeout_s must be a positive number of seconds, got {timeout_s!r}.")
    if max_connections is not None and (isinstance(max_connections, bool) or not isinstance(
            max_connections, int) or max_connections <= 0):
        raise InvalidInput(f"max_connections must be a positive integer, or None for no limit; "
                           f"got {max_connections!r}.")


def _raise_http(url: str, status: int, text: str) -> None:
    low = text.lower()
    # Both servers name the context ("maximum context length", "exceeds the available context
    # size"): a 400 that merely says "maximum" or "exceed" (a max_tokens or top_k bound) is not one.
    if status == 400 and ("context" in low or "too long" in low):
        raise InvalidInput(f"The server refused the request as too long for its context: {text[:400]}")
    raise EngineError(f"POST {url} answered HTTP {status}: {_one_line(text)}")


def _sse_line(line: str, chat: bool, t0: float, url: str) -> list[Token] | None:
    """Tokens in one server-sent-events line (timed now); None at the end of the stream."""
    return _sse_data(line, chat, time.perf_counter() - t0, url)


def _sse_data(line: str, chat: bool, now: float, url: str) -> list[Token] | None:
    """Tokens in one server-sent-events line that arrived ``now``; None at the end."""
    if not line.startswith("data:"):
        return []
    data = line[5:].strip()
    if data == "[DONE]":
        return None
    chunk = json.loads(data)
    if "error" in chunk:
        raise EngineError(f"{url} reported an error mid-stream: {chunk['error']}")
    return _chunk_tokens(chunk, chat, now)


def _chunk_tokens(chunk: dict, chat: bool, now: float) -> list[Token]:
    # The usage (vLLM: a last chunk of its own; llama-server: on the finishing chunk) says how
    # long the prompt was and how many of its tokens the server served from its prefix cache.
    counts = chunk.get("usage") or {}
    cached = (counts.get("prompt_tokens_details") or {}).get("cached_tokens")
    prompt, completion = counts.get("prompt_tokens"), counts.get("completion_tokens")
    usage = [Token("", None, now, cached_tokens=None if cached is None else int(cached),
                   prompt_tokens=None if prompt is None else int(prompt),
                   completion_tokens=None if completion is None else int(completion))] \
        if cached is not None or prompt is not None or completion is not None else []
    choices = chunk.get("choices") or []
    if not choices:
        return usage
    choice = choices[0]
    if chat:
        text = (choice.get("delta") or {}).get("content") or ""
    else:
        text = choice.get("text") or ""
    ids = choice.get("token_ids")
    if ids is None:
        ids = (chunk.get("__verbose") or {}).get("tokens")
    lps = _logprob_entries(choice.get("logprobs"))
    finish = choice.get("finish_reason")
    toks: list[Token] = []
    if ids:
        for i, tid in enumerate(ids):
            lp, top = lps[i] if i < len(lps) else (None, None)
            toks.append(Token(text if i == 0 else "", int(tid), now, lp, top))
    elif text:
        lp, top = lps[0] if lps else (None, None)
        toks.append(Token(text, None, now, lp, top))
    if finish:
        toks.append(Token("", None, now, finish_reason=finish))
    return toks + usage


def _logprob_entries(lp: Any) -> list[tuple[float | None, dict[int, float] | None]]:
    """Per-token (logprob, {token_id: logprob}) from either OpenAI logprobs format.

    Top-k entries are keyed by token id only where the server gives ids (llama-server's
    "id", or vLLM's "token_id:N" strings with --return-tokens-as-token-ids).
    """
    if not lp:
        return []
    out = []
    if isinstance(lp, dict) and "content" in lp:  # chat format, and llama-server's completions
        for e in lp["content"] or []:
            top = {}
            for t in e.get("top_logprobs") or []:
                tid = t.get("id", _id_from_str(t.get("token", "")))
                if tid is not None:
                    top[int(tid)] = float(t["logprob"])
            out.append((e.get("logprob"), top or None))
    elif isinstance(lp, dict) and "token_logprobs" in lp:  # legacy completions format
        tops = lp.get("top_logprobs") or [None] * len(lp["token_logprobs"])
        for v, t in zip(lp["token_logprobs"], tops, strict=False):
            top = {}
            for s, x in (t or {}).items():
                tid = _id_from_str(s)
                if tid is not None:
                    top[tid] = float(x)
            out.append((v, top or None))
    return out


def _id_from_str(s: str) -> int | None:
    if isinstance(s, str) and s.startswith("token_id:"):
        try:
            return int(s.split(":", 1)[1])
        except ValueError:
            return None
    return None
