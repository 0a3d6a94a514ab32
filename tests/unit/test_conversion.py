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


def test_the_forced_text_goes_past_a_window_that_fits_and_is_judged_there():
    from labkit.conversion import FORCED_TOKENS, MAX_FORCED_TOKENS, PAST_WINDOW, forced_length

    assert forced_length(None) == FORCED_TOKENS
    assert forced_length(512) == 512 + PAST_WINDOW
    assert forced_length(MAX_FORCED_TOKENS) == FORCED_TOKENS  # too long to check past: said so
    ok = _check(top1_agreement=0.98, mean_kl=0.004, sliding_window=512, past_window_top1=0.97,
                past_window_kl=0.01)
    assert ok.passed and "past the 512-token sliding window: top-1 0.970" in ok.summary()
    bad = _check(top1_agreement=0.95, mean_kl=0.01, sliding_window=512, past_window_top1=0.4,
                 past_window_kl=1.2)
    assert not bad.passed and "past the 512-token sliding window the two predict differently" in bad.reason
    assert "not past its 4096-token sliding window" in _check(top1_agreement=0.98, mean_kl=0.004,
                                                               sliding_window=4096).summary()


def test_a_check_stored_by_an_older_version_is_run_again(tmp_path):
    import json

    from labkit.conversion import CHECK_FILE, read_check

    c = _check(top1_agreement=0.98, mean_kl=0.004)
    (tmp_path / CHECK_FILE).write_text(json.dumps(c.to_dict()))
    assert read_check(tmp_path).summary() == c.summary()  # (NaN fields do not compare equal)
    old = c.to_dict()
    del old["version"]
    (tmp_path / CHECK_FILE).write_text(json.dumps(old))
    assert read_check(tmp_path) is None


def test_a_window_only_one_side_applies_passes_with_its_limit_said():
    window = {"probe": "sliding window", "diagnosis": "only one side attends within a sliding window", "limit": 4096}
    c = _check(top1_agreement=0.98, mean_kl=0.004, differences=[window], sliding_window=512,
               past_window_top1=0.3, past_window_kl=2.0)  # past a window one side lacks: expected
    assert c.passed and c.valid_up_to == 4096
    assert "the same only up to 4096 tokens: only one side attends" in c.summary()
    rope = {"probe": "rope base", "diagnosis": "the rope base differs"}
    assert not _check(top1_agreement=0.98, mean_kl=0.004, differences=[window, rope]).passed


def test_the_converted_stop_tokens_are_llama_cpps_end_of_generation_set():
    """llama.cpp also stops on tokens it picks out by text (SmolLM2's <|endoftext|>, its
    <reponame> as a FIM repo token), not only on the eos id: vLLM must be given them all."""
    from labkit.conversion import eog_ids

    smollm = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<repo_name>", "<reponame>", "hello"]
    assert eog_ids({"tokenizer.ggml.eos_token_id": 2}, smollm) == [0, 2, 4]
    # a FIM key in the GGUF wins over the texts; an eos id out of the vocabulary is ignored
    assert eog_ids({"tokenizer.ggml.fim_rep_token_id": 5, "tokenizer.ggml.eos_token_id": 99}, smollm) == [0, 2, 5]
    harmony = ["<|return|>", "<|call|>", "<|end|>", "x"]  # gpt-oss: <|end|> is no end there
    assert eog_ids({"tokenizer.ggml.eos_token_id": 0}, harmony) == [0, 1]
    assert eog_ids({}, ["</s>", "<|tool_response>"]) == [1]  # gemma4: </s> is a normal token
    assert eog_ids({"tokenizer.ggml.eos_token_id": 3}, []) == [3]  # no token list: the ids alone
    # a repeated text counts once, at its last id (llama.cpp's text-to-id map keeps that one)
    assert eog_ids({"tokenizer.ggml.eos_token_id": 0}, harmony + ["<|end|>"]) == [0, 1]
    assert eog_ids({}, ["a", "<|im_end|>", "b", "<|im_end|>"]) == [3]
    # no eos key: the tokenizer type's default, as llama.cpp sets it
    assert eog_ids({"tokenizer.ggml.model": "llama"}, ["<unk>", "<s>", "end", "x"]) == [2]
    assert eog_ids({"tokenizer.ggml.model": "gpt2"}, [f"t{i}" for i in range(12)]) == [11]
