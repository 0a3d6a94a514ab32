"""``python -m labkit._reaper FD -- CMD...``: run CMD, and end its process group with the owner.

FD is the read end of a pipe whose write end only the owner holds; EOF on it means the
owner is gone (closed on purpose or killed), so the command and everything it spawned is
stopped. See labkit/_procs.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading


def wait_for_owner_exit(fd: int) -> None:
    """Block until EOF on the lifeline: the owner closed its end or died."""
    while True:
        try:
            if not os.read(fd, 1024):
                return
        except OSError:
            return


def group_members() -> list:
    """The other processes of this process's group (psutil processes), wherever they were
    reparented."""
    import psutil

    me, group = os.getpid(), os.getpgrp()
    members = []
    for p in psutil.process_iter():
        try:
            if p.pid != me and os.getpgid(p.pid) == group:
                members.append(p)
        except (OSError, psutil.Error):  # gone, or not ours to ask about
            continue
    return members


def _end_the_rest() -> None:
    """End what the command left behind in this group (vLLM's engine core when its API server
    died, a worker a server forked): with the command gone, this reaper is about to exit,
    and nothing else would end them with their owner."""
    end(group_members(), grace_s=5)


def end(procs: list, grace_s: float) -> None:
    """SIGTERM ``procs`` (psutil processes), then SIGKILL those still running ``grace_s`` later."""
    import psutil

    for p in procs:
        try:
            p.terminate()
        except psutil.Error:
            pass
    for p in still_running(procs, timeout_s=grace_s):
        try:
            p.kill()
        except psutil.Error:
            pass


def still_running(procs: list, timeout_s: float) -> list:
    """Those of ``procs`` (psutil processes) still running after up to ``timeout_s``. A zombie
    counts as gone: one that is not our child stays a zombie as long as its parent (or, in
    a container, a PID 1 that reaps nothing) leaves it, and it holds nothing but its pid."""
    import time

    import psutil

    def running(p: psutil.Process) -> bool:
        try:
            return p.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    deadline = time.monotonic() + timeout_s
    alive = [p for p in procs if running(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)  # polling a process we do not own: there is nothing to wait on
        alive = [p for p in alive if running(p)]
    return alive


def main() -> int:
    fd = int(sys.argv[1])
    cmd = sys.argv[sys.argv.index("--") + 1 :]
    child = subprocess.Popen(cmd)

    def watch_owner() -> None:
        wait_for_owner_exit(fd)
        child.terminate()
        try:
            child.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pass
        os.killpg(os.getpgrp(), signal.SIGKILL)  # ourselves and anything the child left

    threading.Thread(target=watch_owner, daemon=True).start()
    # Told to stop (kill, pkill, a session's hangup), pass it on and end as the command does:
    # ending alone would orphan the command, with nothing left to end it with its owner.
    told: list[int] = []

    def pass_on(signum: int, _frame: object) -> None:
        told.append(signum)
        child.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, pass_on)
    code = child.wait()
    _end_the_rest()
    if told and code >= 0:  # it stopped cleanly because it was told to: say by what
        code = -told[0]
    if code < 0:  # end the same way, so the owner sees "killed by SIGKILL", not exit 247
        if -code not in (signal.SIGKILL, signal.SIGSTOP):  # those two keep their default
            signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    return code


if __name__ == "__main__":
    sys.exit(main())
