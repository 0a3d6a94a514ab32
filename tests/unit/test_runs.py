"""Run folders from several machines, read into one place (labkit.runs)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

import labkit
from labkit.loadgen import workloads
from labkit.runner import _jsonable

from .fake_engine import FakeAsyncEngine

SMALL = workloads.synthetic(input_tokens=8, output_tokens=4)


def _bench(folder, **env):
    res = labkit.bench(FakeAsyncEngine(), concurrency=[1, 2], requests_per_level=4, workload=SMALL, warmup=0,
                       progress=False, out=folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["environment"].update(env)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return res


def test_two_machines_load_side_by_side_and_plot_by_machine(tmp_path):
    _bench(tmp_path / "laptop" / "bench", hostname="vm", cpu="AMD EPYC 7763", gpu=None)
    _bench(tmp_path / "a100" / "bench", hostname="vm", cpu="Intel Xeon", gpu="NVIDIA A100-SXM4-80GB")
    runs = labkit.runs.load([tmp_path / "laptop", tmp_path / "a100"])
    m = runs.machines.set_index("machine")
    # both hosts are called "vm": the labels add what differs
    assert list(m.index) == ["vm (AMD EPYC 7763)", "vm (Intel Xeon, NVIDIA A100-SXM4-80GB)"]
    assert (m["runs"] == 1).all()
    s = runs.summary
    assert len(s) == 4 and set(s["machine"]) == set(m.index) and list(s.columns[:3]) == ["machine", "engine", "run"]
    fig = labkit.plots.throughput(runs, by="machine")
    assert {t.name for t in fig.data} == set(m.index)
    assert {t.name for t in labkit.plots.latency(runs, by="engine").data} >= {f"fake · {x} TTFT p50" for x in m.index}
    with pytest.raises(labkit.InvalidInput, match="one machine"):
        runs.engines()
    assert set(runs.on(m.index[0]).engines()) == {"fake"}


def test_names_given_per_folder_win_and_one_machine_twice_is_told_by_time(tmp_path):
    _bench(tmp_path / "a")
    _bench(tmp_path / "b")
    runs = labkit.runs.load([tmp_path / "a", tmp_path / "b"])
    assert runs.machines.shape[0] == 1  # the same machine
    labels = list(runs.by("machine"))
    assert len(labels) == 2 and labels[0].endswith("· fake") and labels[1] != labels[0]
    named = labkit.runs.load([tmp_path / "a", tmp_path / "b"], machine=["laptop", "desk"])
    assert list(named.by("machine")) == ["laptop", "desk"]
    with pytest.raises(labkit.InvalidInput, match="2 folders, 1 names"):
        labkit.runs.load([tmp_path / "a", tmp_path / "b"], machine=["laptop"])


def test_notebook_runs_bring_their_recorded_tables(tmp_path):
    folder = tmp_path / "nb"
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps({"notebook": "x.ipynb", "environment": {"hostname": "lab"}}))
    table = pd.DataFrame({"engine": ["vllm"], "output_tok_per_s": [12.5]})
    (folder / "results.json").write_text(json.dumps(_jsonable({"summary": table, "identical": True})))
    runs = labkit.runs.load(folder)
    assert runs.runs[0].kind == "notebook" and runs.summary.empty
    got = runs.recorded("summary")
    assert got["output_tok_per_s"].iloc[0] == 12.5 and got["machine"].iloc[0] == "lab"
    assert bool(runs.recorded("identical")["value"].iloc[0]) is True
    assert "1 run(s)" in runs._repr_html_()


def test_a_table_comparing_machines_keeps_its_own_machine_column(tmp_path):
    folder = tmp_path / "nb"
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps({"notebook": "x.ipynb", "environment": {"hostname": "laptop"}}))
    table = pd.DataFrame({"machine": ["laptop", "a100-box"], "output_tok_per_s": [12.5, 900.0]})
    (folder / "results.json").write_text(json.dumps(_jsonable({"summary": table})))
    got = labkit.runs.load(folder).recorded("summary")
    assert list(got["machine"]) == ["laptop", "a100-box"] and list(got["recorded_on"]) == ["laptop", "laptop"]


def test_runs_with_the_same_leaf_folder_name_are_told_apart(tmp_path):
    # a grid's points each save into "this-machine": the run column says which point
    _bench(tmp_path / "grid" / "000-USERS=1" / "this-machine")
    _bench(tmp_path / "grid" / "001-USERS=2" / "this-machine")
    runs = labkit.runs.load(tmp_path / "grid")
    assert sorted(set(runs.summary["run"])) == ["grid/000-USERS=1/this-machine", "grid/001-USERS=2/this-machine"]
    assert sorted(runs.by("run")) == ["grid/000-USERS=1/this-machine", "grid/001-USERS=2/this-machine"]
    assert list(labkit.runs.load(tmp_path / "grid" / "000-USERS=1" / "this-machine").summary["run"].unique()) == [
        "this-machine"]


def test_folders_without_runs_are_refused(tmp_path):
    with pytest.raises(labkit.InvalidInput, match="No run folder"):
        labkit.runs.load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(labkit.InvalidInput, match="holds no labkit run"):
        labkit.runs.load(tmp_path / "empty")
    with pytest.raises(labkit.InvalidInput, match="by must be"):
        labkit.runs.Runs([]).by("colour")


def test_a_new_run_in_a_used_folder_replaces_the_old_one(tmp_path):
    _bench(tmp_path / "run")
    second = labkit.bench(FakeAsyncEngine(), concurrency=[3], requests_per_level=3, workload=SMALL, warmup=0,
                          progress=False, out=tmp_path / "run")
    loaded = labkit.BenchResult.load(tmp_path / "run")
    assert len(loaded.requests) == len(second.requests) == 3 and set(loaded.requests["level"]) == {3}


def test_a_verdict_takes_one_run_per_engine(tmp_path):
    _bench(tmp_path / "a")
    _bench(tmp_path / "b")
    with pytest.raises(labkit.InvalidInput, match="More than one run of fake"):
        labkit.runs.load([tmp_path / "a", tmp_path / "b"]).engines()


def test_a_folder_that_is_not_a_labkit_run_is_not_emptied(tmp_path):
    (tmp_path / "manifest.json").write_text('{"name": "my project"}')
    with pytest.raises(labkit.InvalidInput, match="not a labkit bench run"):
        labkit.bench(FakeAsyncEngine(), concurrency=[1], requests_per_level=1, workload=SMALL, progress=False,
                     out=tmp_path)
    assert json.loads((tmp_path / "manifest.json").read_text()) == {"name": "my project"}


def test_load_processes_that_cannot_start_leave_the_old_run_and_no_thread(tmp_path, monkeypatch):
    import threading

    from labkit.errors import EngineError
    from labkit.loadgen import session

    _bench(tmp_path / "run")
    before = threading.active_count()

    def refuse(*args, **kwargs):
        raise EngineError("A load process did not start")

    monkeypatch.setattr(session, "driver_for", refuse)
    with pytest.raises(EngineError):
        labkit.bench(FakeAsyncEngine(), concurrency=[2], requests_per_level=2, workload=SMALL, progress=False,
                     out=tmp_path / "run")
    assert threading.active_count() == before  # the memory sampler and telemetry stopped
    assert len(labkit.BenchResult.load(tmp_path / "run").requests) == 8  # the old run is intact
