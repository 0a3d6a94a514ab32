"""The memory planner: exact tensor sizes, engine rules, and a check against reality."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from gguf import GGUFReader

import labkit
from labkit import fit, models
from labkit.errors import InvalidInput
from labkit.planner import kv_bytes, model_spec, tensor_bytes

from .conftest import start_owner

CFG_26B = {"name": "26B", "num_hidden_layers": 46, "hidden_size": 4608, "num_attention_heads": 32,
           "num_key_value_heads": 16, "head_dim": 128, "vocab_size": 256000,
           "intermediate_size": 36864, "num_parameters": 27_000_000_000}


@pytest.mark.parametrize("quant", [None, "Q8_0"])
def test_tensor_bytes_match_the_gguf_exactly(quant):
    path = models.resolve("smollm2-135m") if quant is None else models.variant("smollm2-135m", quant)
    reader = GGUFReader(path)
    for t in reader.tensors:
        assert tensor_bytes(tuple(int(x) for x in t.shape), t.tensor_type.name) == int(t.n_bytes), t.name


def test_spec_from_gguf_and_from_hf_directory_agree():
    g = model_spec("smollm2-135m")
    h = model_spec(models.hf_dir("smollm2-135m"))
    assert (g.n_layers, g.n_kv_heads, g.head_dim, g.vocab_size) == (30, 3, 64, 49152)
    assert (h.n_layers, h.n_kv_heads, h.head_dim, h.vocab_size) == (30, 3, 64, 49152)
    assert abs(g.n_params - h.n_params) / h.n_params < 0.01


def test_26b_on_a_12gb_card():
    plan = fit(CFG_26B, quant="IQ3_S", gpu_memory="12GiB", context=4096, users=1)
    llama, vllm = plan.row("llama.cpp"), plan.row("vllm")
    assert llama["fits"] and 0 < llama["gpu_layers"] < 46 and llama["where"] == "gpu+cpu"
    assert not vllm["fits"] and "exceed" in vllm["note"]
    # and on an 80 GB card vLLM fits, with a concurrency limit from its KV blocks
    big = fit(CFG_26B, engines=["vllm"], gpu_memory="80GiB", context=4096).row("vllm")
    assert big["fits"] and big["max_users"] >= 1 and big["kv_blocks"] > 0


def test_kv_cache_grows_with_users_and_context():
    a = fit("smollm2-135m", engines=["llama.cpp"], context=1024, users=1).row("llama.cpp")
    b = fit("smollm2-135m", engines=["llama.cpp"], context=4096, users=8).row("llama.cpp")
    assert b["kv_total_gib"] == pytest.approx(a["kv_total_gib"] * 32)


@pytest.mark.parametrize("memory", [{"gpu_memory": "12GiB"}, {"system_memory": "24GiB"}])
def test_max_users_is_the_most_users_the_plan_still_fits(memory):
    from labkit.synthetic import SHAPES

    def plan(**kw):
        return fit(SHAPES["llama-3-8b"], engines=["llama-server"], quant="Q4_K_M", **memory, **kw).row("llama-server")

    first = plan()
    at, over = plan(users=first["max_users"]), plan(users=first["max_users"] + 1)
    # (it counted the KV cache only: 7 users "fit" on the card where 7 moved layers to the CPU)
    assert at["fits"] and at["where"] == first["where"]
    assert not over["fits"] or over["where"] != first["where"]


def test_a_gb_of_memory_is_a_gib_as_cards_are_sold():
    from labkit.planner import parse_bytes

    assert parse_bytes("80GB") == parse_bytes("80GiB") == 80 * 2**30 and parse_bytes("512 MB") == 512 * 2**20


def test_vllms_kv_cache_takes_the_model_dtype():
    # float32 is labkit's vLLM dtype on a CPU without native bf16: 4 bytes a value, half the users
    half = fit("smollm2-135m", engines=["vllm"], dtype="bfloat16", context=2048).row("vllm")
    full = fit("smollm2-135m", engines=["vllm"], dtype="float32", context=2048).row("vllm")
    assert full["max_users"] == half["max_users"] // 2 and full["kv_total_gib"] == half["kv_total_gib"]
    awq = fit("smollm2-135m", engines=["vllm"], dtype="float32", quant="awq", context=2048).row("vllm")
    assert awq["kv_per_token_kib"] == full["kv_per_token_kib"]  # the cache follows the dtype, not the weights


@pytest.mark.parametrize("bad", [
    {"hidden_size": 4096},  # missing fields
    {**CFG_26B, "num_hidden_layers": 0},
])
def test_bad_configs_are_clear_errors(bad):
    with pytest.raises(InvalidInput):
        fit(bad)


def test_unknown_quant_and_memory_size():
    with pytest.raises(InvalidInput, match="Q4_K_M"):
        fit("smollm2-135m", quant="Q7_X")
    with pytest.raises(InvalidInput, match="memory size"):
        fit("smollm2-135m", gpu_memory="twelve gigs")


@pytest.mark.parametrize(("engine", "column"), [("llama.cpp", "rss_bytes"), ("vllm", "pss_bytes")])
def test_estimate_is_within_25_percent_of_measured_memory(request, tmp_path, engine, column):
    """Planner vs. the memory sampler, in a fresh process (an in-process engine is measured
    as the growth of its process, which another engine in the same process would inflate),
    after a prompt that fills most of the context.

    In-process llama.cpp is one process: its RSS growth is the number. vLLM is a tree of
    processes sharing torch's libraries: PSS splits the shared pages fairly.
    """
    if engine == "vllm":
        measured = request.getfixturevalue("vllm_owner").measured
    else:
        measured = start_owner(engine, column, tmp_path / "owner.log", wait=False).measured
    est = fit("smollm2-135m", engines=[engine], context=1024).row(engine)["total_gib"] * 1024**3
    assert 0.75 <= est / measured <= 1.25, (engine, est / 2**20, measured / 2**20)


def test_fit_cli_json():
    r = subprocess.run([sys.executable, "-m", "labkit.cli", "fit", "--model", "smollm2-135m",
                        "--context", "4096", "--users", "8", "--gpu-memory", "12GiB", "--json"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert {row["engine"] for row in rows} == {"llama.cpp", "vllm"}
    assert all(row["fits"] for row in rows)


GEMMA_TINY = {"name": "gemma-tiny", "model_type": "gemma3_text", "hidden_size": 256,
              "num_hidden_layers": 12, "num_attention_heads": 2, "num_key_value_heads": 1,
              "head_dim": 128, "intermediate_size": 512, "vocab_size": 50000, "sliding_window": 128,
              "sliding_window_pattern": 6}


def _llama_server_kv_mib(gguf, context: int, users: int) -> float:
    """The KV cache llama-server allocates, from its own log (every cache it creates)."""
    import re

    from labkit.engines.servers import free_port
    from labkit.native.llamacpp import tool

    cmd = [str(tool("llama-server")), "-m", str(gguf), "-c", str(context * users), "-np", str(users),
           "-t", "1", "--host", "127.0.0.1", "--port", str(free_port()), "-lv", "4"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        for line in proc.stdout:  # until it listens: every cache is made by then
            lines.append(line)
            if "listening on" in line:
                break
    finally:
        # SIGKILL, not SIGTERM: a SIGTERM that lands this soon after "listening" can arrive
        # before the server's shutdown hook is set, and the server then ignores it (seen: 60 s).
        proc.kill()
        proc.communicate()
    sizes = [float(x) for x in re.findall(r"llama_kv_cache: size =\s*([\d.]+) MiB", "".join(lines))]
    assert sizes, "".join(lines[-20:])
    return sum(sizes)


def test_sliding_window_kv_is_what_each_engine_allocates():
    """Gemma 3's layout, read back from a GGUF: 2 of 12 layers global, 10 within 128 tokens.
    llama-server sizes those 10 by the window; in-process llama.cpp keeps them full-size."""
    from labkit import synthetic

    m = synthetic.synthetic(GEMMA_TINY, quant="Q8_0", progress=False)
    spec = model_spec(m.gguf)
    assert (spec.sliding_window, spec.swa_pattern) == (128, 6)
    for context, users in ((4096, 1), (2048, 2)):
        planned = kv_bytes(spec, context, users, "llama-server") / 2**20
        assert _llama_server_kv_mib(m.gguf, context, users) == pytest.approx(planned, rel=1e-6)
    assert kv_bytes(spec, 4096, 1, "llama.cpp") == kv_bytes(spec, 4096, 1, "llama-server") \
        + 10 * 2 * 128 * 2 * (4096 - 768)  # the windowed layers at full size
    with labkit.load("llama.cpp", model=m, context=4096, threads=1) as e:
        log = e.info.log_path
    with open(log) as f:
        assert "using full-size SWA cache" in f.read()


def test_tensor_parallel_plans_vllm_per_gpu():
    """Llama-3-8B shapes, 8 KV heads: each of 2 GPUs holds half the weights and half the KV
    heads; over 16 GPUs a KV head is never split, so each holds one (of 8) whole."""
    shape = {"architectures": ["LlamaForCausalLM"], "hidden_size": 4096, "num_hidden_layers": 32,
             "num_attention_heads": 32, "num_key_value_heads": 8, "intermediate_size": 14336,
             "vocab_size": 128256, "max_position_embeddings": 8192}
    kw = dict(engines=["vllm", "llama-server"], gpu_memory="24GiB", context=4096, users=8, dtype="bfloat16")
    one, two = labkit.fit(shape, **kw), labkit.fit(shape, tensor_parallel_size=2, **kw)
    assert two.row("vllm")["weights_gib"] == pytest.approx(one.row("vllm")["weights_gib"] / 2)
    assert two.row("vllm")["kv_per_token_kib"] == pytest.approx(one.row("vllm")["kv_per_token_kib"] / 2)
    assert two.row("vllm")["max_users"] > 2 * one.row("vllm")["max_users"]  # the freed weights hold KV too
    assert "per GPU of 2" in two.row("vllm")["note"] and two.row("vllm")["tensor_parallel"] == 2
    assert two.row("llama-server")["weights_gib"] == one.row("llama-server")["weights_gib"]
    assert "vLLM's" in two.row("llama-server")["note"]  # llama.cpp does not split by tensor: said so
    sixteen = labkit.fit(shape, tensor_parallel_size=16, **kw).row("vllm")
    assert sixteen["kv_per_token_kib"] == pytest.approx(one.row("vllm")["kv_per_token_kib"] / 8)
    with pytest.raises(labkit.InvalidInput, match="gpu_memory"):
        labkit.fit(shape, tensor_parallel_size=2)
    with pytest.raises(labkit.InvalidInput, match="tensor_parallel_size"):
        labkit.fit(shape, gpu_memory="24GiB", tensor_parallel_size=0)
