"""Plot helpers that decide what a figure claims (labkit.plots)."""

from __future__ import annotations

from types import SimpleNamespace

import pandas as pd
import plotly.graph_objects as go

from labkit import plots


def test_a_levels_rounds_get_bands_of_their_own():
    # repeats alternate the levels: each stretch is a band, never one band over both rounds
    phases = ["concurrency 1"] * 3 + ["concurrency 8"] * 3 + ["idle"] + ["concurrency 1"] * 3 + ["concurrency 8"] * 3
    t = pd.DataFrame({"t_s": range(len(phases)), "phase": phases})
    fig = go.Figure()
    plots._phase_bands(fig, t)
    spans = [(s.x0, s.x1) for s in fig.layout.shapes]
    assert spans == [(0, 2), (3, 5), (7, 9), (10, 12)]


def _memory(**cols):
    m = pd.DataFrame({"t_s": [0.0, 1.0], "phase": ["load", "load"], "rss_bytes": [1 << 30, 1 << 30], **cols})
    return SimpleNamespace(memory=m, manifest={}, summary=pd.DataFrame())


def test_vram_is_each_engines_own_and_the_device_total_is_named_once(monkeypatch):
    monkeypatch.setattr(plots, "_results", lambda r: r)
    own = {"a": _memory(vram_process_bytes=[2 << 30] * 2, vram_used_bytes=[5 << 30] * 2),
           "b": _memory(vram_process_bytes=[3 << 30] * 2, vram_used_bytes=[5 << 30] * 2)}
    names = [d.name for d in plots.memory_timeline(own).data]
    assert names == ["a RSS", "a VRAM", "b RSS", "b VRAM"]
    assert list(plots.memory_timeline(own).data[1].y) == [2.0, 2.0]  # its processes', not the device's 5
    # no per-process figure (NVML gives 0 when it cannot match the pids): the whole GPU, said so
    device_only = {"a": _memory(vram_process_bytes=[0, 0], vram_used_bytes=[5 << 30] * 2),
                   "b": _memory(vram_used_bytes=[5 << 30] * 2)}
    names = [d.name for d in plots.memory_timeline(device_only).data]
    assert names == ["a RSS", "a: whole GPU (every process)", "b RSS", "b: whole GPU (every process)"]
