"""Compile the bytecode of the modules a first run imports, once, beside the llama.cpp build.

``make`` installs the Python packages with ``pip --no-compile``: pip would otherwise compile
all ~27,000 files of the environment (about 60 CPU seconds, on the critical path of a first
setup on 2 cores, since it competes with the compile). Most are never imported. Importing
what labkit's engines and notebooks do import writes just those ``.pyc`` files (about a
fifth), so the first vLLM start does not have its three processes compile the same modules
at once. Anything missed is compiled by Python on first import, as usual.
"""

from __future__ import annotations

import importlib
import sys

MODULES = (
    # in-process vLLM: the caller, the engine core, the CPU worker and the bundled model's code
    "vllm", "vllm.entrypoints.llm", "vllm.v1.engine.core", "vllm.v1.engine.core_client",
    "vllm.v1.executor.multiproc_executor", "vllm.v1.worker.cpu_worker", "vllm.v1.worker.cpu_model_runner",
    "vllm.model_executor.models.llama", "vllm.v1.attention.backends.cpu_attn",
    # vLLM's OpenAI server
    "vllm.entrypoints.openai.api_server",
    # the conversion and its check
    "transformers", "transformers.models.llama.modeling_llama", "safetensors.torch", "gguf",
    # the notebook layer: runner, kernel, results, figures, panels
    "papermill", "nbclient", "nbconvert", "ipykernel.kernelapp", "pandas", "plotly.graph_objects",
    "plotly.subplots", "ipywidgets", "labkit.loadgen", "labkit.plots", "labkit.widgets", "labkit.verdict",
    "labkit.comparison",
)


def main() -> int:
    missed = []
    for name in MODULES:
        try:
            importlib.import_module(name)
        except Exception as e:  # a warm-up only: whatever fails here fails later with its own error
            missed.append(f"{name} ({type(e).__name__})")
    if missed:
        print("labkit: not pre-compiled: " + ", ".join(missed), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
