"""The llama.cpp command-line tools (llama-server, llama-bench, llama-quantize, ...).

They are built from the llama.cpp tree vendored in the llama-cpp-python source
distribution of the *installed* version, so the binaries and the Python binding run exactly
the same llama.cpp. The build happens once per machine and version and is cached outside
the checkout; set ``CMAKE_ARGS`` (e.g. ``-DGGML_CUDA=on``) as for llama-cpp-python itself to
build the CUDA variant, which gets its own cache entry.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
from importlib import metadata
from pathlib import Path

from ._cache import build_atomically, cache_dir
from .errors import EngineError

TOOLS = ("llama-server", "llama-bench", "llama-quantize", "llama-perplexity")
_BASE_CMAKE = [
    "-DCMAKE_BUILD_TYPE=Release",
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_BUILD_SERVER=ON",
    "-DLLAMA_BUILD_TOOLS=ON",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DBUILD_SHARED_LIBS=OFF",
]


def llama_cpp_python_version() -> str:
    try:
        return metadata.version("llama-cpp-python")
    except metadata.PackageNotFoundError as e:
        raise EngineError(
            "llama-cpp-python is not installed. Run `make test` or `make demo` once, or "
            "`pip install -r environments/cpu.txt`."
        ) from e


def source_tree() -> Path:
    """The unpacked llama-cpp-python sdist of the installed version (downloaded once)."""
    version = llama_cpp_python_version()
    target = cache_dir("src") / f"llama-cpp-python-{version}"

    def fetch(tmp: Path) -> None:
        dl = cache_dir("src")
        sdists = list(dl.glob(f"llama_cpp_python-{version}.tar.gz"))
        if not sdists:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                   f"llama-cpp-python=={version}", "-d", str(dl), "-q"]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            sdists = list(dl.glob(f"llama_cpp_python-{version}.tar.gz"))
            if proc.returncode != 0 or not sdists:
                raise EngineError(
                    f"Could not download the llama-cpp-python {version} source distribution "
                    f"to build llama.cpp's tools:\n{proc.stderr[-2000:]}"
                )
        with tarfile.open(sdists[0]) as tar:
            tar.extractall(tmp, filter="data")
        (inner,) = [p for p in tmp.iterdir() if p.is_dir()]
        for child in inner.iterdir():
            child.rename(tmp / child.name)
        inner.rmdir()

    return build_atomically(target, fetch)


def _cmake_args() -> list[str]:
    extra = os.environ.get("CMAKE_ARGS", "").split()
    return _BASE_CMAKE + extra


def tools_dir() -> Path:
    """Folder holding the built tools; builds them first if this version has none yet."""
    version = llama_cpp_python_version()
    args = _cmake_args()
    key = hashlib.sha256(" ".join(args).encode()).hexdigest()[:8]
    target = cache_dir("llama.cpp") / f"{version}-{key}"

    def build(tmp: Path) -> None:
        if shutil.which("cmake") is None:
            raise EngineError("cmake is needed to build llama-server: `apt-get install cmake`.")
        src = source_tree() / "vendor" / "llama.cpp"
        work = tmp / "build"
        log = tmp / "build.log"
        jobs = str(os.cpu_count() or 2)
        with open(log, "w") as f:
            for cmd in (
                ["cmake", "-S", str(src), "-B", str(work), *args],
                ["cmake", "--build", str(work), "-j", jobs, "--target", *TOOLS],
            ):
                proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT)
                if proc.returncode != 0:
                    tail = log.read_text()[-3000:]
                    raise EngineError(f"Building llama.cpp tools failed ({' '.join(cmd[:3])}):\n{tail}")
        bin_dir = tmp / "bin"
        bin_dir.mkdir()
        for tool in TOOLS:
            (work / "bin" / tool).rename(bin_dir / tool)
        shutil.rmtree(work)  # the object files are 100s of MB and never reused

    return build_atomically(target, build) / "bin"


def tool(name: str) -> Path:
    """Path to one built tool, e.g. ``tool("llama-server")``."""
    if name not in TOOLS:
        raise EngineError(f"Unknown llama.cpp tool {name!r}; labkit builds {', '.join(TOOLS)}.")
    return tools_dir() / name


def convert_script() -> Path:
    """llama.cpp's ``convert_hf_to_gguf.py`` from the same source tree."""
    return source_tree() / "vendor" / "llama.cpp" / "convert_hf_to_gguf.py"


if __name__ == "__main__":  # `python -m labkit.llamacpp_tools` builds ahead of time
    print(tools_dir())
