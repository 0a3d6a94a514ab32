"""Model specs read from GGUFs and configs: what the planner is told a model is (labkit.models)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from labkit import models, synthetic
from labkit.errors import InvalidInput, ModelError
from labkit.planner import kv_bytes, model_spec


def _gguf(path, arch="llama", *, layers=4, window=None, pattern=None, split=None, keys=True, tensor_rows=8):
    import gguf

    w = gguf.GGUFWriter(str(path), arch)
    if keys:
        w.add_block_count(layers)
        w.add_embedding_length(64)
        w.add_head_count(4)
        w.add_head_count_kv(2)
    if window:
        w.add_sliding_window(window)
    if pattern is not None:
        w.add_key_value(f"{arch}.attention.sliding_window_pattern", pattern,
                        gguf.GGUFValueType.ARRAY if isinstance(pattern, list) else gguf.GGUFValueType.UINT32,
                        sub_type=gguf.GGUFValueType.BOOL if isinstance(pattern, list) else None)
    if split:
        w.add_key_value("split.count", split, gguf.GGUFValueType.UINT16)
    w.add_tensor("token_embd.weight", np.zeros((tensor_rows, 64), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_gpt_oss_slides_every_other_layer_as_llama_cpp_does(tmp_path):
    spec = model_spec(_gguf(tmp_path / "oss.gguf", "gpt-oss", layers=24, window=128))
    a = spec.architecture()
    assert spec.swa_pattern == 2 and [a.is_swa_layer(i) for i in range(4)] == [True, False, True, False]
    full = kv_bytes(spec, 32768, 1, "llama.cpp")  # (in process: every layer full-size)
    assert kv_bytes(spec, 32768, 1, "llama-server") > full / 2  # half the layers are global


def test_per_layer_flags_of_many_layers_are_read_and_dense_first_is_kept(tmp_path):
    flags = [i % 4 != 0 for i in range(80)]  # global first in every 4 (smallthinker's layout)
    spec = model_spec(_gguf(tmp_path / "m.gguf", "smallthinker", layers=80, window=4096, pattern=flags))
    a = spec.architecture()
    assert [a.is_swa_layer(i) for i in range(80)] == flags
    irregular = [i not in (0, 1, 5, 9) for i in range(12)]  # no period at all: kept layer by layer
    a = model_spec(_gguf(tmp_path / "i.gguf", "smallthinker", layers=12, window=128, pattern=irregular)).architecture()
    assert [a.is_swa_layer(i) for i in range(12)] == irregular


def test_a_window_pattern_on_an_architecture_llama_cpp_does_not_slide_is_not_applied_there(tmp_path):
    """llama.cpp reads a window and its pattern only for the architectures it slides: a
    "llama" GGUF carrying them keeps every layer full-size in llama-server."""
    for pattern in (4, [True, True, True, False]):
        spec = model_spec(_gguf(tmp_path / "m.gguf", "llama", window=512, pattern=pattern))
        assert not spec.llamacpp_swa
        assert kv_bytes(spec, 8192, 1, "llama-server") == kv_bytes(spec, 8192, 1, "llama.cpp")


def test_a_window_llama_cpp_does_not_apply_is_full_size_there_and_windowed_in_vllm(tmp_path):
    # a Mistral v0.1 GGUF is a "llama" one with a window: llama.cpp ignores it, vLLM slides
    spec = model_spec(_gguf(tmp_path / "m.gguf", "llama", window=512))
    assert not spec.llamacpp_swa
    assert kv_bytes(spec, 8192, 1, "llama-server") == kv_bytes(spec, 8192, 1, "llama.cpp")
    # vLLM admits window - 1 + the tokens in flight, plus one block of 16
    cells = 16 * (-(-(511 + 2048) // 16) + 1)
    assert kv_bytes(spec, 8192, 1, "vllm") == kv_bytes(spec, 8192, 1, "llama-server") * cells / 8192
    cfg = {"model_type": "mistral", "hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32,
           "num_key_value_heads": 8, "vocab_size": 32000, "sliding_window": 4096}  # v0.1: no use_ flag
    spec = model_spec(cfg)
    assert spec.architecture().sliding_window == 4096
    assert kv_bytes(spec, 32768, 1, "vllm") < kv_bytes(spec, 32768, 1, "llama-server")
    qwen = {**cfg, "model_type": "qwen2", "sliding_window": 32768, "use_sliding_window": False}
    assert model_spec(qwen).architecture().sliding_window is None


def test_a_split_gguf_is_planned_from_every_part(tmp_path):
    for i in (1, 2, 3):
        _gguf(tmp_path / f"m-{i:05d}-of-00003.gguf", split=3, keys=i == 1)
    spec = model_spec(tmp_path / "m-00001-of-00003.gguf")
    assert spec.n_params == 3 * 8 * 64
    (tmp_path / "m-00003-of-00003.gguf").unlink()
    with pytest.raises(ModelError, match="m-00003-of-00003.gguf is not beside it"):
        model_spec(tmp_path / "m-00001-of-00003.gguf")
    with pytest.raises(ModelError, match="pass the first one"):
        model_spec(tmp_path / "m-00002-of-00003.gguf")


def test_a_gguf_that_is_not_a_language_model_is_named(tmp_path):
    with pytest.raises(ModelError, match=r"no usable clip.attention.head_count .*not a language model"):
        model_spec(_gguf(tmp_path / "mmproj.gguf", "clip", keys=False))


def test_a_header_with_alignment_zero_is_a_model_error(tmp_path):
    import gguf

    path = tmp_path / "a0.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_uint32("general.alignment", 0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.close()
    with pytest.raises(ModelError, match="alignment is 0"):
        models.check_gguf(path)


def test_a_synthetic_string_is_planned_without_writing_the_model(tmp_path, monkeypatch):
    monkeypatch.setenv("LABKIT_CACHE", str(tmp_path))
    spec = model_spec("synthetic:llama-3-70b:Q4_K_M")
    assert spec.synthetic and spec.file_type == "Q4_K_M" and not list(tmp_path.rglob("*.gguf"))
    plan = models_fit(spec)
    assert (plan.loc["llama-server", "quant"], plan.loc["llama-server", "weights_gib"]) == \
        ("Q4_K_M", pytest.approx(39.6, abs=0.5))  # the Q4_K_M file's size, not F16's 131 GiB


def models_fit(spec):
    from labkit import fit

    return fit(spec, engines=["llama-server"], context=2048, users=1).table.set_index("engine")


def test_a_multimodal_config_gives_vllm_the_text_model_labkit_planned(tmp_path, monkeypatch):
    from transformers import AutoConfig

    monkeypatch.setenv("LABKIT_CACHE", str(tmp_path))
    gemma_it = {"model_type": "gemma3", "name": "google/gemma-3-tiny-it", "vision_config": {"hidden_size": 8},
                "text_config": {"hidden_size": 256, "num_hidden_layers": 3, "num_attention_heads": 2,
                                "num_key_value_heads": 1, "head_dim": 128, "intermediate_size": 512,
                                "vocab_size": 49152, "sliding_window": 128}}
    m = synthetic.synthetic(gemma_it, quant=None, progress=False)
    assert m.folder.name.startswith("google_gemma-3-tiny-it-")  # a name, not a path
    cfg = AutoConfig.from_pretrained(m.folder)
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.intermediate_size) == (256, 3, 512)
    mistral = json.loads((synthetic.synthetic("mistral-7b", quant=None, progress=False).folder
                          / "config.json").read_text())
    assert mistral["sliding_window"] is None  # written, so MistralConfig does not default it to 4096


def test_a_tokenizer_json_that_is_not_labkits_is_refused(tmp_path):
    bad = tmp_path / "tok.json"
    bad.write_text(json.dumps({"tokenizer.ggml.model": "gpt2"}))
    with pytest.raises(InvalidInput, match="lacks tokenizer.ggml.tokens, source_sha256"):
        synthetic.synthetic("smollm2-135m", quant=None, tokenizer=bad, progress=False)
    with pytest.raises(InvalidInput, match="is not a file"):
        synthetic.synthetic("smollm2-135m", quant=None, tokenizer=tmp_path / "none.gguf", progress=False)


def test_broken_weights_and_fields_are_named(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2,
                                                    "num_attention_heads": 4, "vocab_size": 100}))
    (folder / "model.safetensors").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:ab\nsize 9\n")
    with pytest.raises(ModelError, match="a Git LFS pointer; run `git lfs pull`"):
        model_spec(folder)
    (folder / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelError, match="is not a safetensors file"):
        model_spec(folder)
    with pytest.raises(InvalidInput, match="'max_position_embeddings' must be a whole number, got '4k'"):
        model_spec({"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                    "vocab_size": 100, "max_position_embeddings": "4k"})
