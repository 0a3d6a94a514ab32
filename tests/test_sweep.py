"""Sweeps over settings and quantizations on real llama-servers: the front, its settings
columns, KLD for quantized points, and what an interrupted sweep keeps."""

from __future__ import annotations

import importlib
import json
import os
import signal
import threading

import numpy as np
import pandas as pd

import labkit
from labkit.loadgen import SLO, workloads

TINY = workloads.synthetic(input_tokens=16, output_tokens=8)
FAST = {"concurrency": [1, 2], "requests_per_level": 3, "workload": TINY, "warmup": 1, "progress": False}


def test_a_sweep_over_slots_and_quants_gives_a_non_dominated_front_with_kld(tmp_path):
    grid = {"llama-server": {"parallel": 2, "model": ["smollm2-135m", "smollm2-135m:Q8_0"]}, "llama.cpp": {}}
    front = labkit.sweep(grid, slo=SLO(e2e_p99_ms=60_000), out=tmp_path, **FAST)
    t = front.table
    assert front.stopped == "completed" and not front.failed
    assert len(t) == 3 * 2 and list(t["level"]) == [1, 2] * 3  # one row per point and level
    assert list(t["model"].iloc[::2]) == ["smollm2-135m", "smollm2-135m:Q8_0", None]  # settings as columns
    assert list(t["point"].iloc[::2]) == ["llama-server (parallel=2, model=smollm2-135m)",
                                          "llama-server (parallel=2, model=smollm2-135m:Q8_0)", "llama.cpp"]
    assert t["slo_met"].all() and (t["errors"] == 0).all()
    # Quality beside speed, one figure per model. The bundled file is Q4_1 and F16 is its
    # dequantized copy: it has no KLD of its own to show (blank, and said so), Q8_0 has one.
    kld = t.groupby("point", sort=False)["kld"].first().to_numpy()  # llama.cpp's default model is the bundled one
    assert np.isnan(kld[0]) and np.isnan(kld[2]) and 0 < kld[1] < 0.1
    assert any("kld is blank for smollm2-135m: the F16 reference is converted from that very file" in n
               for n in front.notes)
    # The front, checked on the frame: nothing on it is dominated, everything off it is.
    pts = t[["user_tok_per_s", "output_tok_per_s"]].to_numpy()
    for i, on in enumerate(t["on_front"]):
        dominated = any((pts[j] >= pts[i]).all() and (pts[j] > pts[i]).any() for j in range(len(t)) if j != i)
        assert on == (not dominated)
    saved = pd.read_csv(tmp_path / "front.csv")
    assert len(saved) == len(t) and "kld" in saved
    assert len(json.loads((tmp_path / "sweep.json").read_text())["points"]) == 3
    assert labkit.plots.pareto(front).data


def test_an_interrupted_sweep_keeps_the_points_it_finished_on_disk(tmp_path):
    stop = []

    def after_first(front):
        stop.append(len(front.results))
        event.set()

    event = threading.Event()
    front = labkit.sweep({"llama-server": {"parallel": [1, 2, 4]}}, out=tmp_path, stop_event=event,
                         on_point_done=after_first, **FAST)
    assert front.stopped == "interrupted" and stop == [1]
    assert list(front.table["parallel"].unique()) == [1]
    on_disk = pd.read_csv(tmp_path / "front.csv")
    assert list(on_disk["parallel"].unique()) == [1] and len(on_disk) == 2
    assert json.loads((tmp_path / "sweep.json").read_text())["stopped"] == "interrupted"
    assert (tmp_path / "00-llama-server" / "requests.jsonl").exists()
    assert not (tmp_path / "01-llama-server").exists()


def test_a_point_whose_engine_dies_is_failed_and_the_sweep_goes_on(monkeypatch):
    sweep_mod = importlib.import_module("labkit.loadgen.sweep")  # (the package exports the function)
    real, killed = sweep_mod.bench, []

    def bench_killing_the_first_server(engine, **kwargs):
        def kill(partial):
            if not killed:  # the first point's server dies after its first level
                killed.append(engine.info.pid)
                os.killpg(engine.process.pgid, signal.SIGKILL)
        return real(engine, on_level_done=kill, **kwargs)

    monkeypatch.setattr(sweep_mod, "bench", bench_killing_the_first_server)
    stop = threading.Event()
    front = labkit.sweep({"mock-server": {"token_delay_ms": [1, 2]}}, concurrency=[1, 2], requests_per_level=3,
                         workload=TINY, warmup=0, progress=False, stop_event=stop)
    first, second = "mock-server (token_delay_ms=1)", "mock-server (token_delay_ms=2)"
    assert killed and front.stopped == "completed" and not stop.is_set()  # the caller's event untouched
    assert list(front.failed) == [first] and front.failed[first].startswith("engine died: mock-server was killed")
    t = front.table.set_index(["point", "level"])
    assert t.loc[(first, 1), "completed"] == 3 and not t.loc[(first, 1), "partial"]  # what it finished is kept
    assert (t.loc[second, "completed"] == 3).all()  # and the next point ran whole


def test_a_ctrl_c_while_a_point_shuts_down_keeps_what_it_measured(monkeypatch):
    sweep_mod = importlib.import_module("labkit.loadgen.sweep")
    real_load = sweep_mod.load

    def load_with_an_interrupted_close(name, **kwargs):
        engine = real_load(name, **kwargs)
        close = engine.close

        def close_then_ctrl_c():
            first = not engine.closed
            close()
            if first:
                raise KeyboardInterrupt  # a second Ctrl-C, pressed while the engine shuts down

        engine.close = close_then_ctrl_c
        return engine

    monkeypatch.setattr(sweep_mod, "load", load_with_an_interrupted_close)
    front = labkit.sweep({"mock-server": {"token_delay_ms": [1, 2]}}, concurrency=[1, 2], requests_per_level=3,
                         workload=TINY, warmup=0, progress=False)
    assert front.stopped == "interrupted"
    assert list(front.table["point"].unique()) == ["mock-server (token_delay_ms=1)"]
    assert list(front.table["completed"]) == [3, 3] and list(front.results) == ["mock-server (token_delay_ms=1)"]
