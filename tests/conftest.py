"""Shared fixtures: real engines on the bundled model, each loaded once per test session.

The expensive engines (vLLM in process, both servers) live in session fixtures so the whole
suite loads each at most once. Every fixture closes its engine, and ``no_leftover_processes``
checks at the end that nothing labkit started is still running.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

import labkit
from labkit.apicheck import TOOL_ARGS

MODEL = "smollm2-135m"
PROMPTS = [
    "Why do people use vLLM?",
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
]
CHAT = [[{"role": "user", "content": "What is the tallest mountain in the world?"}],
        [{"role": "user", "content": "Give me three colours."}]]


def _descendants() -> set[int]:
    # multiprocessing's resource tracker is started once per Python process by the first
    # multiprocessing user (vLLM here) and exits with it; it is not an engine process.
    out = set()
    for p in psutil.Process(os.getpid()).children(recursive=True):
        try:
            if "resource_tracker" not in " ".join(p.cmdline()):
                out.add(p.pid)
        except psutil.Error:
            continue
    return out


@pytest.fixture(scope="session", autouse=True)
def no_leftover_processes():
    """After the whole session, no engine or server process started by the tests remains."""
    before = _descendants()
    yield
    left = [psutil.Process(p) for p in _descendants() - before if psutil.pid_exists(p)]
    gone, alive = psutil.wait_procs(left, timeout=30)
    alive = [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"processes outlived the test session: {[p.cmdline() for p in alive]}"


@pytest.fixture(scope="session")
def llama():
    with labkit.load("llama.cpp", model=MODEL, threads=2) as engine:
        yield engine


@pytest.fixture(scope="session")
def vllm_engine():
    with labkit.load("vllm", model=MODEL) as engine:
        yield engine


@pytest.fixture(scope="session")
def llama_server():
    with labkit.load("llama-server", model=MODEL, parallel=4, threads=2) as engine:
        yield engine


@pytest.fixture(scope="session")
def vllm_server():
    with labkit.load("vllm-server", model=MODEL, extra_args=TOOL_ARGS["vllm-server"]) as engine:
        yield engine


@dataclass
class Owner:
    """A process of its own that loaded an engine (see ``engine_owner.py``)."""

    proc: subprocess.Popen
    measured: int  # peak bytes of the memory column it was asked for
    pids: list[int]  # the engine's root processes


def start_owner(engine: str, column: str, log: Path, wait: bool) -> Owner:
    """Run ``engine_owner.py`` and read what it measured; with ``wait`` it stays loaded."""
    script = Path(__file__).with_name("engine_owner.py")
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, str(script), engine, column, *(["--wait"] if wait else [])],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True)
    found: dict[str, str] = {}
    while "PIDS" not in found:  # the engines log to stdout too
        line = proc.stdout.readline()
        if not line:
            proc.wait()
            raise AssertionError(f"the {engine} owner exited ({proc.returncode}) before loading: "
                                 + log.read_text()[-2000:])
        key, _, rest = line.strip().partition(" ")
        if key in ("MEASURED", "PIDS"):
            found[key] = rest
    return Owner(proc, json.loads(found["MEASURED"])["measured"], [int(p) for p in found["PIDS"].split()])


@pytest.fixture(scope="session")
def vllm_owner(tmp_path_factory):
    """One fresh process owning an in-process vLLM, shared by the two checks that need one
    to themselves (each vLLM start costs ~25 s here): its memory against the plan, and that
    its engine core dies when the owner is killed."""
    owner = start_owner("vllm", "pss_bytes", tmp_path_factory.mktemp("owner") / "vllm.log", wait=True)
    yield owner
    owner.proc.kill()
    owner.proc.wait()


@pytest.fixture
def engine_by_name(request):
    """Look up one of the session engines by registry name (for parametrized tests)."""
    fixtures = {"llama.cpp": "llama", "vllm": "vllm_engine", "llama-server": "llama_server",
                "vllm-server": "vllm_server"}
    return lambda name: request.getfixturevalue(fixtures[name])
