"""ipywidgets panels: thin views over labkit's plain functions.

Widgets are controls; the functions do the work. Long work runs on a worker thread and
reports through widget values (never an Output context manager from a thread), so the
kernel's UI stays responsive; errors show in the panel's status line, not as a traceback.
``wait()`` joins the worker, for headless use and tests.
"""

from __future__ import annotations

import html
import threading
from collections.abc import Callable
from typing import Any

import ipywidgets as w

from .. import models
from ..engines.base import ENGINES, Engine, load
from ..errors import LabkitError

__all__ = ["ModelLoader", "ComparePanel", "BenchPanel", "MemoryMonitor"]


def _labels_fit(*fields: w.DescriptionWidget) -> None:
    """ipywidgets cut a label at 80 px ("GPU util/l..."); let each take the width it needs."""
    for f in fields:
        f.style.description_width = "initial"

#: Engines loaded through any ModelLoader in this kernel, by label: what ComparePanel offers.
LOADED: dict[str, Engine] = {}


class _Worker:
    """Runs one job at a time off the UI thread and reports into ``status``."""

    def __init__(self, status: w.HTML):
        self.status = status
        self.thread: threading.Thread | None = None
        self.error: str | None = None

    def start(self, job: Callable[[], Any], done: Callable[[Any], None]) -> None:
        if self.busy:
            self.show("busy: wait for the current job", "#a60")
            return
        self.error = None

        def run() -> None:
            try:
                done(job())
            except LabkitError as e:
                self.error = str(e)
                self.show(str(e).splitlines()[0], "#c00")
            except Exception as e:  # shown, not raised: the kernel must not see a traceback wall
                self.error = f"{type(e).__name__}: {e}"
                self.show(self.error, "#c00")

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    @property
    def busy(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def wait(self, timeout: float | None = None) -> None:
        if self.thread is not None:
            self.thread.join(timeout)

    def show(self, text: str, color: str = "#333") -> None:
        self.status.value = f"<span style='color:{color}'>{html.escape(text)}</span>"


class ModelLoader(w.VBox):
    """Pick an engine, a model and the engine's main options; Load / Unload. ``.engine`` is
    the loaded engine (or None)."""

    def __init__(self, engine: str | Engine = "llama.cpp", model: str = models.DEFAULT_MODEL, **kwargs: Any):
        attached = engine if isinstance(engine, Engine) else None
        if attached is not None:  # show an engine loaded in code, so the panel can unload it
            engine, model = attached.name, attached.info.model
        choices = [e.name for e in models.list_models() if e.path] or [model]
        self.engine_name = w.Dropdown(options=[e for e in ENGINES if e != "openai"], value=engine,
                                      description="engine")
        self.model = w.Combobox(value=model, options=choices, description="model",
                                placeholder="name, NAME:QUANT, .gguf or HF dir")
        self.threads = w.BoundedIntText(value=0, min=0, max=512, description="threads",
                                        tooltip="0: the engine's default")
        self.context = w.BoundedIntText(value=2048, min=128, max=1 << 20, description="context")
        self.gpu = w.BoundedFloatText(value=0, min=0, max=1, step=0.05, description="GPU util/layers",
                                      tooltip="vLLM: gpu_memory_utilization; llama.cpp: ignored unless > 0")
        self.parallel = w.BoundedIntText(value=4, min=1, max=1024, description="parallel")
        _labels_fit(self.model, self.threads, self.context, self.gpu, self.parallel)
        self.load_button = w.Button(description="Load", button_style="primary", icon="play")
        self.unload_button = w.Button(description="Unload", icon="stop", disabled=True)
        self.progress = w.IntProgress(value=0, min=0, max=1, layout={"width": "200px"})
        self.status = w.HTML("not loaded")
        self.engine: Engine | None = None
        self._worker = _Worker(self.status)
        self.load_button.on_click(lambda _: self.load())
        self.unload_button.on_click(lambda _: self.unload())
        super().__init__([w.HBox([self.engine_name, self.model]), w.HBox([self.threads, self.context]),
                          w.HBox([self.parallel, self.gpu]),
                          w.HBox([self.load_button, self.unload_button, self.progress]), self.status], **kwargs)
        if attached is not None:
            self._loaded(attached)

    def _loaded(self, engine: Engine) -> None:
        self.engine = engine
        LOADED[f"{engine.name}: {engine.info.model}"] = engine
        self.progress.value, self.progress.bar_style = 1, "success"
        info = engine.info
        self._worker.show(f"loaded: {info.engine} ({info.engine_version}), {info.model}, "
                          f"threads {info.threads}, device {info.device}", "#080")
        self.unload_button.disabled = False
        self.load_button.disabled = False

    def options(self) -> dict[str, Any]:
        """The keyword arguments this panel passes to :func:`labkit.load`."""
        name = self.engine_name.value
        kw: dict[str, Any] = {"model": self.model.value, "context": self.context.value}
        if self.threads.value:
            kw["threads"] = self.threads.value
        if name == "llama-server":
            kw["parallel"] = self.parallel.value
        if name in ("vllm", "vllm-server") and self.gpu.value:
            kw["gpu_memory_utilization"] = self.gpu.value
        return kw

    def load(self) -> None:
        self.unload()
        name, kw = self.engine_name.value, self.options()
        self.load_button.disabled = True
        self.progress.bar_style, self.progress.value = "info", 0
        self._worker.show(f"loading {kw['model']} in {name}…")

        def job() -> Engine:
            try:
                return load(name, **kw)
            finally:
                self.load_button.disabled = False

        self._worker.start(job, self._loaded)

    def unload(self) -> None:
        if self.engine is not None:
            for label, e in list(LOADED.items()):
                if e is self.engine:
                    del LOADED[label]
            self.engine.close()
            self.engine = None
            self.progress.value = 0
            self._worker.show("unloaded")
            self.unload_button.disabled = True

    def wait(self, timeout: float | None = None) -> ModelLoader:
        self._worker.wait(timeout)
        return self

    @property
    def error(self) -> str | None:
        return self._worker.error


class ComparePanel(w.VBox):
    """Prompts box and engines picked from the loaded ones; Run shows the side-by-side HTML and
    the parity table."""

    def __init__(self, engines: dict[str, Engine] | None = None, **kwargs: Any):
        self._engines = engines
        self.prompts = w.Textarea(value="Why do people use vLLM?\nThe capital of France is",
                                  description="prompts", layout={"width": "600px", "height": "80px"})
        self.pick = w.SelectMultiple(description="engines", options=list(self._available()))
        self.pick.value = tuple(self.pick.options)  # ready to run with what it was given
        self.max_tokens = w.BoundedIntText(value=32, min=1, max=4096, description="max tokens")
        _labels_fit(self.pick, self.max_tokens)
        self.run_button = w.Button(description="Run", button_style="primary")
        self.refresh = w.Button(description="Refresh engines")
        self.status = w.HTML("")
        self.result = w.HTML("")
        self.comparison = None
        self._worker = _Worker(self.status)
        self.run_button.on_click(lambda _: self.run())
        self.refresh.on_click(lambda _: self._refresh())
        super().__init__([self.prompts, w.HBox([self.pick, w.VBox([self.max_tokens, self.refresh])]),
                          self.run_button, self.status, self.result], **kwargs)

    def _available(self) -> dict[str, Engine]:
        return self._engines if self._engines is not None else LOADED

    def _refresh(self) -> None:
        keep = [k for k in self.pick.value if k in self._available()]
        self.pick.options = list(self._available())
        self.pick.value = tuple(keep or self.pick.options)

    def run(self) -> None:
        from ..comparison import compare

        engines = {k: self._available()[k] for k in self.pick.value}
        prompts = [p for p in self.prompts.value.splitlines() if p.strip()]
        if len(engines) < 2:
            self._worker.show("Select at least two engines in the list (Ctrl- or Shift-click to "
                              "select several), or load more with a ModelLoader and press "
                              "Refresh engines.", "#c00")
            return
        if not prompts:
            self._worker.show("Write at least one prompt, one per line.", "#c00")
            return
        self._worker.show(f"comparing {len(engines)} engines on {len(prompts)} prompts…")

        def done(cmp) -> None:
            self.comparison = cmp
            self.result.value = cmp._repr_html_()
            self._worker.show("done", "#080")

        self._worker.start(lambda: compare(engines, prompts, max_tokens=self.max_tokens.value), done)

    def wait(self, timeout: float | None = None) -> ComparePanel:
        self._worker.wait(timeout)
        return self


class BenchPanel(w.VBox):
    """Concurrency levels and workload sizes; Run shows progress and a figure that grows as
    each level finishes; Stop keeps the finished levels."""

    def __init__(self, engine: Engine | Callable[[], Engine | None], **kwargs: Any):
        import plotly.graph_objects as go

        self._engine = engine
        self.levels = w.Text(value="1,2,4", description="users")
        self.requests = w.BoundedIntText(value=8, min=1, max=100000, description="requests/level")
        self.input_tokens = w.BoundedIntText(value=64, min=1, max=1 << 20, description="input tokens")
        self.output_tokens = w.BoundedIntText(value=32, min=1, max=1 << 20, description="output tokens")
        _labels_fit(self.levels, self.requests, self.input_tokens, self.output_tokens)
        self.run_button = w.Button(description="Run", button_style="primary")
        self.stop_button = w.Button(description="Stop", button_style="warning", disabled=True)
        self.progress = w.IntProgress(value=0, min=0, max=1)
        self.status = w.HTML("")
        self.figure = go.FigureWidget(layout={"title": "output tok/s vs users", "xaxis_title": "concurrent users",
                                              "yaxis_title": "output tokens/s", "height": 320})
        self.figure.add_scatter(x=[], y=[], mode="lines+markers", name="output tok/s")
        # a level cut short by Stop: hollow, apart from the line, with how much of it ran
        self.figure.add_scatter(x=[], y=[], mode="markers+text", name="partial (stopped)",
                                marker={"symbol": "circle-open", "size": 11}, textposition="top center")
        self.result = None
        self._stop = threading.Event()
        self._worker = _Worker(self.status)
        self.run_button.on_click(lambda _: self.run())
        self.stop_button.on_click(lambda _: self.stop())
        super().__init__([w.HBox([self.levels, self.requests]), w.HBox([self.input_tokens, self.output_tokens]),
                          w.HBox([self.run_button, self.stop_button, self.progress]), self.status, self.figure],
                         **kwargs)

    def _get_engine(self) -> Engine:
        engine = self._engine() if callable(self._engine) and not isinstance(self._engine, Engine) else self._engine
        if engine is None:
            raise LabkitError("No engine loaded: load one with a ModelLoader first.")
        return engine

    def run(self) -> None:
        from ..loadgen import bench, workloads

        try:
            levels = [int(x) for x in self.levels.value.split(",") if x.strip()]
        except ValueError:
            self._worker.show("users: write comma-separated integers, e.g. 1,2,4", "#c00")
            return
        if self._worker.busy:
            return
        self._stop.clear()
        self.progress.max, self.progress.value = max(1, len(levels)), 0
        for trace in self.figure.data:
            trace.x, trace.y = [], []
        self.stop_button.disabled, self.run_button.disabled = False, True

        def job():
            try:
                return bench(self._get_engine(), concurrency=levels, requests_per_level=self.requests.value,
                             workload=workloads.synthetic(self.input_tokens.value, self.output_tokens.value),
                             progress=False, on_level_done=self._draw, stop_event=self._stop)
            finally:
                self.stop_button.disabled, self.run_button.disabled = True, False

        def done(res) -> None:
            self.result = res
            partial = self._draw(res)
            if res.interrupted:
                self._worker.show(f"stopped: {self.progress.value} complete level(s) kept"
                                  + (f"; {partial} drawn hollow, as partial" if partial else ""), "#a60")
            else:
                self._worker.show("done", "#080")

        self._worker.show(f"running {levels}…")
        self._worker.start(job, done)

    def _draw(self, res) -> str:
        """Complete levels on the line; a level cut short (Stop, failed requests) as a hollow
        marker saying how much of it ran; levels never started not at all. Returns the
        partial levels' labels."""
        s = res.summary
        if s.empty or "output_tok_per_s" not in s:
            return ""
        started = s[s["completed"] > 0]
        whole = started[(started["unmeasured"] == 0) & (started["errors"] == 0)]
        cut = started[(started["unmeasured"] > 0) | (started["errors"] > 0)]
        self.figure.data[0].x, self.figure.data[0].y = list(whole["level"]), list(whole["output_tok_per_s"])
        label = [f"{c} of {c + u + e}" for c, u, e in zip(cut["completed"], cut["unmeasured"], cut["errors"],
                                                          strict=True)]
        self.figure.data[1].x, self.figure.data[1].y = list(cut["level"]), list(cut["output_tok_per_s"])
        self.figure.data[1].text = label
        self.progress.value = len(whole)
        return ", ".join(f"{lv} users ({t} requests)" for lv, t in zip(cut["level"], label, strict=True))

    def stop(self) -> None:
        self._stop.set()

    def wait(self, timeout: float | None = None) -> BenchPanel:
        self._worker.wait(timeout)
        return self


class MemoryMonitor(w.VBox):
    """A live memory chart (PSS of each engine's process tree) of the loaded engines."""

    def __init__(self, engines: dict[str, Engine] | None = None, interval_s: float = 1.0, **kwargs: Any):
        import plotly.graph_objects as go

        self._engines = engines if engines is not None else LOADED
        self.interval_s = interval_s
        self._samplers: dict[str, Any] = {}
        self.figure = go.FigureWidget(layout={"title": "memory (PSS)", "xaxis_title": "seconds",
                                              "yaxis_title": "GiB", "height": 300})
        # the state in words, not only in the button's shade of grey
        self.toggle = w.ToggleButton(description="Live: off (click to sample)", value=False,
                                     layout={"width": "220px"})
        self.toggle.observe(self._toggled, "value")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t = 0.0
        super().__init__([self.toggle, self.figure], **kwargs)

    def _toggled(self, change: dict) -> None:
        self.toggle.description = "Live: on (click to pause)" if change["new"] else "Live: off (click to sample)"
        if change["new"]:
            self.start()
        else:
            self.stop()

    def sample(self) -> dict[str, float]:
        """One reading per engine (GiB), appended to the chart."""
        from ..memory import MemorySampler

        readings = {}
        for label, engine in list(self._engines.items()):
            if engine.closed:
                self._samplers.pop(label, None)
                continue
            if label not in self._samplers:
                scope = engine.memory_scope()
                if scope is None:
                    continue
                # A chart someone is watching may spend more than a benchmark's sampler on
                # the page-table walks that PSS needs, but not a core: 5% of one.
                self._samplers[label] = MemorySampler(scope, self.interval_s, device=False, cpu_budget=0.05)
            pss = self._samplers[label].sample()["pss_bytes"]
            if pss == pss:  # NaN between the readings the budget allows
                readings[label] = pss / 1024**3
        names = [t.name for t in self.figure.data]
        for label, gib in readings.items():
            if label not in names:
                self.figure.add_scatter(x=[], y=[], mode="lines", name=label)
                names.append(label)
            trace = self.figure.data[names.index(label)]
            trace.x, trace.y = (*trace.x, self._t), (*trace.y, gib)
        self._t += self.interval_s
        return readings

    def start(self) -> None:
        self._stop.clear()

        def loop() -> None:
            while not self._stop.wait(self.interval_s):
                try:
                    self.sample()
                except Exception:
                    continue

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
