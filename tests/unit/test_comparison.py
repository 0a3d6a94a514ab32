"""compare() asks engines for the Scores capability; it never probes for methods."""

from __future__ import annotations

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
