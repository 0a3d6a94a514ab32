"""Bad input fails fast with a labkit error naming the problem (no engines needed)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import labkit
from labkit.engines.base import check_prompts
from labkit.errors import InvalidInput, ModelError

CFG = {"num_hidden_layers": 4, "hidden_size": 256, "num_attention_heads": 4,
       "num_key_value_heads": 2, "vocab_size": 1000, "intermediate_size": 512}


@pytest.mark.parametrize("change, message", [
    ({"num_key_value_heads": 0}, "num_key_value_heads"),
    ({"hidden_size": None}, "hidden_size"),
    ({"num_attention_heads": 3}, "does not divide hidden_size"),
])
def test_fit_rejects_bad_fields_by_name(change, message):
    with pytest.raises(InvalidInput, match=message):
        labkit.fit({**CFG, **change})


def test_fit_rejects_a_negative_card():
    with pytest.raises(InvalidInput, match="gpu_memory must be positive"):
        labkit.fit(CFG, gpu_memory="-5GiB")


def test_a_malformed_config_json_names_the_file_and_line(tmp_path):
    (tmp_path / "config.json").write_text('{"hidden_size": 256,\n  "oops"\n}')
    with pytest.raises(ModelError, match=r"config\.json is not valid JSON \(line 3"):
        labkit.fit(str(tmp_path))


def test_empty_prompts_are_invalid_input_for_every_engine():
    with pytest.raises(InvalidInput, match=r"prompts\[1\] is an empty string"):
        check_prompts(["hi", ""])


def test_bench_rate_that_is_not_a_number_names_the_flag():
    r = subprocess.run([sys.executable, "-m", "labkit.cli", "bench", "--rate", "abc"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--rate takes comma-separated numbers" in r.stderr
    assert "Traceback" not in r.stderr


def test_a_rate_level_that_would_send_nothing_is_refused_before_anything_runs():
    from labkit.loadgen.config import BenchConfig

    with pytest.raises(InvalidInput, match=r"rate 0.05 req/s over duration_s=10 s draws no request at all "
                                           r"\(seed 0; 0.5 expected\)\. Raise duration_s"):
        BenchConfig(rate=[1, 0.05], duration_s=10, seed=0)
    r = subprocess.run([sys.executable, "-m", "labkit.cli", "bench", "--engine", "mock-server", "--rate", "0.05",
                        "--duration", "10", "--json"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "draws no request at all" in r.stderr and r.stdout == ""


def test_planner_places_input_on_cpu_and_output_only_above_the_layer_count():
    from labkit.synthetic import SHAPES

    cfg = SHAPES["llama-3-8b"]
    at = {n: labkit.fit(cfg, engines=["llama.cpp"], quant="Q4_K_M", gpu_memory="80GiB", context=512,
                        gpu_layers=n).row("llama.cpp") for n in (0, 16, 32, 33)}
    assert at[0]["gpu_gib"] == 0 and at[33]["where"] == "gpu" and at[32]["where"] == "gpu+cpu"
    # -ngl 33 moves the output layer (Q6_K, 0.40 GiB) over; the embedding stays on the CPU
    assert 0.3 < at[32]["cpu_gib"] - at[33]["cpu_gib"] < 0.5
    assert at[33]["cpu_gib"] > 0.2
    auto = labkit.fit(cfg, engines=["llama.cpp"], quant="Q4_K_M", gpu_memory="4GiB", context=512)
    assert 0 < auto.row("llama.cpp")["gpu_layers"] < 32


def test_check_reports_planned_against_measured():
    plan = labkit.fit(CFG, engines=["llama.cpp"], gpu_memory="8GiB", gpu_layers=5)
    t = plan.check({"gpu_bytes": 2**30, "cpu_bytes": 2**30})
    assert set(t["where"]) == {"gpu", "cpu"} and t["error_pct"].notna().all()
    assert json.dumps(t.to_dict("records"))


def test_a_file_that_is_not_gguf_is_named_for_any_engine(tmp_path):
    from labkit import models

    bad = tmp_path / "random.gguf"
    bad.write_bytes(b"\xaf\x7c" * 64)
    with pytest.raises(ModelError, match="is not a GGUF file") as err:
        models.resolve(str(bad))
    assert "llama.cpp needs" not in str(err.value) and "both engines" in str(err.value)


def test_the_cli_takes_an_api_key_from_the_environment_only(monkeypatch):
    from labkit.cli import build_parser, engine_kwargs

    monkeypatch.setenv("LABKIT_API_KEY", "k-123")
    args = build_parser().parse_args(["generate", "--engine", "openai", "--url", "http://x/v1", "hi"])
    assert engine_kwargs(args)["api_key"] == "k-123"
    args = build_parser().parse_args(["generate", "--engine", "llama-server", "hi"])
    assert engine_kwargs(args)["api_key"] == "k-123"
    args = build_parser().parse_args(["generate", "--engine", "llama.cpp", "hi"])
    assert "api_key" not in engine_kwargs(args)  # an in-process engine has no API
    # a key on the command line (where `ps` shows it) is refused, saying where it goes instead
    args = build_parser().parse_args(["generate", "--api-key", "k", "hi"])
    with pytest.raises(InvalidInput, match="shows in `ps`.*LABKIT_API_KEY"):
        engine_kwargs(args)
    from labkit.cli import main

    assert main(["generate", "--engine", "openai", "--url", "http://x/v1", "--api-key", "k", "hi"]) == 2


def test_sliding_window_layers_keep_only_the_window():
    """Gemma 3 27B: 10 of 62 layers attend globally, 52 within 1024 tokens."""
    from labkit.planner import kv_bytes, model_spec
    from labkit.synthetic import SHAPES

    spec = model_spec(SHAPES["gemma-3-27b"])
    per_layer_token = 2 * 16 * 128 * 2
    swa_cells = -(-(1024 + 512) // 256) * 256  # window + one ubatch, padded to 256 cells
    assert kv_bytes(spec, 32768, 2, "llama-server") == per_layer_token * 2 * (10 * 32768 + 52 * swa_cells)
    # vLLM: window - 1 + the tokens in flight (v1/kv_cache_interface.py), in blocks of 16, plus one
    vllm_cells = 16 * (-(-(1023 + 2048) // 16) + 1)
    assert kv_bytes(spec, 32768, 2, "vllm") == per_layer_token * 2 * (10 * 32768 + 52 * vllm_cells)
    assert kv_bytes(spec, 32768, 2, "vllm", in_flight=16384) == \
        per_layer_token * 2 * (10 * 32768 + 52 * 16 * (-(-(1023 + 16384) // 16) + 1))
    assert kv_bytes(spec, 512, 1, "llama-server") == per_layer_token * 62 * 512  # window > context
    assert kv_bytes(spec, 32768, 1, "llama.cpp") == per_layer_token * 62 * 32768  # swa_full in process
    dense = model_spec(SHAPES["llama-3-8b"])
    assert kv_bytes(dense, 4096, 3, "vllm") == 2 * 32 * 8 * 128 * 2 * 4096 * 3


def test_named_workloads_and_an_unknown_name():
    from labkit.loadgen import workloads

    assert workloads.named("synthetic").input_tokens == 128
    assert workloads.named("shared-prefix", input_tokens=256).prefix_tokens == 256
    assert workloads.named("long_context", input_tokens=4096).lengths == [4096]
    assert workloads.named("sharegpt", output_tokens=0).fixed_output is None  # the real replies' lengths
    with pytest.raises(InvalidInput, match="Unknown workload 'poems'; named ones are chat, synthetic"):
        workloads.named("poems")


def test_measuring_a_card_without_a_gpu_says_what_plans_it_instead():
    from labkit import card

    if labkit.memory.nvml() is not None:
        pytest.skip("this machine has a GPU")
    with pytest.raises(InvalidInput, match=r"needs an NVIDIA GPU .* labkit.fit"):
        card.measure("llama-3-8b")


def test_bad_headers_are_refused_without_showing_their_values():
    with pytest.raises(InvalidInput) as err:
        labkit.load("openai", url="http://127.0.0.1:1/v1", headers={"Authorization": "Bearer sk-do-not-print", "X": 1})
    assert "sk-do-not-print" not in str(err.value) and "Authorization" in str(err.value)


def test_a_port_whose_last_connections_wait_out_time_wait_is_free():
    import socket

    from labkit.engines.servers import base_url, check_port, free_port

    # as a server binds (SO_REUSEADDR), and as it ends a stream: it closes first, so its side
    # of the connection waits in TIME_WAIT for a minute after the server has gone
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    port = srv.getsockname()[1]
    cli = socket.create_connection(("127.0.0.1", port))
    conn, _ = srv.accept()
    conn.close()
    cli.close()
    srv.close()
    check_port("127.0.0.1", port)  # the restarted server could bind it: so may we
    with pytest.raises(InvalidInput, match="not an address or a name"):
        free_port("no-such-host.invalid")
    assert base_url("::1", 8000) == "http://[::1]:8000" and base_url("127.0.0.1", 8000) == "http://127.0.0.1:8000"
