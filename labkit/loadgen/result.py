"""BenchResult: what a benchmark run measured, written to disk as it goes.

A run folder holds ``manifest.json`` (labkit version, engine and its arguments, model and
its sha256, threads, CPU, GPU, library versions, start time, workload), ``requests.jsonl``
(one line per finished or failed request, appended and flushed as each one ends, so an
interrupted run keeps everything it measured), ``memory.csv`` and ``summary.csv``.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import pandas as pd

from ..errors import InvalidInput
from ..memory import phase_peaks
from .client import add_judgement
from .metrics import by_turn, summarize
from .telemetry import per_level


def first_error(requests: pd.DataFrame) -> str:
    """The first failed request's error, on one line ("" when none failed): what the CLI and
    the panels say a run's failures were."""
    errors = requests["error"].dropna() if "error" in requests else []
    return " ".join(str(errors.iloc[0]).split())[:200] if len(errors) else ""


@dataclass
class RequestRecord:
    """One request of a sweep, as written to ``requests.jsonl``: when it left (``start_s``
    since the sweep began, ``started_at`` wall clock), its latencies, and how it ended. A
    request never sent (the sweep was stopped) has no times and says why in ``finish_reason``."""

    mode: str  # "concurrency", "rate" or "trace"
    level: float  # users, or requests per second
    index: int
    start_s: float | None = None
    started_at: float | None = None
    ttft_s: float | None = None
    tpot_s: float | None = None
    itl_s: list[float] = field(default_factory=list)
    e2e_s: float | None = None
    input_tokens: int | None = None
    output_tokens: int = 0
    finish_reason: str | None = None
    error: str | None = None
    prompt_sha: str | None = None  # Request.fingerprint: which prompt it was
    #: open loop only: when it was due to leave (seconds since the sweep began); a client that
    #: falls behind sends late, and latency counted from here includes that wait
    scheduled_s: float | None = None
    #: when it could have left: its arrival (open loop), or the level's start or the end of
    #: its user's previous request (closed loop); ``start_s - ready_s`` is the client's own
    #: dispatch delay, which grows when the client, not the server, is the bottleneck
    ready_s: float | None = None
    #: which load process sent it (bench's ``workers``; 0 with one)
    worker: int = 0
    round: int = 0  # which pass over the levels (bench's ``repeats``)
    #: prompt tokens the engine served from its prefix cache, as it reported them
    cached_tokens: int | None = None
    #: multi-turn sessions: which turn of its session (1, 2, ...); None for other workloads
    turn: int | None = None
    #: the text the engine returned: a session's next turn carries it (not written to disk)
    reply: str = field(default="", repr=False, metadata={"column": False})

    def to_row(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in REQUEST_COLUMNS}


REQUEST_COLUMNS = [f.name for f in fields(RequestRecord) if f.metadata.get("column", True)]


#: what a run folder holds (BenchResult.save writes them; a new run replaces them all)
RUN_FILES = ("manifest.json", "requests.jsonl", "memory.csv", "summary.csv", "kv.csv", "telemetry.csv",
             "client.csv", "run.json")


def _check_run_folder(folder: Path) -> None:
    """A folder that holds something other than a labkit run is not emptied for one."""
    manifest = folder / "manifest.json"
    if not manifest.exists():
        return
    try:
        ours = {"labkit_version", "engine"} <= set(json.loads(manifest.read_text()))
    except (OSError, ValueError, TypeError):
        ours = False
    if not ours:
        raise InvalidInput(f"{folder} holds a manifest.json that is not a labkit bench run's; give "
                           "bench an empty folder (or one of its own runs, which it replaces).")


class RunWriter:
    """Appends request rows to ``requests.jsonl`` as they finish (thread-safe)."""

    def __init__(self, folder: Path | None):
        self.folder = Path(folder) if folder else None
        self._lock = threading.Lock()
        self._file = None
        if self.folder:
            _check_run_folder(self.folder)
            self.folder.mkdir(parents=True, exist_ok=True)
            # A new run in a folder that held one replaces it whole: its rows appended to the
            # old run's, under the new manifest, would load as one run that never happened.
            for name in RUN_FILES:
                (self.folder / name).unlink(missing_ok=True)
            self._file = open(self.folder / "requests.jsonl", "w")  # noqa: SIM115 (closed in close())

    def manifest(self, manifest: dict[str, Any]) -> None:
        if self.folder:
            (self.folder / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str))

    def write(self, record: RequestRecord) -> None:
        if self._file:
            row = record.to_row()
            with self._lock:
                self._file.write(json.dumps(row, default=_json_default) + "\n")
                self._file.flush()

    def close(self) -> None:
        if self._file:
            self._file.close()
            self._file = None


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    return str(o)


@dataclass
class BenchResult:
    """Requests, per-level summary and memory timeline of one benchmark run.

    ``requests`` has one row per request (failed ones carry their ``error``); ``summary``
    one row per load level; ``memory`` the sampled timeline with phases; ``kv`` the engine's
    own account of its KV cache where it gives one; ``manifest`` says what ran where.
    """

    requests: pd.DataFrame
    memory: pd.DataFrame
    manifest: dict[str, Any]
    kv: pd.DataFrame = field(default_factory=pd.DataFrame)
    slo_ms: dict[str, float] | None = None
    folder: Path | None = None
    interrupted: bool = False
    #: why the sweep ended: "completed", "interrupted" (Ctrl-C or stop_event) or
    #: "engine died: ..." (then ``engine_log`` holds the end of the engine's log)
    ended: str = "completed"
    engine_log: str = ""
    #: the telemetry timeline (bench(..., telemetry=True)): t_s, phase, source, metric, value,
    #: dt_s (the time a rate covers)
    telemetry: pd.DataFrame = field(default_factory=pd.DataFrame)
    #: telemetry sources that gave nothing, and why
    telemetry_absent: dict[str, str] = field(default_factory=dict)
    #: what bench(..., after=) returned (not saved with the run)
    after: Any = None
    #: the load processes' CPU per level (see labkit.loadgen.client): phase, client_processes,
    #: client_cpu_cores, client_busiest_core
    client: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def summary(self) -> pd.DataFrame:
        s = summarize(self.requests, self.slo_ms)
        if s.empty:
            return s
        s.insert(0, "engine", self.manifest.get("engine", {}).get("engine", ""))
        peaks = self.memory_peaks()
        if not peaks.empty:
            s["phase"] = [phase_name(m, lv) for m, lv in zip(s["mode"], s["level"], strict=True)]
            s = s.merge(peaks.add_prefix("peak_").rename(columns={
                "peak_phase": "phase", "peak_gpu_energy_j": "gpu_energy_j",
                "peak_gpu_power_w_mean": "gpu_power_w_mean"}), on="phase", how="left")
            if "gpu_energy_j" in s.columns:  # the level's whole energy, not only its tokens'
                s["j_per_output_token"] = s["gpu_energy_j"] / s["output_tokens"].where(
                    s["output_tokens"] > 0)
        levels = per_level(self.telemetry)
        if not levels.empty:
            if "phase" not in s.columns:
                s["phase"] = [phase_name(m, lv) for m, lv in zip(s["mode"], s["level"], strict=True)]
            s = s.merge(levels, on="phase", how="left")
        return add_judgement(s, self.client)

    @property
    def turns(self) -> pd.DataFrame:
        """Multi-turn sessions: one row per level and turn, with the prompt growing and what the
        prefix cache served of it. A falling TTFT over turns is the cache at work; a rising one,
        the history prefilled again every turn. Empty for workloads without sessions."""
        out = by_turn(self.requests)
        if out.empty:
            return out
        out.insert(0, "engine", self.manifest.get("engine", {}).get("engine", ""))
        return out

    def memory_peaks(self) -> pd.DataFrame:
        return phase_peaks(self.memory)

    def to_frame(self) -> pd.DataFrame:
        return self.summary

    def _repr_html_(self) -> str:
        eng = self.manifest.get("engine", {})
        cols = ["engine", "mode", "level", "completed", "errors", "req_per_s", "output_tok_per_s",
                "ttft_p50_ms", "ttft_p99_ms", "tpot_p50_ms", "itl_p50_ms", "e2e_p50_ms", "peak_pss_bytes"]
        full = self.summary  # computed once: the table and the client-bound lines both read it
        s = full[[c for c in cols if c in full.columns]]
        note = (f" <b>({self.ended}: requests not sent are marked, and counted apart)</b>"
                if self.ended != "completed" else "")
        head = (f"<p><b>{eng.get('engine', '?')}</b> {eng.get('engine_version', '')} on "
                f"{self.manifest.get('environment', {}).get('cpu', '?')}, model {eng.get('model', '?')}, "
                f"threads {eng.get('threads')}, concurrency model: {eng.get('concurrency')}{note}</p>")
        bound = full[full["client_bound"]] if "client_bound" in full else full.iloc[0:0]
        for _, r in bound.iterrows():  # where the user looks first: above the table
            head += (f"<p style='color:#b00'><b>{r['mode']} {r['level']}: {r['client_note']}</b></p>")
        html = head + s.to_html(index=False, float_format=lambda x: f"{x:,.1f}")
        turns = self.turns
        if not turns.empty:
            html += ("<p>By turn of each session (a prefix cache at work makes later turns' TTFT fall):</p>"
                     + turns.drop(columns=["engine"]).to_html(index=False, float_format=lambda x: f"{x:,.1f}"))
        return html

    # --- persistence ---------------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "manifest.json").write_text(json.dumps(self.manifest, indent=2, default=str))
        if self.folder is None or Path(self.folder).resolve() != folder.resolve():
            with open(folder / "requests.jsonl", "w") as f:
                for row in self.requests.to_dict("records"):
                    f.write(json.dumps(row, default=_json_default) + "\n")
        self.memory.to_csv(folder / "memory.csv", index=False)
        self.summary.to_csv(folder / "summary.csv", index=False)
        for name, frame in (("kv", self.kv), ("telemetry", self.telemetry), ("client", self.client)):
            if frame.empty:  # none this run: an earlier run's file there would load as this one's
                (folder / f"{name}.csv").unlink(missing_ok=True)
            else:
                frame.to_csv(folder / f"{name}.csv", index=False)
        (folder / "run.json").write_text(json.dumps({"slo_ms": self.slo_ms, "interrupted": self.interrupted,
                                                     "ended": self.ended, "engine_log": self.engine_log,
                                                     "telemetry_absent": self.telemetry_absent}))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> BenchResult:
        folder = Path(folder)
        manifest = json.loads((folder / "manifest.json").read_text())
        rows = [json.loads(line) for line in (folder / "requests.jsonl").read_text().splitlines() if line.strip()]
        requests = pd.DataFrame(rows, columns=REQUEST_COLUMNS) if rows else pd.DataFrame(columns=REQUEST_COLUMNS)
        requests["round"] = requests["round"].fillna(0).astype(int)  # saved before rounds existed
        mem, kv = _read_csv(folder / "memory.csv"), _read_csv(folder / "kv.csv")
        # run.json is written when a run ends: without it the process ended mid-run (killed,
        # crashed), and the rows streamed so far are all there is.
        extra = json.loads((folder / "run.json").read_text()) if (folder / "run.json").exists() else \
            {"interrupted": True, "ended": "did not finish: its process ended mid-run (no run.json); "
                                           "the requests recorded so far are kept"}
        return cls(requests, mem, manifest, kv, extra.get("slo_ms"), folder, extra.get("interrupted", False),
                   extra.get("ended", "completed"), extra.get("engine_log", ""),
                   _read_csv(folder / "telemetry.csv"), extra.get("telemetry_absent", {}),
                   client=_read_csv(folder / "client.csv"))


def _read_csv(path: Path) -> pd.DataFrame:
    """A saved frame, or an empty one: a remote engine's run has no memory timeline."""
    try:
        return pd.read_csv(path)
    except (FileNotFoundError, pd.errors.EmptyDataError):
        return pd.DataFrame()


def phase_name(mode: str, level: Any) -> str:
    """The memory sampler's phase for one load level: "concurrency 8" or "rate 2.0/s"."""
    if mode == "trace":
        return f"trace x{level}"
    # A frame holding both modes' levels has one float column (8 -> 8.0): the name must be the
    # one the samplers recorded while the level ran (from an int users, a float rate), or the
    # memory, client and telemetry columns do not join onto the summary.
    if mode == "concurrency":
        return f"concurrency {int(level) if float(level).is_integer() else level}"
    return f"rate {float(level)}/s"


MULTI_TURN_NOTE = ("Multi-turn sessions: from the second turn on, each engine's prompts carry its own "
                   "replies (as in a real chat), so later turns differ in length between engines; their "
                   "scripted messages and every first turn are checked to be the same.")


def fed_alike(runs: dict[str, BenchResult]) -> list[str]:
    """Warnings for runs whose engines were not fed the same prompts (text and token count,
    request by request): their numbers are not comparable. Empty when they were."""
    frames = {n: r.requests.set_index(["level", "round", "index"]) for n, r in runs.items()
              if not r.requests.empty and "prompt_sha" in r.requests}
    if len(frames) < 2:
        return []
    (ref_name, ref), out = next(iter(frames.items())), []
    if "turn" in ref and (ref["turn"].fillna(1) > 1).any():
        out.append(MULTI_TURN_NOTE)
    for name, frame in list(frames.items())[1:]:
        common = ref.index.intersection(frame.index)
        cols = ["prompt_sha", "input_tokens"]
        diff = (ref.loc[common, cols].astype(str) != frame.loc[common, cols].astype(str)).any(axis=1)
        if "turn" in ref:  # a later turn's length is the engine's own: its messages must match
            later = (ref.loc[common, "turn"].fillna(1) > 1).to_numpy()
            diff &= ~later | (ref.loc[common, "prompt_sha"].astype(str) != frame.loc[common, "prompt_sha"].astype(str))
        if diff.any():
            first = diff[diff].index[0]
            out.append(f"{name} and {ref_name} were not fed the same prompts in {int(diff.sum())} of "
                       f"{len(common)} requests (first: level {first[0]}, request {first[2]}: "
                       f"{frame.loc[first, 'input_tokens']} vs {ref.loc[first, 'input_tokens']} input "
                       "tokens); their numbers are not comparable. Different tokenizers or an "
                       "approximate one (a generic OpenAI URL) do this.")
    return out
