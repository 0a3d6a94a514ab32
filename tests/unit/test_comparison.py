"""compare() asks engines for the Scores capability; it never probes for methods."""

from __future__ import annotations

import pandas as pd
import pytest

import labkit

from .fake_engine import FakeEngine, FakeScoringEngine


def test_logprob_parity_uses_only_engines_that_declare_scores():
    a, b, c = FakeScoringEngine(), FakeScoringEngine(), FakeEngine()
    cmp = labkit.compare({"a": a, "b": b, "c": c}, ["one two three"], max_tokens=4)
    assert set(cmp.parity["engine"]) == {"a", "b"}
    assert (cmp.parity["top1_agreement"] == 1.0).all() and (cmp.parity["mean_kl"].abs() < 1e-12).all()
    assert any("c cannot score" in n for n in cmp.notes)
    assert (cmp.table["token_agreement"] == 1.0).all()  # the fakes generate the same tokens


class _NoBos(FakeEngine):
    """Tokenizes like FakeEngine but without its leading BOS (as a broken conversion would)."""

    def tokenize(self, text, *, chat: bool = False) -> list[int]:
        return super().tokenize(text, chat=chat)[1:]


def test_engines_fed_different_prompt_tokens_are_flagged_in_the_table_and_first_in_the_html():
    cmp = labkit.compare({"ref": FakeEngine(), "nobos": _NoBos()}, ["one two three"], max_tokens=4)
    t = cmp.table.set_index("engine")
    assert t.loc["ref", "same_prompt_tokens"] and not t.loc["nobos", "same_prompt_tokens"]
    page = cmp._repr_html_()
    warning = page.index("not fed the same prompt tokens")
    assert warning < page.index("<table>")  # above the outputs, not in a footnote
    assert "fed different prompt tokens: not comparable" in page


def test_llama_perplexity_divergence_by_hand():
    """KL over the whole vocabulary at the second half of a chunk, as llama-perplexity does."""
    import numpy as np

    from labkit.comparison import _divergence_full, log_softmax

    rng = np.random.default_rng(0)
    window = list(range(8))  # positions 4..6 are scored, predicting tokens 5..7
    ref = log_softmax(rng.normal(size=(3, 10))).astype(np.float32)
    same = _divergence_full([ref], [ref.copy()], [window])
    assert same["mean_kld"] == 0 and same["top1_agreement"] == 1 and same["mean_abs_delta_p"] == 0
    other = log_softmax(rng.normal(size=(3, 10))).astype(np.float32)
    p, q = np.exp(ref.astype(np.float64)), np.exp(other.astype(np.float64))
    want = np.mean([(p[i] * (np.log(p[i]) - np.log(q[i]))).sum() for i in range(3)])
    got = _divergence_full([ref], [other], [window])
    assert abs(got["mean_kld"] - want) < 1e-6
    assert abs(got["mean_abs_delta_p"] - np.mean([abs(p[i, 5 + i] - q[i, 5 + i]) for i in range(3)])) < 1e-7


class _Shorter(FakeEngine):
    """Generates one token fewer than asked: diverges from the others at that position."""

    def _tokens(self, params, t0, prompt_tokens=None):
        params = type(params)(**{**params.__dict__, "max_tokens": params.max_tokens - 1})
        yield from super()._tokens(params, t0, prompt_tokens)


def test_positions_are_whole_numbers_and_the_reference_is_not_scored_against_itself():
    cmp = labkit.compare({"a": FakeScoringEngine(), "b": _Shorter()}, ["one two"], max_tokens=4)
    t = cmp.table.set_index("engine")
    assert t.loc["b", "first_divergence"] == 3 and str(t["first_divergence"].dtype) == "Int64"
    page = cmp._repr_html_()
    assert "diverges at token 3," in page and "token 3.0" not in page
    # b ended at position 3: the margin is the reference's top-1 over its runner-up there
    top = sorted(FakeScoringEngine().score([], cmp.generations["a"][0].token_ids, 2)[3].values())
    assert t.loc["b", "margin_at_divergence"] == top[-1] - top[-2]
    assert f"preferred its token by {top[-1] - top[-2]:.2f} nats" in page
    assert "Logprob parity" not in page  # only the reference can score here: nothing to show


def test_the_compare_panel_starts_with_its_engines_selected_and_explains_a_lone_pick():
    from labkit.widgets import ComparePanel

    panel = ComparePanel({"a": FakeEngine(), "b": FakeEngine()})
    assert panel.pick.value == ("a", "b")
    panel.pick.value = ("a",)
    panel.run_button.click()
    assert "Select at least two engines" in panel.status.value and panel.comparison is None
    panel.pick.value = ("a", "b")
    panel.run_button.click()
    panel.wait(30)
    assert panel.comparison is not None and "identical" in panel.result.value


class _Scripted(FakeScoringEngine):
    """Generates the given (token id, text) pairs, ending with finish "stop" when ``stops``
    (the end token output as vLLM and llama.cpp give it: an id, no text)."""

    def __init__(self, pieces, stops=False, chat_prefix=(), vocab_shift=0, can_chat=True):
        super().__init__()
        self.pieces, self.stops = pieces, stops
        self.chat_prefix, self.vocab_shift, self.can_chat = list(chat_prefix), vocab_shift, can_chat

    def tokenize(self, text, *, chat: bool = False) -> list[int]:
        if chat and not self.can_chat:
            raise ValueError("this model has no chat template")
        ids = (self.chat_prefix if chat else []) + super().tokenize(text, chat=chat)
        return [i + self.vocab_shift for i in ids]

    def _tokens(self, params, t0, prompt_tokens=None):
        from labkit.engines.base import Token

        for tok, text in self.pieces:
            yield Token(text, tok, 0.0)
        yield Token("", None, 0.0, finish_reason="stop" if self.stops else "length", prompt_tokens=prompt_tokens)


_LLAMA_ENDS = [(5, " a"), (6, " b"), (0, "")]  # stopped on token 0, an end token to llama.cpp only
_VLLM_GOES_ON = [(5, " a"), (6, " b"), (0, ""), (8, " c"), (2, "")]


@pytest.mark.parametrize("reference", ["llama.cpp", "vllm"])
def test_outputs_that_part_only_where_one_engine_stopped_say_so_with_no_margin(reference):
    engines = {"llama.cpp": _Scripted(_LLAMA_ENDS, stops=True), "vllm": _Scripted(_VLLM_GOES_ON, stops=True)}
    cmp = labkit.compare(engines, ["one two"], max_tokens=8, reference=reference)
    other = cmp.table.set_index("engine").drop(reference).iloc[0]
    assert other["stopped_differently"] and other["first_divergence"] == 3
    assert pd.isna(other["margin_at_divergence"])  # the reference never chose between the two
    page = cmp._repr_html_()
    assert "stopped differently at token 3 (end-token sets differ)" in page and "diverges at" not in page


def test_a_shorter_output_that_ran_out_of_tokens_still_diverges():
    engines = {"a": _Scripted(_VLLM_GOES_ON), "b": _Scripted(_LLAMA_ENDS)}  # b hit max_tokens, no stop
    row = labkit.compare(engines, ["one two"], max_tokens=8).table.set_index("engine").loc["b"]
    assert not row["stopped_differently"] and row["first_divergence"] == 3


def test_the_same_text_from_different_tokens_is_not_called_identical():
    engines = {"a": _Scripted([(11, " Paris")]), "b": _Scripted([(12, " Par"), (13, "is")])}
    cmp = labkit.compare(engines, ["one two"], max_tokens=8)
    row = cmp.table.set_index("engine").loc["b"]
    assert not row["identical_to_ref"] and row["same_text"] and row["first_divergence"] == 0
    assert "same text, different tokens from token 0" in cmp._repr_html_()


def test_an_engine_with_another_vocabulary_is_compared_by_characters_with_no_margin():
    engines = {"a": _Scripted([(5, " x"), (6, " y")]), "b": _Scripted([(5, " x"), (7, " z")], vocab_shift=1000)}
    cmp = labkit.compare(engines, ["one two"], max_tokens=8)
    row = cmp.table.set_index("engine").loc["b"]
    assert row["divergence_unit"] == "char" and row["first_divergence"] == 3
    assert pd.isna(row["margin_at_divergence"]) and pd.isna(row["token_agreement"])
    assert "diverges at char 3" in cmp._repr_html_()


def test_prompt_tokens_are_judged_in_the_form_the_prompts_were_sent():
    out = [(5, " x")]
    # raw prompts sent: a chat template that differs, or is missing, says nothing about them
    cmp = labkit.compare({"a": _Scripted(out), "b": _Scripted(out, chat_prefix=(9,))}, ["one two"], max_tokens=4)
    assert "not fed the same prompt tokens" not in cmp._repr_html_()
    assert cmp.sent_prompt_ids["same_as_ref"].eq(True).all()
    cmp = labkit.compare({"a": _Scripted(out), "c": _Scripted(out, can_chat=False)}, ["one two"], max_tokens=4)
    assert "not checked" not in cmp._repr_html_() and cmp.sent_prompt_ids["same_as_ref"].eq(True).all()
    # sent as chat, the differing template is what was fed: flagged
    cmp = labkit.compare({"a": _Scripted(out), "b": _Scripted(out, chat_prefix=(9,))}, ["one two"],
                         max_tokens=4, chat=True)
    assert "not fed the same prompt tokens" in cmp._repr_html_()


def test_a_reference_that_cannot_score_says_no_parity_or_margins_were_computed():
    cmp = labkit.compare({"server": FakeEngine(), "b": FakeScoringEngine()}, ["one two"], max_tokens=4)
    assert cmp.parity.empty and any("No logprob parity and no margins" in n for n in cmp.notes)
    assert not any("uses the in-process engines" in n for n in cmp.notes)


def test_the_quant_ladder_measures_f16_first_whatever_the_order_given():
    from labkit.comparison import _ladder

    # the first variant measured is the reference: F16 listed second used to leave Q4_K_M there
    assert _ladder(["q4_k_m", "F16", "Q8_0"], "quick") == ["F16", "Q4_K_M", "Q8_0"]
    assert _ladder(["Q8_0"], "quick") == ["F16", "Q8_0"]


def test_the_divergence_histogram_keeps_characters_and_tokens_on_axes_of_their_own():
    from labkit.plots import divergence_histogram

    engines = {"a": _Scripted(_VLLM_GOES_ON, stops=True), "ends": _Scripted(_LLAMA_ENDS, stops=True),
               "other vocab": _Scripted([(5, " a"), (7, " z")], vocab_shift=1000)}
    fig = divergence_histogram(labkit.compare(engines, ["one two"], max_tokens=8))
    axes = {tr.name: tr.xaxis for tr in fig.data}
    assert axes["other vocab (0 identical)"] != axes["ends (0 identical, 1 stopped differently)"]
    titles = {fig.layout[f"xaxis{'' if ax == 'x' else ax[1:]}"].title.text for ax in axes.values()}
    assert titles == {"token index", "character index"}
    ends = next(tr for tr in fig.data if tr.name.startswith("ends"))
    assert len(ends.x) == 0  # stopping on another end token is not a divergence
