"""Engines: one protocol (:class:`Engine`), one registry (:data:`ENGINES`), five implementations.

========================  =================================================
``llama.cpp``             llama-cpp-python in process (llamacpp.py)
``vllm``                  ``vllm.LLM`` in process (vllm.py)
``llama-server``          managed llama.cpp HTTP server (servers.py)
``vllm-server``           managed vLLM OpenAI server (servers.py)
``openai``                any OpenAI-compatible URL (openai.py)
========================  =================================================
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

__all__ = ["ENGINES", "Engine", "EngineInfo", "Generation", "SamplingParams", "Token",
           "engine_class", "load"]
