"""The conversion check's verdicts, from token lists and numbers alone."""

from __future__ import annotations

import math

import pytest

from labkit.conversion import MAX_MEAN_KL, MIN_TOP1, ConversionCheck, _judge, diagnose
from labkit.errors import ModelError


@pytest.mark.parametrize(("llama", "converted", "words"), [
    ([2, 818, 5279], [818, 5279], "does not add BOS; llama.cpp does"),
    ([818, 5279], [2, 818, 5279], "adds BOS; llama.cpp does not"),
    ([818, 5279, 1], [818, 5279], "does not add EOS; llama.cpp does"),
    ([818, 5279, 7], [818, 5280, 7], "differently from token 1 on"),
    ([818, 5279], [818], "differently from token 1 on"),
])
def test_a_token_difference_is_named(llama, converted, words):
    assert words in diagnose("plain text", llama, converted, bos=2, eos=1)


def _check(**kw) -> ConversionCheck:
    return _judge(ConversionCheck("m.gguf", "m-hf", "gguf->hf", probes=6, forced_tokens=256, **kw))


def test_the_thresholds_decide():
    assert _check(top1_agreement=0.98, mean_kl=0.004).passed
    assert not _check(top1_agreement=MIN_TOP1 - 0.01, mean_kl=0.004).passed
    assert not _check(top1_agreement=0.98, mean_kl=MAX_MEAN_KL * 2).passed
    assert not _check(top1_agreement=math.nan, mean_kl=math.nan).passed  # nothing measured


def test_a_failed_check_raises_what_differs():
    c = _check(top1_agreement=0.99, mean_kl=0.001,
               differences=[{"probe": "plain text", "diagnosis": "the converted tokenizer does not add BOS; llama.cpp does"}])
    assert not c.passed
    with pytest.raises(ModelError, match="does not add BOS; llama.cpp does.*would be wrong"):
        c.raise_if_failed()
    assert c.summary().startswith("check failed")
