"""Widget logic driven headlessly: set values, click, wait for the worker, check state."""

from __future__ import annotations

from labkit.widgets import (
    BenchPanel,
    CapacityPanel,
    ComparePanel,
    MemoryMonitor,
    ModelLoader,
    SweepPanel,
)

from .conftest import MODEL


def test_model_loader_loads_and_unloads():
    ml = ModelLoader()
    ml.engine_name.value = "llama.cpp"
    ml.model.value = MODEL
    ml.threads.value = 1
    ml.context.value = 512
    ml.load_button.click()
    ml.wait(120)
    assert ml.engine is not None and ml.error is None
    assert "loaded" in ml.status.value and ml.progress.value == 1
    assert not ml.unload_button.disabled
    engine = ml.engine
    ml.unload_button.click()
    assert ml.engine is None  # at once; the engine closes on the worker thread
    ml.wait(60)
    assert engine.closed and "unloaded" in ml.status.value


def test_model_loader_shows_errors_in_the_panel():
    ml = ModelLoader()
    ml.model.value = "no-such-model"
    ml.load_button.click()
    ml.wait(60)
    assert ml.engine is None and "No model named" in ml.error
    assert "No model named" in ml.status.value and not ml.load_button.disabled


def test_compare_panel(llama):
    panel = ComparePanel({"a": llama, "b": llama})
    panel.pick.value = ("a", "b")
    panel.prompts.value = "The capital of France is"
    panel.max_tokens.value = 8
    panel.run_button.click()
    panel.wait(120)
    assert panel.comparison is not None and "<table" in panel.result.value
    assert panel.comparison.table["identical_to_ref"].all()


def test_bench_panel_grows_its_figure(llama):
    panel = BenchPanel(llama)
    panel.levels.value = "1,2"
    panel.requests.value = 2
    panel.input_tokens.value = 16
    panel.output_tokens.value = 4
    panel.run_button.click()
    panel.wait(300)
    assert panel.result is not None and list(panel.figure.data[0].x) == [1, 2]
    assert all(y > 0 for y in panel.figure.data[0].y)
    assert "done" in panel.status.value


def test_memory_monitor_samples_loaded_engines(llama):
    engines = {"llama.cpp": llama}
    mon = MemoryMonitor(engines)
    reading = mon.sample()
    assert reading["llama.cpp"] > 0 and len(mon.figure.data) == 1
    # an in-process engine is the kernel's growth, and the line says so
    assert mon.figure.data[0].name == "llama.cpp (in this kernel: its growth since load)"
    first = mon._samplers["llama.cpp"][1]
    engines.pop("llama.cpp")  # unloaded: its sampler goes (it was kept, and reused on a reload
    mon.sample()              # under the same label, with the old engine's processes)
    assert "llama.cpp" not in mon._samplers
    engines["llama.cpp"] = llama
    mon.sample()
    assert mon._samplers["llama.cpp"][1] is not first
    mon.start()
    old = mon._stop
    mon.start()  # off and on again quickly: the first loop has its own stop, now set
    assert old.is_set() and not mon._stop.is_set()
    mon.stop()


def test_two_loaders_of_one_engine_and_model_are_both_listed():
    from labkit.widgets import LOADED

    loaders = [ModelLoader(), ModelLoader()]
    try:
        for ml, parallel in zip(loaders, (1, 2), strict=True):
            ml.engine_name.value, ml.model.value, ml.context.value = "llama-server", MODEL, 512
            ml.parallel.value = parallel
            ml.load_button.click()
            ml.wait(120)
        labels = [k for k, e in LOADED.items() if e in (loaders[0].engine, loaders[1].engine)]
        assert len(labels) == 2 and labels[1] == labels[0] + " (2)"
    finally:
        for ml in loaders:
            ml.unload()
            ml.wait(60)


def test_bench_panel_overlays_engines_with_latency_beside_throughput(llama, llama_server):
    panel = BenchPanel({"in process": llama, "server": llama_server})
    assert panel.pick.value == ("in process", "server")  # ready with what it was given
    panel.levels.value, panel.requests.value = "1,2", 2
    panel.input_tokens.value, panel.output_tokens.value = 16, 4
    panel.run_button.click()
    panel.wait(300)
    names = [t.name for t in panel.figure.data]
    assert names == ["in process", "in process partial", "server", "server partial"]
    assert [list(panel.figure.data[i].x) for i in (0, 2)] == [[1, 2], [1, 2]]
    lat = {t.name: list(t.y) for t in panel.latency.data}
    assert set(lat) == {f"{e} {m}" for e in ("in process", "server")
                        for m in ("TTFT p50", "TTFT p99", "TPOT p50", "TPOT p99")}
    assert all(len(v) == 2 and min(v) > 0 for v in lat.values())
    assert panel.progress.value == panel.progress.max == 4 and "done" in panel.status.value


def test_capacity_panel_finds_the_users_and_draws_the_search(llama_server):
    panel = CapacityPanel({"server": llama_server})
    panel.ttft.value, panel.tpot.value, panel.more.value = 0, 0, "e2e_p99_ms=600000"
    panel.max_users.value, panel.input_tokens.value, panel.output_tokens.value = 2, 48, 4
    panel.run_button.click()
    panel.wait(300)
    cap = panel.capacity
    assert cap is not None and cap.users == 2 and cap.slo.bounds == {"e2e_p99_ms": 600000}
    assert "2 users within E2E p99" in panel.status.value and "<table" in panel.table.value
    drawn = [t for t in panel.figure.data if t.name == "server"]
    assert drawn and sorted(set(drawn[0].x)) == [1, 2]
    assert not panel.run_button.disabled and panel.stop_button.disabled


def test_capacity_and_sweep_panels_say_what_is_wrong_in_words(llama):
    cap = CapacityPanel({"a": llama})
    cap.ttft.value, cap.tpot.value = 0, 0
    cap.run_button.click()
    assert "An SLO needs at least one bound" in cap.status.value and cap.capacity is None
    cap.more.value = "ttft_p42_ms=5"
    cap.run_button.click()
    assert "Unknown SLO bound ttft_p42_ms" in cap.status.value
    sw = SweepPanel('{"llama.cpp": {"treads": [1]}}')
    sw.run_button.click()
    assert "llama.cpp has no argument &#x27;treads&#x27;; its arguments are model, threads" in sw.status.value
    sw.grid.value = "{not a dict"
    sw.run_button.click()
    assert "grid: write a dict such as" in sw.status.value and not sw.run_button.disabled


def test_sweep_panel_fills_the_front_point_by_point():
    panel = SweepPanel({"llama.cpp": {"context": [256, 512]}})  # not threads: a test worker may have 1 core
    panel.levels.value, panel.requests.value = "1", 2
    panel.input_tokens.value, panel.output_tokens.value = 16, 4
    panel.run_button.click()
    panel.wait(300)
    front = panel.front
    assert front is not None and len(front.table) == 2 and front.table["on_front"].any()
    assert panel.progress.value == panel.progress.max == 2
    assert "done: 2 point(s)" in panel.status.value and "<table" in panel.table.value
    assert sum(len(t.x) for t in panel.figure.data if t.name != "Pareto front") == 2
