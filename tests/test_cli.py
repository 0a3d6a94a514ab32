"""The labkit command, run as a user would run it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def labkit_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "labkit.cli", *args], capture_output=True,
                          text=True, timeout=600)


def test_models_lists_the_bundled_model():
    r = labkit_cli("models", "--json")
    assert r.returncode == 0, r.stderr
    names = [json.loads(line)["name"] for line in r.stdout.splitlines()]
    assert "smollm2-135m" in names


# vllm-server is left out: a server's output goes to its log whatever the engine (llama-server
# shows that), and tests/test_engines.py runs the engine itself; a start of it costs 30 s here.
# In-process vLLM stays: its logger, made while it starts, must not reach --json's stdout.
@pytest.mark.parametrize("engine", ["llama.cpp", "vllm", "llama-server"])
def test_generate_json(engine):
    r = labkit_cli("generate", "--engine", engine, "--model", "smollm2-135m", "--max-tokens", "8",
                   "--temperature", "0", "--json", "The capital of France is", "2 + 2 =")
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(line) for line in r.stdout.splitlines()]  # stdout is JSON only
    assert len(rows) == 2
    for row in rows:
        assert row["text"] and row["token_ids"] and row["ttft_s"] > 0
        assert row["finish_reason"] in ("length", "stop")
        assert row["info"]["engine"] == engine


def test_compare_json_feeds_both_engines_the_same_tokens():
    r = labkit_cli("compare", "--engines", "llama.cpp,llama-server", "--max-tokens", "8", "--json",
                   "The capital of France is", "def fibonacci(n):")
    assert r.returncode == 0, r.stderr[-3000:]
    (out,) = [json.loads(line) for line in r.stdout.splitlines()]  # stdout is one JSON object
    assert out["reference"] == "llama.cpp" and len(out["table"]) == 4
    assert all(row["same_prompt_tokens"] for row in out["table"])
    assert {row["engine"] for row in out["parity"]} == {"llama.cpp"}  # only it can score
    assert out["environment"]["hostname"] and out["engines"]["llama-server"]["engine_version"]
    bad = labkit_cli("compare", "--engines", "llama.cpp", "Hello")
    assert bad.returncode == 2 and "two or more" in bad.stderr


def test_generate_against_openai_url(llama_server):
    r = labkit_cli("generate", "--engine", "openai", "--url", llama_server.url, "--max-tokens", "8",
                   "--json", "The capital of France is")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.splitlines()[0])["text"]


def test_bad_input_is_a_one_line_error_not_a_traceback():
    r = labkit_cli("generate", "--engine", "tensorrt", "hi")
    assert r.returncode == 2
    assert "Unknown engine 'tensorrt'" in r.stderr and "Traceback" not in r.stderr
    r = labkit_cli("generate", "--model", "nope-7b", "hi")
    assert r.returncode == 2 and "No model named" in r.stderr


def _start_bench(tmp_path, *extra: str) -> subprocess.Popen:
    out = tmp_path / "run"
    return subprocess.Popen([sys.executable, "-m", "labkit.cli", "bench", "--engine", "llama-server",
                             "--model", "smollm2-135m", "--threads", "1", "--concurrency", "1",
                             "--requests", "40", "--output-tokens", "48", "--workload", "synthetic",
                             "--input-tokens", "16", "--out", str(out), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_rows(proc: subprocess.Popen, path, n: int = 2, timeout_s: float = 300) -> None:
    """Until ``n`` measured requests are on disk (the sweep is mid-level), or fail."""
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists() and len(path.read_text().splitlines()) >= n:
            return
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        time.sleep(0.1)  # polling a file another process writes, not synchronising threads
    raise AssertionError("the sweep wrote no rows in time")


def test_a_server_killed_mid_sweep_stops_it_with_the_truth(tmp_path):
    import os
    import signal

    import psutil

    proc = _start_bench(tmp_path, "--json")
    _wait_for_rows(proc, tmp_path / "run" / "requests.jsonl")
    server = next(p for p in psutil.Process(proc.pid).children(recursive=True)
                  if p.name() == "llama-server")  # the server itself, not its reaper
    os.kill(server.pid, signal.SIGKILL)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1, stderr[-2000:]
    assert "engine died: llama-server was killed by SIGKILL" in stderr
    assert "last lines of the engine's log" in stderr
    for line in stdout.splitlines():  # --json: stdout holds JSON only, each row saying what measured it
        row = json.loads(line)
        assert row["threads"] == 1 and row["engine_version"] and row["model"] == "smollm2-135m" and row["machine"]
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["ended"].startswith("engine died")
    rows = [json.loads(x) for x in (tmp_path / "run" / "requests.jsonl").read_text().splitlines()]
    unsent = [r for r in rows if r["finish_reason"] == "not sent: engine died"]
    assert unsent and len(rows) == 40
    assert sum(1 for r in rows if r["error"]) <= 2  # only what was in flight when it died


def test_ctrl_c_mid_sweep_exits_130_and_keeps_what_was_measured(tmp_path):
    import signal

    proc = _start_bench(tmp_path)
    _wait_for_rows(proc, tmp_path / "run" / "requests.jsonl")
    with open(f"/proc/{proc.pid}/status") as f:  # if SIGINT is lost: was it blocked or ignored?
        masks = [x.strip() for x in f if x.startswith(("SigBlk", "SigIgn"))]
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, (masks, stderr[-2000:])
    assert "labkit: interrupted after" in stderr and "of 40 requests, kept in" in stderr
    assert stdout.startswith("llama-server (llama.cpp from llama-cpp-python") and ", threads 1\n" in stdout
    assert "Warning" not in stderr and "Traceback" not in stderr
    summary = (tmp_path / "run" / "summary.csv").read_text()
    header, row = summary.splitlines()[:2]
    values = dict(zip(header.split(","), row.split(","), strict=False))
    assert int(values["errors"]) == 0 and int(values["unmeasured"]) > 0


def test_setup_json_says_what_was_set_up_as_json_only():
    r = labkit_cli("setup", "--without-llama-cpp", "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    done = json.loads(r.stdout)
    assert done["bundled_gguf"].endswith(".gguf") and done["conversion"]["passed"] is True
    assert done["llama_cpp"] is None and done["vllm_cpu_dtype"] is None  # both skipped, and said so
