"""labkit: how do vLLM and llama.cpp compare on *this* machine, for *this* load?

The public API, in one place:

- :func:`load` an engine by name (``llama.cpp``, ``vllm``, ``llama-server``,
  ``vllm-server``, ``openai``); every engine has ``generate``, ``chat``, ``stream``,
  ``tokenize``, ``info`` and ``close``.
- :mod:`labkit.models`: model names, GGUF <-> Hugging Face conversion, quantized variants.
- :func:`bench` with :mod:`workloads`: throughput, latency and memory under 1..N users.
- :func:`fit`: will this model fit that machine, in which engine (metadata only).
- :func:`compare` and :func:`quant_ladder`: where outputs differ, across engines and GGUF types.
- :mod:`plots` (plotly), :mod:`labkit.widgets` (ipywidgets), :func:`record` and
  :mod:`labkit.runner` (papermill) for notebooks.

>>> import labkit
>>> with labkit.load("llama.cpp", model="smollm2-135m") as llm:
...     print(llm.generate(["Why do people use vLLM?"], max_tokens=32)[0].text)
"""

__version__ = "0.1.0"  # before the imports below: submodules record it in their results

from . import models, plots
from .bench import BenchResult, bench, workloads
from .compare import Comparison, QuantLadder, compare, quant_ladder
from .engines import ENGINES, Engine, EngineInfo, Generation, SamplingParams, Token, load
from .errors import (
    EngineError,
    InvalidInput,
    LabkitError,
    ModelError,
    ModelNotFound,
    NotebookError,
    ServerError,
)
from .fit import FitPlan, fit
from .runner import record

__all__ = [
    "BenchResult",
    "Comparison",
    "ENGINES",
    "Engine",
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
    "bench",
    "compare",
    "fit",
    "load",
    "models",
    "plots",
    "quant_ladder",
    "record",
    "workloads",
]
