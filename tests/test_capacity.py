"""Capacity at an SLO on a real llama-server, from Python and from the command line."""

from __future__ import annotations

import json
import subprocess
import sys

import labkit
from labkit.loadgen import SLO, workloads

TINY = workloads.synthetic(input_tokens=16, output_tokens=8)
FAST = {"workload": TINY, "rounds": 1, "min_requests": 4, "progress": False}


def test_a_generous_slo_serves_more_users_than_a_tight_one(llama_server):
    one = labkit.bench(llama_server, concurrency=[1], requests_per_level=4, workload=TINY, progress=False)
    e2e = float(one.summary["e2e_p99_ms"].iloc[0])
    # Batching 8 users on 2 cores (4 slots) at least doubles a request's time, so a bound of
    # 1.3x one user's cannot hold at 8; 50x holds everywhere up to the top level.
    tight = labkit.capacity(llama_server, slo=SLO(e2e_p99_ms=1.3 * e2e), max_level=8, **FAST)
    loose = labkit.capacity(llama_server, slo=SLO(e2e_p99_ms=50 * e2e), max_level=8, **FAST)
    assert loose.users == 8 and loose.stopped.startswith("every level up to max_level=8")
    assert tight.users < loose.users
    lv = tight.levels
    if tight.users:
        assert lv[lv["level"] == tight.users]["met"].all()
    above = lv[lv["level"] > tight.users].groupby("level")["met"].all()
    assert not above.empty and not above.iloc[0]  # the next level tried broke it
    assert (lv["errors"] == 0).all() and lv["e2e_p99_ms"].notna().all()


def test_capacity_cli_json_and_bad_slo(tmp_path):
    cmd = [sys.executable, "-m", "labkit.cli", "capacity", "--engine", "llama-server",
           "--input-tokens", "48", "--output-tokens", "8", "--max-level", "2", "--json",
           "--out", str(tmp_path / "cap")]
    done = subprocess.run([*cmd, "--slo", "e2e_p99_ms=600000"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    (line,) = done.stdout.splitlines()  # only the JSON object on stdout
    out = json.loads(line)
    assert out["users"] == 2 and out["slo"] == {"e2e_p99_ms": 600000.0}
    assert out["environment"]["cpu_count"] >= 1  # where it was measured
    assert [lv["level"] for lv in out["levels"]] == [1, 2] and all(lv["met"] for lv in out["levels"])
    assert json.loads((tmp_path / "cap" / "capacity.json").read_text())["users"] == 2
    bad = subprocess.run([*cmd, "--slo", "ttft_p95_ms=100"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stdout == ""
    assert "Unknown SLO bound ttft_p95_ms: valid ones are" in bad.stderr
