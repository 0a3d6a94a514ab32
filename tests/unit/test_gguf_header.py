"""labkit's GGUF header reader against files written by the gguf package's own writer."""

from __future__ import annotations

import numpy as np
import pytest

from labkit.errors import ModelError
from labkit.gguf_header import ArrayInfo, read_header


@pytest.fixture(scope="module")
def small_gguf(tmp_path_factory):
    import gguf

    path = tmp_path_factory.mktemp("gguf") / "small.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(2)
    w.add_head_count_kv([1, 2])  # a per-layer array: decoded, it is short
    w.add_bool("tokenizer.ggml.add_bos_token", True)
    w.add_token_list([f"tok{i}" for i in range(300)])  # long: kept as its length
    w.add_float32("some.scale", 0.5)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    w.add_tensor("a.weight", np.ones((3, 64), dtype=np.float32))
    q8 = gguf.quants.quantize(np.ones((4, 64), dtype=np.float32), gguf.GGMLQuantizationType.Q8_0)
    w.add_tensor("b.weight", q8, raw_shape=q8.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_metadata_and_tensor_table_match_the_gguf_reader(small_gguf):
    import gguf

    h = read_header(small_gguf)
    assert h.architecture == "llama" and h.arch_get("block_count") == 2
    assert h.arch_get("attention.head_count_kv") == [1, 2]
    assert h.get("tokenizer.ggml.add_bos_token") is True and h.get("some.scale") == 0.5
    assert h.get("tokenizer.ggml.tokens") == ArrayInfo(8, 300) and len(h.get("tokenizer.ggml.tokens")) == 300
    assert h.file_type == "Q8_0"
    ref = gguf.GGUFReader(small_gguf)
    got = [(t.name, t.shape, t.type_name, t.offset, t.n_bytes) for t in h.tensors]
    want = [(t.name, tuple(int(x) for x in t.shape), t.tensor_type.name, int(t.data_offset),
             int(t.n_bytes)) for t in ref.tensors]
    assert got == want
    assert 0 <= small_gguf.stat().st_size - h.data_end < 32  # the writer pads to the alignment


def test_arrays_named_in_decode_are_read_in_full(small_gguf):
    tokens = read_header(small_gguf, decode=["tokenizer.ggml.tokens"]).get("tokenizer.ggml.tokens")
    assert tokens[:2] == ["tok0", "tok1"] and len(tokens) == 300


@pytest.mark.parametrize("keep", [0, 3, 40, 200])
def test_a_header_cut_short_is_a_model_error(small_gguf, tmp_path, keep):
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(small_gguf.read_bytes()[:keep])
    with pytest.raises(ModelError, match="GGUF"):
        read_header(cut)
