"""The HTML report keeps what a reader needs and leaves out the noise (no kernel needed)."""

from __future__ import annotations

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from labkit.report import export_html


def test_progress_widgets_stderr_and_code_stay_out_and_the_answer_comes_first(tmp_path):
    nb = new_notebook()
    widget = new_output("display_data", data={
        "application/vnd.jupyter.widget-view+json": {"model_id": "m1", "version_major": 2, "version_minor": 0},
        "text/plain": "conformance llama-server:   0%|          | 0/24"})
    nb.cells = [new_code_cell("x = compute()", outputs=[widget, new_output("stream", name="stderr", text="WARNING noise"),
                                                         new_output("stream", name="stdout", text="computed 42")]),
                new_markdown_cell("## The answer", metadata={"tags": ["report-top"]})]
    path = tmp_path / "n.ipynb"
    nbformat.write(nb, path)
    export_html(path, tmp_path / "n.html")
    body = (tmp_path / "n.html").read_text().split("<body", 1)[1]
    assert "0/24" not in body and "WARNING noise" not in body and "compute()" not in body
    assert "computed 42" in body and body.index("The answer") < body.index("computed 42")
