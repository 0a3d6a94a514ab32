"""The few exception types labkit raises.

Every error says what was wrong and what to do about it. They form one short hierarchy so a
notebook can catch ``LabkitError`` and show the message instead of a traceback wall.
"""

from __future__ import annotations

__all__ = [
    "LabkitError",
    "InvalidInput",
    "ModelError",
    "ModelNotFound",
    "EngineError",
    "ServerError",
    "NotebookError",
]


class LabkitError(Exception):
    """Base class of every error labkit raises on purpose."""


class InvalidInput(LabkitError, ValueError):
    """An argument is out of range or unknown (engine name, max_tokens, concurrency, ...)."""


class ModelError(LabkitError):
    """A model file or directory exists but cannot be used (not GGUF, truncated, no config)."""


class ModelNotFound(ModelError, FileNotFoundError):
    """A model name or path does not resolve to anything on this machine."""


class EngineError(LabkitError):
    """An engine failed, was closed, or cannot be reached."""


class ServerError(EngineError):
    """A managed server failed to start or died; ``log_tail`` holds the end of its log."""

    def __init__(self, message: str, log_tail: str = "", log_path: str | None = None):
        self.log_tail = log_tail
        self.log_path = log_path
        full = message
        if log_path:
            full += f"\nFull log: {log_path}"
        if log_tail:
            full += "\n--- last lines of the server log ---\n" + log_tail
        super().__init__(full)


class NotebookError(LabkitError):
    """A notebook cell failed while labkit ran it headlessly."""

    def __init__(self, notebook: str, cell_index: int, ename: str, evalue: str, output_path: str, *,
                 first_line: str = "", signal: str | None = None, hint: str = ""):
        self.notebook = notebook
        self.cell_index = cell_index  # as the source notebook counts (0-based, no injected cell)
        self.ename = ename
        self.evalue = evalue
        self.output_path = output_path
        self.first_line = first_line
        self.signal = signal
        where = f"cell {cell_index}" + (f" (`{first_line[:80]}`)" if first_line else "")
        what = evalue if ename == "DeadKernelError" else f"raised {ename}: {evalue}"
        super().__init__(
            f"{notebook}: {where}: {what}\n" + (f"{hint}\n" if hint else "") +
            f"The executed notebook is at {output_path}"
        )
