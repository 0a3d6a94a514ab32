"""How a child process ended, in words: "killed by SIGILL" says more than "-4"."""

from __future__ import annotations

import signal


def signal_name(returncode: int | None) -> str | None:
    """The signal that ended a process (``subprocess``'s negative return codes), or None."""
    if returncode is None or returncode >= 0:
        return None
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"
