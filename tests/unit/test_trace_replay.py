"""A trace replayed from another first_request still sends each line at its own time."""

from __future__ import annotations

import json

import pytest

import labkit
from labkit.loadgen import workloads

from .fake_engine import FakeAsyncEngine


@pytest.mark.parametrize("first", [0, 1, 5])
def test_each_trace_line_is_sent_at_its_own_time_whatever_first_request(tmp_path, first):
    rows = [{"timestamp": 0, "input_length": 10, "output_length": 2},
            {"timestamp": 300, "input_length": 40, "output_length": 2},
            {"timestamp": 600, "input_length": 80, "output_length": 2}]
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    res = labkit.bench(FakeAsyncEngine(), workload=workloads.trace(path), warmup=0, progress=False,
                       first_request=first)
    r = res.requests.sort_values("index")
    assert list(r["input_tokens"]) == [10, 40, 80]  # line s is request s, at line s's time
    assert r["scheduled_s"].is_monotonic_increasing


def test_a_trace_from_another_first_request_has_fresh_words_on_the_same_lines(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(json.dumps({"timestamp": t, "input_length": 30, "output_length": 2})
                              for t in (0, 10)))
    wl = workloads.trace(path)
    a, b = wl.build(FakeAsyncEngine(), 2, start=0), wl.build(FakeAsyncEngine(), 2, start=7)
    assert [r.input_tokens for r in a] == [r.input_tokens for r in b] == [30, 30]
    assert not {r.fingerprint for r in a} & {r.fingerprint for r in b}
