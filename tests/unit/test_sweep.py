"""Sweeps: the grid, its checks, and the Pareto front, on frames (no engines)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import labkit
from labkit.errors import InvalidInput
from labkit.loadgen.sweep import Front, grid_points, on_front


def test_the_grid_is_every_combination_per_engine_without_duplicates():
    points = grid_points({"llama-server": {"parallel": [2, 4], "model": ["smollm2-135m", "smollm2-135m:Q8_0"]},
                          "llama.cpp": {"threads": 2}, "vllm-server": {}})
    assert [p.engine for p in points] == ["llama-server"] * 4 + ["llama.cpp", "vllm-server"]
    assert points[1].settings == {"parallel": 2, "model": "smollm2-135m:Q8_0"}
    assert points[4].label == "llama.cpp (threads=2)" and points[5].label == "vllm-server"
    assert len(grid_points({"llama.cpp": {"threads": [1, 1]}})) == 1


@pytest.mark.parametrize(("grid", "says"), [
    ({"llama-server": {"paralel": [2]}}, "no argument 'paralel'; its arguments are model, parallel"),
    ({"nope": {}}, "Unknown engine 'nope'"),
    ({}, "A sweep grid is"),
    ({"llama.cpp": {"threads": []}}, "no values to try for threads"),
    ({"llama.cpp": [1, 2]}, "must be a dict"),
])
def test_a_bad_grid_is_refused_before_anything_loads(grid, says):
    with pytest.raises(InvalidInput, match=says):
        labkit.sweep(grid, concurrency=[1])


def test_bad_levels_are_refused_before_anything_loads():
    with pytest.raises(InvalidInput, match="Concurrency levels"):
        labkit.sweep({"llama.cpp": {}}, concurrency=[0])


def test_the_front_is_exactly_the_non_dominated_rows():
    rng = np.random.default_rng(0)
    t = pd.DataFrame({"user_tok_per_s": rng.uniform(1, 50, 40), "output_tok_per_s": rng.uniform(1, 200, 40)})
    t.loc[40] = [np.nan, 500.0]  # unmeasured: never on the front
    front = on_front(t)
    pts = t[["user_tok_per_s", "output_tok_per_s"]].to_numpy()
    for i in range(40):
        dominated = any((pts[j] >= pts[i]).all() and (pts[j] > pts[i]).any() for j in range(40) if j != i)
        assert front[i] == (not dominated)
    assert not front[40] and front.any()


def test_the_pareto_plot_draws_every_point_and_the_front():
    t = pd.DataFrame({"point": ["a", "a", "b"], "mode": ["concurrency"] * 3, "level": [1, 4, 1],
                      "user_tok_per_s": [40.0, 20.0, 30.0], "output_tok_per_s": [40.0, 80.0, 30.0],
                      "peak_pss_bytes": [1e9, 1.2e9, 5e8], "slo_met": [True, False, True], "kld": [0.01, 0.01, 0.2]})
    t["on_front"] = on_front(t)
    assert list(t["on_front"]) == [True, True, False]
    fig = labkit.plots.pareto(Front(t))
    assert list(fig.data[0].marker.symbol) == ["circle", "circle-open", "circle"]
    assert list(fig.data[-1].x) == [20.0, 40.0]  # the front, by per-user speed


def test_a_level_cut_short_is_kept_marked_and_left_off_the_front():
    from labkit.loadgen.sweep import _Walk

    walk = _Walk([], {}, None, None, None)
    walk.rows = [pd.DataFrame({"point": ["a", "a"], "mode": ["concurrency"] * 2, "level": [1, 2],
                               "unmeasured": [0, 5], "user_tok_per_s": [40.0, 90.0],
                               "output_tok_per_s": [40.0, 90.0]})]
    t = walk._front("interrupted").table
    assert list(t["partial"]) == [False, True] and list(t["on_front"]) == [True, False]
    fig = labkit.plots.pareto(Front(t))
    assert [len(d.x) for d in fig.data] == [1, 1]  # the whole level, and the front through it


def test_a_front_with_nothing_measured_has_an_empty_pareto():
    from labkit.loadgen.sweep import _Walk

    walk = _Walk([], {}, None, None, None)
    walk.failed = {"llama-server (parallel=99)": "ServerError: it did not start"}
    front = walk._front("completed")
    assert front.pareto.empty and "failed: ServerError" in front._repr_html_()


def _measured_front(monkeypatch):
    """sweep() with its walk replaced by a finished front of one row per point."""
    import importlib

    sweep_mod = importlib.import_module("labkit.loadgen.sweep")  # the module, not the function

    def run(walk):
        table = pd.DataFrame({"point": [p.label for p in walk.points], "output_tok_per_s": [10.0] * len(walk.points),
                              "user_tok_per_s": [5.0] * len(walk.points)})
        return Front(table, {}, {}, None, "completed", walk.settings)

    monkeypatch.setattr(sweep_mod._Walk, "run", run)


GRID = {"llama.cpp": {"model": ["smollm2-135m:Q8_0", "smollm2-135m:Q4_K_M", "other-model:Q8_0"]}}


@pytest.mark.parametrize("failure", [RuntimeError("F16 conversion failed"), KeyboardInterrupt()])
def test_a_kld_step_that_fails_or_is_interrupted_keeps_the_measured_front(monkeypatch, tmp_path, failure):
    import labkit.comparison

    calls = []

    def kld_to_f16(names, progress=True):
        calls.append(list(names))
        if len(calls) == 2:
            raise failure
        return {n: 0.01 for n in names}

    _measured_front(monkeypatch)
    monkeypatch.setattr(labkit.comparison, "kld_to_f16", kld_to_f16)
    front = labkit.sweep(GRID, concurrency=[1], out=tmp_path / "s", progress=False)
    assert calls == [["smollm2-135m:Q8_0", "smollm2-135m:Q4_K_M"], ["other-model:Q8_0"]]  # base by base
    assert front.table["kld"].tolist()[:2] == [0.01, 0.01] and np.isnan(front.table["kld"].iloc[2])
    why = "interrupted" if isinstance(failure, KeyboardInterrupt) else "RuntimeError: F16 conversion failed"
    assert front.stopped == ("interrupted" if why == "interrupted" else f"KLD step failed: {why}")
    assert any(f"incomplete ({why}): none for other-model:Q8_0" in n for n in front.notes)
    saved = pd.read_csv(tmp_path / "s" / "front.csv")
    assert len(saved) == 3 and saved["kld"].notna().sum() == 2


def test_a_stop_during_the_kld_step_ends_it_between_base_models(monkeypatch):
    import threading

    import labkit.comparison

    stop, calls = threading.Event(), []

    def kld_to_f16(names, progress=True):
        calls.append(list(names))
        stop.set()  # the Stop button, pressed while the first base's KLDs ran
        return {n: 0.02 for n in names}

    _measured_front(monkeypatch)
    monkeypatch.setattr(labkit.comparison, "kld_to_f16", kld_to_f16)
    front = labkit.sweep(GRID, concurrency=[1], progress=False, stop_event=stop)
    assert len(calls) == 1 and front.stopped == "interrupted"
    assert front.table["kld"].notna().sum() == 2
