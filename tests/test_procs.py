"""labkit's child processes never outlive their owner: the reaper, the guard and their lifelines
(with trivial commands: the servers' own tests are in test_servers.py)."""

from __future__ import annotations

import multiprocessing
import sys
import time

import psutil
import pytest

from labkit import _procs

SLEEPER = [sys.executable, "-c", "import time; time.sleep(300)"]
# a process that ignores SIGTERM: only SIGKILL ends it
STUBBORN = [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print('ready', flush=True); time.sleep(300)"]


def _gone(p: psutil.Process, timeout: float = 30) -> bool:
    try:
        p.wait(timeout=timeout)
        return True
    except psutil.TimeoutExpired:
        return p.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _pid_in_log(mp: _procs.ManagedProcess) -> int:
    with open(mp.log_path) as log:  # the command prints it first thing
        while not (line := log.readline()).strip():
            mp.wait(0.05)
    return int(line)


def test_what_a_command_leaves_in_its_group_ends_when_it_exits(tmp_path):
    # sh starts a sleeper in the background and exits: the reaper, about to exit with it,
    # ends the sleeper (vLLM's engine core when its API server died), or it runs on unwatched
    mp = _procs.ManagedProcess(["sh", "-c", "sleep 300 & echo $!; exit 3"], tmp_path / "log")
    left = psutil.Process(_pid_in_log(mp))
    assert mp.wait(60) == 3
    assert _gone(left)


def test_a_ctrl_c_during_the_grace_period_kills_at_once_and_leaves_nothing(tmp_path, monkeypatch):
    mp = _procs.ManagedProcess(STUBBORN, tmp_path / "log", grace_s=60)
    with open(mp.log_path) as log:
        while "ready" not in log.read():
            mp.wait(0.05)
    (child,) = psutil.Process(mp.pid).children()

    def interrupted(pgid):
        raise KeyboardInterrupt  # the second Ctrl-C, while stop() waits out the grace period

    monkeypatch.setattr(_procs, "_group_alive", interrupted)
    with pytest.raises(KeyboardInterrupt):
        mp.stop()
    assert _gone(child)  # SIGKILLed, not left for the owner's exit
    mp.stop()  # and a second stop is a no-op


def test_a_forked_child_does_not_hold_a_guards_lifeline(tmp_path):
    guarded = psutil.Popen(SLEEPER)
    guard = _procs.OrphanGuard([guarded])
    # a library forking (vLLM's engine core on CUDA) copies this process's descriptors
    forked = multiprocessing.get_context("fork").Process(target=time.sleep, args=(300,), daemon=True)
    forked.start()
    try:
        guard.release(timeout_s=60)  # the guard sees EOF at once and ends the straggler
        assert _gone(guarded, timeout=0.5)
    finally:
        forked.kill()
        if guarded.is_running():
            guarded.kill()
