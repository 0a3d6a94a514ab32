"""``python -m labkit._guard FD PID:START...``: end processes that labkit did not start itself
(vLLM's engine core, spawned by vLLM inside the owner) when their owner dies.

FD is the read end of a pipe whose write end only the owner holds. EOF means the owner closed
it (the engine shut down: anything still alive is a straggler) or died (SIGKILL of a kernel,
SIGTERM of a script). Either way the listed processes and their descendants are stopped.
START is each process's creation time, so a recycled pid is never touched.

``python -m labkit._guard FD --watch OWNER:START KNOWN...`` guards a load still under way: it
notes every child of OWNER that appears (none of the KNOWN pids, which were there before),
until the owner writes the final list on the pipe (``PID:START ...`` and a newline). A kernel
killed while vLLM loads leaves no engine core behind either.

The guard leads a process group of its own, which the engine's processes join as they start
(labkit._procs.own_process_groups): on EOF every other member of that group is ended too,
including one that appeared between two scans or was reparented before the guard looked.
"""

from __future__ import annotations

import os
import select
import signal
import sys

import psutil

from labkit._reaper import end, group_members, wait_for_owner_exit


def same_process(p: psutil.Process, start: str) -> bool:
    """Whether ``p`` is the process that started at ``start`` (its create_time as the owner
    read it), not a new one under a recycled pid. Within a second, not to the millisecond:
    psutil adds the kernel's boot time (/proc/stat btime) to each process's start, and btime
    follows the wall clock, which NTP may step between the owner's reading and ours."""
    return abs(p.create_time() - float(start)) < 1.0


def engine_child(p: psutil.Process) -> bool:
    """Whether a child that appeared while an engine loaded can be the engine's: not
    multiprocessing's resource tracker (one per Python process, shared by all that it runs; it
    ignores SIGTERM) nor a guard; False for one gone meanwhile. (labkit.memory.new_children)"""
    try:
        cmd = " ".join(p.cmdline())
    except psutil.Error:
        return False
    return "resource_tracker" not in cmd and "labkit._guard" not in cmd


def _watch(fd: int, owner: str, known: set[int]) -> list[tuple[str, str]]:
    """Note the owner's new children until the final list arrives (returned) or EOF (what
    was noted is returned)."""
    pid, start = owner.split(":")
    seen: dict[int, tuple[str, str]] = {}
    buf = b""
    try:
        parent = psutil.Process(int(pid))
        if not same_process(parent, start):
            parent = None
    except psutil.Error:
        parent = None
    while True:
        if parent is not None:
            try:
                children = parent.children()
            except psutil.NoSuchProcess:
                parent, children = None, []  # the owner is gone: EOF follows
            except psutil.Error:
                children = []  # this time only
            for c in children:
                if c.pid in known or c.pid == os.getpid() or c.pid in seen:
                    continue
                try:  # (a short-lived child, a `lscpu` a library runs, may be gone already)
                    if engine_child(c):
                        seen[c.pid] = (str(c.pid), f"{c.create_time():.3f}")
                except psutil.Error:
                    continue
        ready, _, _ = select.select([fd], [], [], 0.2)  # a child appears within 0.2 s of this
        if not ready:
            continue
        try:
            data = os.read(fd, 4096)
        except OSError:
            data = b""
        if not data:
            return list(seen.values())
        buf += data
        if b"\n" in buf:  # the load finished: these, and only these, are the engine's
            line = buf.split(b"\n", 1)[0].decode()
            return [tuple(arg.split(":")) for arg in line.split()]


def main() -> int:
    # Out of the owner's group, but in its session: a terminal's hangup or Ctrl-C must not end
    # the guard before it has ended what it guards.
    for sig in (signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)
    fd = int(sys.argv[1])
    print("ready", flush=True)  # the owner waits for this before it begins a load
    sys.stdout.close()
    if sys.argv[2:3] == ["--watch"]:
        wanted = _watch(fd, sys.argv[3], {int(p) for p in sys.argv[4:]})
    else:
        wanted = [tuple(arg.split(":")) for arg in sys.argv[2:]]
    wait_for_owner_exit(fd)
    victims: dict[int, psutil.Process] = {}
    for pid, start in wanted:
        try:
            p = psutil.Process(int(pid))
            if not same_process(p, start):
                continue
            # Descendants first, while the tree is still linked to its root.
            for q in [p, *p.children(recursive=True)]:
                victims.setdefault(q.pid, q)
        except psutil.Error:
            continue
    for q in group_members():  # the engine's processes, which joined this guard's group
        if engine_child(q):  # (multiprocessing's shared resource tracker is no engine's)
            victims.setdefault(q.pid, q)
    end(list(victims.values()), grace_s=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
