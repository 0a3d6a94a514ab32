"""``python -m labkit._guard FD PID:START...``: end processes that labkit did not start itself
(vLLM's engine core, spawned by vLLM inside the owner) when their owner dies.

FD is the read end of a pipe whose write end only the owner holds. EOF means the owner closed
it (the engine shut down: anything still alive is a straggler) or died (SIGKILL of a kernel,
SIGTERM of a script). Either way the listed processes and their descendants are stopped.
START is each process's creation time, so a recycled pid is never touched.
"""

from __future__ import annotations

import sys

import psutil

from labkit._reaper import still_running, wait_for_owner_exit


def main() -> int:
    fd = int(sys.argv[1])
    wanted = [tuple(arg.split(":")) for arg in sys.argv[2:]]
    wait_for_owner_exit(fd)
    victims: dict[int, psutil.Process] = {}
    for pid, start in wanted:
        try:
            p = psutil.Process(int(pid))
            if f"{p.create_time():.3f}" != start:
                continue
            # Descendants first, while the tree is still linked to its root.
            for q in [p, *p.children(recursive=True)]:
                victims.setdefault(q.pid, q)
        except psutil.Error:
            continue
    for p in victims.values():
        try:
            p.terminate()
        except psutil.Error:
            pass
    for p in still_running(list(victims.values()), timeout_s=10):
        try:
            p.kill()
        except psutil.Error:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
