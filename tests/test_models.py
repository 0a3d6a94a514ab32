"""Model names, file checks, conversion and quantized variants."""

from __future__ import annotations

import json

import pytest

from labkit import models
from labkit.errors import InvalidInput, ModelError, ModelNotFound


def test_bundled_model_resolves_to_a_real_gguf():
    path = models.resolve("smollm2-135m")
    assert path.suffix == ".gguf" and path.stat().st_size > 50_000_000
    models.check_gguf(path)


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ModelNotFound, match="smollm2-135m"):
        models.resolve("llama-70b")


def test_missing_file(tmp_path):
    with pytest.raises(ModelNotFound):
        models.resolve(str(tmp_path / "nope.gguf"))


def test_a_missing_relative_file_is_a_missing_file_not_a_repo_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelNotFound, match="No model named 'models/qwen.gguf'"):
        models.resolve("models/qwen.gguf")  # (read as org/name, it sent the user to `hf download`)


def test_a_folder_of_several_ggufs_names_them_instead_of_loading_the_first(tmp_path):
    src = models.resolve("smollm2-135m")
    (tmp_path / "config.json").write_text("{}")  # a model repo that also ships GGUFs
    for name in ("m-Q2_K.gguf", "m-Q8_0.gguf", "mmproj-m-f16.gguf"):
        (tmp_path / name).symlink_to(src)
    with pytest.raises(ModelError, match=r"holds 2 GGUF files \(m-Q2_K.gguf, m-Q8_0.gguf\); name the one"):
        models.gguf_path(tmp_path)
    (tmp_path / "m-Q8_0.gguf").unlink()
    assert models.gguf_path(tmp_path).name == "m-Q2_K.gguf"  # one model (and a projector): that one


def test_file_that_is_not_gguf(tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"PK\x03\x04 this is a zip file")
    with pytest.raises(ModelError, match="not a GGUF"):
        models.resolve(str(bad))


def test_truncated_gguf(tmp_path):
    src = models.resolve("smollm2-135m")
    cut = tmp_path / "cut.gguf"
    with open(src, "rb") as f:
        cut.write_bytes(f.read(src.stat().st_size // 2))
    with pytest.raises(ModelError, match="truncated"):
        models.resolve(str(cut))


def test_hf_directory_without_config(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelError, match="config.json"):
        models.resolve(str(tmp_path))


def test_hf_conversion_is_cached_and_complete():
    d = models.hf_dir("smollm2-135m")
    assert (d / "config.json").exists() and list(d.glob("*.safetensors"))
    cfg = json.loads((d / "config.json").read_text())
    assert "quantization_config" not in cfg
    assert models.hf_dir("smollm2-135m") == d  # second call reuses the cache


def test_the_hf_to_gguf_cache_key_follows_the_weights_not_only_the_config(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"w" * 10)
    first = models._hf_key(tmp_path)
    (tmp_path / "README.md").write_text("notes")
    assert models._hf_key(tmp_path) == first  # what the conversion does not read does not count
    weights.write_bytes(b"v" * 11)  # retrained in place, the same config
    assert models._hf_key(tmp_path) != first


def test_unknown_quant_type_lists_valid_ones():
    with pytest.raises(InvalidInput, match="Q4_K_M"):
        models.variant("smollm2-135m", "Q9_Z")


def test_variant_is_made_once_and_listed():
    q8 = models.variant("smollm2-135m", "Q8_0")
    models.check_gguf(q8)
    assert models.variant("smollm2-135m", "q8_0") == q8
    assert models.resolve("smollm2-135m:Q8_0") == q8
    names = [e.name for e in models.list_models()]
    assert "smollm2-135m" in names and "smollm2-135m:Q8_0" in names
