"""The GPU check's CUDA module compiled ahead (benchmarks/gpu_check_cuda.py): which lease uses
it, and how the lease builds the rest. The compile itself needs nvcc and ~35 min on 2 cores."""

from __future__ import annotations

import json
import lzma
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import gpu_check_cuda  # noqa: E402


def test_a_prepared_module_is_used_only_on_its_own_architecture(tmp_path):
    assert gpu_check_cuda.prebuilt(tmp_path, "9.0") is None  # nothing prepared
    d = tmp_path / "cuda" / "sm_90"
    d.mkdir(parents=True)
    with lzma.open(d / gpu_check_cuda.PACKED, "wb") as f:
        f.write(b"\x7fELF module")
    assert gpu_check_cuda.prebuilt(tmp_path, "9.0") is None  # no record of what it was built from
    (d / "built.json").write_text(json.dumps({"arch": "90", "nvcc": "13.0.88"}))
    path, info = gpu_check_cuda.prebuilt(tmp_path, "9.0")
    assert path == d / gpu_check_cuda.PACKED and info["nvcc"] == "13.0.88"
    gpu_check_cuda.unpack(path, tmp_path / gpu_check_cuda.MODULE)
    assert (tmp_path / gpu_check_cuda.MODULE).read_bytes() == b"\x7fELF module"
    assert gpu_check_cuda.prebuilt(tmp_path, "8.9") is None  # an L4 compiles its own


def test_the_lease_builds_loadable_backends_with_an_explicit_instruction_set():
    # GGML_NATIVE cannot be combined with GGML_BACKEND_DL (ggml's CMake refuses it).
    args = gpu_check_cuda.cpu_side_args(["avx", "avx2", "fma", "f16c", "avx512f", "avx512bw"])
    assert args[0] == "-DGGML_BACKEND_DL=ON" and "-DGGML_NATIVE=OFF" in args
    assert "-DGGML_AVX512=ON" in args and not any("CUDA" in a for a in args)
    assert "-DGGML_AVX512=OFF" in gpu_check_cuda.cpu_side_args(["avx", "avx2", "fma", "f16c"])


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="no CUDA toolkit on this machine")
def test_nvcc_version_is_read_from_its_banner():
    banner = subprocess.run(["nvcc", "--version"], capture_output=True, text=True).stdout
    version = gpu_check_cuda.nvcc_version()
    assert re.fullmatch(r"\d+\.\d+\.\d+", version) and f"V{version}" in banner


def test_without_a_usable_module_the_lease_says_why_first_and_compiles_only_with_time_left(tmp_path, monkeypatch):
    import gpu_check

    saved = []

    class Report:
        def step(self, name, **fields):
            saved.append((name, fields))

    monkeypatch.setattr(gpu_check, "_source", lambda prep, work: tmp_path)
    with pytest.raises(TimeoutError, match=r"120 s of the budget left, and compiling CUDA here takes about 300 s"):
        gpu_check._lease_build(tmp_path, tmp_path, {"compute_cap": "8.0"}, None, Report(), lambda: 120.0)
    # written before the compile would start: a run killed during it still says why
    assert saved == [("cuda_module", {"used": False, "why_not": "no module prepared for compute capability 8.0"})]
    assert "-DGGML_NATIVE=ON" in gpu_check._cuda_args({"compute_cap": "9.0"})  # one CPU variant, not four


def test_a_steps_timeout_is_cut_to_what_is_left_of_the_budget(monkeypatch):
    import time

    import gpu_check

    monkeypatch.setattr(gpu_check, "_DEADLINE", time.monotonic() + 100)
    assert 90 < gpu_check._timeout(300) <= 100 and gpu_check._timeout(30) == 30
    monkeypatch.setattr(gpu_check, "_DEADLINE", time.monotonic() - 5)
    assert gpu_check._timeout(300) == 20  # past the budget: a short last chance, never zero
