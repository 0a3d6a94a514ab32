"""ModelLoader: pick an engine, a model and its main options; Load and Unload."""

from __future__ import annotations

from typing import Any

import ipywidgets as w

from .. import models
from ..engines.base import ENGINES, Engine, load
from ._base import LOADED, _labels_fit, _Worker


class ModelLoader(w.VBox):
    """Pick an engine, a model and the engine's main options; Load / Unload. ``.engine`` is
    the loaded engine (or None)."""

    def __init__(self, engine: str | Engine = "llama.cpp", model: str = models.DEFAULT_MODEL, **kwargs: Any):
        attached = engine if isinstance(engine, Engine) else None
        if attached is not None:  # show an engine loaded in code, so the panel can unload it
            engine, model = attached.name, attached.info.model
        choices = [e.name for e in models.list_models() if e.path] or [model]
        # The engines Load can start from a model name; an attached one (an openai URL, a
        # mock server) is offered too, so the panel can show and unload it.
        names = [e for e in ENGINES if e not in ("openai", "mock-server")]
        names += [engine] if engine not in names else []
        self.engine_name = w.Dropdown(options=names, value=engine, description="engine")
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
        # A second loader of the same engine and model (other slots, another context) must not
        # take the first one's place: the other panels would quietly see only one of them.
        label, n = f"{engine.name}: {engine.info.model}", 2
        while label in LOADED and LOADED[label] is not engine and not LOADED[label].closed:
            label, n = f"{engine.name}: {engine.info.model} ({n})", n + 1  # (a closed one's label is free)
        LOADED[label] = engine
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
        """Load the engine the fields describe, off the kernel's thread; the one this panel
        had loaded is closed first, on the same worker."""
        if self._worker.busy:
            self._worker.show("busy: wait for the current load or unload", "#a60")
            return
        old = self._detach()
        name, kw = self.engine_name.value, self.options()
        self.load_button.disabled = True
        self.progress.bar_style, self.progress.value = "info", 0
        self._worker.show(f"loading {kw['model']} in {name}…")

        def job() -> Engine:
            try:
                if old is not None:
                    old.close()
                return load(name, **kw)
            finally:
                self.load_button.disabled = False

        self._worker.start(job, self._loaded)

    def unload(self) -> None:
        """Close the loaded engine off the kernel's thread (a server group takes seconds to
        stop); :meth:`wait` waits for it. The panels stop offering it at once."""
        if self._worker.busy:
            self._worker.show("busy: wait for the current load or unload", "#a60")
            return
        engine = self._detach()
        if engine is not None:
            self._worker.show(f"unloading {engine.name}…")
            self._worker.start(engine.close, lambda _: self._worker.show("unloaded"))

    def _detach(self) -> Engine | None:
        """Take the engine off this panel and off LOADED (whether or not its close then
        succeeds, no panel should use it again); returns it to be closed."""
        engine, self.engine = self.engine, None
        if engine is not None:
            for label, e in list(LOADED.items()):
                if e is engine:
                    del LOADED[label]
            self.progress.value = 0
            self.unload_button.disabled = True
        return engine

    def wait(self, timeout: float | None = None) -> ModelLoader:
        self._worker.wait(timeout)
        return self

    @property
    def error(self) -> str | None:
        return self._worker.error
