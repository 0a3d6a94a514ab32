"""ComparePanel: the same prompts through several loaded engines, side by side."""

from __future__ import annotations

from typing import Any

import ipywidgets as w

from ..engines.base import Engine
from ._base import LOADED, _labels_fit, _Worker


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

        available = self._available()
        engines = {k: available[k] for k in self.pick.value if k in available}
        gone = [k for k in self.pick.value if k not in available]
        prompts = [p for p in self.prompts.value.splitlines() if p.strip()]
        if gone:  # unloaded since the list was made (the click handler would swallow a KeyError)
            self._worker.show(f"{', '.join(gone)} is no longer loaded: press Refresh engines and pick again.", "#c00")
            return
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
