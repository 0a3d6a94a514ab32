"""Every notebook runs headlessly under papermill, and its recorded numbers are checked."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from labkit.errors import InvalidInput, NotebookError
from labkit.runner import results, run

NOTEBOOK_DIR = Path(__file__).parent.parent / "notebooks"
ARTIFACTS = Path(__file__).parent.parent / "test-artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebooks_are_clean(path):
    nb = nbformat.read(path, as_version=4)
    assert nb.metadata["kernelspec"]["name"] == "labkit"
    assert "parameters" in nb.cells[0].metadata.get("tags", [])
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, "outputs committed"
    assert any(c.cell_type == "markdown" for c in nb.cells)


def _run(name: str, tmp_path: Path, **params) -> tuple[Path, dict]:
    folder = run(NOTEBOOK_DIR / f"{name}.ipynb", params, out=tmp_path / name)
    return folder, _checked(folder, name)


def _checked(folder: Path, name: str) -> dict:
    """The run folder's report and manifest are there; the notebook's recorded results."""
    executed = folder / f"{name}.ipynb"
    assert (folder / f"{name}.html").stat().st_size > 1000
    assert json.loads((folder / "manifest.json").read_text())["environment"]["libraries"]["labkit"]
    # executed notebooks stay small: figures are data, not a copy of plotly.js each
    assert executed.stat().st_size < 2_000_000
    return results(executed)


def test_01_quickstart(tmp_path):
    _, r = _run("01-quickstart", tmp_path, MAX_TOKENS=16)
    assert r["texts"]["llama.cpp"] and r["texts"]["vllm"]
    assert r["ttft_ms"]["llama.cpp"] > 0 and isinstance(r["identical"], bool)


def test_02_compare_outputs(tmp_path):
    _, r = _run("02-compare-outputs", tmp_path, MAX_TOKENS=16)
    assert r["prompt_ids_identical"] is True
    parity = r["parity"].set_index("engine")
    assert parity.loc["vllm", "top1_agreement"] > 0.8
    assert len(r["table"]) == 6


def test_03_throughput_and_latency(tmp_path):
    # The two llama.cpp engines only: 05 runs all four, and each vLLM start costs ~30 s here.
    _, r = _run("03-throughput-and-latency", tmp_path, ENGINES=["llama.cpp", "llama-server"],
                REQUESTS=4, OUTPUT_TOKENS=8)
    s = r["summary"]
    assert set(s["engine"]) == {"llama.cpp", "llama-server"}
    assert (s["errors"] == 0).all() and (s["output_tok_per_s"] > 0).all()


def test_04_memory_and_quantization(tmp_path):
    _, r = _run("04-memory-and-quantization", tmp_path, ENGINES=["llama-server"], QUANTS=["Q8_0", "Q2_K"],
                CHUNKS=1, USERS=2)
    ladder = r["ladder"].set_index("quant")
    assert ladder.loc["Q8_0", "mean_kld"] < ladder.loc["Q2_K", "mean_kld"]
    assert all(v > 0 for v in r["peak_pss_gib"].values())
    tl = r["timeline"].iloc[0]  # 8 users on 2 slots: the server's own queue, beside the client's TTFT
    assert tl["waiting_max"] > 0 and tl["running_mean"] > 0 and tl["cpu_util_server"] > 0


def test_05_which_engine(tmp_path):
    folder, r = _run("05-which-engine", tmp_path, USERS=4, REQUESTS=4, OUTPUT_TOKENS=8)
    _check_report(folder / "05-which-engine.html")
    v = r["verdict"]
    assert len(v) == 10
    assert v["measured here"].str.contains(r"\d").all()  # a number in every row
    rows = v.set_index("claim")
    assert rows.loc["tool calling", "measured here"].startswith("vllm-server: ")  # from the conformance matrix
    assert "labkit.conformance" in rows.loc["production API (OpenAI-compatible server)", "source"]
    assert v.set_index("claim").loc["users served within a latency SLO", "measured here"].startswith("within TTFT")
    assert set(v["claim holds here"]) <= {"yes", "no", "n/a"}
    assert "users" in r["recommendation"]


def test_06_capacity(tmp_path):
    _, r = _run("06-capacity", tmp_path, ENGINES=["llama.cpp", "llama-server"], INPUT_TOKENS=48,
                OUTPUT_TOKENS=8, MAX_USERS=2, SLO={"e2e_p99_ms": 600000},
                SWEEP={"llama-server": {"parallel": [1, 2]}}, SWEEP_USERS=[1, 2])
    table = r["capacity"].set_index("engine")
    assert list(table.index) == ["llama.cpp", "llama-server"]
    assert (table["users at the SLO"] == 2).all() and (table["goodput req/s"] > 0).all()
    front = r["front"]
    assert len(front) == 4 and front["slo_met"].all() and front["on_front"].any()


def _notebook(path: Path, *cells: str, parameters: str | None = None) -> Path:
    """A notebook on the labkit kernel: a cell tagged ``parameters`` (if given), then ``cells``."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "labkit", "display_name": "labkit", "language": "python"}
    nb.cells = ([nbformat.v4.new_code_cell(parameters, metadata={"tags": ["parameters"]})] if parameters else []) \
        + [nbformat.v4.new_code_cell(c) for c in cells]
    nbformat.write(nb, path)
    return path


def test_a_failing_cell_names_the_cell(tmp_path):
    path = _notebook(tmp_path / "broken.ipynb", "1 / 0", parameters="x = 1")
    with pytest.raises(NotebookError, match=r"cell 1 \(`1 / 0`\): raised ZeroDivisionError") as err:
        run(path, out=tmp_path / "out", parameters={"x": 2})  # papermill injects a cell: not counted
    assert Path(err.value.output_path).exists() and err.value.cell_index == 1
    report = (tmp_path / "out" / "broken.html").read_text()
    assert "ZeroDivisionError" in report  # the report is written, with the error in it


def test_a_cell_past_its_timeout_names_the_cell_and_writes_the_report(tmp_path):
    path = _notebook(tmp_path / "slow.ipynb", "x = 1", "import time\ntime.sleep(wait_s)", "y = 2",
                     parameters="wait_s = 600")
    with pytest.raises(NotebookError, match=r"cell 2 \(`import time`\): raised CellTimeoutError: it ran past "
                                            r"the cell timeout of 2 s") as err:
        run(path, out=tmp_path / "out", timeout_s=2)  # (was nbclient's own exception, no report)
    assert err.value.cell_index == 2 and (tmp_path / "out" / "slow.html").exists()


def test_the_kernel_talks_over_private_unix_sockets_not_tcp(tmp_path):
    path = _notebook(tmp_path / "kernel.ipynb",
                     "import os, stat, labkit\nfrom ipykernel.kernelapp import IPKernelApp\n"
                     "app = IPKernelApp.instance()\n"
                     "labkit.record('kernel', {'transport': app.transport, 'ip': app.ip,\n"
                     "    'mode': stat.S_IMODE(os.stat(os.path.dirname(app.ip)).st_mode)})")
    out = run(path, out=tmp_path / "out")
    k = results(out)["kernel"]
    assert k["transport"] == "ipc" and os.path.isabs(k["ip"]) and k["mode"] == 0o700
    assert not Path(k["ip"]).parent.exists()  # the sockets' folder goes with the kernel
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidInput, match="holds 0 notebooks"):
        results(tmp_path / "empty")
    with pytest.raises(InvalidInput, match="does not exist"):
        results(tmp_path / "missing.ipynb")


def test_an_unknown_parameter_is_an_error_listing_the_known_ones(tmp_path):
    with pytest.raises(InvalidInput, match=r"has no parameter NOPE.*MAX_TOKENS"):
        run(Path(__file__).parent.parent / "notebooks" / "01-quickstart.ipynb", {"NOPE": 1},
            out=tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_a_kernel_killed_by_a_signal_names_the_cell_and_the_signal(tmp_path):
    path = _notebook(tmp_path / "dies.ipynb", "x = 1", "import os, signal\nos.kill(os.getpid(), signal.SIGILL)")
    with pytest.raises(NotebookError) as err:
        run(path, out=tmp_path / "out")
    e = err.value
    assert e.signal == "SIGILL" and e.cell_index == 1 and e.first_line == "import os, signal"
    assert "illegal instruction" in str(e) and "labkit doctor" in str(e)


@pytest.mark.skipif(CHROMIUM is not None, reason="the browser test runs 07-panels in JupyterLab and uses every panel")
def test_07_panels_render_headlessly(tmp_path):
    folder, _ = _run("07-panels", tmp_path)
    nb = nbformat.read(folder / "07-panels.ipynb", as_version=4)
    widgets = [c for c in nb.cells if c.cell_type == "code"
               and any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in c.outputs)]
    assert len(widgets) == 6  # loader, bench, capacity, sweep, compare, memory


def _check_report(path: Path) -> None:
    """A report people read: the answer first, no code, no engine logs, the environment last;
    and in a browser (where there is one), offline, its figures drawn."""
    page = path.read_text()
    body = page[page.index("<body"):]
    assert "WARNING" not in body and "Triton" not in body  # engine and library noise stays out
    assert "labkit.bench(" not in body  # code hidden: the executed notebook beside it has it
    assert "recorded 'verdict'" not in body and "widget-state" not in body
    first_figure = body.index("labkit-figure-0")
    assert body.index("Recommendation:") < body.index("claim holds here") < first_figure
    assert first_figure < body.index("Environment") and "llama-cpp-python" in body[body.index("Environment"):]
    if CHROMIUM is None:
        return
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=["--no-sandbox", "--disable-gpu", "--no-first-run"])
        try:
            tab = browser.new_page(viewport={"width": 1300, "height": 1000})
            tab.route("**/*", lambda route: route.abort() if not route.request.url.startswith("file:")
                      else route.continue_())  # offline: nothing but the file itself
            tab.goto(path.as_uri())
            tab.locator(".js-plotly-plot .main-svg").first.wait_for(timeout=60_000)
            assert tab.locator(".js-plotly-plot").count() >= 1
            ARTIFACTS.mkdir(exist_ok=True)
            tab.screenshot(path=str(ARTIFACTS / "report-05-which-engine.png"))
        finally:
            browser.close()


def test_08_workloads(tmp_path):
    # ShareGPT's sampler has its own tests (tests/test_workloads.py); here the notebook's logic.
    _, r = _run("08-workloads", tmp_path, ENGINES=["llama.cpp", "llama-server"], USERS=[1, 2], REQUESTS=4,
                INPUT_TOKENS=64, OUTPUT_TOKENS=4, WORKLOADS=["synthetic", "shared_prefix", "multi_turn"])
    t = r["by_workload"]
    assert set(t["workload"]) == {"synthetic", "shared_prefix", "multi_turn"} and (t["errors"] == 0).all()
    sessions = t[t["workload"] == "multi_turn"]
    assert sessions["ttft_p50_ms_later_turns"].notna().all()  # the per-turn figures reach the table
    hits = t[t["engine"] == "llama-server"].groupby("workload")["prefix_hit_rate"].max()
    assert hits["shared_prefix"] > hits["synthetic"]  # the server's own count of cached prompt tokens


def test_09_api_and_tools(tmp_path):
    # Both servers' matrices are checked in tests/test_conformance.py; here the notebook's logic.
    folder, r = _run("09-api-and-tools", tmp_path, ENGINES=["llama-server"], USERS=2, PROMPTS=2, MAX_TOKENS=6)
    body = (folder / "09-api-and-tools.html").read_text().split("<body", 1)[1]
    assert "labkit.conformance(" not in body and "Triton" not in body  # code hidden, no engine noise
    assert body.index("tool_choice required") < body.index("labkit-figure-0")  # the matrix comes first
    table = r["conformance"]
    assert len(table) == 24 and set(table["engine"]) == {"llama-server"}
    assert set(table["status"]) <= {"supported", "partial", "missing", "wrong", "not checked"}
    inv = r["invariance"]["llama-server"].set_index("users")
    assert inv.loc[1, "changed_frac"] == 0.0 and inv.loc[2, "prompts"] == 2


def test_10_compare_machines_as_a_grid_and_its_runs_load_by_machine(tmp_path):
    """`labkit run --grid`: one run folder per point, each holding the notebook and its bench
    run; the committed run from another machine loads beside them."""
    import subprocess
    import sys

    import labkit

    out = tmp_path / "grid"
    cmd = [sys.executable, "-m", "labkit.cli", "run", str(NOTEBOOK_DIR / "10-compare-machines.ipynb"),
           "--grid", "USERS", "[[1], [2]]", "-p", "REQUESTS", "3", "-p", "OUTPUT_TOKENS", "8",
           "--out", str(out), "--json"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    points = json.loads(done.stdout)  # --json: only JSON on stdout
    assert [p["USERS"] for p in points] == [[1], [2]] and all(p["error"] is None for p in points)
    index = json.loads((out / "index.json").read_text())
    assert len(index["points"]) == 2
    for p in points:
        r = _checked(Path(p["folder"]), "10-compare-machines")
        assert {"machines", "summary"} <= set(r)
    runs = labkit.runs.load(out)
    assert sorted(r.kind for r in runs.runs) == ["bench", "bench", "notebook", "notebook"]
    assert sorted(runs.summary["level"]) == [1, 2]


def test_a_grid_with_a_bad_parameter_is_refused_before_any_run(tmp_path):
    from labkit.cli import main

    assert main(["run", str(NOTEBOOK_DIR / "10-compare-machines.ipynb"), "--grid", "NOPE", "[1]",
                 "--out", str(tmp_path / "g")]) == 2
    assert main(["run", str(NOTEBOOK_DIR / "10-compare-machines.ipynb"), "--grid", "USERS", "4",
                 "--out", str(tmp_path / "g")]) == 2
    assert not (tmp_path / "g").exists()  # refused before anything ran or was written


def test_a_secret_parameter_never_reaches_the_run_folder(tmp_path):
    path = _notebook(tmp_path / "keyed.ipynb", "import labkit\nlabkit.record('key_length', len(API_KEY))",
                     parameters="API_KEY = ''\nHF_TOKEN = ''\nMAX_TOKENS = 8")
    out = run(path, out=tmp_path / "out", parameters={"API_KEY": "sk-do-not-keep-123", "HF_TOKEN": "hf_secret_456",
                                                       "MAX_TOKENS": 16})
    assert results(out)["key_length"] == 18  # the kernel had it
    written = "".join(p.read_text(errors="replace") for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert "sk-do-not-keep-123" not in written and "hf_secret_456" not in written
    assert '"MAX_TOKENS": 16' in written  # a count is no secret
    # a grid: its index and its points' folder names too, even for a secret in the grid
    from labkit.runner import run_grid

    rows = run_grid(path, {"HF_TOKEN": ["hf_secret_456"]}, {"API_KEY": "sk-do-not-keep-123"},
                    out=tmp_path / "grid", progress=False)
    assert list(rows["error"]) == [None]
    written = "".join(str(p) + p.read_text(errors="replace") for p in (tmp_path / "grid").rglob("*") if p.is_file())
    assert "sk-do-not-keep-123" not in written and "hf_secret_456" not in written
    assert '"API_KEY": "***"' in (tmp_path / "grid" / "index.json").read_text()


def test_run_json_prints_the_runs_files_as_json_only(tmp_path):
    path = _notebook(tmp_path / "tiny.ipynb", "import labkit\nlabkit.record('n', N)", parameters="N = 1")
    done = subprocess.run([sys.executable, "-m", "labkit.cli", "run", str(path), "-p", "N", "3",
                           "--out", str(tmp_path / "out"), "--json"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    files = json.loads(done.stdout)  # the whole of stdout
    assert Path(files["report"]).is_file() and results(files["folder"])["n"] == 3
    assert json.loads(Path(files["manifest"]).read_text())["parameters"] == {"N": 3}
