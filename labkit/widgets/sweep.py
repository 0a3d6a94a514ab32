"""SweepPanel: a grid of engine settings, measured point by point onto a live Pareto front."""

from __future__ import annotations

import ast
from typing import Any

import ipywidgets as w

from ..errors import InvalidInput, LabkitError
from ._base import RunStopPanel, _labels_fit, show_figure

_EXAMPLE = '{"llama-server": {"parallel": [2, 4]}, "llama.cpp": {}}'


class SweepPanel(RunStopPanel):
    """The grid as ``{engine: {argument: [values]}}``, the levels, an optional SLO; Run calls
    ``labkit.sweep`` and redraws the Pareto figure after every point (per-user against total
    tok/s, the front dotted, hollow where the SLO was missed). Stop ends the sweep after the
    level in progress; finished points stay. ``front`` holds the result."""

    def __init__(self, grid: str | dict | None = None, **kwargs: Any):
        import plotly.graph_objects as go

        self.grid = w.Textarea(value=grid if isinstance(grid, str) else repr(grid) if grid else _EXAMPLE,
                               description="grid", layout={"width": "640px", "height": "60px"})
        self.levels = w.Text(value="1,4", description="users")
        self.slo = w.Text(value="", description="SLO", placeholder="e.g. ttft_p99_ms=2000,tpot_p99_ms=100")
        self.requests = w.BoundedIntText(value=8, min=1, max=100000, description="requests/level")
        self.input_tokens = w.BoundedIntText(value=64, min=1, max=1 << 20, description="input tokens")
        self.output_tokens = w.BoundedIntText(value=32, min=1, max=1 << 20, description="output tokens")
        self.repeats = w.BoundedIntText(value=1, min=1, max=100, description="repeats")
        _labels_fit(self.grid, self.levels, self.slo, self.requests, self.input_tokens, self.output_tokens,
                    self.repeats)
        self._controls("Run sweep")
        self.progress = w.IntProgress(value=0, min=0, max=1)
        self.figure = go.FigureWidget(layout={"title": "Pareto front: filled as points finish", "height": 360})
        self.table = w.HTML("")
        self.front = None
        super().__init__([self.grid, w.HBox([self.levels, self.slo, self.repeats]),
                          w.HBox([self.requests, self.input_tokens, self.output_tokens]),
                          w.HBox([self.run_button, self.stop_button, self.progress]), self.status,
                          self.figure, self.table], **kwargs)

    def _inputs(self) -> tuple[int, dict[str, Any]]:
        """How many points, and the sweep's arguments, from the fields; InvalidInput says which field is wrong."""
        from ..loadgen import workloads
        from ..loadgen.slo import SLO
        from ..loadgen.sweep import grid_points

        try:
            grid = ast.literal_eval(self.grid.value)
        except (ValueError, SyntaxError):
            raise InvalidInput(f"grid: write a dict such as {_EXAMPLE}") from None
        try:
            levels = [int(x) for x in self.levels.value.split(",") if x.strip()]
        except ValueError:
            raise InvalidInput("users: write comma-separated positive integers, e.g. 1,4") from None
        n_points = len(grid_points(grid))  # every argument checked now, before the first engine loads
        return n_points, {"grid": grid, "concurrency": levels, "repeats": self.repeats.value,
                "slo": SLO.parse(self.slo.value) if self.slo.value.strip() else None,
                "requests_per_level": self.requests.value,
                "workload": workloads.synthetic(self.input_tokens.value, self.output_tokens.value)}

    def run(self) -> None:
        from ..loadgen.sweep import sweep

        if self._worker.busy:
            return
        try:
            n_points, args = self._inputs()
        except LabkitError as e:
            self._worker.show(str(e), "#c00")
            return
        self.front, self.table.value = None, ""
        self.figure.data = ()
        self.progress.max, self.progress.value = n_points, 0
        self._start(f"sweeping {self.progress.max} point(s)…",
                    lambda: sweep(args.pop("grid"), **args, progress=False, stop_event=self._stop,
                                  on_point_done=self._point_done), self._done)

    def _point_done(self, front: Any) -> None:
        self.progress.value = len(set(front.results) | set(front.failed))  # (a point that died is in both)
        self._show(front)
        self._worker.show(f"{self.progress.value} of {self.progress.max} point(s) measured…")

    def _show(self, front: Any) -> None:
        from .. import plots

        if not front.table.empty:
            show_figure(self.figure, plots.pareto(front))
        self.table.value = front._repr_html_()

    def _done(self, front: Any) -> None:
        self.front = front
        self._show(front)
        done = len(front.results)  # (a point whose engine died keeps the levels it finished)
        if front.stopped != "completed":
            self._worker.show(f"{front.stopped}: {done} of {self.progress.max} point(s) kept", "#a60")
        else:
            failed = f"; {len(front.failed)} failed (see the table)" if front.failed else ""
            on = int(front.table["on_front"].sum()) if "on_front" in front.table else 0
            self._worker.show(f"done: {done} point(s), {on} on the front{failed}", "#a60" if not done else "#080")

