"""A server labkit cannot tokenize with (a generic OpenAI URL): prompts are built by counting
whitespace words, but the input lengths recorded are the server's own usage counts."""

from __future__ import annotations

import time

import pytest

import labkit
from labkit.engines.base import Token
from labkit.errors import EngineError
from labkit.loadgen import workloads

from .fake_engine import FakeEngine


class Gateway(FakeEngine):
    """Its model's tokenizer makes about two tokens a word, plus five of template; its usage
    says so (``reports=False``: a server that reports no usage)."""

    def __init__(self, reports: bool = True):
        super().__init__()
        self.reports = reports

    def tokenize(self, text, *, chat: bool = False):
        raise EngineError("not a llama-server or vLLM server")

    @staticmethod
    def real(prompt) -> int:
        text = prompt if isinstance(prompt, str) else " ".join(m["content"] for m in prompt)
        return 2 * len(text.split()) + 5

    def _stream(self, prompt, params, chat, t0):
        with self._lock:
            self.started += 1
        for i in range(params.max_tokens):
            yield Token(f" w{i}", i, time.perf_counter() - t0)
        yield Token("", None, time.perf_counter() - t0, finish_reason="length",
                    prompt_tokens=self.real(prompt) if self.reports else None)


@pytest.mark.parametrize("workload", [
    workloads.synthetic(input_tokens=24, output_tokens=2),
    workloads.chat(input_tokens=24, output_tokens=2),
    workloads.shared_prefix(prefix_tokens=16, suffix_tokens=8, groups=1, output_tokens=2),
    workloads.long_context(input_tokens=[24], output_tokens=2),
    workloads.multi_turn(turns=2, user_tokens=24, output_tokens=2, think_time_s=0),
], ids=["synthetic", "chat", "shared_prefix", "long_context", "multi_turn"])
def test_the_recorded_input_length_is_the_servers_count_not_a_word_count(workload):
    res = labkit.bench(Gateway(), concurrency=[1], requests_per_level=4, warmup=0, progress=False,
                       workload=workload)
    req = res.requests
    sent = [workload.build(Gateway(), 4)[i].prompt for i in range(4)]
    if workload.turns == 1:
        assert list(req["input_tokens"]) == [Gateway.real(p) for p in sent]
    assert (req["input_tokens"] > 24 + 5).all()  # every one the server's ~2 tokens a word, none a word count


def test_a_server_that_reports_no_usage_leaves_the_length_absent_not_a_word_count():
    res = labkit.bench(Gateway(reports=False), concurrency=[1], requests_per_level=2, warmup=0, progress=False,
                       workload=workloads.synthetic(input_tokens=24, output_tokens=2))
    assert res.requests["input_tokens"].isna().all()
