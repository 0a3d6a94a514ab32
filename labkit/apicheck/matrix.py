"""The conformance matrix: every check against one server or several, as one table."""

from __future__ import annotations

import html
import time
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from ..errors import InvalidInput
from .checks import CHECKS, STATUSES, UNCHECKED, Outcome
from .http import ApiClient

# What a managed server must be started with for the tool checks. vLLM answers any
# tool_choice with HTTP 400 unless a parser is named; hermes reads the <tool_call> JSON of
# ChatML models such as the bundled SmolLM2. llama-server's --jinja is labkit's default.
TOOL_ARGS: dict[str, list[str]] = {"vllm-server": ["--enable-auto-tool-choice", "--tool-call-parser", "hermes"]}

_COLORS = {"supported": "#d7f0d7", "partial": "#fff2c2", "missing": "#eeeeee", "wrong": "#f8d0d0",
           "not checked": "#ffffff"}


@dataclass
class Conformance:
    """``table``: one row per engine and feature (status, evidence, what the model did, seconds);
    ``flags``: how each server was started, since tool calling depends on it."""

    table: pd.DataFrame
    flags: dict[str, str] = field(default_factory=dict)

    @classmethod
    def combine(cls, parts: dict[str, Conformance] | list[Conformance]) -> Conformance:
        """One matrix from several, e.g. of servers checked one after the other."""
        parts = list(parts.values()) if isinstance(parts, dict) else list(parts)
        flags = {k: v for p in parts for k, v in p.flags.items()}
        return cls(pd.concat([p.table for p in parts], ignore_index=True), flags)

    def counts(self) -> pd.DataFrame:
        """Per engine, how many features fall in each status."""
        c = self.table.groupby(["engine", "status"]).size().unstack(fill_value=0)
        return c.reindex(columns=[s for s in STATUSES if s in c.columns])

    def differences(self) -> pd.DataFrame:
        """The features where the engines' statuses differ."""
        wide = self.table.pivot(index="feature", columns="engine", values="status")
        return wide[wide.nunique(axis=1) > 1]

    def group(self, name: str) -> pd.DataFrame:
        return self.table[self.table["group"] == name]

    def to_dict(self) -> dict[str, Any]:
        return {"flags": self.flags, "checks": self.table.to_dict("records")}

    def _repr_html_(self) -> str:
        engines = list(dict.fromkeys(self.table["engine"]))
        head = "".join(f"<th>{html.escape(e)}<br><small style='font-weight:normal'>"
                       f"{html.escape(self.flags.get(e, ''))}</small></th>" for e in engines)
        rows = []
        for (grp, feat), part in self.table.groupby(["group", "feature"], sort=False):
            by = {r["engine"]: r for r in part.to_dict("records")}
            cells = "".join(_cell(by.get(e)) for e in engines)
            rows.append(f"<tr><td>{html.escape(grp)}</td><td>{html.escape(feat)}</td>{cells}</tr>")
        return (f"<table><thead><tr><th>group</th><th>feature</th>{head}</tr></thead>"
                f"<tbody>{''.join(rows)}</tbody></table><p>Under each server: the flags it was started "
                "with. Hover a cell for the evidence; the second line is what the model did.</p>")


def _cell(r: dict[str, Any] | None) -> str:
    if r is None:
        return "<td></td>"
    tip = html.escape(r["evidence"] + (f"\nmodel: {r['model']}" if r["model"] else ""))
    model = f"<br><small>{html.escape(r['model'][:60])}</small>" if r["model"] else ""
    return (f"<td title=\"{tip}\" style=\"background:{_COLORS.get(r['status'], '#fff')}\">"
            f"{html.escape(r['status'])}{model}</td>")


def _target(t: Any, timeout_s: float) -> tuple[ApiClient, str]:
    """A client for an engine reached over HTTP, or for a URL; and how it was started."""
    if isinstance(t, str):
        from ..engines.openai import OpenAIEngine

        eng = OpenAIEngine(t)
        try:
            return (ApiClient(eng.url, eng.model, eng.http_headers, timeout_s, eng.http_params),
                    f"attached to {eng.url}")  # (the URL as given may hold a password)
        finally:
            eng.close()
    url, model = getattr(t, "url", None), getattr(t, "model", None)
    if not url or not model:
        raise InvalidInput(f"conformance needs a server reached over HTTP (llama-server, vllm-server, "
                           f"openai) or a URL; got {type(t).__name__}. In-process engines have no API.")
    args = t.info.args.get("extra_args") or []
    base = "--jinja (labkit's default)" if t.info.engine == "llama-server" else "labkit's defaults"
    return ApiClient(url, model, t.http_headers, timeout_s, getattr(t, "http_params", None)), base + (f", plus {' '.join(args)}" if args else "")


def conformance(target: Any, *, timeout_s: float = 60.0, progress: bool = True) -> Conformance:
    """Send real requests for each feature of the OpenAI API and grade the answers.

    ``target`` is a running llama-server, vllm-server or openai engine, a URL, or a dict of
    them by name (the HTML then shows them side by side). Every request has ``timeout_s``:
    a check that hangs becomes a "missing (timeout)" row.

    >>> with labkit.load("llama-server") as srv:            # doctest: +SKIP
    ...     labkit.conformance(srv).table
    """
    from tqdm.auto import tqdm

    targets = target if isinstance(target, dict) else {_name(target): target}
    rows, flags = [], {}
    for name, t in targets.items():
        api, flags[name] = _target(t, timeout_s)
        try:
            for c in tqdm(CHECKS, desc=f"conformance {name}", disable=not progress, leave=False):
                t0 = time.perf_counter()
                out = _run(c.run, api)
                rows.append({"engine": name, "group": c.group, "feature": c.feature, "status": out.status,
                             "evidence": out.evidence, "model": out.model,
                             "seconds": round(time.perf_counter() - t0, 2)})
        finally:
            api.close()
    return Conformance(pd.DataFrame(rows), flags)


def _run(fn: Any, api: ApiClient) -> Outcome:
    try:
        return fn(api)
    except Exception as e:  # an answer of a shape the check did not foresee: say so, judge nothing
        return Outcome(UNCHECKED, f"the check could not read the answer ({type(e).__name__}: {e})"[:200])


def _name(t: Any) -> str:
    return t if isinstance(t, str) else getattr(getattr(t, "info", None), "engine", type(t).__name__)
