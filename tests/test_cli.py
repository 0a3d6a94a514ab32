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


@pytest.mark.parametrize("engine", ["llama.cpp", "vllm", "llama-server", "vllm-server"])
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
