"""labkit: how do vLLM and llama.cpp compare on *this* machine, for *this* load?

The public API, in one place:

- :func:`load` an engine by name (``llama.cpp``, ``vllm``, ``llama-server``,
  ``vllm-server``, ``openai``); every engine has ``generate``, ``chat``, ``stream``,
  ``tokenize``, ``info`` and ``close``.
- :mod:`labkit.models`: model names, GGUF <-> Hugging Face conversion, quantized variants.
- :func:`bench` with :mod:`workloads`: throughput, latency and memory under 1..N users.
- :func:`capacity` with an :class:`SLO`: how many users (or req/s) an engine serves within it.
- :func:`sweep`: engines x settings x quantizations x levels on one Pareto :class:`Front`.
- :func:`fit`: will this model fit that machine, in which engine (metadata only).
- :func:`compare` and :func:`quant_ladder`: where outputs differ, across engines and GGUF types.
- :mod:`plots` (plotly), :mod:`labkit.widgets` (ipywidgets), :func:`record` and
  :mod:`labkit.runner` (papermill) for notebooks.

>>> import labkit
>>> with labkit.load("llama.cpp", model="smollm2-135m") as llm:
...     print(llm.generate(["Why do people use vLLM?"], max_tokens=32)[0].text)
"""

__version__ = "0.1.0"  # before the imports below: submodules record it in their results

import importlib
from typing import TYPE_CHECKING

from .errors import (
    EngineError,
    InvalidInput,
    LabkitError,
    ModelError,
    ModelNotFound,
    NotebookError,
    ServerError,
)

# Public names and the module each lives in. Imported on first use (PEP 562), so
# `import labkit` is quick and needs only the core dependencies: plotting, pandas-heavy
# results and engines load when a notebook or script first touches them.
_LAZY = {
    "BenchResult": "loadgen", "bench": "loadgen", "workloads": "loadgen",
    "SLO": "loadgen", "Capacity": "loadgen", "capacity": "loadgen", "Front": "loadgen",
    "sweep": "loadgen", "calibrate": "loadgen", "Calibration": "loadgen",
    "Comparison": "comparison", "QuantLadder": "comparison", "compare": "comparison",
    "quant_ladder": "comparison",
    "ENGINES": "engines", "Engine": "engines", "EngineInfo": "engines", "Generation": "engines",
    "SamplingParams": "engines", "Token": "engines", "load": "engines",
    "FitPlan": "planner", "fit": "planner",
    "record": "runner",
    "conformance": "apicheck", "batch_invariance": "apicheck",
}
_SUBMODULES = ("models", "plots", "widgets", "native", "synthetic", "arch", "planner", "comparison",
               "loadgen", "card", "memory", "apicheck", "runs")


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module 'labkit' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | set(_SUBMODULES))


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from . import models, plots
    from .apicheck import batch_invariance, conformance
    from .comparison import Comparison, QuantLadder, compare, quant_ladder
    from .engines import ENGINES, Engine, EngineInfo, Generation, SamplingParams, Token, load
    from .loadgen import (
        SLO,
        BenchResult,
        Calibration,
        Capacity,
        Front,
        bench,
        calibrate,
        capacity,
        sweep,
        workloads,
    )
    from .planner import FitPlan, fit
    from .runner import record

__all__ = [
    "SLO",
    "BenchResult",
    "Calibration",
    "Capacity",
    "Comparison",
    "ENGINES",
    "Engine",
    "Front",
    "EngineError",
    "FitPlan",
    "EngineInfo",
    "Generation",
    "InvalidInput",
    "LabkitError",
    "ModelError",
    "ModelNotFound",
    "NotebookError",
    "QuantLadder",
    "SamplingParams",
    "ServerError",
    "Token",
    "batch_invariance",
    "bench",
    "calibrate",
    "capacity",
    "compare",
    "conformance",
    "fit",
    "load",
    "models",
    "plots",
    "quant_ladder",
    "record",
    "sweep",
    "workloads",
]
