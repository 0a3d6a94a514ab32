"""BenchPanel: throughput and latency of one or more engines as the levels finish; Stop."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import ipywidgets as w
from plotly.colors import qualitative

from ..engines.base import Engine
from ..errors import LabkitError
from ..loadgen.result import first_error
from ._base import RunStopPanel, _labels_fit, engine_choices, next_prompt, prompts_sent

_LATENCY = (("ttft_p50_ms", "TTFT p50", "solid"), ("ttft_p99_ms", "TTFT p99", "dot"),
            ("tpot_p50_ms", "TPOT p50", "dash"), ("tpot_p99_ms", "TPOT p99", "dashdot"))


class BenchPanel(RunStopPanel):
    """Concurrency levels and workload sizes; Run benchmarks each selected engine in turn and
    draws throughput and latency (TTFT and TPOT, p50 and p99) as each level finishes, one
    colour per engine on shared figures; Stop keeps the finished levels.

    ``engine``: an engine, a ``{label: engine}`` dict, a function returning the engine to use
    (e.g. ``lambda: loader.engine``), or None for every engine loaded by a ModelLoader.
    """

    def __init__(self, engine: Engine | dict[str, Engine] | Callable[[], Engine | None] | None = None,
                 **kwargs: Any):
        import plotly.graph_objects as go

        self._engine = engine
        self.pick = w.SelectMultiple(description="engines", options=list(self._available()),
                                     layout={"height": "64px"})
        self.pick.value = tuple(self.pick.options)  # ready to run with what it was given
        self.levels = w.Text(value="1,2,4", description="users")
        self.requests = w.BoundedIntText(value=8, min=1, max=100000, description="requests/level")
        self.input_tokens = w.BoundedIntText(value=64, min=1, max=1 << 20, description="input tokens")
        self.output_tokens = w.BoundedIntText(value=32, min=1, max=1 << 20, description="output tokens")
        _labels_fit(self.pick, self.levels, self.requests, self.input_tokens, self.output_tokens)
        self._controls("Run")
        self.progress = w.IntProgress(value=0, min=0, max=1)
        self.figure = go.FigureWidget(layout={"title": "output tok/s vs users (hollow: partial level)",
                                              "xaxis_title": "concurrent users",
                                              "yaxis_title": "output tokens/s", "height": 320,
                                              "width": 560})
        self.latency = go.FigureWidget(layout={"title": "latency vs users", "xaxis_title": "concurrent users",
                                               "yaxis_title": "milliseconds (log)", "yaxis_type": "log",
                                               "height": 380, "width": 560,
                                               "legend": {"orientation": "h", "y": -0.3}})
        self.result = None
        self.results: dict[str, Any] = {}
        self._refused: dict[str, str] = {}  # engines that could not run at all, and why
        self._engine_stop = threading.Event()  # the running engine's stop (see _bench_all)
        self._complete: dict[str, int] = {}  # complete levels per engine: the progress bar
        controls = [self.levels, self.requests] if callable(engine) and not isinstance(engine, Engine) \
            else [self.pick, w.VBox([self.levels, self.requests])]
        super().__init__([w.HBox(controls), w.HBox([self.input_tokens, self.output_tokens]),
                          w.HBox([self.run_button, self.stop_button, self.progress]), self.status,
                          w.HBox([self.figure, self.latency])], **kwargs)

    def _available(self) -> dict[str, Engine]:
        if callable(self._engine) and not isinstance(self._engine, Engine):
            return {}
        return engine_choices(self._engine)

    def _selected(self) -> dict[str, Engine]:
        if callable(self._engine) and not isinstance(self._engine, Engine):
            engine = self._engine()
            if engine is None:
                raise LabkitError("No engine loaded: load one with a ModelLoader first.")
            return {engine.name: engine}
        return {k: self._available()[k] for k in self.pick.value if k in self._available()}

    def _levels(self) -> list[int] | None:
        try:
            levels = [int(x) for x in self.levels.value.split(",") if x.strip()]
        except ValueError:
            levels = []
        if not levels or min(levels) < 1:
            self._worker.show("users: write comma-separated positive integers, e.g. 1,2,4", "#c00")
            return None
        return levels

    def run(self) -> None:
        levels = self._levels()
        if levels is None or self._worker.busy:
            return
        try:
            engines = self._selected()
        except LabkitError as e:
            self._worker.show(str(e), "#c00")
            return
        if not engines:
            self._worker.show("Select at least one engine in the list (or load one with a ModelLoader).", "#c00")
            return
        self.results, self._complete, self._refused = {}, {}, {}
        self.progress.max, self.progress.value = max(1, len(levels) * len(engines)), 0
        for fig in (self.figure, self.latency):
            fig.data = ()
        self._start(f"running {levels} on {', '.join(engines)}…", lambda: self._bench_all(engines, levels),
                    self._done)

    def _bench_all(self, engines: dict[str, Engine], levels: list[int]) -> Any:
        from ..loadgen import bench, workloads

        # Prompts no earlier panel run sent these engines (each engine the same ones).
        first = next_prompt(engines.values())
        for label, engine in engines.items():
            # The engine's own stop: it dying stops its run, not the next engine's; Stop sets it
            # too (stop() sets the panel's, then this one: checked after, so never missed).
            self._engine_stop = threading.Event()
            if self._stop.is_set():
                break
            self.results[label] = None
            try:
                self.result = bench(engine, concurrency=levels, requests_per_level=self.requests.value,
                                    workload=workloads.synthetic(self.input_tokens.value, self.output_tokens.value),
                                    progress=False, stop_event=self._engine_stop, first_request=first,
                                    on_level_done=lambda res, label=label: self._draw(label, res))
            except LabkitError as e:  # dead or closed before it began: the others still run
                self._refused[label] = str(e)
                continue
            # (a level sends at least one request per user, and every number it took is spent)
            prompts_sent(engine, first + len(self.result.requests))
            self.results[label] = self.result
            self._draw(label, self.result)
        return self.result

    def stop(self) -> None:
        super().stop()
        self._engine_stop.set()

    def _done(self, res: Any) -> None:
        partial = [p for label, r in self.results.items() if r is not None for p in self._partial(label, r)]
        hollow = f"; {', '.join(partial)} drawn hollow, as partial" if partial else ""
        # An engine that died (or any end but completed or Stop) is named with why.
        failed = [f"{label}: {r.ended}" for label, r in self.results.items()
                  if r is not None and r.ended not in ("completed", "interrupted")]
        failed += [f"{label}: {why}" for label, why in self._refused.items()]
        failed += [f"{label}: {why}" for label, r in self.results.items() if (why := _served_nothing(r))]
        if failed:
            self._worker.show("; ".join(failed) + f" ({self.progress.value} complete level(s) kept{hollow})",
                              "#c00")
        elif res is not None and (res.interrupted or self._stop.is_set()):
            self._worker.show(f"stopped: {self.progress.value} complete level(s) kept{hollow}", "#a60")
        else:
            self._worker.show("done", "#080")

    @staticmethod
    def _split(res: Any) -> tuple[Any, Any]:
        """(whole levels, levels cut short by Stop or failed requests); unstarted ones in neither."""
        s = res.summary
        if s.empty or not (s["completed"] > 0).any():  # nothing completed: nothing to draw or list
            return s.iloc[0:0], s.iloc[0:0]  # (a level that served nothing has no latency columns)
        started = s[s["completed"] > 0]
        bad = (started["unmeasured"] > 0) | (started["errors"] > 0)
        return started[~bad], started[bad]

    def _partial(self, label: str, res: Any) -> list[str]:
        _, cut = self._split(res)
        if cut.empty:
            return []
        return [f"{label} at {lv} users ({c} of {c + u + e} requests)" for lv, c, u, e in
                zip(cut["level"], cut["completed"], cut["unmeasured"], cut["errors"], strict=True)]

    def _draw(self, label: str, res: Any) -> None:
        """One engine's traces: complete levels on the line, a level cut short as a hollow
        marker saying how much of it ran, levels never started not at all."""
        whole, cut = self._split(res)
        if whole.empty and cut.empty:
            return
        names = list(self.results)
        color = qualitative.Plotly[names.index(label) % len(qualitative.Plotly)] if label in names else None
        text = [f"{c} of {c + u + e}" for c, u, e in zip(cut["completed"], cut["unmeasured"], cut["errors"],
                                                         strict=True)]
        with self.figure.batch_update(), self.latency.batch_update():
            self._trace(self.figure, label, {"x": list(whole["level"]), "y": list(whole["output_tok_per_s"]),
                                             "mode": "lines+markers", "line": {"color": color}})
            self._trace(self.figure, f"{label} partial", {
                "x": list(cut["level"]), "y": list(cut["output_tok_per_s"]), "mode": "markers+text",
                "text": text, "textposition": "top center", "showlegend": not cut.empty,
                "marker": {"symbol": "circle-open", "size": 11, "color": color}})
            for col, name, dash in _LATENCY:
                self._trace(self.latency, f"{label} {name}", {
                    "x": list(whole["level"]), "y": list(whole[col]), "mode": "lines+markers",
                    "line": {"color": color, "dash": dash}})
        self._complete[label] = len(whole)
        self.progress.value = sum(self._complete.values())

    @staticmethod
    def _trace(fig: Any, name: str, props: dict[str, Any]) -> None:
        existing = [t for t in fig.data if t.name == name]
        if existing:
            existing[0].update(props)
        else:
            fig.add_scatter(name=name, **props)


def _served_nothing(res: Any) -> str:
    """Why a run that ended "completed" drew nothing: no request was served (each failed, the
    first error given), or none was measured; "" when something was."""
    if res is None or res.ended not in ("completed",) or res.requests.empty:
        return ""
    r = res.requests
    if (r["error"].isna() & r["e2e_s"].notna()).any():
        return ""
    errors = int(r["error"].notna().sum())
    if not errors:
        return f"no request of {len(r)} was measured ({r['finish_reason'].iloc[0]})"
    return f"all {errors} requests failed (first: {first_error(r)})"
