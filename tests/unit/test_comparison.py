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
