"""Synthetic models: the planned tensor table, exactly, in a file both engines load."""

from __future__ import annotations

import pytest
from gguf import GGUFReader

import labkit
from labkit import models, synthetic
from labkit.errors import InvalidInput, ModelError
from labkit.planner import tensor_bytes

QWEN_TINY = {"name": "qwen-tiny", "model_type": "qwen2", "hidden_size": 256, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 512,
             "vocab_size": 50000, "tie_word_embeddings": False}


@pytest.mark.parametrize("shape, quant", [("smollm2-135m", "Q4_K_M"), (QWEN_TINY, "Q8_0"),
                                          (QWEN_TINY, "IQ3_S")])
def test_file_tensor_table_matches_the_plan_exactly(shape, quant):
    m = synthetic.synthetic(shape, quant=quant, progress=False)
    planned = synthetic.planned_tensors(m.config, quant)
    got = GGUFReader(m.gguf).tensors
    assert [t.name for t in got] == [t.name for t in planned]
    for g, p in zip(got, planned, strict=True):
        assert g.tensor_type.name == p.ggml_type, g.name
        assert tuple(int(x) for x in g.shape) == p.shape, g.name
        assert int(g.n_bytes) == tensor_bytes(p.shape, p.ggml_type), g.name
    assert sum(int(t.n_bytes) for t in got) == m.weight_bytes


def test_the_quantization_mix_is_llama_quantizes():
    """The synthetic SmolLM2 at Q4_K_M has the types llama-quantize gives the real one."""
    real = {t.name: t.tensor_type.name for t in GGUFReader(models.variant("smollm2-135m", "Q4_K_M")).tensors}
    made = {t.name: t.ggml_type for t in synthetic.planned_tensors(synthetic.SHAPES["smollm2-135m"], "Q4_K_M")}
    assert made == real


def test_a_synthetic_model_generates_in_llama_cpp_and_is_marked_synthetic():
    m = labkit.models.synthetic("smollm2-135m", quant="Q4_K_M", progress=False)
    with labkit.load("llama.cpp", model=m) as e:
        out = e.generate(["Hello"], max_tokens=12, temperature=0, ignore_eos=True)[0]
        assert len(out.token_ids) == 12
        assert e.info.model == "synthetic:smollm2-135m:Q4_K_M"


def test_a_synthetic_model_loads_in_vllm_with_dummy_weights():
    m = labkit.models.synthetic("smollm2-135m", quant=None, progress=False)
    assert m.gguf is None and not list(m.folder.glob("*.safetensors"))
    with labkit.load("vllm", model=m) as e:
        out = e.generate(["Hello"], max_tokens=12, temperature=0, ignore_eos=True)[0]
        assert len(out.token_ids) == 12
        assert e.info.model == "synthetic:smollm2-135m"


@pytest.mark.parametrize("cfg, message", [
    ({**QWEN_TINY, "hidden_size": 250}, "does not divide hidden_size"),
    ({k: v for k, v in QWEN_TINY.items() if k != "num_hidden_layers"}, "num_hidden_layers"),
    ({**QWEN_TINY, "num_key_value_heads": 3}, "must divide num_attention_heads"),
    ({**QWEN_TINY, "vocab_size": "many"}, "vocab_size"),
])
def test_bad_configs_name_the_field(cfg, message):
    with pytest.raises(InvalidInput, match=message):
        synthetic.synthetic(cfg, quant="Q4_K_M", progress=False)


def test_a_model_larger_than_the_free_disk_is_refused_before_writing(monkeypatch, tmp_path):
    monkeypatch.setenv("LABKIT_CACHE", str(tmp_path))
    monkeypatch.setattr(synthetic.shutil, "disk_usage", lambda p: type("U", (), {"free": 10 * 2**30})())
    with pytest.raises(ModelError, match=r"needs 39\.\d\d GiB of disk"):
        synthetic.synthetic("llama-3-70b", quant="Q4_K_M", progress=False)
    assert not list((tmp_path / "synthetic").glob("llama-3-70b*"))


def test_gpu_layers_above_the_layer_count_is_refused_not_clamped():
    with pytest.raises(InvalidInput, match="has 16 layers"):
        labkit.fit(synthetic.SHAPES["llama-3.2-1b"], quant="Q4_K_M", gpu_memory="12GiB", gpu_layers=40)
    with pytest.raises(InvalidInput, match="needs gpu_memory"):
        labkit.fit(synthetic.SHAPES["llama-3.2-1b"], quant="Q4_K_M", gpu_layers=8)


def test_unknown_shape_lists_the_named_ones():
    with pytest.raises(InvalidInput, match="llama-3-8b"):
        synthetic.synthetic("llama-9000b")


class FakeNvml:
    """NVML where none exists (the one fake allowed): each process's VRAM reads as its RSS."""

    def used_bytes(self) -> int:
        return 2**30

    def process_bytes(self, pids: set[int]) -> int:
        import psutil

        return sum(psutil.Process(p).memory_info().rss for p in pids if psutil.pid_exists(p))

    def name(self) -> str:
        return "Fake GPU"


def test_a_card_run_uses_the_planned_split_and_reports_measured_vram(monkeypatch):
    """labkit.card.measure, the verdict's 26B row on a GPU: a tiny shape, a fake NVML."""
    from labkit import card, memory

    monkeypatch.setattr(memory, "nvml", lambda: FakeNvml())
    run = card.measure(QWEN_TINY, quant="Q8_0", gpu_memory="1GiB", requests=1, output_tokens=8,
                       progress=False)
    plan = labkit.fit(labkit.models.synthetic(QWEN_TINY, quant="Q8_0", progress=False),
                      engines=["llama-server"], quant="Q8_0", context=512, gpu_memory="1GiB")
    assert run.gpu_layers == plan.row("llama-server")["gpu_layers"] == run.n_layers + 1
    assert run.gpu == "Fake GPU" and run.card_gib == 1.0
    assert 0 < run.measured_gpu_gib < 1 and run.fits is True  # the server's RSS, through the fake
    assert run.output_tok_s_1_user > 0 and "synthetic weights" in run.text()
