"""The OpenAI-API conformance matrix and batch invariance against the real servers on the
bundled model. The rows asserted here are this machine's facts, recorded: if an engine
changes them, the test says which."""

from __future__ import annotations

import json
import subprocess
import sys

import labkit
from labkit.apicheck import checks
from labkit.apicheck.invariance import PROMPTS


def _rows(m) -> dict[str, tuple[str, str]]:
    return {r["feature"]: (r["status"], r["evidence"]) for r in m.table.to_dict("records")}


def test_llama_server_matrix_runs_to_completion_with_its_known_gaps(llama_server):
    m = labkit.conformance({"llama-server": llama_server}, progress=False)  # the dict form, as notebooks pass it
    assert list(m.table["engine"].unique()) == ["llama-server"]
    rows = _rows(m)
    assert len(rows) == len(checks.CHECKS)
    assert rows["response_format json_schema"][0] == "supported"  # grammar-constrained
    assert rows["chat completions, streamed"][0] == "supported"
    # Recorded failures (llama.cpp as bundled by llama-cpp-python 0.3.36): SmolLM2's chat
    # template has no tool-call format, so no grammar is built and "required" is ignored;
    # a named tool_choice (an object) is rejected as the wrong type and ignored too.
    assert rows["tool_choice required"][0] == "wrong" and "no tool_calls" in rows["tool_choice required"][1]
    assert rows["n > 1"][0] == "supported"  # up to its slots: with parallel=1 it answers HTTP 400
    assert rows["an unknown model"][0] == "partial"
    assert rows["a client that disconnects mid-stream frees its slot"][0] == "supported"
    assert "--jinja" in m.flags["llama-server"]


def test_vllm_server_matrix_with_tool_flags_gives_schema_valid_calls(vllm_server):
    m = labkit.conformance(vllm_server, progress=False)
    rows = _rows(m)
    assert len(rows) == len(checks.CHECKS)
    for feature in ("response_format json_schema", "tool_choice required", "tool_choice named function",
                    "n > 1", "an unknown model", "a client that disconnects mid-stream frees its slot"):
        assert rows[feature][0] == "supported", (feature, rows[feature])
    assert "--tool-call-parser hermes" in m.flags["vllm-server"]


def test_batch_invariance_at_one_user_is_identical(llama_server, vllm_engine):
    for engine in (llama_server, vllm_engine):
        inv = labkit.batch_invariance(engine, PROMPTS[:4], users=[1], max_tokens=12)
        assert inv.table["identical"].all() and (inv.table["compared"] == "token ids").all()
        assert inv.summary()["changed_frac"].tolist() == [0.0]


def test_batch_invariance_says_when_the_slots_made_a_level_meaningless(llama_server, llama):
    inv = labkit.batch_invariance(llama_server, PROMPTS[:2], users=[8], max_tokens=4)
    assert inv.notes and "4 slot(s)" in inv.notes[0]  # the fixture runs 4 slots
    alone = labkit.batch_invariance(llama, PROMPTS[:2], users=[2], max_tokens=4)  # (it passed as "no change")
    assert alone.notes and "never share a batch" in alone.notes[0]


def test_cli_conformance_json_is_one_object_on_stdout():
    out = subprocess.run([sys.executable, "-m", "labkit.cli", "conformance", "--engine", "llama-server", "--json"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    d = json.loads(out.stdout)
    assert len(d["checks"]) == len(checks.CHECKS) and "llama-server" in d["flags"]
    assert d["engine"]["engine_version"] and d["environment"]["cpu"]  # verdicts of which server, where
