"""Shared fixtures: real engines on the bundled model, each loaded once per test session.

The expensive engines (vLLM in process, both servers) live in session fixtures so the whole
suite loads each at most once. Every fixture closes its engine, and ``no_leftover_processes``
checks at the end that nothing labkit started is still running.

``make test`` runs the suite in pytest-xdist workers, one per core (up to 4): each worker is
pinned to its own cores, and every test that uses the vLLM fixtures runs in one worker (see
:func:`pytest_collection_modifyitems`), so each vLLM starts once.
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


def pytest_configure(config):
    _refuse_a_pytest_that_loses_the_groups(config)
    _pin_to_this_workers_cores()


def _refuse_a_pytest_that_loses_the_groups(config) -> None:
    """xdist 3.8 marks a grouped test through its id, which pytest 9.2 no longer reads
    (pytest-xdist#1386): the groups would split silently and vLLM start in every worker."""
    opts = config.option
    if getattr(opts, "dist", None) != "loadgroup" or not getattr(opts, "numprocesses", None) \
            or os.environ.get("PYTEST_XDIST_WORKER"):
        return
    from importlib.metadata import version

    from packaging.version import Version

    if Version(version("pytest")) >= Version("9.2") and Version(version("pytest-xdist")) <= Version("3.8.0"):
        raise pytest.UsageError(f"pytest {version('pytest')} with pytest-xdist {version('pytest-xdist')} "
                                "ignores --dist loadgroup (pytest-xdist#1386): install the pytest that "
                                "environments/cpu.txt pins (make test does).")


def _pin_to_this_workers_cores() -> None:
    """Under pytest-xdist, give each worker its own share of the cores; what it starts
    (engines, servers, kernels) inherits it, and labkit sizes engine threads by the cores a
    process may use. Unpinned, two workers' llama.cpp threads would spin-wait on the same
    cores (measured here: 2.5 s a token instead of 10 ms)."""
    worker, count = os.environ.get("PYTEST_XDIST_WORKER", ""), int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if not worker.removeprefix("gw").isdigit() or count < 2 or not hasattr(os, "sched_setaffinity"):
        return
    # A worker that replaces a crashed one gets the next number (gw2 of 2): it takes the
    # place of the one it replaces, since i % count is free now.
    cores, i = sorted(os.sched_getaffinity(0)), int(worker.removeprefix("gw")) % count
    n = len(cores)
    share = cores[i * n // count:(i + 1) * n // count] if count <= n else [cores[i % n]]
    try:
        os.sched_setaffinity(0, share)  # this (main) thread: the tests and everything they start
    except OSError as e:  # make test checks first and runs one process where this fails
        import warnings

        warnings.warn(f"test worker {worker} could not be pinned to cores {share} ({e}): engines in "
                      "parallel workers will share cores and run far slower.", RuntimeWarning, stacklevel=1)


VLLM_FIXTURES = {"vllm_engine", "vllm_server", "vllm_owner"}
VLLM_NAMES = {"vllm", "vllm-server", "vllm_server"}


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups into the test ids
def pytest_collection_modifyitems(config, items):
    """Groups for pytest-xdist's ``--dist loadgroup``: every test that uses a vLLM fixture
    (directly, or by name through ``engine_by_name``/``request``) in one worker, so vLLM
    starts once per kind; the tests of a module with module-scoped fixtures together, so
    those are made once; everything else goes wherever a worker is free."""
    opts = config.option  # a worker's says dist "no" and loadgroup True; without xdist, neither
    if not (getattr(opts, "loadgroup", False) or getattr(opts, "dist", None) == "loadgroup"):
        return
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        params = set(map(str, getattr(getattr(item, "callspec", None), "params", {}).values()))
        by_name = names & {"engine_by_name", "request"} and (params & VLLM_NAMES or _names_a_vllm_fixture(item))
        fixturedefs = getattr(getattr(item, "_fixtureinfo", None), "name2fixturedefs", {})
        if names & VLLM_FIXTURES or by_name:
            item.add_marker(pytest.mark.xdist_group("vllm"))
        elif any(d.scope in ("module", "class") for defs in fixturedefs.values() for d in defs):
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))


def _names_a_vllm_fixture(item) -> bool:
    """A test that looks a vLLM fixture up by name (request.getfixturevalue("vllm_owner"))."""
    import inspect

    try:
        source = inspect.getsource(item.function)
    except (AttributeError, OSError, TypeError):
        return False
    return any(f'"{name}"' in source for name in VLLM_FIXTURES)


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
    with labkit.load("llama.cpp", model=MODEL) as engine:
        yield engine


@pytest.fixture(scope="session")
def vllm_engine():
    with labkit.load("vllm", model=MODEL) as engine:
        yield engine


@pytest.fixture(scope="session")
def llama_server():
    with labkit.load("llama-server", model=MODEL, parallel=4) as engine:
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
