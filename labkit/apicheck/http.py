"""A small OpenAI-API client for the checks: every call has a timeout and none raises.

A check must grade what the server did, so transport failures (refused, reset, timed out)
come back as a :class:`Reply` with ``error`` set, never as an exception that would stop
the matrix.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class Reply:
    """One HTTP exchange: the status (None when there was no answer), the body parsed as JSON
    where it was JSON, and for streams the parsed ``data:`` events in order."""

    status: int | None
    body: Any = None
    text: str = ""
    events: list[Any] = field(default_factory=list)
    done: bool = False  # a stream ended with ``data: [DONE]``
    error: str | None = None
    seconds: float = 0.0
    event_s: list[float] = field(default_factory=list)  # when each event arrived, since the request

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def timed_out(self) -> bool:
        return self.error == "timeout"

    def message(self) -> str:
        """What the server said, in one short line: its error message where it gave one."""
        if self.error:
            return self.error
        err = self.body.get("error") if isinstance(self.body, dict) else None
        msg = err.get("message") if isinstance(err, dict) else err if isinstance(err, str) else self.text
        return " ".join(str(msg).split())[:200]

    def choice(self) -> dict[str, Any]:
        choices = self.body.get("choices") if isinstance(self.body, dict) else None
        return choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}


class ApiClient:
    """``base_url`` is the server's OpenAI root (ending in /v1); ``root`` is the server itself."""

    def __init__(self, base_url: str, model: str, headers: dict[str, str] | None = None,
                 timeout_s: float = 60.0, params: dict[str, str] | None = None):
        self.url = base_url.rstrip("/")
        self.root = self.url[: -len("/v1")] if self.url.endswith("/v1") else self.url
        self.model = model
        self.timeout_s = timeout_s
        self._client = httpx.Client(headers=headers or {}, params=params or None,
                                    timeout=httpx.Timeout(timeout_s, connect=10.0))

    def close(self) -> None:
        self._client.close()

    def get(self, path: str, *, root: bool = False) -> Reply:
        return self._call("GET", (self.root if root else self.url) + path, None)

    def post(self, path: str, body: dict[str, Any], *, root: bool = False) -> Reply:
        return self._call("POST", (self.root if root else self.url) + path, body)

    def _call(self, method: str, url: str, body: dict | None) -> Reply:
        t0 = time.perf_counter()
        try:
            r = self._client.request(method, url, json=body)
        except httpx.TimeoutException:
            return Reply(None, error="timeout", seconds=time.perf_counter() - t0)
        except httpx.HTTPError as e:
            return Reply(None, error=f"{type(e).__name__}: {e}", seconds=time.perf_counter() - t0)
        try:
            parsed = r.json()
        except ValueError:
            parsed = None
        return Reply(r.status_code, parsed, r.text, seconds=time.perf_counter() - t0)

    def stream(self, path: str, body: dict[str, Any], *, stop_after: int | None = None) -> Reply:
        """POST with ``stream: true`` and parse the SSE events; ``stop_after`` closes the
        connection after that many events, as a client that goes away mid-stream does."""
        t0 = time.perf_counter()
        out = Reply(None)
        try:
            with self._client.stream("POST", self.url + path, json={**body, "stream": True}) as r:
                out.status = r.status_code
                if r.status_code >= 400:
                    r.read()
                    out.text = r.text[:2000]
                    out.body = _json(out.text)
                    return out
                for line in r.iter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        out.done = True
                        break
                    out.events.append(_json(data))
                    out.event_s.append(time.perf_counter() - t0)
                    if stop_after is not None and len(out.events) >= stop_after:
                        break
        except httpx.TimeoutException:
            out.error = "timeout"
        except httpx.HTTPError as e:
            out.error = f"{type(e).__name__}: {e}"
        out.seconds = time.perf_counter() - t0
        return out


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None
