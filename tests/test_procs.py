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


OWNER_KILLED_AT_ONCE = """
import multiprocessing, os, signal, sys, time
import psutil
from labkit import _procs

if __name__ == "__main__":
    guard = _procs.OrphanGuard.watching({c.pid for c in psutil.Process().children()})
    with _procs.own_process_groups(guard.group):
        spawned = multiprocessing.get_context("spawn").Process(target=time.sleep, args=(300,))
        spawned.start()
        forked = multiprocessing.get_context("fork").Process(target=time.sleep, args=(300,))
        forked.start()
    print(spawned.pid, forked.pid, guard.group, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)  # before the guard's next scan for new children
"""


def test_processes_started_in_a_guards_group_end_with_an_owner_killed_at_once(tmp_path):
    """vLLM's engine core joins its guard's process group as it starts, so an owner killed
    the moment after (a kernel killed while vLLM loads) leaves nothing, scan or no scan."""
    import os
    import subprocess

    script = tmp_path / "owner.py"
    script.write_text(OWNER_KILLED_AT_ONCE)
    with open(tmp_path / "out", "w") as out:  # a file, not a pipe: the children hold it too
        code = subprocess.run([sys.executable, str(script)], stdout=out, stderr=subprocess.STDOUT).returncode
    assert code == -9, (tmp_path / "out").read_text()
    spawned, forked, group = (int(x) for x in (tmp_path / "out").read_text().split())
    left = []
    for pid in (spawned, forked):
        try:
            p = psutil.Process(pid)
            if not _gone(p):
                left.append((pid, p.cmdline(), os.getpgid(pid), group))
        except psutil.NoSuchProcess:
            continue
    assert not left
