"""The HTML report of an executed notebook: what a colleague reads, top to bottom.

The report is the executed notebook, rearranged for reading, not a second source of truth:
- cells tagged ``report-top`` (the answer: a verdict, a recommendation) come first;
- code is hidden (the executed ``.ipynb`` beside the report has every cell, and reruns);
- stderr (progress bars, library warnings), progress widgets and ``labkit.record`` data are
  left out: they stay in the executed notebook, and engines write their logs to files that
  ``engine.info.log_path`` names;
- the environment and the run's parameters close the report;
- figures are drawn from their plotly JSON with one inlined plotly.js, so it opens offline.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

TOP = "report-top"


def export_html(executed: Path, target: Path, manifest: dict[str, Any] | None = None) -> None:
    """Write ``target`` from the executed notebook ``executed`` (see the module docstring)."""
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(str(executed), as_version=4)
    top = [c for c in nb.cells if TOP in c.get("metadata", {}).get("tags", [])]
    nb.cells = [_intro(executed.name)] + top + [c for c in nb.cells if all(c is not t for t in top)]
    nb.metadata.pop("widgets", None)  # progress bars' widget state: nothing to show in a static page
    n_figures = 0
    for cell in nb.cells:
        cell["outputs"] = [o for o in cell.get("outputs", [])
                           if not _is_stderr(o) and not _is_record(o) and not _is_widget(o)]
        for output in cell["outputs"]:
            n_figures += _draw_figure(output, n_figures)
    if manifest:
        nb.cells.append(_environment(manifest))
    exporter = HTMLExporter(exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True)
    body, _ = exporter.from_notebook_node(nb)
    if n_figures:
        from plotly.offline import get_plotlyjs

        body = body.replace("<head>", f"<head><script>{get_plotlyjs()}</script>", 1)
    target.write_text(body)


def _is_record(output: dict[str, Any]) -> bool:
    """labkit.record()'s outputs: data for results.json, shown by the cell's own display."""
    from .runner import MIME

    return MIME in output.get("data", {})


def _is_widget(output: dict[str, Any]) -> bool:
    """A widget's view (a progress bar): without its state, only its text fallback would show,
    frozen at whatever it said when the page was saved."""
    return "application/vnd.jupyter.widget-view+json" in output.get("data", {})


def _is_stderr(output: dict[str, Any]) -> bool:
    return output.get("output_type") == "stream" and output.get("name") == "stderr"


def _draw_figure(output: dict[str, Any], n: int) -> int:
    """A plotly figure output as a div drawn by the inlined plotly.js; 1 if it was one."""
    fig = output.get("data", {}).get("application/vnd.plotly.v1+json")
    if fig is None:
        return 0
    div = f"labkit-figure-{n}"
    output["data"]["text/html"] = (
        f"<div id='{div}' style='height:420px'></div><script>Plotly.newPlot('{div}', "
        f"{json.dumps(fig.get('data', []))}, {json.dumps(fig.get('layout', {}))});</script>")
    return 1


def _intro(name: str) -> Any:
    from nbformat.v4 import new_markdown_cell

    return new_markdown_cell(f"*labkit report. Code is hidden here; `{name}` beside this file is the "
                             "executed notebook, with every cell, and reruns as it is.*")


def _environment(manifest: dict[str, Any]) -> Any:
    """The run's parameters and machine, as the last section."""
    from nbformat.v4 import new_markdown_cell

    env = manifest.get("environment", {})
    rows = {"notebook": manifest.get("notebook"), "started": manifest.get("started"),
            "parameters": json.dumps(manifest.get("parameters") or {}), "cpu": env.get("cpu"),
            "cpus": env.get("cpu_count"), "memory (GiB)": env.get("memory_gib"), "gpu": env.get("gpu"),
            "python": env.get("python"), "platform": env.get("platform"),
            **{k: v for k, v in (env.get("libraries") or {}).items()}}
    table = "".join(f"<tr><th style='text-align:left'>{html.escape(str(k))}</th>"
                    f"<td style='text-align:left'>{html.escape(str(v))}</td></tr>" for k, v in rows.items())
    return new_markdown_cell(f"## Environment\n\n<table>{table}</table>")
