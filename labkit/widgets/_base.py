"""What every panel shares: the worker thread that keeps the UI responsive, the engines
loaded in this kernel, labels that are never cut, and figures redrawn in place."""

from __future__ import annotations

import html
import threading
import weakref
from collections.abc import Callable, Iterable
from typing import Any

import ipywidgets as w

from ..engines.base import Engine
from ..errors import LabkitError


def _labels_fit(*fields: w.DescriptionWidget) -> None:
    """ipywidgets cut a label at 80 px ("GPU util/l..."); let each take the width it needs."""
    for f in fields:
        f.style.description_width = "initial"

#: Engines loaded through any ModelLoader in this kernel, by label: what ComparePanel offers.
LOADED: dict[str, Engine] = {}

#: The next unsent prompt number per engine, over every panel run on it in this kernel: a run
#: sending the prompts an earlier one sent would find them in a server's prefix cache.
_NEXT_PROMPT: weakref.WeakKeyDictionary[Engine, int] = weakref.WeakKeyDictionary()


def next_prompt(engines: Iterable[Engine]) -> int:
    """The first prompt number none of ``engines`` has been sent by a panel yet."""
    return max((_NEXT_PROMPT.get(e, 0) for e in engines), default=0)


def prompts_sent(engine: Engine, upto: int) -> None:
    """Prompts up to ``upto`` (exclusive) have been sent to ``engine``."""
    _NEXT_PROMPT[engine] = max(_NEXT_PROMPT.get(engine, 0), upto)


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


def engine_choices(engines: Engine | dict[str, Engine] | None) -> dict[str, Engine]:
    """The engines a panel offers: the one or the dict it was given, else every engine
    loaded through a ModelLoader in this kernel."""
    if isinstance(engines, Engine):
        return {f"{engines.name}: {engines.info.model}": engines}
    return engines if engines is not None else LOADED


def show_figure(widget: Any, fig: Any) -> None:
    """Replace a FigureWidget's traces and layout with those of a plotly figure (one redraw)."""
    with widget.batch_update():
        widget.data = ()
        widget.add_traces(list(fig.data))
        widget.layout = fig.layout


class RunStopPanel(w.VBox):
    """A panel whose Run starts long work on a worker thread and whose Stop ends it with what
    was measured kept; the buttons say which is possible. Subclasses call :meth:`_controls`
    in ``__init__`` and :meth:`_start` from ``run()``."""

    def _controls(self, run_label: str) -> None:
        self.run_button = w.Button(description=run_label, button_style="primary")
        self.stop_button = w.Button(description="Stop", button_style="warning", disabled=True)
        self.status = w.HTML("")
        self._stop = threading.Event()
        self._worker = _Worker(self.status)
        self.run_button.on_click(lambda _: self.run())
        self.stop_button.on_click(lambda _: self.stop())

    def run(self) -> None:
        raise NotImplementedError

    def _start(self, message: str, job: Callable[[], Any], done: Callable[[Any], None]) -> None:
        """Run ``job`` off the UI thread (Run disabled, Stop enabled until it ends), then ``done``."""
        self._stop.clear()
        self.stop_button.disabled, self.run_button.disabled = False, True
        self._worker.show(message)

        def wrapped() -> Any:
            try:
                return job()
            finally:
                self.stop_button.disabled, self.run_button.disabled = True, False

        self._worker.start(wrapped, done)

    def stop(self) -> None:
        self._stop.set()

    def wait(self, timeout: float | None = None) -> RunStopPanel:
        self._worker.wait(timeout)
        return self
