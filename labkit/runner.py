"""Run notebooks headlessly with papermill, and read back what they recorded.

A notebook records a result with :func:`record` (a number, a dict, or a DataFrame); it
becomes an output with labkit's MIME type in the executed notebook, so tests and reports
read numbers back with :func:`results` instead of scraping text. :func:`run` executes a
notebook on the project's kernel with the notebook's folder as working directory and writes a
run folder: the executed notebook, an offline HTML report (:mod:`labkit.report`),
``results.json`` and the environment manifest. A failing cell raises :class:`~labkit.errors.NotebookError` naming it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd

from ._exits import signal_name
from .environment import environment
from .errors import InvalidInput, NotebookError

MIME = "application/vnd.labkit.record+json"
KERNEL = "labkit"
#: the run folder of the notebook being executed, for the notebook's own saved results
RUN_DIR_VARIABLE = "LABKIT_RUN_DIR"


def _jsonable(value: Any) -> Any:
    if isinstance(value, pd.DataFrame):
        return {"__frame__": json.loads(value.to_json(orient="split", default_handler=str))}
    if hasattr(value, "to_frame") and not isinstance(value, pd.Series):
        return _jsonable(value.to_frame())
    if isinstance(value, pd.Series):
        return _jsonable(value.to_frame())
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def _restore(value: Any) -> Any:
    if isinstance(value, dict) and "__frame__" in value:
        f = value["__frame__"]
        return pd.DataFrame(f["data"], index=f["index"], columns=f["columns"])
    if isinstance(value, dict):
        return {k: _restore(v) for k, v in value.items()}
    return value


def record(name: str, value: Any) -> None:
    """Record a named result in the running notebook (shown as a small line of text)."""
    from IPython.display import display

    payload = {"name": name, "value": _jsonable(value)}
    shown = f"recorded {name!r}" + (f": {value}" if isinstance(value, int | float | str) else "")
    display({MIME: payload, "text/plain": shown}, raw=True)


def results(path: str | Path) -> dict[str, Any]:
    """Every value a notebook recorded, by name (the last one wins), from an executed .ipynb
    or the run folder that :func:`run` returned."""
    path = Path(path)
    if path.is_dir():
        found = sorted(path.glob("*.ipynb"))
        if len(found) != 1:
            raise InvalidInput(f"{path} holds {len(found)} notebooks, not one executed notebook: "
                               "pass the .ipynb itself.")
        path = found[0]
    if not path.exists():
        raise InvalidInput(f"{path} does not exist: pass an executed notebook or its run folder.")
    nb = json.loads(path.read_text())
    out: dict[str, Any] = {}
    for cell in nb.get("cells", []):
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if MIME in data:
                out[data[MIME]["name"]] = _restore(data[MIME]["value"])
    return out


def run(notebook: str | Path, parameters: dict[str, Any] | None = None, out: str | Path | None = None,
        kernel: str = KERNEL, timeout_s: int = 1800) -> Path:
    """Execute ``notebook`` and return its run folder (executed .ipynb, .html, results.json)."""
    import papermill as pm

    nb_path = _checked_notebook(notebook, parameters, kernel)
    folder = Path(out) if out else Path("runs") / f"{nb_path.stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    folder = _run_folder(folder.resolve())
    executed = folder / nb_path.name
    from . import __version__

    manifest = {"notebook": str(nb_path), "parameters": _masked(parameters or {}), "labkit_version": __version__,
                "environment": environment(), "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str))
    deaths: list[int] = []
    previous = os.environ.get(RUN_DIR_VARIABLE)
    os.environ[RUN_DIR_VARIABLE] = str(folder)  # the kernel inherits it: labkit.runs.folder()
    # papermill saves the notebook as it runs, injected parameters and all: it runs in a
    # private folder and reaches the run folder only with its secrets masked.
    running = Path(tempfile.mkdtemp(prefix="labkit-run-")) / nb_path.name
    try:
        pm.execute_notebook(str(nb_path), str(running), parameters=parameters or {}, kernel_name=kernel,
                            language=_language(_read_notebook(nb_path)), cwd=str(nb_path.parent), progress_bar=False, execution_timeout=timeout_s,
                            log_output=False, kernel_manager_class=_kernel_manager(deaths))
    except Exception as e:
        _settle(running, executed, parameters or {})
        failure = _failure(e, nb_path, executed, deaths, timeout_s)
        if failure is None:
            raise
        _write_report(executed, folder, nb_path.stem)  # the report shows the error too
        raise failure from None
    finally:
        if previous is None:
            os.environ.pop(RUN_DIR_VARIABLE, None)
        else:
            os.environ[RUN_DIR_VARIABLE] = previous
        _settle(running, executed, parameters or {})
    _slim_widget_state(executed)
    _write_report(executed, folder, nb_path.stem)
    return folder


def _failure(e: Exception, nb_path: Path, executed: Path, deaths: list[int], timeout_s: int) -> NotebookError | None:
    """The NotebookError that says which cell failed and how, or None for anything else."""
    import papermill as pm
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    if isinstance(e, pm.PapermillExecutionError):
        index, first = _source_cell(executed, e.cell_index)
        return NotebookError(nb_path.name, index, e.ename, e.evalue, str(executed), first_line=first)
    if isinstance(e, CellTimeoutError):  # papermill passes it on as nbclient raised it
        index, first = _source_cell(executed, None)
        return NotebookError(nb_path.name, index, "CellTimeoutError",
                             f"it ran past the cell timeout of {timeout_s} s and was interrupted", str(executed),
                             first_line=first,
                             hint="Give cells more time (`labkit run --timeout SECONDS`, run(..., timeout_s=)) "
                                  "or a smaller workload through the parameters.")
    if isinstance(e, DeadKernelError):
        index, first = _source_cell(executed, None)
        code = deaths[-1] if deaths else None
        return NotebookError(nb_path.name, index, "DeadKernelError", _death(code), str(executed),
                             first_line=first, signal=signal_name(code),
                             hint="Run `labkit doctor`: it checks this machine's native builds "
                                  "(llama.cpp, torch) in child processes and names the one "
                                  "that crashes.")
    return None


def _checked_notebook(notebook: str | Path, parameters: dict[str, Any] | None, kernel: str = KERNEL) -> Path:
    """The notebook's path, once it is a notebook, its kernel is installed, and it has every
    parameter given."""
    nb_path = Path(notebook).resolve()
    known = _parameters(_read_notebook(nb_path), kernel)
    unknown = sorted(set(parameters or {}) - set(known))
    if unknown:
        listing = ", ".join(f"{k} (default {v.get('default')})" for k, v in known.items()) or "none"
        raise InvalidInput(f"{nb_path.name} has no parameter {', '.join(unknown)}. Its parameters "
                           f"(the cell tagged 'parameters'): {listing}.")
    _check_kernel(kernel)
    return nb_path


def _read_notebook(nb_path: Path) -> Any:
    # nbformat.read, plus the metadata papermill expects (cell tags) where a notebook lacks it
    from papermill.iorw import load_notebook_node

    if not nb_path.exists():
        raise InvalidInput(f"No notebook at {nb_path}.")
    if nb_path.is_dir():
        raise InvalidInput(f"{nb_path} is a folder: give the path of a .ipynb file.")
    try:
        return load_notebook_node(str(nb_path))
    except (ValueError, UnicodeDecodeError, KeyError, AttributeError) as e:  # NotJSONError is a ValueError
        detail = " ".join(str(e).split())[:120]
        raise InvalidInput(f"{nb_path} is not a Jupyter notebook ({type(e).__name__}: {detail}).") from None


def _parameters(nb: Any, kernel: str) -> dict[str, dict[str, Any]]:
    """The notebook's parameters as papermill reads them, for the kernel labkit runs it on:
    papermill's inspect_notebook asks the notebook's own kernelspec, which a notebook written
    by a script may lack ("No kernel name found")."""
    from papermill.translators import papermill_translators
    from papermill.utils import find_first_tagged_cell_index

    index = find_first_tagged_cell_index(nb, "parameters")
    if index < 0:
        return {}
    language = _language(nb)
    translator = papermill_translators.find_translator(kernel, language)
    return {p.name: p._asdict() for p in translator.inspect(nb.cells[index])}


def _language(nb: Any) -> str:
    """The notebook's language where it says, else Python (labkit's kernel)."""
    meta = nb.get("metadata", {})
    return meta.get("kernelspec", {}).get("language") or meta.get("language_info", {}).get("name") or "python"


def _check_kernel(kernel: str) -> None:
    """Refuse a kernel that is not installed before a run folder is made for it."""
    import sys

    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec(kernel)
    except NoSuchKernel:
        how = (f"run `{sys.executable} -m ipykernel install --sys-prefix --name {KERNEL}` (make test and "
               "make demo do it)") if kernel == KERNEL else "install it, or name one `jupyter kernelspec list` shows"
        raise InvalidInput(f"No Jupyter kernel named {kernel!r} is installed: {how}.") from None


def _run_folder(folder: Path) -> Path:
    """``folder``, made if needed; a file in its way is bad input, not a traceback."""
    for path in (folder, *folder.parents):
        if path.exists():
            if not path.is_dir():
                raise InvalidInput(f"The run folder {folder} cannot be made: {path} is a file. Give "
                                   "another folder (out=, `labkit run --out`).")
            break
    folder.mkdir(parents=True, exist_ok=True)
    return folder


# Parameter names whose values are secrets, never written to a run folder: API_KEY,
# ANTHROPIC_KEY, HF_TOKEN, HUGGING_FACE_HUB_TOKEN, PASSWORD; not MAX_TOKENS (a count) nor
# API_KEY_ENV (the name of a variable).
_SECRET = re.compile(r"(^|_)(api_?key|key|secret|password|passwd|token|bearer|credentials?)$", re.IGNORECASE)


def _masked(parameters: dict[str, Any]) -> dict[str, Any]:
    return {k: "***" if _SECRET.search(k) and v not in (None, "") else v for k, v in parameters.items()}


def _settle(running: Path, executed: Path, parameters: dict[str, Any]) -> None:
    """Move the executed notebook from its private folder into the run folder, masked."""
    if running.exists():
        _mask_injected(running, parameters)
        shutil.move(str(running), str(executed))
    shutil.rmtree(running.parent, ignore_errors=True)


def _mask_injected(executed: Path, parameters: dict[str, Any]) -> None:
    """Replace secret parameters' values in the cell papermill injected into the executed
    notebook (the kernel had them; the saved copy and its report do not)."""
    secret = [k for k, v in _masked(parameters).items() if v == "***"]
    if not secret or not executed.exists():
        return
    import nbformat

    nb = nbformat.read(str(executed), as_version=4)
    recorded = nb.metadata.get("papermill", {}).get("parameters")  # papermill keeps a copy there too
    if isinstance(recorded, dict):
        recorded.update({k: "***" for k in secret if k in recorded})
    for cell in nb.cells:
        if "injected-parameters" in cell.get("metadata", {}).get("tags", []):
            cell.source = "\n".join(f'{line.split("=", 1)[0].rstrip()} = "***"  # masked by labkit'
                                    if line.split("=", 1)[0].strip() in secret else line
                                    for line in cell.source.splitlines())
    nbformat.write(nb, str(executed))


def _slim_widget_state(executed: Path) -> None:
    """Drop the JavaScript that anywidget-based widgets (plotly's FigureWidget) store in the
    notebook's widget state: 4-5 MB of plotly.js per figure, which a report cannot run
    anyway. The widgets' data stays."""
    import nbformat

    nb = nbformat.read(str(executed), as_version=4)
    state = nb.metadata.get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {}).get("state", {})
    slimmed = 0
    for model in state.values():
        for key in ("_esm", "_css"):
            if len(str(model.get("state", {}).get(key, ""))) > 10_000:
                model["state"][key] = ""
                slimmed += 1
    if slimmed:
        nbformat.write(nb, str(executed))


def _write_report(executed: Path, folder: Path, stem: str) -> None:
    """results.json and the HTML report, from whatever the executed notebook holds."""
    if not executed.exists():
        return
    (folder / "results.json").write_text(json.dumps(_jsonable(results(executed)), indent=2, default=str))
    from .report import export_html

    manifest = folder / "manifest.json"
    export_html(executed, folder / (stem + ".html"),
                json.loads(manifest.read_text()) if manifest.exists() else None)


def _kernel_manager(deaths: list[int]) -> type:
    """A kernel manager that records how its kernel process ended, so a dead kernel can be
    reported with its signal (SIGILL says "a native build uses an instruction this CPU
    traps"; SIGKILL often says "out of memory").

    It talks to its kernel over Unix sockets in a private folder, not over TCP on localhost:
    no port another local user could connect to, and no ipykernel warning about TCP without
    encryption on every run. The path is absolute because the kernel runs in the notebook's
    folder, not ours."""
    from jupyter_client.manager import AsyncKernelManager

    class _Recording(AsyncKernelManager):
        def __init__(self, **kwargs: Any) -> None:
            self._ipc_dir: str | None = None
            if os.name == "posix" and "transport" not in kwargs:
                self._ipc_dir = tempfile.mkdtemp(prefix="labkit-kernel-")  # mode 0700
                if len(self._ipc_dir) > 80:  # a socket path has ~107 bytes: a long TMPDIR won't do
                    os.rmdir(self._ipc_dir)
                    self._ipc_dir = tempfile.mkdtemp(prefix="labkit-kernel-", dir="/tmp")
                kwargs.update(transport="ipc", ip=os.path.join(self._ipc_dir, "kernel"))
            super().__init__(**kwargs)

        def _note_exit(self) -> None:
            proc = getattr(self.provisioner, "process", None)
            if proc is not None and proc.poll() is not None and not deaths:
                deaths.append(proc.returncode)

        async def is_alive(self) -> bool:
            alive = await super().is_alive()
            if not alive:
                self._note_exit()
            return alive

        async def cleanup_resources(self, restart: bool = False) -> None:
            self._note_exit()
            await super().cleanup_resources(restart=restart)
            if self._ipc_dir and not restart:
                shutil.rmtree(self._ipc_dir, ignore_errors=True)

    return _Recording


def _death(code: int | None) -> str:
    sig = signal_name(code)
    meaning = {"SIGILL": "an illegal instruction: native code this CPU cannot run",
               "SIGKILL": "killed from outside, often by the kernel's out-of-memory killer",
               "SIGSEGV": "a segmentation fault in native code",
               "SIGABRT": "native code aborted"}
    if sig:
        return f"the kernel died from {sig} ({meaning.get(sig, 'a fatal signal')})"
    return f"the kernel died (exit code {code})" if code is not None else "the kernel died"


def _source_cell(executed: Path, cell_index: int | None) -> tuple[int, str]:
    """The failing cell as the source notebook numbers it (papermill's injected parameters
    cell not counted) and its first line. ``None`` means "the cell papermill was running", or
    else the last one it started (a cell interrupted at its timeout is left marked completed)."""
    try:
        cells = json.loads(executed.read_text())["cells"]
    except (OSError, ValueError, KeyError):
        return (cell_index if cell_index is not None else -1), ""
    # papermill puts an "An Exception was encountered" cell at the top after counting.
    cells = [c for c in cells
             if "papermill-error-cell-tag" not in c.get("metadata", {}).get("tags", [])]
    if cell_index is None:
        marks = [c.get("metadata", {}).get("papermill", {}) for c in cells]
        started = [i for i, m in enumerate(marks) if m.get("start_time")]
        cell_index = next((i for i, m in enumerate(marks) if m.get("status") == "running"),
                          started[-1] if started else len(cells) - 1)
    injected = sum(1 for c in cells[:cell_index]
                   if "injected-parameters" in c.get("metadata", {}).get("tags", []))
    source = cells[cell_index].get("source", "") if 0 <= cell_index < len(cells) else ""
    source = "".join(source) if isinstance(source, list) else source
    first = next((ln.strip() for ln in source.splitlines() if ln.strip()), "")
    return cell_index - injected, first


def run_grid(notebook: str | Path, grid: dict[str, list[Any]], parameters: dict[str, Any] | None = None,
             out: str | Path | None = None, progress: bool = True, timeout_s: int = 1800) -> pd.DataFrame:
    """Run ``notebook`` once per combination of the ``grid``'s values (``parameters`` fixed
    for all), each into its own run folder under ``out``; returns one row per point (its
    parameters, folder, and ``error`` where it failed). A failing point does not stop the
    others; Ctrl-C stops after the points that completed, which stay. ``index.json`` in
    ``out`` lists them all, for :func:`labkit.runs.load`."""
    import itertools

    if not grid or any(not isinstance(v, list) or not v for v in grid.values()):
        raise InvalidInput(f"grid maps each parameter to a non-empty list of values, got {grid!r:.120}.")
    nb_path = _checked_notebook(notebook, {**(parameters or {}), **grid})  # before any point runs
    base = Path(out) if out else Path("runs") / f"{nb_path.stem}-grid-{time.strftime('%Y%m%d-%H%M%S')}"
    _run_folder(base)
    points = [dict(zip(grid, combo, strict=True)) for combo in itertools.product(*grid.values())]
    rows: list[dict[str, Any]] = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(points), desc=f"{nb_path.stem} grid")
    row: dict[str, Any] = {}
    try:
        for i, point in enumerate(points):
            shown = _masked(point)  # a secret in a grid: not in a name, nor in the index
            folder = base / f"{i:03d}-{_slug(shown)}"
            row = {**shown, "folder": str(folder), "error": "running"}
            rows.append(row)
            try:
                run(nb_path, {**(parameters or {}), **point}, out=folder, timeout_s=timeout_s)
                row["error"] = None
            except Exception as e:  # a failed cell, a cell timeout, a dead kernel: this point only
                row["error"] = str(e).splitlines()[0] if str(e) else type(e).__name__
            if bar is not None:
                bar.update(1)
    except KeyboardInterrupt:
        if row.get("error") == "running":
            row["error"] = "interrupted"
        raise
    finally:
        if bar is not None:
            bar.close()
        base.mkdir(parents=True, exist_ok=True)
        (base / "index.json").write_text(json.dumps({"notebook": str(nb_path), "grid": _masked(grid),
                                                     "parameters": _masked(parameters or {}), "points": rows},
                                                    indent=2, default=str))
    return pd.DataFrame(rows)


def _slug(point: dict[str, Any]) -> str:
    import re

    text = "-".join(f"{k}={json.dumps(v, separators=(',', ':'))}" for k, v in point.items())
    return re.sub(r"[^A-Za-z0-9=,._-]+", "_", text)[:80]
