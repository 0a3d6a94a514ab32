"""The GPU check's dry run: everything but the CUDA build and the GPU numbers, on this CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_gpu_check_dry_run(tmp_path):
    env = {**os.environ, "LABKIT_GPU_PREP": str(tmp_path / "prep"), "OUT": str(tmp_path / "out"),
           "PYTHON": sys.executable, "GPU_CHECK_WORK": str(tmp_path / "work")}
    script = str(REPO / "benchmarks" / "gpu_check.sh")
    prep = subprocess.run([script, "--prepare"], env=env, capture_output=True, text=True, timeout=600)
    assert prep.returncode == 0, prep.stderr[-2000:] + prep.stdout[-2000:]
    size = json.loads((tmp_path / "prep" / "prepared.json").read_text())["bytes"]
    assert size < 56 * 2**20  # it must travel within the GPU machine's 64 MiB
    dry = subprocess.run([script, "--dry-run"], env=env, capture_output=True, text=True, timeout=900)
    assert dry.returncode == 0, dry.stdout[-3000:] + dry.stderr[-2000:]
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert report["dry_run"] and not report["errors"]
    assert all(m["weight_bytes_planned"] == m["weight_bytes_in_file"] for m in report["models"])
    assert len(report["runs"]) == 2
    for run in report["runs"]:
        assert all(lv["completed"] > 0 and lv["errors"] == 0 for lv in run["levels_measured"])
        assert run["llama_bench"]["tg_tok_s"] > 0 and run["plan_vs_measured"]
    assert "| synthetic:smollm2-135m:Q4_K_M | 0 |" in (tmp_path / "out" / "gpu_check.md").read_text()
