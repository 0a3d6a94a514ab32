"""llama.cpp's CUDA backend compiled here, ahead of a GPU lease (``gpu_check.sh --prepare
--cuda-arch 90``), so that the lease builds only the CPU side.

Compiling the CUDA kernels took 222 s and 367 s of the GPU check's 480 s on two H100 leases
(16 cores), which left no room for its last rows. nvcc needs no GPU, so ``prepare`` compiles
them here, where time is cheaper than a lease's: as ggml's loadable backend module
(``GGML_BACKEND_DL``) for one architecture, from the same llama.cpp source the lease builds.
The GPU machine then builds the rest with ``GGML_BACKEND_DL=ON`` and no CUDA (about 40 s on
16 cores), puts the module beside its binaries, and checks that llama-server lists a CUDA
device; if it does not, the check compiles CUDA there as before and says why.

This machine's CUDA toolkit has nvcc and the runtime but neither cuBLAS nor the driver
library: cuBLAS comes from PyPI (``nvidia-cublas`` of nvcc's CUDA major), and the driver is a
stub with the real one's SONAME (the GPU machine's driver is what loads). Both, and the
module, are cached under labkit's cache, keyed by what they were built from.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from labkit._cache import build_atomically, cache_dir  # noqa: E402

MODULE = "libggml-cuda.so"
PACKED = MODULE + ".xz"  # stripped and xz-packed to travel: 64 -> 37 MiB for sm_90


def nvcc_version(nvcc: str | None = None) -> str | None:
    """``13.0.88`` from ``nvcc --version`` (None without nvcc)."""
    nvcc = nvcc or shutil.which("nvcc")
    if nvcc is None:
        return None
    out = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout
    m = re.search(r"V(\d+\.\d+\.\d+)", out)
    return m.group(1) if m else None


def toolkit_root(nvcc: str) -> Path | None:
    """The CUDA toolkit that ``nvcc`` belongs to (``nvcc`` may be a wrapper script elsewhere)."""
    for c in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), Path(nvcc).resolve().parent.parent,
              "/usr/local/cuda"):
        if c and (Path(c) / "bin" / "nvcc").exists() and (Path(c) / "include" / "cuda_runtime.h").exists():
            return Path(c).resolve()
    return None


def download_wheel(spec: str, dest: Path, glob: str) -> Path:
    """One binary wheel from the package index into ``dest`` (no dependencies)."""
    proc = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary",
                           ":all:", "-d", str(dest), spec], capture_output=True, text=True)
    found = list(dest.glob(glob))
    if proc.returncode != 0 or not found:
        raise SystemExit(f"could not download {spec}:\n{proc.stderr[-1500:]}")
    return found[0]


def _toolkit(source: Path, version: str) -> tuple[Path, str]:
    """A copy of the toolkit at ``source`` with cuBLAS and a driver stub added; (root, cuBLAS
    version)."""
    major = version.split(".")[0]
    entry = cache_dir("cuda-toolkit") / f"{version}-with-cublas"

    def make(tmp: Path) -> None:
        shutil.copytree(source, tmp / "cuda", symlinks=True)
        wheels = tmp / "wheels"
        whl = download_wheel(f"nvidia-cublas>={major},<{int(major) + 1}", wheels, "nvidia_cublas-*.whl")
        root = tmp / "cuda"
        with zipfile.ZipFile(whl) as z:
            for name in z.namelist():
                if f"/cu{major}/include/" in name or f"/cu{major}/lib/" in name:
                    dest = root / ("include" if "/include/" in name else "lib64") / Path(name).name
                    dest.write_bytes(z.read(name))
        for lib in ("libcublas", "libcublasLt"):
            (root / "lib64" / f"{lib}.so").unlink(missing_ok=True)
            (root / "lib64" / f"{lib}.so").symlink_to(f"{lib}.so.{major}")
        stubs = root / "lib64" / "stubs"
        stubs.mkdir(exist_ok=True)
        empty = tmp / "empty.c"
        empty.write_text("")
        subprocess.run(["cc", "-shared", "-fPIC", "-o", str(stubs / "libcuda.so"),
                        "-Wl,-soname,libcuda.so.1", str(empty)], check=True)
        (tmp / "cublas.txt").write_text(whl.name.split("-")[1])
        shutil.rmtree(wheels)

    build_atomically(entry, make)
    return entry / "cuda", (entry / "cublas.txt").read_text()


def build_module(arch: str, progress: Any = print) -> tuple[Path, dict[str, Any]]:
    """``libggml-cuda.so`` for compute capability ``arch`` (``"90"``), built once per source,
    nvcc, cuBLAS and arch; returns its path and what it was built from."""
    from labkit.native.llamacpp import _BASE_CMAKE, llama_cpp_python_version, source_tree

    nvcc = shutil.which("nvcc")
    source = toolkit_root(nvcc) if nvcc else None
    version = nvcc_version(str(source / "bin" / "nvcc")) if source else None
    if source is None or version is None:
        raise SystemExit("--cuda-arch needs a CUDA toolkit on this machine (nvcc and its headers; "
                         "set CUDA_HOME if it is not found).")
    root, cublas = _toolkit(source, version)
    args = [*_BASE_CMAKE, "-DGGML_BACKEND_DL=ON", "-DGGML_NATIVE=OFF", "-DGGML_CUDA=ON",
            f"-DCMAKE_CUDA_ARCHITECTURES={arch}", "-DGGML_CUDA_FA_ALL_QUANTS=OFF"]
    info = {"arch": arch, "nvcc": version, "cublas": cublas,
            "llama_cpp_python": llama_cpp_python_version(), "cmake_args": args}
    key = hashlib.sha256(json.dumps(info, sort_keys=True).encode()).hexdigest()[:10]
    entry = cache_dir("llama.cpp-cuda") / f"sm_{arch}-{key}"

    def make(tmp: Path) -> None:
        build = tmp / "build"
        env = {**os.environ, "PATH": f"{root / 'bin'}{os.pathsep}{os.environ['PATH']}"}
        cores = str(len(os.sched_getaffinity(0)))
        progress(f"compiling llama.cpp's CUDA kernels for sm_{arch} with nvcc {version} "
                 f"(about {4000 / int(cores) / 60:.0f} min on {cores} cores, once)")
        for cmd in (["cmake", "-S", str(source_tree()), "-B", str(build), "-G", "Ninja",
                     f"-DCUDAToolkit_ROOT={root}", f"-DCMAKE_CUDA_COMPILER={root / 'bin' / 'nvcc'}", *args],
                    ["nice", "-n", "10", "cmake", "--build", str(build), "-j", cores, "--target", "ggml-cuda"]):
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(f"{' '.join(cmd[:4])} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
        shutil.copy2(build / "bin" / MODULE, tmp / MODULE)
        (tmp / "built.json").write_text(json.dumps(info, indent=1))
        shutil.rmtree(build)

    build_atomically(entry, make)
    return entry / MODULE, info


def prepare(target: Path, archs: list[str]) -> list[dict[str, Any]]:
    """Put a module per arch under ``target/cuda/sm_<arch>/`` with what it was built from."""
    out = []
    for arch in (a.replace(".", "") for a in archs):  # "9.0" as nvidia-smi says it, or "90"
        module, info = build_module(arch)
        dest = target / "cuda" / f"sm_{arch}"
        dest.mkdir(parents=True, exist_ok=True)
        stripped = dest / MODULE
        shutil.copy2(module, stripped)
        subprocess.run(["strip", "--strip-unneeded", str(stripped)], check=True)
        with open(stripped, "rb") as f, lzma.open(dest / PACKED, "wb", preset=6) as packed:
            shutil.copyfileobj(f, packed, 1 << 20)
        info = {**info, "bytes": stripped.stat().st_size, "packed_bytes": (dest / PACKED).stat().st_size}
        stripped.unlink()
        (dest / "built.json").write_text(json.dumps(info, indent=1))
        out.append(info)
    return out


def prebuilt(prep: Path, compute_cap: str) -> tuple[Path, dict[str, Any]] | None:
    """The module prepared for this GPU's compute capability (``"9.0"``), if one travelled."""
    dest = prep / "cuda" / f"sm_{compute_cap.replace('.', '')}"
    if not (dest / PACKED).exists() or not (dest / "built.json").exists():
        return None
    return dest / PACKED, json.loads((dest / "built.json").read_text())


def unpack(packed: Path, dest: Path) -> None:
    with lzma.open(packed) as f, open(dest, "wb") as out:
        shutil.copyfileobj(f, out, 1 << 20)
    dest.chmod(0o755)


def cpu_side_args(flags: list[str]) -> list[str] | None:
    """CMAKE_ARGS for the lease's own build when the CUDA module travelled: ggml's backends as
    loadable modules and no CUDA. ``GGML_NATIVE`` cannot be used with loadable backends, so
    the instruction set is the best of labkit's explicit variants for this CPU (None where it
    has none: not x86)."""
    from labkit.native.llamacpp import variants

    explicit = next((v for v in variants(flags) if v.name != "native"), None)
    return ["-DGGML_BACKEND_DL=ON", *explicit.cmake] if explicit else None


def cuda_devices(bin_dir: Path) -> str:
    """What llama-server lists as devices (the CUDA module loaded if a CUDA device is listed)."""
    proc = subprocess.run([str(bin_dir / "llama-server"), "--list-devices"], capture_output=True,
                          text=True, timeout=120)
    return proc.stdout + proc.stderr
