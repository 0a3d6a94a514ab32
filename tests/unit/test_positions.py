"""Rope and sliding-window parity between a GGUF and a Hugging Face config (labkit.positions)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from labkit import positions

LLAMA31 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
           "original_max_position_embeddings": 8192}


def _gguf(path, *, theta=500000.0, window=None, scaling=None, factor=None, freqs=None, arch="llama"):
    import gguf

    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(1)
    w.add_rope_freq_base(theta)
    w.add_rope_dimension_count(128)
    if window:
        w.add_sliding_window(window)
    if scaling:
        w.add_rope_scaling_type(gguf.RopeScalingType(scaling))
        w.add_rope_scaling_factor(factor)
    w.add_tensor("token_embd.weight", np.zeros((8, 32), dtype=np.float32))
    if freqs is not None:
        w.add_tensor("rope_freqs.weight", np.asarray(freqs, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _hf(folder, **cfg):
    folder.mkdir()
    base = {"model_type": "llama", "hidden_size": 4096, "num_attention_heads": 32, "head_dim": 128}
    (folder / "config.json").write_text(json.dumps({**base, **cfg}))
    return folder


def _probes(g, h):
    return [d["probe"] for d in positions.differences(g, h)]


def test_the_same_placement_in_either_transformers_layout_passes(tmp_path):
    g = _gguf(tmp_path / "m.gguf", window=4096, arch="gemma2")
    assert _probes(g, _hf(tmp_path / "a", rope_theta=500000.0, sliding_window=4096)) == []
    assert _probes(g, _hf(tmp_path / "b", sliding_window=4096,
                          rope_parameters={"rope_theta": 500000.0, "rope_type": "default"})) == []


def test_a_dropped_rope_base_or_window_is_named(tmp_path):
    g = _gguf(tmp_path / "m.gguf", window=512, arch="gemma2")
    found = positions.differences(g, _hf(tmp_path / "a", rope_theta=10000.0))
    assert [d["probe"] for d in found] == ["rope base", "sliding window"]
    assert "llama.cpp 500000, the converted config 10000" in found[0]["diagnosis"]
    assert "prompts longer than 512 tokens" in found[1]["diagnosis"]
    assert "limit" not in found[1]  # Gemma 2 slides in llama.cpp too: a lost window is a failure


def test_an_early_gemma2_gguf_without_a_window_key_has_llama_cpps_default(tmp_path):
    assert _probes(_gguf(tmp_path / "g.gguf", arch="gemma2"), _hf(tmp_path / "hf", rope_theta=500000.0,
                                                                   sliding_window=4096)) == []


def test_a_window_both_engines_apply_must_be_the_same(tmp_path):
    # Gemma 3 slides in llama.cpp too: a conversion that changed its window is wrong, not limited
    (d,) = positions.differences(_gguf(tmp_path / "g.gguf", window=512, arch="gemma3"),
                                 _hf(tmp_path / "hf", rope_theta=500000.0, sliding_window=4096))
    assert d["probe"] == "sliding window" and "limit" not in d


def test_yarns_knobs_are_compared_where_both_sides_state_them(tmp_path):
    import gguf

    path = tmp_path / "y.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_rope_freq_base(500000.0)
    w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
    w.add_rope_scaling_factor(4.0)
    w.add_float32("llama.rope.scaling.yarn_beta_fast", 32.0)
    w.add_float32("llama.rope.scaling.yarn_attn_factor", 0.5)
    w.add_tensor("token_embd.weight", np.zeros((8, 32), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    same = {"rope_type": "yarn", "factor": 4.0, "beta_fast": 32.0, "attention_factor": 0.5}
    assert _probes(path, _hf(tmp_path / "a", rope_theta=500000.0, rope_scaling=same)) == []
    for changed in ({"beta_fast": 16.0}, {"attention_factor": 1.0}):
        assert _probes(path, _hf(tmp_path / str(changed), rope_theta=500000.0, rope_scaling={**same, **changed})) == [
            "rope scaling"]


def test_a_window_llama_cpp_does_not_apply_is_none_on_its_side(tmp_path):
    # Phi-3's GGUF carries 2047, which llama.cpp switches off; its converted config has none
    phi = _gguf(tmp_path / "phi.gguf", window=2047, arch="phi3")
    assert _probes(phi, _hf(tmp_path / "a", rope_theta=500000.0)) == []
    # Mistral v0.1: "llama" in the GGUF (no window), 4096 in a config that may not even say it
    mistral = _gguf(tmp_path / "m.gguf")
    for folder, cfg in (("b", {"sliding_window": 4096}), ("c", {"model_type": "mistral"})):
        (d,) = positions.differences(mistral, _hf(tmp_path / folder, rope_theta=500000.0, **cfg))
        assert d["limit"] == 4096 and "llama.cpp none" in d["diagnosis"]


def test_rope_type_aliases_are_read_as_transformers_reads_them(tmp_path):
    g = _gguf(tmp_path / "m.gguf")
    assert _probes(g, _hf(tmp_path / "vl", rope_theta=500000.0, rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]})) == []


def test_qwen2s_unused_window_is_not_a_window(tmp_path):
    g = _gguf(tmp_path / "m.gguf")
    assert _probes(g, _hf(tmp_path / "a", sliding_window=32768, use_sliding_window=False)) == []
    assert _probes(g, _hf(tmp_path / "b", sliding_window=32768, use_sliding_window=True)) == ["sliding window"]
    assert _probes(g, _hf(tmp_path / "c", model_type="qwen2")) == []  # (no window key: none)


def test_llama3_scaling_needs_the_gguf_rope_freqs_with_the_same_values(tmp_path):
    right = positions.llama3_factors(LLAMA31, 500000.0, 128)
    assert right[0] == 1.0 and right[-1] == 8.0 and len(right) == 64  # fast dims kept, slow ones scaled
    hf = _hf(tmp_path / "hf", rope_theta=500000.0, rope_scaling=LLAMA31)
    assert _probes(_gguf(tmp_path / "ok.gguf", freqs=right), hf) == []
    dropped = positions.differences(_gguf(tmp_path / "none.gguf"), hf)
    assert "has no rope_freqs.weight" in dropped[0]["diagnosis"]
    assert _probes(_gguf(tmp_path / "wrong.gguf", freqs=right * 2), hf) == ["rope scaling"]
    # the other way round: what transformers' GGUF loader did to Llama 3.1
    lost = positions.differences(_gguf(tmp_path / "ok2.gguf", freqs=right), _hf(tmp_path / "plain", rope_theta=500000.0))
    assert "the GGUF scales rope and the converted config does not" in lost[0]["diagnosis"]


@pytest.mark.parametrize(("gguf_kw", "scaling", "same"), [
    ({"scaling": "linear", "factor": 4.0}, {"rope_type": "linear", "factor": 4.0}, True),
    ({"scaling": "linear", "factor": 2.0}, {"rope_type": "linear", "factor": 4.0}, False),
    ({"scaling": "yarn", "factor": 4.0}, {"type": "yarn", "factor": 4.0}, True),
    ({}, {"rope_type": "yarn", "factor": 4.0}, False),
    ({}, {"rope_type": "dynamic", "factor": 2.0}, False),
    ({"scaling": "linear", "factor": 4.0}, None, False),
])
def test_linear_yarn_and_dynamic_scaling(tmp_path, gguf_kw, scaling, same):
    hf = _hf(tmp_path / "hf", rope_theta=500000.0, **({"rope_scaling": scaling} if scaling else {}))
    assert (_probes(_gguf(tmp_path / "m.gguf", **gguf_kw), hf) == []) == same


@pytest.mark.parametrize("factor", [8.0, 32.0])  # Llama 3.1, Llama 3.2
def test_a_conversion_can_rebuild_llama3_scaling_from_the_gguf_factors(factor):
    scaling = {**LLAMA31, "factor": factor}
    freqs = positions.llama3_factors(scaling, 500000.0, 128).astype(np.float32)
    assert positions.infer_llama3(freqs, 500000.0, 128) == scaling
    assert positions.infer_llama3(freqs * 1.5, 500000.0, 128) is None  # not a layout it knows: left to the check
