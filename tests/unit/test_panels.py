"""The notebook panels' logic on fake engines (the browser test shows what users see)."""

from __future__ import annotations

from labkit.widgets import BenchPanel

from .fake_engine import FakeEngine


class _StopsThePanel(FakeEngine):
    """Presses the panel's Stop when its 10th request starts (2 warm up): level 1 (6) is whole,
    level 2 is cut short, level 4 never starts."""

    panel: BenchPanel | None = None
    stop_at = 10

    def _stream(self, prompt, params, chat, t0):
        tokens = super()._stream(prompt, params, chat, t0)
        if self.started == self.stop_at and self.panel is not None:
            self.panel.stop()
        return tokens


def test_a_stopped_level_is_drawn_as_partial_and_unstarted_ones_not_at_all():
    eng = _StopsThePanel(token_s=0.002)
    panel = BenchPanel(eng)
    eng.panel = panel
    panel.levels.value, panel.requests.value = "1,2,4", 6
    panel.input_tokens.value, panel.output_tokens.value = 8, 4
    panel.run_button.click()
    assert panel.run_button.disabled and not panel.stop_button.disabled  # while it runs
    panel.wait(60)
    line, partial = panel.figure.data
    assert list(line.x) == [1] and list(partial.x) == [2]
    (label,) = partial.text
    done, of = label.split(" of ")
    assert of == "6" and 0 < int(done) < 6
    assert panel.progress.value == 1 and "stopped: 1 complete level(s) kept" in panel.status.value
    assert "2 users" in panel.status.value and not panel.run_button.disabled and panel.stop_button.disabled
    s = panel.result.summary.set_index("level")
    assert s.loc[2, "errors"] == 0 and s.loc[2, "unmeasured"] == 6 - int(done)


def test_the_memory_monitor_says_whether_it_is_live():
    from labkit.widgets import MemoryMonitor

    mon = MemoryMonitor({}, interval_s=0.05)
    assert mon.toggle.description.startswith("Live: off")
    mon.toggle.value = True
    assert mon.toggle.description.startswith("Live: on")
    mon.toggle.value = False
    assert mon.toggle.description.startswith("Live: off")


def test_levels_that_never_started_are_not_listed_as_partial():
    eng = _StopsThePanel(token_s=0.002)
    panel = BenchPanel(eng)
    eng.panel = panel
    eng.stop_at = 1  # Stop during the warm-up: no measured request is sent
    panel.levels.value, panel.requests.value = "1,2", 6
    panel.input_tokens.value, panel.output_tokens.value = 8, 4
    panel.run_button.click()
    panel.wait(60)
    assert "stopped: 0 complete level(s) kept" in panel.status.value
    assert "of 6" not in panel.status.value and all(len(t.x) == 0 for t in panel.figure.data)


class _RefusesAll(FakeEngine):
    """A server that answers every request with an error (a 401 for a missing key)."""

    def _stream(self, prompt, params, chat, t0):
        from labkit.errors import EngineError

        raise EngineError("401 Unauthorized")


def test_a_run_where_every_request_failed_ends_with_nothing_drawn_not_an_error():
    panel = BenchPanel(_RefusesAll())
    panel.levels.value, panel.requests.value = "1,2", 2
    panel.input_tokens.value, panel.output_tokens.value = 8, 4
    panel.run_button.click()
    panel.wait(60)
    assert "KeyError" not in panel.status.value and "all 4 requests failed (first: EngineError: 401 Unauthorized)" \
        in panel.status.value, panel.status.value  # never "done"
    assert all(len(t.x) == 0 for t in panel.figure.data)
    assert (panel.result.summary["completed"] == 0).all() and (panel.result.summary["errors"] > 0).all()


def test_an_engine_unloaded_after_it_was_picked_is_named_not_swallowed():
    from labkit.widgets import ComparePanel

    engines = {"a": FakeEngine(), "b": FakeEngine()}
    panel = ComparePanel(engines)
    del engines["b"]  # unloaded by another panel since the list was made
    panel.run_button.click()  # (a KeyError in a click handler vanishes: the status stayed empty)
    assert "b is no longer loaded: press Refresh engines" in panel.status.value


def test_plots_of_nothing_measured_are_empty_figures_not_errors():
    import pandas as pd

    import labkit
    from labkit.loadgen.capacity import Capacity

    assert not labkit.plots.throughput({}).data and not labkit.plots.latency({}).data
    nothing = Capacity("x", labkit.SLO(ttft_p99_ms=1), "rate", 0.0, pd.DataFrame(), "no level", False, 1.0)
    assert not labkit.plots.capacity({"x": nothing}).data


def test_a_loader_takes_the_label_of_an_engine_closed_outside_it():
    from labkit.widgets import LOADED, ModelLoader

    class Named(FakeEngine):
        name = "llama.cpp"  # one the loader's list offers

    old, new = Named(), Named()
    try:
        ModelLoader(old)
        label = next(k for k, e in LOADED.items() if e is old)
        old.close()  # closed by the notebook, not by the loader
        ModelLoader(new)
        assert LOADED[label] is new  # (it became "label (2)" beside a dead entry the panels still picked)
    finally:
        for k in [k for k, e in LOADED.items() if e in (old, new)]:
            del LOADED[k]


def test_one_engine_dying_does_not_skip_the_others_and_is_named():
    dies, healthy = FakeEngine(die_after=9, token_s=0.001), FakeEngine(token_s=0.001)
    panel = BenchPanel({"A": dies, "B": healthy})
    panel.levels.value, panel.requests.value = "1,2", 6
    panel.input_tokens.value, panel.output_tokens.value = 8, 4
    panel.run()
    panel.wait(60)
    assert list(panel.results) == ["A", "B"] and panel.results["B"].ended == "completed"
    assert healthy.started == 2 + 12  # its warm-up and both levels
    assert "A: engine died" in panel.status.value and "stopped" not in panel.status.value
    assert not panel._stop.is_set()  # the panel's Stop was not pressed by A dying


def _prompts_of_a_run(eng, levels: str, requests: int) -> set[str]:
    """Run a new panel (the cell run again) on ``eng``; the prompts it sent."""
    panel = BenchPanel(eng)
    panel.levels.value, panel.requests.value = levels, requests
    panel.input_tokens.value, panel.output_tokens.value = 16, 2
    panel.run()
    panel.wait(60)
    return {str(p) for p in panel.result.requests["prompt_sha"]}


def test_a_second_run_on_the_same_engine_sends_prompts_it_has_not_seen():
    """The same prompts again would be served from a server's prefix cache: a faster TTFT
    that measures the cache, not the load."""
    eng = FakeEngine()
    first, second = _prompts_of_a_run(eng, "1,2", 4), _prompts_of_a_run(eng, "1,2", 4)
    assert len(first) == len(second) == 8 and not first & second
    # a level of more users than requests per level sends one per user: those count too
    sent = _prompts_of_a_run(eng, "1,8", 4)
    assert len(sent) == 12 and not _prompts_of_a_run(eng, "1", 4) & (sent | first | second)


def test_an_engine_dead_before_its_turn_does_not_skip_the_others():
    dead, healthy = FakeEngine(), FakeEngine(token_s=0.001)
    dead.close()  # closed elsewhere since it was picked
    panel = BenchPanel({"A": dead, "B": healthy})
    panel.levels.value, panel.requests.value = "1", 2
    panel.input_tokens.value, panel.output_tokens.value = 8, 4
    panel.run()
    panel.wait(60)
    assert panel.results["B"].ended == "completed" and healthy.started > 0
    assert "A: " in panel.status.value and "closed" in panel.status.value, panel.status.value


def test_a_closed_memory_monitor_leaves_no_thread_sampling():
    from labkit.widgets import MemoryMonitor

    mon = MemoryMonitor({}, interval_s=0.01)
    mon.toggle.value = True
    thread = mon._thread
    assert thread.is_alive()
    mon.close()  # the cell run again: the old monitor closed
    assert not thread.is_alive()


class _SlowToClose(FakeEngine):
    """Closes (a server group stopping) only once the test lets it; or fails to close."""

    def __init__(self, fails: bool = False):
        super().__init__()
        import threading

        self.may_close, self.closing_on, self.fails = threading.Event(), None, fails

    def _close(self):
        import threading

        self.closing_on = threading.current_thread()
        self.may_close.wait(30)
        if self.fails:
            raise RuntimeError("the server group would not stop")
        super()._close()


def test_unloading_closes_the_engine_off_the_kernels_thread_and_any_failure_is_shown():
    import threading

    from labkit.widgets import LOADED, ModelLoader

    eng = _SlowToClose()
    ml = ModelLoader(eng)  # an attached engine of any name: "fake" joins the list
    assert ml.engine_name.value == "fake" and "fake" in ml.engine_name.options
    ml.unload()  # returns while the engine is still closing
    assert ml.engine is None and eng not in LOADED.values() and ml._worker.busy
    eng.may_close.set()
    ml.wait(30)
    assert eng.closed and eng.closing_on is not threading.main_thread() and "unloaded" in ml.status.value
    bad = _SlowToClose(fails=True)
    bad.may_close.set()
    ml = ModelLoader(bad)
    ml.unload()
    ml.wait(30)
    assert ml.engine is None and bad not in LOADED.values() and "would not stop" in ml.status.value
