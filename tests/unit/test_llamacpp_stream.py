"""The in-process llama.cpp engine's token loop and option checks, over a fake ``Llama``:
no model is loaded."""

from __future__ import annotations

import time
from types import SimpleNamespace as NS

import pytest

from labkit.engines.base import Engine, SamplingParams
from labkit.engines.llamacpp import LlamaCppEngine, _device, _OneAtATime, check_llama_kwargs
from labkit.errors import InvalidInput

EOG = 0


class FakeLlama:
    """Generates the token ids given; token i's text is ``pieces[i]``."""

    def __init__(self, pieces: dict[int, str], ids: list[int]):
        self.pieces, self.ids, self.generated = pieces, ids, 0

    def set_seed(self, seed):
        pass

    def reset(self):
        pass

    def generate(self, ids, **kw):
        for t in self.ids:
            self.generated += 1
            yield t

    def detokenize(self, ids):
        return "".join(self.pieces[i] for i in ids).encode()


def engine(pieces: dict[int, str], ids: list[int]) -> LlamaCppEngine:
    e = LlamaCppEngine.__new__(LlamaCppEngine)
    Engine.__init__(e)
    e._llm, e._lock, e._cancelled_at, e._vocab = FakeLlama(pieces, ids), _OneAtATime(), float("-inf"), None
    e._llama_cpp = NS(llama_vocab_is_eog=lambda vocab, tok: tok == EOG)
    return e


def run(e: LlamaCppEngine, stops=(), max_tokens=16, t0=None):
    return list(e._run([1, 2], SamplingParams(max_tokens=max_tokens), list(stops),
                       time.perf_counter() if t0 is None else t0))


def text(tokens):
    return "".join(t.text for t in tokens)


def test_a_stop_string_split_over_tokens_leaves_none_of_it_in_the_text():
    toks = run(engine({1: "Hello", 2: "\n", 3: "\n", 4: "more"}, [1, 2, 3, 4]), stops=["\n\n"])
    assert text(toks) == "Hello"  # as vLLM and llama-server give it
    assert [t.token_id for t in toks] == [1, 2, 3, None] and toks[-1].finish_reason == "stop"


def test_held_back_text_that_is_no_stop_comes_out_with_the_next_token():
    toks = run(engine({1: "Hello", 2: "\n", 3: "x", 4: "\n"}, [1, 2, 3, 4, EOG]), stops=["\n\n"])
    assert [t.text for t in toks[:3]] == ["Hello", "", "\nx"]
    assert text(toks) == "Hello\nx\n" and toks[-1].finish_reason == "stop"  # the end flushes it


def test_held_back_text_is_flushed_at_max_tokens():
    toks = run(engine({1: "a", 2: "\n"}, [1, 2, 1]), stops=["\n\n"], max_tokens=2)
    assert text(toks) == "a\n" and toks[-1].finish_reason == "length"


def test_a_stop_inside_one_token_cuts_there_and_the_earliest_stop_wins():
    toks = run(engine({1: "ab", 2: "cSTOPdEND"}, [1, 2, 1]), stops=["END", "STOP"])
    assert text(toks) == "abc" and toks[-1].finish_reason == "stop"


def test_a_request_cancelled_while_it_queued_runs_no_prefill():
    e = engine({1: "a"}, [1, 1])
    t0 = time.perf_counter()
    e.cancel()
    toks = run(e, t0=t0)
    assert [t.finish_reason for t in toks] == ["cancelled"] and e._llm.generated == 0
    assert text(run(e)) == "aa"  # a later request runs normally


class FakeLlamaClass:
    def __init__(self, model_path: str, *, n_ctx: int = 512, n_threads: int | None = None,
                 logits_all: bool = False, verbose: bool = True, **kwargs):
        pass


def test_keywords_llama_would_ignore_are_refused():
    check_llama_kwargs(FakeLlamaClass, {"logits_all": True})
    with pytest.raises(InvalidInput, match=r"n_thread \(did you mean n_threads\?\)"):
        check_llama_kwargs(FakeLlamaClass, {"n_thread": 4})
    with pytest.raises(InvalidInput, match="parallel"):
        check_llama_kwargs(FakeLlamaClass, {"parallel": 8})
    with pytest.raises(InvalidInput, match="threads="):
        check_llama_kwargs(FakeLlamaClass, {"n_threads": 4})


def test_prefix_cache_is_refused_before_anything_loads():
    with pytest.raises(InvalidInput, match="prefix cache"):
        LlamaCppEngine("no-such-model.gguf", prefix_cache=True)


def test_a_cpu_only_build_reports_the_cpu_whatever_gpu_layers_says():
    assert _device(NS(llama_supports_gpu_offload=lambda: False), 99) == "cpu"
    assert _device(NS(llama_supports_gpu_offload=lambda: True), 99) == "cuda"
    assert _device(NS(llama_supports_gpu_offload=lambda: True), 0) == "cpu"
