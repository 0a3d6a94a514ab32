"""Engines: one protocol (:class:`Engine`), one registry (:data:`ENGINES`), five implementations
and a mock.

========================  =================================================
``llama.cpp``             llama-cpp-python in process (llamacpp.py)
``vllm``                  ``vllm.LLM`` in process (vllm.py)
``llama-server``          managed llama.cpp HTTP server (servers.py)
``vllm-server``           managed vLLM OpenAI server (servers.py)
``openai``                any OpenAI-compatible URL (openai.py)
``mock-server``           labkit's loopback server with no model, to calibrate the client (mock.py)
========================  =================================================

Each declares its capabilities beyond the protocol (:mod:`.capabilities`): ``vllm`` Submits,
Scores and ReportsKv; ``llama.cpp`` Scores; the HTTP engines AsyncStreams and ReportsKv.
"""

from .base import (
    ENGINES,
    Engine,
    EngineInfo,
    Generation,
    SamplingParams,
    Token,
    engine_class,
    load,
)
from .capabilities import AsyncStreams, ReportsKv, Scores, Submits

__all__ = ["ENGINES", "AsyncStreams", "Engine", "EngineInfo", "Generation", "ReportsKv",
           "SamplingParams", "Scores", "Submits", "Token", "engine_class", "load"]
