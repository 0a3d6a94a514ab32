"""Engine output goes to a log file, not into the user's stdout, notebook or ``--json`` stream.

Engines print from Python (vLLM's logger, torch warnings), from C (llama.cpp's load log) and
from child processes they start (vLLM's engine core). :func:`output_to` catches all three
while an engine starts: Python's ``sys.stdout``/``sys.stderr`` and file descriptors 1 and 2
point at the log, and children started meanwhile inherit it. The log stays open for the
process's life because loggers created meanwhile keep writing to it.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from .._cache import cache_dir
from .._procs import STARTING

_OPEN: dict[str, TextIO] = {}


def log_path(engine: str) -> Path:
    """One log file per engine kind and process (a second engine appends to the same one)."""
    return cache_dir("logs") / f"{engine}-{time.strftime('%Y%m%d')}-{os.getpid()}.log"


@contextlib.contextmanager
def output_to(path: Path) -> Iterator[TextIO]:
    """Send this process's and its new children's stdout and stderr to ``path`` meanwhile
    (one redirection at a time: see :data:`labkit._procs.STARTING`)."""
    with STARTING:
        yield from _redirected(path)


def _redirected(path: Path) -> Iterator[TextIO]:
    f = _OPEN.get(str(path))
    if f is None or f.closed:
        f = _OPEN[str(path)] = open(path, "a", buffering=1)  # noqa: SIM115 (kept open)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    try:
        saved = [os.dup(1), os.dup(2)]
    except OSError:  # no file descriptors to redirect (an embedded interpreter)
        saved = []
    try:
        for fd in (1, 2) if saved else ():
            os.dup2(f.fileno(), fd)
        with contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
            yield f
    finally:
        f.flush()
        for fd, old in zip((1, 2), saved, strict=False):
            os.dup2(old, fd)
            os.close(old)


def tail(path: str | Path, lines: int = 30) -> str:
    """The last ``lines`` lines of a log, for error messages."""
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
