"""Widget logic driven headlessly: set values, click, wait for the worker, check state."""

from __future__ import annotations

from labkit.widgets import BenchPanel, ComparePanel, MemoryMonitor, ModelLoader

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
    assert engine.closed and ml.engine is None and "unloaded" in ml.status.value


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
    mon = MemoryMonitor({"llama.cpp": llama})
    reading = mon.sample()
    assert reading["llama.cpp"] > 0 and len(mon.figure.data) == 1
