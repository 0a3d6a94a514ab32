"""Child processes that never outlive their owner.

A server is started under a small reaper (``python -m labkit._reaper``) that leads its own
process group and holds the read end of a pipe whose write end only the owner holds. When
the owner exits in any way, including SIGKILL of a Jupyter kernel, the pipe closes and the
reaper takes the whole group down. ``close()``, ``atexit`` and garbage collection stop it
earlier in the ordinary case.
"""

from __future__ import annotations

import atexit
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil

_LIVE: weakref.WeakSet[ManagedProcess] = weakref.WeakSet()
_LOCK = threading.Lock()

#: One engine load at a time in this process (two loader panels in one kernel), with the
#: builds, conversions and servers it starts: an in-process start points the process's stdout
#: and stderr at its log, and vLLM's takes the children that appear while it loads for its
#: own, so anything spawned meanwhile would be counted in its memory and stopped with it.
STARTING = threading.RLock()


#: The write ends this process holds. A child forked without exec (vLLM's engine core on
#: CUDA, multiprocessing's "fork") would copy them, and a reaper or guard would then see its
#: owner alive for as long as that child lives: the child closes its copies at once.
_LIFELINES: set[int] = set()


def _lifeline() -> tuple[int, int]:
    read_end, write_end = os.pipe()
    _LIFELINES.add(write_end)
    return read_end, write_end


def _close_lifeline(fd: int) -> None:
    _LIFELINES.discard(fd)
    try:
        os.close(fd)
    except OSError:
        pass


def _close_inherited_lifelines() -> None:
    for fd in list(_LIFELINES):
        _close_lifeline(fd)


os.register_at_fork(after_in_child=_close_inherited_lifelines)


def _group_alive(pgid: int) -> bool:
    for p in psutil.process_iter(["status"]):
        try:
            if os.getpgid(p.pid) == pgid and p.info["status"] != psutil.STATUS_ZOMBIE:
                return True
        except (ProcessLookupError, psutil.Error):
            continue
    return False


def _kill_group(pgid: int, reaper: subprocess.Popen, grace_s: float) -> None:
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        reaper.poll()  # reap our own child so it does not linger as a zombie
        if not _group_alive(pgid):
            return
        time.sleep(0.1)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    reaper.wait(timeout=5)


class ManagedProcess:
    """A command run in its own process group, logged to a file, stopped with its children."""

    def __init__(self, cmd: list[str], log_path: Path, env: dict[str, str] | None = None,
                 grace_s: float = 15.0):
        self.cmd = cmd
        self.log_path = Path(log_path)
        self.grace_s = grace_s
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        read_end, self._lifeline = _lifeline()
        with open(self.log_path, "wb") as log, STARTING:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "labkit._reaper", str(read_end), "--", *cmd],
                pass_fds=(read_end,), start_new_session=True, stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, env=env,
            )
        os.close(read_end)
        self.pgid = self._proc.pid
        self._stopped = False
        self._owner = os.getpid()  # a forked child holds a copy of this object, not the process
        with _LOCK:
            _LIVE.add(self)

    @property
    def pid(self) -> int:
        return self._proc.pid

    def poll(self) -> int | None:
        """Exit code, or None while running."""
        return self._proc.poll()

    def wait(self, timeout_s: float) -> int | None:
        """Exit code once it has exited, or None if it still runs after ``timeout_s``."""
        try:
            return self._proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def process(self) -> psutil.Process | None:
        """The root of the process tree (the reaper); its children are the command's tree."""
        try:
            return psutil.Process(self._proc.pid)
        except psutil.NoSuchProcess:
            return None

    def stop(self) -> None:
        """Stop the whole process group: SIGTERM, then SIGKILL after the grace period."""
        if self._stopped or os.getpid() != self._owner:
            return
        try:
            _kill_group(self.pgid, self._proc, self.grace_s)
        except BaseException:  # a Ctrl-C during the grace period: no more grace, and no leak
            try:
                os.killpg(self.pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            raise
        finally:
            self._stopped = True
            _close_lifeline(self._lifeline)

    def __del__(self):
        try:
            self.stop()
        except Exception:
            pass


class OrphanGuard:
    """Stops ``processes`` (and their descendants) when this process dies or calls
    :meth:`release`: for children that a library spawned inside this process, such as vLLM's
    engine core, which would otherwise survive a killed kernel or script."""

    def __init__(self, processes: list[psutil.Process], *, watch_from: set[int] | None = None):
        read_end, self._lifeline = _lifeline()
        if watch_from is None:
            args = _ids(processes)
        else:  # a load under way: the owner's children that appear, until fix() names them
            args = ["--watch", *_ids([psutil.Process()]), *map(str, sorted(watch_from))]
        # A process group of its own, so a Ctrl-C or kill aimed at the owner's group leaves it
        # to act; in the owner's session, so the engine's processes can join that group
        # (own_process_groups): on EOF the guard finds them all there, even those already
        # reparented, with no scan period for a kill to fall into.
        self._proc = subprocess.Popen([sys.executable, "-m", "labkit._guard", str(read_end), *args],
                                      pass_fds=(read_end,), process_group=0,
                                      stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
        os.close(read_end)
        self._released = False
        self._owner = os.getpid()
        self._wait_ready()

    def _wait_ready(self, timeout_s: float = 60.0) -> None:
        """Until the guard watches (it says so on stdout): a load begun before would have a
        moment in which this process's death went unseen. A guard that died says nothing."""
        import select

        out = self._proc.stdout
        try:
            if select.select([out], [], [], timeout_s)[0]:
                out.readline()
        finally:
            out.close()

    @classmethod
    def watching(cls, before: set[int]) -> OrphanGuard:
        """A guard for a load under way: it ends every child of this process that appears
        (not in ``before``) if this process dies before :meth:`fix` names the engine's own."""
        return cls([], watch_from=before)

    def fix(self, processes: list[psutil.Process]) -> None:
        """The load finished: guard exactly ``processes`` from now on."""
        try:
            os.write(self._lifeline, (" ".join(_ids(processes)) + "\n").encode())
        except OSError:  # the watching guard is gone (killed): one for these instead
            _close_lifeline(self._lifeline)
            self.__init__(processes)

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def group(self) -> int:
        """The process group the guard leads, for the processes it must end to join."""
        return self._proc.pid

    def release(self, timeout_s: float = 30.0) -> None:
        """Call after shutting the processes down: the guard ends any straggler, then exits."""
        if self._released or os.getpid() != self._owner:
            return
        self._released = True
        _close_lifeline(self._lifeline)
        try:
            self._proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self._proc.kill()

    def __del__(self):
        try:
            self.release()
        except Exception:
            pass


def _ids(processes: list[psutil.Process]) -> list[str]:
    return [f"{p.pid}:{p.create_time():.3f}" for p in processes]


#: The process group that processes started inside own_process_groups() join (0: a new one
#: of their own), or None outside it. Read after a fork, and by the spawn wrapper through
#: GROUP_ENV.
_OWN_GROUP: int | None = None
GROUP_ENV = "LABKIT_PROCESS_GROUP"


_OWNER = os.getpid()  # (this process, after its own fork: see _own_group_after_fork)
OWNER_ENV = "LABKIT_PROCESS_OWNER"


def _own_group_after_fork() -> None:
    """In a child forked inside own_process_groups(): join the group, then exit at once if
    the owner died meanwhile (its guard may have ended the group before this joined it)."""
    global _OWN_GROUP
    if _OWN_GROUP is not None:
        try:
            os.setpgid(0, _OWN_GROUP)
        except OSError:  # that group is gone (its guard ended): one of its own at least
            os.setpgid(0, 0)
        if os.getppid() != _OWNER:
            os._exit(1)
        _OWN_GROUP = None  # its own forks (vLLM's workers) simply stay in the group with it


os.register_at_fork(after_in_child=_own_group_after_fork)


def _own_group_executable() -> str:
    """A Python that first leaves its parent's process group (for the one named in
    GROUP_ENV, else one of its own), then runs as asked (for multiprocessing's spawn, which
    execs ``spawn.get_executable()`` with its arguments)."""
    import hashlib

    from ._cache import cache_dir

    # sh, not a "#!python" line: a shebang cannot hold a space, and old kernels cut it at 128 bytes
    # The owner's pid comes along: a child that joins after its owner died (and its guard
    # ended the group) exits rather than run on, ended by no one.
    code = ("import os, sys\n"
            "g = int(os.environ.get('" + GROUP_ENV + "') or 0)\n"
            "owner = int(os.environ.get('" + OWNER_ENV + "') or 0)\n"
            "try:\n    os.setpgid(0, g)\nexcept OSError:\n    os.setpgid(0, 0)\n"
            "if owner and os.getppid() != owner:\n    sys.exit(1)\n"
            "os.execv(sys.executable, [sys.executable] + sys.argv[1:])")
    text = (f"#!/bin/sh\n# labkit: a process group of its own or its guard's, then Python as asked "
            f"(see labkit/_procs.py, own_process_groups)\nexec {shlex.quote(sys.executable)} -c "
            f"{shlex.quote(code)} \"$@\"\n")
    path = cache_dir("bin") / f"python-own-group-{hashlib.sha256(text.encode()).hexdigest()[:12]}"
    if not path.exists():  # executable before it is in place: another process may run it at once
        tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
        tmp.write_text(text)
        tmp.chmod(0o755)
        os.replace(tmp, path)
    if not os.access(path, os.X_OK):  # a cache on a noexec mount
        raise OSError(f"{path} cannot be run")
    return str(path)


@contextmanager
def own_process_groups(group: int = 0) -> Iterator[None]:
    """Processes started meanwhile by a library in this process (vLLM's engine core and its
    workers) leave this process's group: for ``group`` (an OrphanGuard's, which then ends
    them with their owner, however it dies, with no window), or 0 for one of their own each.
    A Ctrl-C in a terminal and Jupyter's "interrupt kernel" are sent to this process's whole
    group, and vLLM's engine core takes SIGINT as "shut down": the interrupt that stops a
    bench would abort its last level's requests and leave a dead engine. Spawned children
    start through a Python that calls setpgid first; forked ones call it after the fork."""
    import multiprocessing.resource_tracker as tracker
    import multiprocessing.spawn as spawn

    global _OWN_GROUP, _OWNER
    # multiprocessing's resource tracker, shared by everything this process runs, starts with
    # spawn's executable on first use: started now, it stays out of the engine's group.
    tracker.ensure_running()
    before = spawn.get_executable()
    env_before = {k: os.environ.get(k) for k in (GROUP_ENV, OWNER_ENV)}
    try:
        spawn.set_executable(_own_group_executable())
    except OSError as e:  # spawned children stay in this group: a Ctrl-C reaches them
        import warnings

        warnings.warn(f"labkit could not write its process-group wrapper ({e}): a Ctrl-C or a "
                      "kernel interrupt will reach vLLM's engine core and stop it.", stacklevel=3)
    _OWN_GROUP, _OWNER = group, os.getpid()
    os.environ.update({GROUP_ENV: str(group), OWNER_ENV: str(_OWNER)})
    try:
        yield
    finally:
        _OWN_GROUP = None
        for k, v in env_before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        spawn.set_executable(before)


@atexit.register
def _stop_all() -> None:
    with _LOCK:
        live = list(_LIVE)
    for p in live:
        p.stop()
