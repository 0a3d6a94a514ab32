"""CapacityPanel: how many users an engine serves within an SLO, searched live; Stop."""

from __future__ import annotations

from typing import Any

import ipywidgets as w

from ..engines.base import Engine
from ..errors import LabkitError
from ._base import RunStopPanel, _labels_fit, engine_choices, next_prompt, prompts_sent, show_figure


class CapacityPanel(RunStopPanel):
    """SLO fields, an engine, the workload and a budget; Run searches (``labkit.capacity``)
    and redraws its figure after every level: each bounded percentile against the users, the
    SLO dashed, met levels filled, the answer starred. Stop ends the search and keeps every
    level measured. ``capacity`` holds the result.

    ``engines``: an engine, a ``{label: engine}`` dict, or None for every engine loaded by a
    ModelLoader.
    """

    def __init__(self, engines: Engine | dict[str, Engine] | None = None, **kwargs: Any):
        import plotly.graph_objects as go

        self._engines = engines
        options = list(engine_choices(engines))
        self.engine = w.Dropdown(options=options, value=options[0] if options else None, description="engine")
        self.ttft = w.BoundedFloatText(value=2000, min=0, max=1e7, description="TTFT p99 ≤ (ms)",
                                       tooltip="0: no bound on TTFT")
        self.tpot = w.BoundedFloatText(value=100, min=0, max=1e7, description="TPOT p99 ≤ (ms)",
                                       tooltip="0: no bound on TPOT")
        self.more = w.Text(value="", description="other bounds", placeholder="e.g. e2e_p90_ms=8000,itl_p99_ms=200")
        self.max_users = w.BoundedIntText(value=32, min=1, max=100000, description="max users")
        self.input_tokens = w.BoundedIntText(value=128, min=1, max=1 << 20, description="input tokens")
        self.output_tokens = w.BoundedIntText(value=64, min=1, max=1 << 20, description="output tokens")
        self.budget = w.BoundedIntText(value=600, min=1, max=1 << 24, description="budget (s)")
        _labels_fit(self.engine, self.ttft, self.tpot, self.more, self.max_users, self.input_tokens,
                    self.output_tokens, self.budget)
        self._controls("Find capacity")
        self.figure = go.FigureWidget(layout={"title": "capacity search: each level as it finishes",
                                              "height": 340})
        self.table = w.HTML("")
        self.capacity = None
        super().__init__([self.engine, w.HBox([self.ttft, self.tpot, self.more]),
                          w.HBox([self.max_users, self.input_tokens, self.output_tokens, self.budget]),
                          w.HBox([self.run_button, self.stop_button]), self.status, self.figure, self.table],
                         **kwargs)

    def slo(self) -> Any:
        """The SLO the fields describe (InvalidInput, shown in the status line, when they
        describe none or a wrong one)."""
        from ..loadgen.slo import SLO

        bounds = {name: field.value for name, field in (("ttft_p99_ms", self.ttft), ("tpot_p99_ms", self.tpot))
                  if field.value > 0}
        if self.more.value.strip():
            bounds |= SLO.parse(self.more.value).bounds
        return SLO(**bounds)

    def run(self) -> None:
        from ..loadgen import capacity, workloads

        if self._worker.busy:
            return
        engine = engine_choices(self._engines).get(self.engine.value)
        try:
            if engine is None:
                raise LabkitError("No engine to search: load one with a ModelLoader and pass it in.")
            slo = self.slo()
        except LabkitError as e:
            self._worker.show(str(e), "#c00")
            return
        self.capacity, self.table.value = None, ""
        workload = workloads.chat(input_tokens=self.input_tokens.value, output_tokens=self.output_tokens.value)
        # Prompts no earlier panel run sent this engine: its prefix cache would serve those.
        self._searched, self._first = engine, next_prompt([engine])
        self._start(f"searching {self.engine.value} within {slo.describe()}…",
                    lambda: capacity(engine, slo=slo, max_level=self.max_users.value, budget_s=self.budget.value,
                                     workload=workload, progress=False, stop_event=self._stop,
                                     first_request=self._first, on_level_done=self._level_done), self._done)

    def _note_sent(self, cap: Any) -> None:
        prompts_sent(self._searched, self._first + sum(len(r.requests) for r in cap.results))

    def _level_done(self, cap: Any) -> None:
        from .. import plots

        self._note_sent(cap)
        show_figure(self.figure, plots.capacity({self.engine.value: cap}))
        last = cap.levels.iloc[-1]
        verdict = {True: "met the SLO", False: "missed it", None: "was cut short"}[
            None if last["met"] is None or last["met"] != last["met"] else bool(last["met"])]
        self._worker.show(f"{len(cap.levels)} level(s) measured; {last['level']:g} users {verdict}…")

    def _done(self, cap: Any) -> None:
        from .. import plots

        self.capacity = cap
        self._note_sent(cap)
        show_figure(self.figure, plots.capacity({self.engine.value: cap}))
        self.table.value = cap._repr_html_()
        color = "#080" if cap.stopped != "interrupted" and cap.answer > 0 else "#a60"
        self._worker.show(cap.summary_line(), color)

