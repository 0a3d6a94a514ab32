"""labkit: how do vLLM and llama.cpp compare on *this* machine, for *this* load?

The public API, in one place:

- :func:`load` an engine by name (``llama.cpp``, ``vllm``, ``llama-server``,
  ``vllm-server``, ``openai``); every engine has ``generate``, ``chat``, ``stream``,
  ``tokenize``, ``info`` and ``close``.
- :mod:`labkit.models`: model names, GGUF <-> Hugging Face conversion, quantized variants.

>>> import labkit
>>> with labkit.load("llama.cpp", model="smollm2-135m") as llm:
...     print(llm.generate(["Why do people use vLLM?"], max_tokens=32)[0].text)
"""

from . import models
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

__version__ = "0.1.0"

__all__ = [
    "ENGINES",
    "Engine",
    "EngineError",
    "EngineInfo",
    "Generation",
    "InvalidInput",
    "LabkitError",
    "ModelError",
    "ModelNotFound",
    "NotebookError",
    "SamplingParams",
    "ServerError",
    "Token",
    "load",
    "models",
]
