"""Output comparison across engines and quantizations, on the real bundled model."""

from __future__ import annotations

import pandas as pd
import pytest

from labkit.comparison import compare, first_divergence, kl_topk, quant_ladder
from labkit.errors import InvalidInput

from .conftest import PROMPTS


def test_an_engine_compared_with_itself_is_identical(llama):
    cmp = compare({"a": llama, "b": llama}, PROMPTS[:2], max_tokens=16)
    t = cmp.table
    assert t["identical_to_ref"].all() and t["first_divergence"].isna().all()
    assert (t["token_agreement"] == 1.0).all()
    p = cmp.parity.set_index("engine")
    assert p.loc["b", "mean_kl"] == pytest.approx(0.0, abs=1e-9)
    assert p.loc["b", "top1_agreement"] == 1.0


def test_llama_cpp_and_vllm_feed_the_same_prompt_ids(llama, vllm_engine):
    cmp = compare({"llama.cpp Q4_1": llama, "vllm": vllm_engine}, PROMPTS, max_tokens=32)
    assert cmp.prompt_ids["same_as_ref"].all(), cmp.prompt_ids[~cmp.prompt_ids["same_as_ref"]]
    par = cmp.parity.set_index("engine").loc["vllm"]
    # same weights (vLLM's are dequantized from the same Q4_1 file): close, not identical
    assert par["mean_kl"] < 0.05 and par["top1_agreement"] > 0.9
    print(f"\nvLLM vs llama.cpp on the bundled model: mean KL {par['mean_kl']:.5f}, "
          f"p99 KL {par['p99_kl']:.5f}, top-1 agreement {par['top1_agreement']:.3f}, "
          f"mean |dp| {par['mean_abs_delta_p']:.5f}")
    print(cmp.table[["prompt", "engine", "identical_to_ref", "first_divergence", "token_agreement"]])


def test_an_output_that_ends_on_its_end_token_carries_it_in_every_engine(llama, llama_server):
    # A one-word answer ends on SmolLM2's <|im_end|> (id 2) well before max_tokens.
    prompt = "<|im_start|>user\nReply with one word: yes or no. Is the sky blue?<|im_end|>\n<|im_start|>assistant\n"
    cmp = compare({"llama.cpp": llama, "llama-server": llama_server}, [prompt], max_tokens=40)
    ref, srv = cmp.generations["llama.cpp"][0], cmp.generations["llama-server"][0]
    assert ref.finish_reason == srv.finish_reason == "stop" and ref.token_ids[-1] == 2
    assert ref.token_ids == srv.token_ids  # the end token counted alike, not a divergence at the end
    row = cmp.table.set_index("engine").loc["llama-server"]
    assert row["identical_to_ref"] and row["token_agreement"] == 1.0


def test_an_engine_that_cannot_tokenize_is_unknown_not_different_even_as_the_reference(llama, llama_server):
    import labkit

    generic = labkit.load("openai", url=llama_server.url)
    generic.flavor = "generic"  # a server labkit does not know: it cannot tell token ids
    try:
        cmp = compare({"generic": generic, "llama.cpp": llama}, PROMPTS[:1], max_tokens=8)
    finally:
        generic.close()
    assert cmp.prompt_ids["same_as_ref"].isna().all()  # unknown, where it used to say "different"
    assert cmp.table["same_prompt_tokens"].isna().all() and cmp.parity.empty
    assert any("cannot give token ids here" in n for n in cmp.notes)
    page = cmp._repr_html_()
    assert "Prompt token ids not checked for generic, llama.cpp" in page and "not fed the same prompt tokens" not in page


def test_a_server_that_holds_back_ids_of_split_characters_is_compared_as_text_and_counted_right(llama, llama_server):
    # SmolLM2 spells each emoji in several byte tokens; llama-server sends one id per character
    prompt = "Emoji list: \U0001F600\U0001F603\U0001F604"
    cmp = compare({"llama.cpp": llama, "llama-server": llama_server}, [prompt], max_tokens=12)
    ref, srv = cmp.generations["llama.cpp"][0], cmp.generations["llama-server"][0]
    assert len(ref.token_ids) == 12 and srv.token_ids is None  # unknown, not 4 ids shifted against 12
    assert srv.n_tokens == 12 and srv.text == ref.text
    row = cmp.table.set_index("engine").loc["llama-server"]
    assert row["identical_to_ref"] and row["divergence_unit"] == "char" and pd.isna(row["first_divergence"])


def test_html_highlights_the_divergence(llama):
    # Two real runs that differ: greedy vs a different prompt suffix would not be the same
    # prompt, so compare greedy with a sampled run of the same engine.
    class Sampled:
        """The same engine, sampling at temperature 1.5 (a real, different generation)."""

        name = "sampled"

        def __init__(self, engine):
            self.e = engine

        def generate(self, prompts, **kw):
            return self.e.generate(prompts, **{**kw, "temperature": 1.5, "seed": 7})

        def tokenize(self, text, chat=False):
            return self.e.tokenize(text, chat=chat)

    cmp = compare({"greedy": llama, "sampled": Sampled(llama)}, [PROMPTS[3]], max_tokens=24)
    row = cmp.table.set_index("engine").loc["sampled"]
    assert not row["identical_to_ref"] and row["first_divergence"] is not None
    # How much the reference preferred its token over the sampled one, from its own scores.
    ref_ids, other_ids = cmp.generations["greedy"][0].token_ids, cmp.generations["sampled"][0].token_ids
    fd = int(row["first_divergence"])
    assert fd < min(len(ref_ids), len(other_ids))  # sampled at 1.5, it parts early
    r = llama.score(llama.tokenize(PROMPTS[3]), ref_ids, 20)[fd]
    want = r[ref_ids[fd]] - r.get(other_ids[fd], min(r.values()))
    assert row["margin_at_divergence"] == pytest.approx(want) and want > 0
    html = cmp._repr_html_()
    assert "lk-ins" in html and "diverges at token" in html and "nats" in html


def test_bad_input():
    with pytest.raises(InvalidInput, match="two engines"):
        compare({"only": None}, PROMPTS)
    with pytest.raises(InvalidInput, match="at least one prompt"):
        compare({"a": None, "b": None}, [])
    with pytest.raises(InvalidInput, match="Q4_K_M"):
        quant_ladder("smollm2-135m", ["Q4_Z"])
    with pytest.raises(InvalidInput, match="llama-perplexity, quick"):
        quant_ladder("smollm2-135m", ["Q8_0"], protocol="perplexity")


def test_helpers():
    assert first_divergence([1, 2, 3], [1, 2, 3]) is None
    assert first_divergence([1, 2, 3], [1, 9, 3]) == 1
    assert first_divergence([1, 2], [1, 2, 3]) == 2
    d = {1: -0.1, 2: -2.5, 3: -4.0}
    assert kl_topk(d, d) == pytest.approx(0.0, abs=1e-12)
    assert kl_topk(d, {1: -1.0, 2: -0.6, 3: -4.0}) > 0.1


def test_quant_ladder_orders_kld_and_sizes():
    q = quant_ladder("smollm2-135m", ["Q8_0", "Q4_K_M", "Q2_K"], chunks=2, progress=False)
    t = q.table.set_index("quant")
    print("\n" + q.table[["quant", "file_mb", "bits_per_weight", "mean_kld", "p99_kld", "top1_agreement",
                          "decode_tok_per_s", "peak_rss_mb"]].to_string(index=False))
    assert t.loc["F16", "mean_kld"] == pytest.approx(0.0, abs=1e-9)
    assert t.loc["Q8_0", "mean_kld"] < t.loc["Q4_K_M", "mean_kld"] < t.loc["Q2_K", "mean_kld"]
    assert t.loc["F16", "file_mb"] > t.loc["Q8_0", "file_mb"] > t.loc["Q4_K_M", "file_mb"] > t.loc["Q2_K", "file_mb"]
    assert "quantized from F16" in t.loc["Q8_0", "source"]
    assert "second half of each of 2 chunks of 256 tokens" in q.notes[-1]


def test_raw_and_chat_prompts_mixed_are_each_sent_as_what_they_are(llama, vllm_engine):
    mixed = ["The capital of France is", [{"role": "user", "content": "Give me three colours."}]]
    cmp = compare({"llama.cpp": llama, "vllm": vllm_engine}, mixed, max_tokens=8)
    t = cmp.table
    assert len(t) == 4 and t["same_prompt_tokens"].all()
    chat_ids = llama.tokenize(mixed[1], chat=True)
    assert len(chat_ids) > len(llama.tokenize("Give me three colours."))  # templated, not raw
