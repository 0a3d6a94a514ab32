"""GGUF -> Hugging Face conversions are proven equal to llama.cpp on their source, or refused."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from labkit import conversion, models
from labkit.errors import ModelError


def _with_bos(src: Path, dst: Path) -> Path:
    """A copy of ``src`` whose metadata says to add BOS (as Gemma's does): one byte flipped."""
    data = bytearray(src.read_bytes())
    key = b"tokenizer.ggml.add_bos_token"
    at = data.find(key) + len(key)
    assert at > len(key) and struct.unpack_from("<I", data, at)[0] == 7  # a bool follows
    data[at + 4] = 1
    dst.write_bytes(data)
    return dst


@pytest.fixture(scope="module")
def bos_model(tmp_path_factory):
    """The bundled model, told to add BOS, converted for vLLM (and checked) once."""
    gguf = _with_bos(models.resolve("smollm2-135m"), tmp_path_factory.mktemp("bos") / "smollm2-bos.gguf")
    return gguf, models.hf_dir(gguf)


def test_the_bundled_conversion_is_checked_and_models_shows_it():
    hf = models.hf_dir("smollm2-135m")
    c = conversion.read_check(hf)
    assert c is not None and c.passed and not c.differences
    assert c.top1_agreement >= conversion.MIN_TOP1 and c.mean_kl <= conversion.MAX_MEAN_KL
    assert c.probes == len(conversion.PROBES) and c.forced_tokens == conversion.FORCED_TOKENS
    r = subprocess.run([sys.executable, "-m", "labkit.cli", "models", "--json"], capture_output=True,
                       text=True)
    rows = {row["path"]: row for row in map(json.loads, r.stdout.splitlines())}
    assert rows[str(hf)]["check"].startswith("checked:")


def test_a_gguf_that_adds_bos_converts_to_a_tokenizer_that_adds_bos(bos_model):
    from transformers import AutoTokenizer

    gguf, hf = bos_model
    assert AutoTokenizer.from_pretrained(hf).encode("Hello")[0] == 1  # <|im_start|>, the BOS
    assert conversion.read_check(hf).passed


def test_a_converted_tokenizer_that_drops_bos_is_refused_with_the_reason(bos_model, tmp_path):
    from transformers import AutoTokenizer

    gguf, hf = bos_model
    broken = shutil.copytree(hf, tmp_path / "broken", ignore=shutil.ignore_patterns(conversion.CHECK_FILE))
    tok = AutoTokenizer.from_pretrained(broken)
    tok.add_bos_token = False  # what transformers' GGUF loader did to Gemma
    tok.save_pretrained(broken)
    with pytest.raises(ModelError, match="the converted tokenizer does not add BOS; llama.cpp does"):
        conversion.ensure_checked(gguf, broken, "gguf->hf", broken)
    stored = conversion.read_check(broken)  # the failure is stored: no second check, same error
    assert not stored.passed and stored.differences[0]["probe"] == "plain text"


def test_scrambled_weights_fail_the_teacher_forced_check(tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    hf = models.hf_dir("smollm2-135m")
    broken = shutil.copytree(hf, tmp_path / "scrambled", ignore=shutil.ignore_patterns(conversion.CHECK_FILE))
    weights = load_file(broken / "model.safetensors")
    for name in [n for n in weights if n.endswith("self_attn.q_proj.weight")]:
        # rows out of order: a classic Q/K permutation bug in a converter
        weights[name] = weights[name][torch.randperm(weights[name].shape[0], generator=torch.Generator().manual_seed(0))]
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    c = conversion.check(models.resolve("smollm2-135m"), broken, "gguf->hf")
    assert not c.differences  # the tokenizer is fine
    assert not c.passed and "predict differently" in c.reason, c.to_dict()
    assert c.top1_agreement < conversion.MIN_TOP1


def test_an_architecture_transformers_cannot_convert_names_itself_and_the_way_out(tmp_path):
    import gguf
    import numpy as np

    path = tmp_path / "odd.gguf"
    w = gguf.GGUFWriter(str(path), "rwkv7")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((8, 32), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ModelError, match=r"architecture 'rwkv7'.*Pair the GGUF .*'vllm': 'org/name'"):
        models.hf_dir(path)


def test_a_conversion_that_lost_its_rope_base_is_refused(tmp_path):
    from labkit import positions

    gguf, hf = models.resolve("smollm2-135m"), models.hf_dir("smollm2-135m")
    assert positions.differences(gguf, hf) == []  # the bundled pair places tokens alike
    broken = shutil.copytree(hf, tmp_path / "rope", ignore=shutil.ignore_patterns(conversion.CHECK_FILE))
    cfg = json.loads((broken / "config.json").read_text())
    cfg["rope_parameters"]["rope_theta"] = 10000.0  # llama's default, where SmolLM2 uses 100000
    cfg["sliding_window"] = 300  # vLLM would apply it; llama.cpp does not know of it
    (broken / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match=r"rope base differs \(llama.cpp 100000, the converted config 10000\)"):
        conversion.ensure_checked(gguf, broken, "gguf->hf", broken)
    stored = conversion.read_check(broken)
    assert [d["probe"] for d in stored.differences] == ["rope base", "sliding window"]
    # llama.cpp cannot slide a "llama" GGUF: a window there is a limit, and the text stops short of it
    assert stored.valid_up_to == 300 and stored.forced_tokens == conversion.FORCED_TOKENS < 300


def test_the_converted_stop_tokens_are_what_llama_cpp_stops_on():
    """conversion.eog_ids copies llama.cpp's rule by hand: it must give llama_vocab_is_eog's set."""
    import llama_cpp

    from labkit.engines.llamacpp import LlamaCppEngine

    hf = models.hf_dir("smollm2-135m")
    with LlamaCppEngine(str(models.resolve("smollm2-135m")), context=64) as eng:
        vocab = eng.llama._model.vocab
        want = [t for t in range(eng.llama.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, t)]
    got = json.loads((hf / "generation_config.json").read_text())["eos_token_id"]
    assert (got if isinstance(got, list) else [got]) == want
