"""MemoryMonitor: a live chart of each loaded engine's memory."""

from __future__ import annotations

import threading
import weakref
from typing import Any

import ipywidgets as w

from ..engines.base import Engine
from ._base import LOADED


class MemoryMonitor(w.VBox):
    """A live memory chart (PSS of each engine's process tree) of the loaded engines."""

    def __init__(self, engines: dict[str, Engine] | None = None, interval_s: float = 1.0, **kwargs: Any):
        import plotly.graph_objects as go

        self._engines = engines if engines is not None else LOADED
        self.interval_s = interval_s
        self._samplers: dict[str, tuple[Engine, Any]] = {}  # label: (the engine it samples, sampler)
        self.figure = go.FigureWidget(layout={"title": "memory (PSS)", "xaxis_title": "seconds",
                                              "yaxis_title": "GiB", "height": 300})
        # the state in words, not only in the button's shade of grey
        self.toggle = w.ToggleButton(description="Live: off (click to sample)", value=False,
                                     layout={"width": "220px"})
        self.toggle.observe(self._toggled, "value")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sampling = threading.Lock()  # a loop still finishing and a new one (or a manual call)
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
        with self._sampling:
            return self._sample()

    def _sample(self) -> dict[str, float]:
        from ..memory import MemorySampler

        readings = {}
        engines = dict(self._engines)
        for label in [k for k, (eng, _) in self._samplers.items() if engines.get(k) is not eng]:
            del self._samplers[label]  # unloaded, or reloaded under the same label: a new scope
        for label, engine in engines.items():
            if engine.closed:
                self._samplers.pop(label, None)
                continue
            if label not in self._samplers:
                scope = engine.memory_scope()
                if scope is None:
                    continue
                # A chart someone is watching may spend more than a benchmark's sampler on
                # the page-table walks that PSS needs, but not a core: 5% of one.
                self._samplers[label] = (engine, MemorySampler(scope, self.interval_s, device=False,
                                                               cpu_budget=0.05))
            pss = self._samplers[label][1].sample()["pss_bytes"]
            if pss == pss:  # NaN between the readings the budget allows
                readings[label] = pss / 1024**3
        names = [t.name for t in self.figure.data]
        for label, gib in readings.items():
            name = label + _whose(self._samplers[label][1].scope)
            if name not in names:
                self.figure.add_scatter(x=[], y=[], mode="lines+markers", name=name)
                names.append(name)
            trace = self.figure.data[names.index(name)]
            trace.x, trace.y = (*trace.x, self._t), (*trace.y, gib)
        self._t += self.interval_s
        return readings

    def start(self) -> None:
        self._stop.set()  # a loop still in a slow sample() from before sees its own stop
        stop = self._stop = threading.Event()  # and this run has one of its own: never two loops
        monitor, interval = weakref.ref(self), self.interval_s  # the loop keeps no monitor alive

        def loop() -> None:
            while not stop.wait(interval):
                mon = monitor()
                if mon is None:
                    return
                try:
                    mon.sample()
                except Exception:
                    pass
                del mon

        self._thread = threading.Thread(target=loop, name="labkit-memory-monitor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop sampling (the chart stays); the loop ends within one interval."""
        self._stop.set()

    def close(self) -> None:
        """Stop the sampling thread and close the widget (a cell run again makes a new
        monitor: the old one's thread must not go on sampling)."""
        self.stop()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=max(5.0, 2 * self.interval_s))
        super().close()

    def __del__(self) -> None:
        self._stop.set()  # collected: its loop stops at its next wake-up


def _whose(scope: Any) -> str:
    """What a line measures, where it is not one engine's own processes: an in-process engine
    is the kernel's growth since it loaded, which a second in-process engine shares."""
    if scope.self_baseline is None:
        return ""
    if not scope.roots:
        return " (in this kernel: its growth since load)"
    return " (its processes + this kernel's growth since load)"
