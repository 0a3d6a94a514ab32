"""The in-process vLLM engine's step loop, over a fake LLMEngine: no vLLM is started."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace as NS

import pytest

from labkit.engines.base import Engine, Submission
from labkit.engines.prometheus import server_metrics, vllm_kv
from labkit.engines.vllm import VllmEngine
from labkit.errors import EngineError

WAIT_S = 20  # a guard against a hang, never a synchronisation


class Tok:
    """A tokenizer that can hold a caller inside encode() until released."""

    def __init__(self, hold: bool = False):
        self.entered, self.release = threading.Event(), threading.Event()
        if not hold:
            self.release.set()

    def encode(self, text, **kw):
        self.entered.set()
        assert self.release.wait(WAIT_S)
        return [1] * 4


class FakeCore:
    """One token per step for each request; ``n`` tokens each (None: never finishes)."""

    def __init__(self, n: int | None = 3, bad: bool = False, fatal: bool = False):
        self.n, self.bad, self.fatal = n, bad, fatal
        self.reqs: dict[str, int] = {}
        self.aborted: list[str] = []

    def add_request(self, rid, prompt, params):
        self.reqs[rid] = 0

    def abort_request(self, rids):
        self.aborted += rids
        for r in rids:
            self.reqs.pop(r, None)

    def step(self):
        if self.fatal:
            raise SystemExit("the loop cannot survive this")
        time.sleep(0.001)  # the cost of a step, so the fake does not spin
        outs = []
        for rid in list(self.reqs):
            self.reqs[rid] += 1
            fin = self.n is not None and self.reqs[rid] >= self.n
            text = None if self.bad else "x"
            outs.append(NS(request_id=rid, finished=fin, prompt_logprobs=None, num_cached_tokens=0,
                           prompt_token_ids=[1] * 4,
                           outputs=[NS(token_ids=[7] if text else ["not an id"], text=text,
                                       logprobs=None, finish_reason="length" if fin else None)]))
            if fin:
                del self.reqs[rid]
        return outs


def engine(core: FakeCore, tok: Tok | None = None) -> VllmEngine:
    e = VllmEngine.__new__(VllmEngine)
    Engine.__init__(e)
    e._sampling = lambda params, n, **kw: params
    e._guard = e._baseline = NS(release=lambda: None)
    e._children, e._log = [], "vllm.log"
    e._begin_loop(core, tok or Tok(), 2048)
    return e


class Collect:
    def __init__(self):
        self.tokens, self.error, self.done, self.first = [], None, threading.Event(), threading.Event()

    def on_token(self, t):
        self.tokens.append(t)
        self.first.set()

    def on_done(self, err):
        self.error = err
        self.done.set()

    def sub(self, t0=None, **params):
        return Submission("p", self.on_token, self.on_done, {"max_tokens": 50, **params}, t0)


def test_a_request_racing_close_fails_at_once_instead_of_waiting_for_ever():
    tok = Tok(hold=True)
    e = engine(FakeCore(), tok)
    result: list = []

    def user():
        try:
            result.append(list(e.stream("p", max_tokens=5)))
        except EngineError as ex:
            result.append(ex)

    t = threading.Thread(target=user, daemon=True)
    t.start()
    assert tok.entered.wait(WAIT_S)  # it passed the open check and is tokenizing
    e.close()
    tok.release.set()
    t.join(WAIT_S)
    assert not t.is_alive() and isinstance(result[0], EngineError) and "closed" in str(result[0])


def test_close_fails_every_request_still_running():
    e = engine(FakeCore(n=None))
    c = Collect()
    e.submit([c.sub()])
    assert c.first.wait(WAIT_S)
    e.close()
    assert c.done.wait(WAIT_S) and isinstance(c.error, EngineError) and "closed" in str(c.error)


def test_close_from_a_requests_own_callback_shuts_the_engine_down():
    """close() on the loop's thread (a callback that closes on its first token) cannot join
    that thread: it must still shut vLLM down, and the request still ends."""
    core = FakeCore(n=None)
    core.engine_core = NS(shutdown=lambda: core.aborted.append("shutdown"))
    e = engine(core)
    c = Collect()
    errors: list = []

    def close_on_first(t):
        c.on_token(t)
        try:
            e.close()
        except Exception as ex:  # (the loop would swallow it: note it here)
            errors.append(ex)

    e.submit([Submission("p", close_on_first, c.on_done, {"max_tokens": 50}, None)])
    assert c.done.wait(WAIT_S) and "closed" in str(c.error)
    e._thread.join(WAIT_S)
    assert not errors and "shutdown" in core.aborted and e._engine is None and not e._thread.is_alive()


def test_an_unreadable_output_fails_its_request_not_the_loop():
    core = FakeCore(bad=True)
    e = engine(core)
    c = Collect()
    e.submit([c.sub()])
    assert c.done.wait(WAIT_S) and isinstance(c.error, EngineError)
    assert "could not read" in str(c.error) and core.aborted == ["0"]
    core.bad = False
    ok = Collect()
    e.submit([ok.sub()])
    assert ok.done.wait(WAIT_S) and ok.error is None and e.health() is None
    e.close()


def test_a_dead_step_loop_fails_its_requests_and_health_says_so():
    e = engine(FakeCore(fatal=True))
    c = Collect()
    e.submit([c.sub()])
    assert c.done.wait(WAIT_S) and "step loop failed" in str(c.error)
    e._thread.join(WAIT_S)
    assert "step loop failed" in e.health()
    with pytest.raises(EngineError, match="step loop failed"):
        e.submit([Collect().sub()])
    e.close()


def test_cancel_ends_running_requests_as_cancelled_and_later_ones_run():
    core = FakeCore(n=None)
    e = engine(core)
    a, b = Collect(), Collect()
    e.submit([a.sub(), b.sub()])
    assert a.first.wait(WAIT_S) and b.first.wait(WAIT_S)
    e.cancel()
    for c in (a, b):
        assert c.done.wait(WAIT_S) and c.error is None
        assert c.tokens[-1].finish_reason == "cancelled"
    assert sorted(core.aborted) == ["0", "1"]
    core.n = 2
    later = Collect()
    e.submit([later.sub()])
    assert later.done.wait(WAIT_S) and later.tokens[-1].finish_reason == "length"
    e.close()


def test_tokens_are_timed_from_the_callers_send_time():
    # The load generator times E2E from its own t0: TTFT must be on the same clock, not
    # from when the engine had tokenized the whole wave.
    e = engine(FakeCore())
    c = Collect()
    e.submit([c.sub(t0=time.perf_counter() - 100.0)])
    assert c.done.wait(WAIT_S)
    assert all(t.t_s >= 100.0 for t in c.tokens)
    e.close()


def test_data_parallel_engines_series_combine():
    samples = [("vllm:num_requests_running", {"engine": "0"}, 5.0),
               ("vllm:num_requests_waiting", {"engine": "0"}, 2.0),
               ("vllm:kv_cache_usage_perc", {"engine": "0"}, 0.9),
               ("vllm:cache_config_info", {"engine": "0", "num_gpu_blocks": "10", "block_size": "16"}, 1.0),
               ("vllm:num_requests_running", {"engine": "1"}, 3.0),
               ("vllm:num_requests_waiting", {"engine": "1"}, 0.0),
               ("vllm:kv_cache_usage_perc", {"engine": "1"}, 0.1),
               ("vllm:cache_config_info", {"engine": "1", "num_gpu_blocks": "10", "block_size": "16"}, 1.0)]
    assert vllm_kv(samples) == {"running": 8.0, "waiting": 2.0, "kv_used_fraction": 0.9,
                                "kv_capacity_tokens": 320, "kv_engines": 2.0}
    merged = {**server_metrics(samples, "vllm"), **vllm_kv(samples)}
    assert merged["running"] == 8.0 and merged["kv_used_fraction"] == 0.9
