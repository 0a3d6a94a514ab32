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
    if told and code >= 0:  # it stopped cleanly because it was told to: say by what
        code = -told[0]
    if code < 0:  # end the same way, so the owner sees "killed by SIGKILL", not exit 247
        if -code not in (signal.SIGKILL, signal.SIGSTOP):  # those two keep their default
            signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    return code


if __name__ == "__main__":
    sys.exit(main())
