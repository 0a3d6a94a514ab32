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
