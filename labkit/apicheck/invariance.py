"""Batch invariance: does an engine give the same greedy output to a prompt sent alone as
to the same prompt sent among N concurrent users?

On most engines the answer is "not always": batch composition changes the order of
floating-point reductions, so a near-tie between two tokens can flip (vLLM issues 23138,
5898, 4112). This measures how often, and how far in the outputs diverge. It is a table of
what happened, not a pass/fail test of the engine.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pandas as pd

from ..comparison import first_divergence, token_agreement
from ..engines import Engine, Generation
from ..engines.capabilities import AsyncStreams
from ..errors import InvalidInput

PROMPTS = ("Explain why the sky is blue.", "Write a haiku about autumn.", "List three uses of copper.",
           "What is the capital of Australia?", "Describe a cat to someone who has never seen one.",
           "Give one tip for learning a language.", "Why do leaves change colour?",
           "Summarise the plot of Cinderella.")


@dataclass
class Invariance:
    """``table``: one row per prompt and level: identical to the 1-user output?, the first
    token where it diverged, and the fraction of positions that agree."""

    engine: str
    table: pd.DataFrame
    notes: list[str]

    def summary(self) -> pd.DataFrame:
        """Per level: the fraction of outputs that changed, and the mean agreement."""
        t = self.table
        return t.groupby("users").agg(prompts=("identical", "size"),
                                      changed_frac=("identical", lambda s: 1 - s.mean()),
                                      mean_agreement=("agreement", "mean"),
                                      earliest_divergence=("first_divergence", "min")).reset_index()

    def _repr_html_(self) -> str:
        notes = "".join(f"<p style='color:#a60'>{n}</p>" for n in self.notes)
        return (f"<p><b>Batch invariance of {self.engine}</b>: greedy outputs at each level against the "
                f"same prompts sent one at a time.</p>{notes}{self.summary().to_html(index=False)}"
                f"{self.table.to_html(index=False)}")


def batch_invariance(engine: Engine, prompts: Sequence[str] = PROMPTS, *, users: Sequence[int] = (1, 8),
                     max_tokens: int = 32) -> Invariance:
    """Generate each prompt greedily one at a time, then ``users`` at a time, and compare the
    token ids. A level of 1 repeats the single-user pass (it must be fully identical)."""
    prompts = list(prompts)
    if not prompts or any(not isinstance(p, str) or not p for p in prompts):
        raise InvalidInput("prompts must be a non-empty list of non-empty strings.")
    if not users or any(not isinstance(u, int) or u < 1 for u in users):
        raise InvalidInput(f"users must be positive integers, got {list(users)}.")
    params = dict(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    alone = [engine.generate([p], **params)[0] for p in prompts]
    rows = []
    for n in users:
        together = _at(engine, prompts, n, params)
        for i, (a, b) in enumerate(zip(alone, together, strict=True)):
            rows.append(_row(i, prompts[i], n, a, b))
    return Invariance(engine.info.engine, pd.DataFrame(rows), _notes(engine, users))


def _notes(engine: Engine, users: Sequence[int]) -> list[str]:
    """Where the engine could not have run the users together, the level measures nothing."""
    if engine.info.concurrency == "sequential" and max(users) > 1:  # llama.cpp in process
        return [f"{engine.info.engine} serves one sequence at a time: its requests never share a batch, "
                "so every level repeats the single-user case and says nothing about batching. Check "
                "llama-server (parallel slots) instead."]
    slots = engine.info.args.get("parallel") or engine.info.args.get("max_num_seqs")
    if isinstance(slots, int) and max(users) > slots:
        return [f"{engine.info.engine} ran with {slots} slot(s): at {max(users)} users the requests "
                "queued rather than shared a batch, so that level repeats the single-user case."]
    return []


def _at(engine: Engine, prompts: list[str], n: int, params: dict[str, Any]) -> list[Generation]:
    """The prompts, ``n`` in flight at a time: concurrent requests for a server, one batch of
    ``n`` for an in-process engine (which batches a generate call itself)."""
    out: list[Generation] = []
    for i in range(0, len(prompts), n):
        chunk = prompts[i:i + n]
        if isinstance(engine, AsyncStreams):  # a server: n requests in flight, one thread each
            with ThreadPoolExecutor(max_workers=n) as pool:
                out += list(pool.map(lambda p: engine.generate([p], **params)[0], chunk))
        else:
            out += engine.generate(chunk, **params)
    return out


def _row(i: int, prompt: str, n: int, a: Generation, b: Generation) -> dict[str, Any]:
    a_ids, b_ids = a.token_ids, b.token_ids
    if a_ids is None or b_ids is None:  # a server that gives no ids: compare the text
        same = a.text == b.text
        return {"prompt": i, "text": prompt[:40], "users": n, "identical": same, "first_divergence": None,
                "agreement": 1.0 if same else float("nan"), "compared": "text"}
    return {"prompt": i, "text": prompt[:40], "users": n, "identical": a_ids == b_ids,
            "first_divergence": first_divergence(a_ids, b_ids), "agreement": token_agreement(a_ids, b_ids),
            "compared": "token ids"}
