"""What `make setup` would run (make -n, nothing executed): which llama-cpp-python version it
fetches, builds and installs, and whether another ENV_FILE makes .venv afresh."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def _dry_run(venv: Path, *overrides: str) -> str:
    return subprocess.run(["make", "-n", "setup", f"VENV={venv}", *overrides], cwd=ROOT, capture_output=True,
                          text=True, check=True, timeout=60).stdout


def test_every_step_uses_the_pinned_llama_cpp_python(tmp_path):
    env = tmp_path / "env.txt"
    env.write_text("torch\nllama-cpp-python==9.9.9  # raised\n")
    out = _dry_run(tmp_path / "venv", f"ENV_FILE={env}")
    assert "labkit.native.llamacpp --source --version 9.9.9" in out
    assert "labkit.native.llamacpp --version 9.9.9; build=" in out
    assert "/src/llama_cpp_python-9.9.9.tar.gz" in out


def test_another_env_file_makes_the_venv_afresh(tmp_path):
    venv = tmp_path / "venv"
    venv.mkdir()
    (venv / ".labkit-installed").write_text("environments/cpu.txt\n")  # newer than every prerequisite
    assert "making it afresh" not in _dry_run(venv)
    assert "pip install" not in _dry_run(venv, "ENV_FILE=./environments/cpu.txt")  # the same file
    cuda = _dry_run(venv, "ENV_FILE=environments/cuda.txt")
    assert "set up from environments/cpu.txt; making it afresh from environments/cuda.txt" in cuda
    assert "-r " in cuda and 'echo "environments/cuda.txt" >' in cuda


def test_a_stamp_from_before_it_named_its_file_counts_as_cpu(tmp_path):
    venv = tmp_path / "venv"
    venv.mkdir()
    (venv / ".labkit-installed").write_text("")
    assert "pip install" not in _dry_run(venv)
    assert "making it afresh from environments/cuda.txt" in _dry_run(venv, "ENV_FILE=environments/cuda.txt")


def test_a_setup_that_failed_half_way_still_says_what_is_in_the_venv(tmp_path):
    """A CUDA setup whose build failed leaves .venv with CUDA packages and no stamp: the next
    CPU setup must make it afresh, not install cpu.txt over it."""
    venv = tmp_path / "venv"
    venv.mkdir()
    (venv / ".labkit-env").write_text("environments/cuda.txt\n")  # noted as soon as .venv existed
    assert "set up from environments/cuda.txt; making it afresh from environments/cpu.txt" in _dry_run(venv)
    assert 'echo "environments/cpu.txt" > ' + str(venv) + "/.labkit-env" in _dry_run(venv)
