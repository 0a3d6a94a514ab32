"""Models from the Hugging Face cache by repo id, and GGUF + HF pairs given explicitly.

The cache is built here in huggingface_hub's own layout (models--org--name/refs/main and
snapshots/<commit>/, files linked as the hub links its blobs), from the bundled model.
"""

from __future__ import annotations

import shutil

import pytest

import labkit
from labkit import conversion, models
from labkit.errors import InvalidInput, ModelError, ModelNotFound


def _repo(cache, repo: str, files: dict[str, object], commit: str) -> None:
    base = cache / f"models--{repo.replace('/', '--')}"
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(commit)
    snap = base / "snapshots" / commit
    snap.mkdir(parents=True)
    for name, src in files.items():
        (snap / name).symlink_to(src)


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    cache = tmp_path_factory.mktemp("hf-hub")
    _repo(cache, "acme/smol-gguf", {"smol-Q4_1.gguf": models.resolve("smollm2-135m"),
                                    "smol-Q8_0.gguf": models.variant("smollm2-135m", "Q8_0")}, "a" * 40)
    hf = models.hf_dir("smollm2-135m")
    _repo(cache, "acme/smol", {f.name: f for f in hf.iterdir() if f.name != conversion.CHECK_FILE}, "b" * 40)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_CACHE", str(cache))
        mp.setenv("HF_HUB_OFFLINE", "1")
        yield cache


def test_repo_ids_resolve_offline_from_the_cache(hub):
    assert (models.resolve("acme/smol") / "config.json").exists()
    assert models.resolve("acme/smol-gguf:Q8_0").name == "smol-Q8_0.gguf"
    assert models.resolve("acme/smol-gguf:smol-Q4_1.gguf").name == "smol-Q4_1.gguf"
    with pytest.raises(ModelNotFound, match=r"holds 2 GGUF files .*acme/smol-gguf:QUANT"):
        models.resolve("acme/smol-gguf")
    with pytest.raises(ModelNotFound, match=r"no GGUF matching 'Q2_K'.*smol-Q8_0.gguf"):
        models.resolve("acme/smol-gguf:Q2_K")
    with pytest.raises(ModelNotFound, match=r"not in the Hugging Face cache .*`hf download acme/absent`"):
        models.resolve("acme/absent")


def test_llama_cpp_loads_a_gguf_by_repo_id_and_names_it_so(hub):
    with labkit.load("llama.cpp", model="acme/smol-gguf:Q8_0", context=256) as e:
        assert e.info.model == "acme/smol-gguf:Q8_0"
        assert e.generate(["The capital of France is"], max_tokens=4)[0].token_ids


def test_an_explicit_pair_is_checked_and_each_engine_takes_its_side(hub):
    pair = {"llama.cpp": "acme/smol-gguf:Q8_0", "vllm": "acme/smol"}
    assert models.paired(pair, "hf") == "acme/smol" and models.paired(pair, "gguf") == "acme/smol-gguf:Q8_0"
    c = conversion.ensure_pair_checked(models.resolve("acme/smol-gguf:Q8_0"), models.resolve("acme/smol"))
    assert c.passed and c.direction == "pair" and not c.differences
    assert 0.5 < c.top1_agreement <= 1 and c.mean_kl >= 0  # reported: Q8_0 against bf16, on purpose
    with labkit.load("llama.cpp", model=pair, context=256) as e:
        assert e.info.model == "acme/smol-gguf:Q8_0"
    with pytest.raises(InvalidInput, match="one GGUF .* and one Hugging Face model"):
        models.paired({"llama.cpp": "acme/smol-gguf:Q8_0"}, "gguf")


def test_a_pair_that_tokenizes_differently_is_refused_unless_allowed(hub, tmp_path):
    from transformers import AutoTokenizer

    other = shutil.copytree(models.resolve("acme/smol"), tmp_path / "adds-bos")
    tok = AutoTokenizer.from_pretrained(other)
    tok.add_bos_token = True
    tok.save_pretrained(other)
    pair = {"gguf": "acme/smol-gguf:Q8_0", "hf": str(other)}
    with pytest.raises(ModelError, match="the Hugging Face tokenizer adds BOS; llama.cpp does not"):
        models.paired(pair, "hf")
    assert models.paired(pair, "hf", allow_token_mismatch=True) == str(other)


def test_a_quant_missing_from_a_partly_cached_repo_is_fetched_when_online(hub, monkeypatch):
    from labkit import hub as hub_mod

    asked = []

    def download(repo, pick, fetch):
        asked.append((repo, pick))
        raise ModelNotFound("no network here")

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(hub_mod, "_download", download)
    with pytest.raises(ModelNotFound, match=r"no GGUF matching 'Q2_K'.*none was downloaded.*hf download acme/smol-gguf"):
        models.resolve("acme/smol-gguf:Q2_K")
    assert asked == [("acme/smol-gguf", "Q2_K")]  # tried, not refused from the cache alone
    assert models.resolve("acme/smol-gguf:Q8_0").name == "smol-Q8_0.gguf" and len(asked) == 1  # cached: no fetch


def test_a_split_gguf_is_picked_by_its_first_part(tmp_path):
    from labkit.hub import _pick

    parts = [tmp_path / f"m-Q4_K_M-{i:05d}-of-00002.gguf" for i in (1, 2)]
    assert _pick([*parts, tmp_path / "m-Q8_0.gguf"], "Q4_K_M") == parts[0]
    assert _pick(parts, "Q8_0") is None
    model, projector = tmp_path / "gemma-3-4b-it-F16.gguf", tmp_path / "mmproj-gemma-3-4b-it-F16.gguf"
    assert _pick([model, projector], "F16") == model  # a multimodal repo: the model, not its projector
    with pytest.raises(ModelNotFound, match="matches 2 GGUF files"):
        _pick([model, tmp_path / "other-F16.gguf"], "F16")
