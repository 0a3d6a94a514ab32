"""The memory planner's rules, from hand-made configs and safetensors headers (no engine)."""

from __future__ import annotations

import json
import struct

import pytest

import labkit
from labkit.planner import GiB

LLAMA_8B = {"model_type": "llama", "num_hidden_layers": 32, "hidden_size": 4096, "num_attention_heads": 32,
            "num_key_value_heads": 8, "vocab_size": 128256, "intermediate_size": 14336,
            "max_position_embeddings": 131072}


def _folder(tmp_path, tensors: dict[str, tuple[list[int], str]], **config):
    """A Hugging Face folder: config.json and a safetensors file holding only its header."""
    header = {n: {"dtype": dt, "shape": shape, "data_offsets": [0, 0]} for n, (shape, dt) in tensors.items()}
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    (tmp_path / "model.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw)
    (tmp_path / "config.json").write_text(json.dumps(config))
    return tmp_path


SMALL = {"model_type": "llama", "num_hidden_layers": 2, "hidden_size": 256, "num_attention_heads": 4,
         "num_key_value_heads": 2, "vocab_size": 1024, "intermediate_size": 512}


def test_a_quantized_checkpoint_is_planned_at_its_stored_bytes(tmp_path):
    """AWQ packs 8 int4 weights in each I32: counting elements as parameters, times 0.53
    bytes, planned an 8B AWQ at a fifth of its size. FP8 weights are 1 byte, not bf16's 2."""
    h, f = SMALL["hidden_size"], SMALL["intermediate_size"]
    tensors = {"model.embed_tokens.weight": ([1024, h], "F16"), "lm_head.weight": ([1024, h], "F16")}
    for i in range(2):
        for name, (n_in, n_out) in {"q_proj": (h, h), "down_proj": (f, h), "up_proj": (h, f)}.items():
            p = f"model.layers.{i}.{name}"
            tensors |= {f"{p}.qweight": ([n_in, n_out // 8], "I32"), f"{p}.qzeros": ([n_in // 128, n_out // 8], "I32"),
                        f"{p}.scales": ([n_in // 128, n_out], "F16")}
    stored = sum(4 * s[0] * s[1] if dt == "I32" else 2 * s[0] * s[1] for s, dt in tensors.values())
    (tmp_path / "awq").mkdir()
    awq = _folder(tmp_path / "awq", tensors, **SMALL, quantization_config={"quant_method": "awq", "bits": 4})
    # the parameters are the config's shape, not the packed elements
    assert labkit.planner.model_spec(awq).n_params == labkit.planner.model_spec(SMALL).n_params
    for quant in (None, "awq", "Q4_K_M"):
        row = labkit.fit(awq, engines=["vllm"], quant=quant, gpu_memory="8GiB", context=1024).row("vllm")
        assert row["weights_gib"] * GiB == pytest.approx(stored) and row["quant"] == "awq", quant
        assert "as stored (awq checkpoint)" in row["note"]
    fp8 = {n: (s, "F8_E4M3" if "proj" in n else "BF16") for n, (s, _) in tensors.items() if "qweight" in n
           or "embed" in n or "lm_head" in n}
    fp8 = {n.replace(".qweight", ".weight"): (s if "proj" not in n else [s[0], s[1] * 8], dt)
           for n, (s, dt) in fp8.items()}
    (tmp_path / "fp8").mkdir()
    spec = labkit.planner.model_spec(_folder(tmp_path / "fp8", fp8, **SMALL))
    row = labkit.fit(spec, engines=["vllm"], gpu_memory="8GiB", context=1024).row("vllm")
    real = sum(s[0] * s[1] * (1 if dt == "F8_E4M3" else 2) for s, dt in fp8.values())
    assert spec.quant_method == "fp8" and row["weights_gib"] * GiB == pytest.approx(real)


def test_llama_cpp_pads_each_sequence_to_256_cells():
    """labkit runs llama-server with -c context x users and -np users: llama-context.cpp pads
    the total to 256, splits it, and pads each sequence's share to 256 again."""
    per_token = 2 * 32 * 8 * 128 * 2  # Llama-3-8B, f16
    for engine in ("llama.cpp", "llama-server"):
        row = labkit.fit(LLAMA_8B, engines=[engine], quant="Q4_K_M", context=300, users=4,
                         system_memory="64GiB").row(engine)
        assert row["kv_total_gib"] * GiB == 4 * 512 * per_token  # 1200 -> 1280 -> 320 each -> 512 each
    assert labkit.planner.llamacpp_cells_per_sequence(2048, 8) == 2048
    assert labkit.planner.llamacpp_cells_per_sequence(1000, 1) == 1024


def test_memory_sizes_must_be_positive():
    with pytest.raises(labkit.InvalidInput, match="system_memory must be positive"):
        labkit.fit(LLAMA_8B, system_memory="-4GiB")
    with pytest.raises(labkit.InvalidInput, match="system_memory must be positive"):
        labkit.fit(LLAMA_8B, system_memory=0)
    with pytest.raises(labkit.InvalidInput, match="gpu_memory must be positive"):
        labkit.fit(LLAMA_8B, gpu_memory="-4GiB")


def test_tied_embeddings_on_the_cpu_are_the_same_bytes_as_the_output():
    """llama.cpp's duplicated output tensor is token_embd itself while both stay on the CPU."""
    tied = {**LLAMA_8B, "num_hidden_layers": 28, "hidden_size": 3072, "num_attention_heads": 24,
            "intermediate_size": 8192, "tie_word_embeddings": True}

    def row(cfg, ngl):
        return labkit.fit(cfg, engines=["llama-server"], quant="Q4_K_M", gpu_memory="24GiB", gpu_layers=ngl,
                          system_memory="64GiB").row("llama-server")

    # -ngl 28 keeps only the output layer (and the embedding) on the CPU; -ngl 29 moves the output
    # to the GPU as a copy: the CPU keeps the embedding either way, the same bytes.
    assert row(tied, 28)["cpu_gib"] == pytest.approx(row(tied, 29)["cpu_gib"], abs=1e-4)  # (output_norm)
    assert row(tied, 29)["gpu_gib"] > row(tied, 28)["gpu_gib"]  # on the GPU it is a copy
    untied = {**tied, "tie_word_embeddings": False}
    assert row(untied, 28)["cpu_gib"] > row(untied, 29)["cpu_gib"]  # its own output.weight


def test_kv_cache_types_belong_to_their_engine():
    with pytest.raises(labkit.InvalidInput, match=r"llama.cpp has no KV cache type 'fp8'; its types: auto, f32.*"
                                                  r"fp8 is vLLM's"):
        labkit.fit(LLAMA_8B, kv_cache_type="fp8", gpu_memory="24GiB")
    with pytest.raises(labkit.InvalidInput, match=r"vllm has no KV cache type 'q8_0'.*float16, bfloat16, fp8"):
        labkit.fit(LLAMA_8B, engines=["vllm"], kv_cache_type="q8_0", gpu_memory="24GiB")
    auto = labkit.fit(LLAMA_8B, engines=["vllm"], gpu_memory="24GiB", dtype="bfloat16").row("vllm")
    fp8 = labkit.fit(LLAMA_8B, engines=["vllm"], kv_cache_type="fp8", gpu_memory="24GiB",
                     dtype="bfloat16").row("vllm")
    assert fp8["kv_per_token_kib"] == auto["kv_per_token_kib"] / 2 and fp8["max_users"] > auto["max_users"]
    q8 = labkit.fit(LLAMA_8B, engines=["llama-server"], kv_cache_type="q8_0", system_memory="64GiB").row(
        "llama-server")
    assert "quantized V cache needs flash_attn=True" in q8["note"]


def test_a_16_bit_kv_cache_type_plans_both_engines_by_either_name():
    """f16 (llama.cpp's name) and float16 (vLLM's) are one type: either plans both engines
    (f16 was the default before kv_cache_type became per engine)."""
    for name in ("f16", "float16", "bf16"):
        plan = labkit.fit(LLAMA_8B, kv_cache_type=name, gpu_memory="24GiB", dtype="bfloat16")
        assert plan.row("vllm")["kv_per_token_kib"] == plan.row("llama.cpp")["kv_per_token_kib"] == 128
    with pytest.raises(labkit.InvalidInput, match=r"vllm has no KV cache type 'f32'.*dtype='float32'"):
        labkit.fit(LLAMA_8B, engines=["vllm"], kv_cache_type="f32", gpu_memory="24GiB")


def test_vllm_on_a_gpu_profiles_its_default_batch_not_the_context():
    """The activation peak is max_num_batched_tokens' (chunked prefill: the LLM class 8192 on a
    card under 70 GiB, its server 2048; 16384 / 8192 on an H100), whatever the context."""
    def overhead(engine, context, card="24GiB"):
        return labkit.fit(LLAMA_8B, engines=[engine], gpu_memory=card, context=context,
                          dtype="bfloat16").row(engine)["overhead_gib"]

    assert overhead("vllm", 4096) == overhead("vllm", 32768)
    per_token = 14336 * 2 * 2 / GiB
    assert overhead("vllm", 4096) - overhead("vllm-server", 4096) == pytest.approx((8192 - 2048) * per_token, rel=0.01)
    assert overhead("vllm", 4096, "80GiB") - overhead("vllm", 4096) == pytest.approx((16384 - 8192) * per_token)


def test_check_compares_the_plan_with_peak_pss():
    import pandas as pd

    from labkit.loadgen.result import REQUEST_COLUMNS, BenchResult

    plan = labkit.fit(LLAMA_8B, engines=["vllm-server"], system_memory="64GiB")
    mem = pd.DataFrame({"t_s": [0.0, 1.0], "phase": ["load", "level"], "rss_bytes": [9 * GiB, 10 * GiB],
                        "pss_bytes": [8 * GiB, float("nan")]})
    t = plan.check(BenchResult(pd.DataFrame(columns=REQUEST_COLUMNS), mem, {}))
    assert t.iloc[0]["measured_gib"] == 8  # PSS (what the plan was calibrated on), not RSS's 10
    no_pss = mem.assign(pss_bytes=float("nan"))
    assert plan.check(BenchResult(pd.DataFrame(columns=REQUEST_COLUMNS), no_pss, {})).iloc[0]["measured_gib"] == 10
