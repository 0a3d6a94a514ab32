"""GGUF to Hugging Face conversion, and the check that proves a conversion equal to its source.

A comparison of llama.cpp and vLLM is only fair when both run the same model. vLLM reads a
Hugging Face directory, so labkit converts a GGUF into one (and an HF directory into a GGUF
for llama.cpp). A conversion can be silently wrong: transformers' GGUF loader drops
``add_bos_token``, and Gemma fed without ``<bos>`` answers "France of France of ...". So:

* the conversion carries the tokenizer's behaviour over (BOS/EOS insertion from the GGUF's
  ``tokenizer.ggml.add_bos_token`` / ``add_eos_token``, end-of-generation tokens, the chat
  template);
* before first use it is checked against llama.cpp on the GGUF: the fields that place tokens
  (rope base and scaling, sliding window; see :mod:`labkit.positions`), then in a child
  process prompt-token parity on a fixed probe set (raw text, unicode, code, chat
  conversations), and teacher-forced top-1 agreement and mean KL over a few hundred tokens of
  fixed text (past the sliding window, when there is one of at most 1920 tokens);
* the result is stored in the cache entry (``labkit-check.json``), shown by ``labkit models``,
  and a failed check raises :class:`ModelError` saying what differs.

Run as ``python -m labkit.conversion convert SRC.gguf OUT_DIR`` or ``... check GGUF HF_DIR``.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ._cache import write_atomically
from .errors import ModelError

__all__ = ["ConversionCheck", "check", "ensure_checked", "ensure_pair_checked", "read_check", "diagnose", "PROBES",
           "MIN_TOP1", "MAX_MEAN_KL", "CHECK_FILE"]

CHECK_FILE = "labkit-check.json"
# A correct dequantized conversion of the bundled Q4_1 model (weights rounded to bf16, f32
# compute against llama.cpp's q8 activations) measures top-1 0.96, mean KL 0.005 here; a
# conversion with every layer's q_proj rows permuted (a Q/K permutation bug) measures top-1
# 0.02, mean KL 6.1.
MIN_TOP1 = 0.9
MAX_MEAN_KL = 0.05
FORCED_TOKENS = 256
# A sliding window is checked past its end when that costs at most this many forced tokens
# (the logits of both sides are held: 2 x 2048 x a 262k vocabulary is 4 GiB in float32).
MAX_FORCED_TOKENS = 2048
PAST_WINDOW = 128
# Checks stored by an older labkit are run again: 2 added rope/window parity and the window;
# 3 passes a window only one engine can apply, with its limit.
CHECK_VERSION = 3
PROBES: tuple[tuple[str, Any, bool], ...] = (
    ("plain text", "The capital of France is", False),
    ("unicode", "Naïve café in Zürich, 東京 and Kraków: ½ price! 🙂", False),
    ("code", "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n", False),
    ("whitespace", "  two  spaces,\n\n\ta tab and trailing space ", False),
    ("digits", "In 2023, 1,234.5 people paid $99 for 3½ items (x²)", False),
    ("chat", [{"role": "user", "content": "What is the tallest mountain in the world?"}], True),
    ("chat, three turns", [{"role": "user", "content": "Hi!"},
                           {"role": "assistant", "content": "Hello. How can I help?"},
                           {"role": "user", "content": "Name three colours."}], True),
)


@dataclass
class ConversionCheck:
    """How a converted model compares with llama.cpp on its GGUF."""

    gguf: str
    hf_dir: str
    direction: str  # "gguf->hf" or "hf->gguf" (which side was converted), or "pair" (the user's)
    probes: int = 0
    differences: list[dict] = field(default_factory=list)  # probes whose prompt tokens differ
    forced_tokens: int = 0
    top1_agreement: float = float("nan")
    mean_kl: float = float("nan")
    reason: str = ""  # what differs, in plain words; empty when the check passed
    sliding_window: int | None = None
    past_window_top1: float = float("nan")  # over the forced tokens past the window, if it fit
    past_window_kl: float = float("nan")
    # The same model on prompts up to this many tokens, different past it (a sliding window
    # one engine applies and the other cannot): passed, with the limit said at every load.
    valid_up_to: int | None = None

    @property
    def passed(self) -> bool:
        return not self.reason

    def summary(self) -> str:
        if not self.passed:
            return f"check failed: {self.reason}"
        if not self.forced_tokens:
            return f"checked: {self.probes} prompts tokenized alike"
        out = (f"checked: {self.probes} prompts tokenized alike; top-1 {self.top1_agreement:.3f}, "
               f"mean KL {self.mean_kl:.4f} over {self.forced_tokens} tokens")
        if self.valid_up_to:
            out += f"; the same only up to {self.valid_up_to} tokens: {self.limit_reason()}"
        if self.sliding_window and self.past_window_top1 == self.past_window_top1:
            out += (f" (past the {self.sliding_window}-token sliding window: top-1 "
                    f"{self.past_window_top1:.3f}, mean KL {self.past_window_kl:.4f})")
        elif self.sliding_window:
            out += f"; not past its {self.sliding_window}-token sliding window"
        return out

    def limit_reason(self) -> str:
        return next((d["diagnosis"] for d in self.differences if "limit" in d), "")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed, "version": CHECK_VERSION}

    def raise_if_failed(self) -> None:
        if not self.passed and self.direction == "pair":
            raise ModelError(
                f"The paired models {self.gguf} (llama.cpp) and {self.hf_dir} (vLLM) do not read "
                f"prompts the same way: {self.reason}. compare() shows their text side by side but refuses "
                "logprob parity on such a pair; pass allow_token_mismatch=True to load them anyway.")
        if not self.passed:
            converted = self.hf_dir if self.direction == "gguf->hf" else self.gguf
            raise ModelError(
                f"The conversion {converted} is not the same model as its source "
                f"{self.gguf if self.direction == 'gguf->hf' else self.hf_dir}: {self.reason}. A "
                "comparison on it would be wrong. Pair a Hugging Face directory and a GGUF "
                "explicitly instead, or report the model (the check is stored in "
                f"{CHECK_FILE} beside the conversion; delete the folder to convert again).")


def diagnose(name: str, llama_ids: list[int], converted_ids: list[int], bos: int | None,
             eos: int | None, other: str = "the converted tokenizer") -> str:
    """One probe's token difference in plain words, e.g. "the converted tokenizer does not
    add BOS; llama.cpp does"."""
    if bos is not None:
        a, b = llama_ids[:1] == [bos], converted_ids[:1] == [bos]
        if a != b and llama_ids[int(a):] == converted_ids[int(b):]:
            return (f"{other} does not add BOS; llama.cpp does" if a else
                    f"{other} adds BOS; llama.cpp does not")
    if eos is not None:
        a, b = llama_ids[-1:] == [eos], converted_ids[-1:] == [eos]
        if a != b and llama_ids[:len(llama_ids) - a] == converted_ids[:len(converted_ids) - b]:
            return (f"{other} does not add EOS; llama.cpp does" if a else
                    f"{other} adds EOS; llama.cpp does not")
    i = next((k for k, (x, y) in enumerate(zip(llama_ids, converted_ids, strict=False)) if x != y),
             min(len(llama_ids), len(converted_ids)))
    return (f"the {name} prompt tokenizes differently from token {i} on (llama.cpp "
            f"{llama_ids[i:i + 4]}..., {other.removeprefix('the ').split()[0]} {converted_ids[i:i + 4]}...)")


# --- the cache side ------------------------------------------------------------------------

def read_check(entry: Path) -> ConversionCheck | None:
    """The check stored in a cache entry, if it was checked (by this version of the check)."""
    try:
        data = json.loads((entry / CHECK_FILE).read_text())
        data.pop("passed", None)
        if data.pop("version", 1) != CHECK_VERSION:
            return None
        return ConversionCheck(**data)
    except (OSError, ValueError, TypeError):
        return None


def ensure_checked(gguf: Path, hf_dir: Path, direction: str, entry: Path,
                   raise_on_failure: bool = True) -> ConversionCheck:
    """The stored check of a conversion (or pair), running it first if there is none; raises
    ModelError if it failed (every time: a failed entry stays failed until deleted)."""
    result = read_check(entry)
    if result is None:
        result = check(gguf, hf_dir, direction)
        write_atomically(entry / CHECK_FILE, json.dumps(result.to_dict(), indent=1))
    if raise_on_failure:
        result.raise_if_failed()
    if result.passed and result.valid_up_to:
        import warnings

        # (a user's warning filters decide how often: muted, or an error under -W error)
        warnings.warn(f"{hf_dir} and {gguf.name} are the same model only on prompts up to "
                      f"{result.valid_up_to} tokens: {result.limit_reason()}. Compare them within that.",
                      stacklevel=3)
    return result


def ensure_pair_checked(gguf: Path, hf_dir: Path, *, raise_on_mismatch: bool = True) -> ConversionCheck:
    """The stored check of a GGUF and an HF folder the user paired (the same model in two
    formats, possibly quantized differently): tokenizer parity is required, logprob parity
    is measured and reported. Cached under ``pairs/`` by the two files' contents."""
    import hashlib

    from ._cache import cache_dir, file_sha256

    h = hashlib.sha256(file_sha256(gguf).encode())
    for name in sorted(p.name for p in hf_dir.iterdir() if p.suffix in (".json", ".jinja", ".model")):
        h.update(name.encode() + file_sha256(hf_dir / name).encode())
    entry = cache_dir("pairs") / h.hexdigest()[:24]
    entry.mkdir(parents=True, exist_ok=True)
    return ensure_checked(gguf, hf_dir, "pair", entry, raise_on_failure=raise_on_mismatch)


def check(gguf: Path, hf_dir: Path, direction: str) -> ConversionCheck:
    """Compare ``hf_dir`` (what vLLM loads) with llama.cpp on ``gguf``: the fields that place
    tokens here, the rest in a child process (torch, transformers and a llama.cpp context cost
    memory the caller should not keep)."""
    from . import positions

    other = "the Hugging Face tokenizer" if direction == "pair" else "the converted tokenizer"
    placed = positions.differences(gguf, hf_dir, "the Hugging Face config" if direction == "pair"
                                   else "the converted config")
    proc = subprocess.run([sys.executable, "-m", "labkit.conversion", "check", str(gguf), str(hf_dir), other],
                          capture_output=True, text=True)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise ModelError(f"Checking the conversion {hf_dir} against {gguf.name} failed to run:\n"
                         f"{proc.stderr[-3000:]}")
    c = ConversionCheck(str(gguf), str(hf_dir), direction, **json.loads(lines[-1]))
    c.differences = placed + c.differences
    return _judge(c)


def _judge(c: ConversionCheck) -> ConversionCheck:
    limits = [d["limit"] for d in c.differences if "limit" in d]
    c.valid_up_to = min(limits) if limits else None
    failing = [d for d in c.differences if "limit" not in d]
    if failing:
        c.reason = failing[0]["diagnosis"]
    elif c.direction == "pair":
        pass  # two files quantized differently on purpose: logprob parity is reported, not judged
    elif not c.top1_agreement >= MIN_TOP1 or not c.mean_kl <= MAX_MEAN_KL:
        c.reason = (f"fed the same {c.forced_tokens} tokens, the two predict differently: top-1 "
                    f"agreement {c.top1_agreement:.3f} (at least {MIN_TOP1} expected), mean KL "
                    f"{c.mean_kl:.4f} (at most {MAX_MEAN_KL}); the weights were not converted "
                    "faithfully")
    elif not math.isnan(c.past_window_top1) and c.valid_up_to is None and (
            c.past_window_top1 < MIN_TOP1 or c.past_window_kl > MAX_MEAN_KL):
        c.reason = (f"past the {c.sliding_window}-token sliding window the two predict differently: "
                    f"top-1 agreement {c.past_window_top1:.3f} (at least {MIN_TOP1} expected), mean "
                    f"KL {c.past_window_kl:.4f} (at most {MAX_MEAN_KL}); one side does not apply the "
                    "window as the other does")
    return c


def forced_length(window: int | None) -> int:
    """How many tokens the teacher-forced check feeds: past a sliding window when that fits."""
    if window and window + PAST_WINDOW <= MAX_FORCED_TOKENS:
        return max(FORCED_TOKENS, window + PAST_WINDOW)
    return FORCED_TOKENS


# --- the child side ------------------------------------------------------------------------

def _smollm_pre() -> Any:
    from tokenizers import pre_tokenizers as pt

    # llama.cpp's "smollm" splits every numeric character off first (its regex starts with
    # \p{N}); transformers' GGUF loader gives plain GPT-2 byte-level splitting, which turns
    # " ½" into different tokens.
    return pt.Sequence([pt.Digits(individual_digits=True),
                        pt.ByteLevel(add_prefix_space=False, use_regex=True)])


# llama.cpp pre-tokenizer (tokenizer.ggml.pre) -> the Hugging Face pre-tokenizer that splits
# text the same way, where transformers' default does not. The check finds the others.
_PRE_TOKENIZERS = {"smollm": _smollm_pre}


def convert(src: Path, out: Path) -> None:
    """GGUF -> HF directory. transformers dequantizes a GGUF on load, but the loaded model
    refuses ``save_pretrained`` while it carries the GGUF quantization config, so its state
    dict is copied into a plain model of the same config, saved in bf16 with the tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from .gguf_header import read_header

    meta = read_header(src, decode=["tokenizer.ggml.tokens"]).metadata
    folder, name = str(src.parent), src.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    # transformers does not carry these over; llama.cpp follows them on every prompt.
    for key in ("add_bos_token", "add_eos_token"):
        if f"tokenizer.ggml.{key}" in meta:
            setattr(tokenizer, key, bool(meta[f"tokenizer.ggml.{key}"]))
    pre = _PRE_TOKENIZERS.get(str(meta.get("tokenizer.ggml.pre")))
    if pre is not None:
        tokenizer.backend_tokenizer.pre_tokenizer = pre()
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, torch_dtype=torch.float32)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    _carry_rope_scaling(src, meta, config)
    config.torch_dtype = torch.bfloat16
    plain = AutoModelForCausalLM.from_config(config, torch_dtype=torch.bfloat16)
    plain.load_state_dict(loaded.state_dict())
    # vLLM stops on generation_config's eos ids: give it every token llama.cpp stops on, or the
    # two part where the model emits one only llama.cpp ends on (SmolLM2's <|endoftext|>).
    tokens = meta.get("tokenizer.ggml.tokens")
    plain.generation_config.eos_token_id = eog_ids(meta, tokens if isinstance(tokens, list) else []) or None
    plain.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


# llama.cpp's end-of-generation set (llama-vocab.cpp, llama_vocab::impl::load, as vendored in
# llama-cpp-python 0.3.36): picked out by token text, "obviously not ideal" in its own words,
# but it is what llama.cpp and llama-server stop on. Kept in step with that file by hand; an
# engine test compares it with llama_vocab_is_eog on the bundled model.
_EOG_TEXTS = frozenset({
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
    "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
    "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
    "<\uff5cend\u2581of\u2581sentence\uff5c>", "[e~["})
# FIM tokens that end generation too: the GGUF's key, else the first token with one of these texts.
_FIM_EOG = {"fim_pad": ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"),
            "fim_rep": ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"),
            "fim_sep": ("<|file_sep|>",)}


#: llama.cpp's eos id for a GGUF without one, by tokenizer.ggml.model (llama-vocab.cpp, load)
_DEFAULT_EOS = {"llama": 2, "gpt2": 11, "t5": 1, "plamo2": 2}


def eog_ids(meta: dict[str, Any], tokens: list[str]) -> list[int]:
    """The token ids llama.cpp ends generation on, from a GGUF's metadata and its token texts
    (``tokenizer.ggml.tokens``): FIM pad/repo/file-separator tokens, tokens whose text is an
    end marker, and the eos/eot/eom ids; less ``<|end|>`` where ``<|return|>`` and ``<|call|>``
    (or ``<|calls|>`` and ``<|flush|>``) are there too, less ``</s>`` beside ``<|tool_response>``
    or ``<|plamo:eos|>``. Ids out of the vocabulary are ignored, as llama.cpp ignores them."""
    n = len(tokens)

    def valid(v: Any) -> int | None:
        return int(v) if v is not None and int(v) >= 0 and (int(v) < n or not n) else None

    # llama.cpp looks tokens up by text in a map where a repeated text keeps its last id
    first: dict[str, int] = {t: i for i, t in enumerate(tokens)}
    ids = {first[t] for t in _EOG_TEXTS if t in first}
    for key, texts in _FIM_EOG.items():
        found = valid(meta.get(f"tokenizer.ggml.{key}_token_id"))
        if found is None:
            found = next((first[t] for t in texts if t in first), None)
        ids |= {found} if found is not None else set()
    eos = valid(meta.get("tokenizer.ggml.eos_token_id"))
    if eos is None:  # no key (or out of the vocabulary): the tokenizer type's default
        eos = _DEFAULT_EOS.get(str(meta.get("tokenizer.ggml.model", "")))
        eos = eos if eos is not None and eos < n else None
    ids |= {v for v in (eos, *(valid(meta.get(f"tokenizer.ggml.{k}_token_id")) for k in ("eot", "eom")))
            if v is not None}
    texts = {tokens[i] for i in ids if i < n}
    if {"<|return|>", "<|call|>", "<|end|>"} <= texts or {"<|calls|>", "<|flush|>", "<|end|>"} <= texts:
        ids.discard(first["<|end|>"])
    if "</s>" in texts and texts & {"<|tool_response>", "<|plamo:eos|>"}:
        ids.discard(first["</s>"])
    return sorted(ids)


def _probe(eng: Any, tok: Any, other: str, prompt_ids: Any) -> tuple[int, list[dict[str, Any]]]:
    """(probes run, the ones whose prompt tokens differ) between llama.cpp and ``tok``."""
    bos, eos = eng.llama.token_bos(), eng.llama.token_eos()
    differences, run = [], 0
    gguf_template = bool(eng.llama.metadata.get("tokenizer.chat_template"))
    for name, prompt, chat in PROBES:
        if chat and not (tok.chat_template or gguf_template):
            continue  # neither has a chat template: nothing to compare
        if chat and bool(tok.chat_template) != gguf_template:  # one side lost it
            differences.append({"probe": name, "llama.cpp": "chat template" if gguf_template else "none",
                                "converted": "chat template" if tok.chat_template else "none",
                                "diagnosis": "only one side has a chat template: chats would be "
                                             "formatted differently"})
            continue
        run += 1
        a, b = eng.tokenize(prompt, chat=chat), prompt_ids(tok, prompt, chat)
        if a != b:
            differences.append({"probe": name, "llama.cpp": a[:16], "converted": b[:16],
                                "diagnosis": diagnose(name, a, b, None if bos < 0 else bos,
                                                      None if eos < 0 else eos, other)})
    return run, differences


def _carry_rope_scaling(src: Path, meta: dict[str, Any], config: Any) -> None:
    """Rope scaling, which transformers' GGUF loader drops for most architectures, back into
    the config: linear and YaRN from the GGUF's ``rope.scaling.*`` keys (Gemma 3 4B-27B: linear
    8), Llama 3.1/3.2's from its ``rope_freqs.weight`` factors. The check then compares them."""
    from .positions import YARN_KEYS, infer_llama3, rope_freqs

    arch = str(meta.get("general.architecture", "llama"))
    theta = float(meta.get(f"{arch}.rope.freq_base", 10000.0))
    kind, factor = meta.get(f"{arch}.rope.scaling.type"), meta.get(f"{arch}.rope.scaling.factor")
    scaling = None
    if kind in ("linear", "yarn") and factor and float(factor) != 1.0:
        scaling = {"rope_type": kind, "factor": float(factor)}
        if kind == "yarn":  # and whichever of YaRN's knobs the GGUF kept, under transformers' names
            for gguf_key, hf_key in YARN_KEYS:
                value = meta.get(f"{arch}.rope.scaling.{gguf_key}")
                if value is not None:
                    scaling[hf_key] = int(value) if hf_key == "original_max_position_embeddings" else float(value)
    elif config.model_type == "llama" and (freqs := rope_freqs(src)) is not None:
        dim = int(meta.get(f"{arch}.rope.dimension_count") or config.head_dim)
        scaling = infer_llama3(freqs, theta, dim)  # None: unknown parameters, the check says so
    if scaling is None:
        return
    params = getattr(config, "rope_parameters", None)
    if params is None and not hasattr(config, "rope_parameters"):  # transformers 4
        config.rope_scaling = scaling
    elif isinstance(params, dict) and isinstance(params.get("full_attention"), dict):
        # per layer type (Gemma 3): the global layers scale, the local ones keep their base
        config.rope_parameters = {**params, "full_attention": {**params["full_attention"], **scaling}}
    else:
        config.rope_parameters = {**(params or {}), "rope_theta": theta, **scaling}


def _measure(gguf: Path, hf_dir: Path, other: str) -> dict[str, Any]:
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .arch import hf_window
    from .comparison import _license_text, kl_rows, log_softmax
    from .engines.llamacpp import LlamaCppEngine
    from .engines.vllm import prompt_ids
    from .gguf_header import read_header
    from .positions import gguf_window

    tok = AutoTokenizer.from_pretrained(hf_dir)
    window = hf_window(json.loads((hf_dir / "config.json").read_text()))
    g_window = gguf_window(read_header(gguf))
    # past a window only one side applies the two differ by design: forced up to it, not past
    n = forced_length(window) if window == g_window else min(FORCED_TOKENS, *(w for w in (window, g_window) if w))
    eng = LlamaCppEngine(str(gguf), context=n + 64, logits_all=True)
    try:
        run, differences = _probe(eng, tok, other, prompt_ids)
        if differences:  # fed different tokens, the two cannot be compared position by position
            return {"probes": run, "differences": differences, "sliding_window": window}
        text, ids = _license_text(), []
        while len(ids) < n:  # the licence is ~2,500 tokens; repeated only for a longer window
            ids = eng.tokenize(text)
            text += "\n\n" + _license_text()
        ids = ids[:n]
        eng.llama.reset()
        eng.llama.eval(ids)
        ref = np.array(eng.llama.scores[:len(ids)], dtype=np.float32)  # a copy: close() frees them
    finally:
        eng.close()
    model = AutoModelForCausalLM.from_pretrained(hf_dir, torch_dtype=torch.float32)
    with torch.no_grad():
        got = model(torch.tensor([ids])).logits[0].numpy()[:, :ref.shape[1]]  # no padding rows
    del model
    # row by row in float64 chunks: a 262k vocabulary x 2k rows is 4 GiB a side in float64
    kl = np.concatenate([kl_rows(log_softmax(ref[i:i + 256]),
                                 log_softmax(got[i:i + 256]))
                         for i in range(0, len(ids), 256)])
    same = ref.argmax(1) == got.argmax(1)
    out = {"probes": run, "differences": differences, "forced_tokens": len(ids),
           "top1_agreement": float(same.mean()), "mean_kl": float(kl.mean()), "sliding_window": window}
    if window and len(ids) > window:
        out.update(past_window_top1=float(same[window:].mean()), past_window_kl=float(kl[window:].mean()))
    return out


if __name__ == "__main__":
    cmd, a, b = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    if cmd == "convert":
        convert(a, b)
    else:
        print(json.dumps(_measure(a, b, sys.argv[4] if len(sys.argv) > 4 else "the converted tokenizer")),
              flush=True)
