"""Run folders from several machines, read into one place: ``labkit.runs.load([...])``.

A run folder is what ``bench(..., out=)`` or ``BenchResult.save`` writes (a manifest and one
row per request) or what ``labkit run`` writes for a notebook (the executed notebook, its
recorded results and a manifest). Each manifest carries the environment it ran in, so
folders copied from a laptop, a lab GPU box and a cloud client say which machine measured
what. A machine is told apart by its host name, CPU, core count, memory and GPU; where
host names collide (every VM called ``vm``), the label adds what differs.

>>> runs = labkit.runs.load(["runs/laptop", "runs/a100"])
>>> runs.machines            # one row per machine
>>> runs.summary             # every bench level, keyed by machine and engine
>>> labkit.plots.throughput(runs, by="machine")
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from .errors import InvalidInput
from .loadgen.result import BenchResult

#: what makes two manifests' environments one machine
_IDENTITY = ("hostname", "cpu", "cpu_count", "memory_gib", "gpu")


@dataclass
class Run:
    """One run folder: a bench run (``result``) or a notebook run (``recorded``)."""

    folder: Path
    kind: str  # "bench" or "notebook"
    manifest: dict[str, Any]
    machine: str = ""
    result: BenchResult | None = None
    recorded: dict[str, Any] = field(default_factory=dict, repr=False)
    name: str = ""  # the folder relative to what was loaded (grid points share leaf names)

    @property
    def label(self) -> str:
        return self.name or self.folder.name

    @property
    def environment(self) -> dict[str, Any]:
        return self.manifest.get("environment", {})

    @property
    def engine(self) -> str:
        return self.manifest.get("engine", {}).get("engine", "") if self.kind == "bench" else ""


@dataclass
class Runs:
    """Run folders keyed by machine. ``summary``: every bench level with ``machine``,
    ``engine`` and ``run`` columns; ``machines``: what each machine is."""

    runs: list[Run]

    @property
    def machines(self) -> pd.DataFrame:
        rows = {}
        for r in self.runs:
            env = r.environment
            row = rows.setdefault(r.machine, {"machine": r.machine, **{k: env.get(k) for k in _IDENTITY},
                                              "labkit_version": None, "runs": 0})
            row["labkit_version"] = row["labkit_version"] or r.manifest.get("labkit_version")
            row["runs"] += 1
        return pd.DataFrame(list(rows.values()))

    @property
    def summary(self) -> pd.DataFrame:
        frames = []
        for r in self.runs:
            s = r.result.summary if r.result is not None else pd.DataFrame()  # a computed property: once
            if not s.empty:
                frames.append(s.drop(columns=["engine"]).assign(machine=r.machine, engine=r.engine, run=r.label))
        if not frames:
            return pd.DataFrame()
        s = pd.concat(frames, ignore_index=True)
        return s[["machine", "engine", "run", *[c for c in s.columns if c not in ("machine", "engine", "run")]]]

    def to_frame(self) -> pd.DataFrame:
        return self.summary

    def by(self, key: str = "machine") -> dict[str, BenchResult]:
        """The bench runs as ``{label: result}`` for plots and the verdict: labelled by
        ``key`` ("machine", "engine" or "run"), with the engine or machine added where the
        key alone would not tell two runs apart."""
        if key not in ("machine", "engine", "run"):
            raise InvalidInput(f"by must be 'machine', 'engine' or 'run', got {key!r}.")
        bench = [r for r in self.runs if r.result is not None]
        out: dict[str, BenchResult] = {}
        for r in bench:
            label = {"machine": r.machine, "engine": r.engine, "run": r.label}[key]
            if key != "run" and sum(1 for o in bench if _key(o, key) == _key(r, key)) > 1:
                label += f" · {r.engine if key == 'machine' else r.machine}"
            if label in out:  # the same machine and engine twice: when each ran
                label += f" ({r.environment.get('time_utc', '?')[:16].replace('T', ' ')})"
            while label in out:
                label += "'"
            out[label] = r.result
        return out

    def on(self, machine: str) -> Runs:
        """The runs of one machine (its label in :attr:`machines`)."""
        mine = [r for r in self.runs if r.machine == machine]
        if not mine:
            raise InvalidInput(f"No runs from {machine!r}; machines: {', '.join(self.machines['machine'])}.")
        return Runs(mine)

    def engines(self) -> dict[str, BenchResult]:
        """One machine's bench runs keyed by engine, as :func:`labkit.verdict` takes them."""
        machines = {r.machine for r in self.runs if r.result is not None}
        if len(machines) > 1:
            raise InvalidInput(f"A verdict speaks for one machine; these runs come from {len(machines)} "
                               f"({', '.join(sorted(machines))}): pass runs.on(machine).")
        engines = [r.engine for r in self.runs if r.result is not None]
        twice = sorted({e for e in engines if engines.count(e) > 1})
        if twice:
            raise InvalidInput(f"More than one run of {', '.join(twice)} on this machine: a verdict takes "
                               "one per engine (load the folders you mean, or Runs([...]) of them).")
        return {r.engine: r.result for r in self.runs if r.result is not None}

    def recorded(self, name: str) -> pd.DataFrame:
        """A value every notebook run recorded under ``name`` (a table), stacked with the
        machine and run it came from. A table with its own ``machine`` column (one that
        compares machines) keeps it; the machine that recorded it is then ``recorded_on``."""
        frames = []
        for r in self.runs:
            value = r.recorded.get(name)
            if isinstance(value, pd.DataFrame):
                mine = "recorded_on" if "machine" in value.columns else "machine"
                frames.append(value.assign(**{mine: r.machine, "run": r.label}))
            elif value is not None:
                frames.append(pd.DataFrame([{"value": value, "machine": r.machine, "run": r.label}]))
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    def _repr_html_(self) -> str:
        kinds = pd.Series([r.kind for r in self.runs]).value_counts().to_dict()
        head = (f"<p><b>{len(self.runs)} run(s)</b> ({', '.join(f'{v} {k}' for k, v in kinds.items())}) "
                f"from <b>{self.machines.shape[0]} machine(s)</b>:</p>")
        return head + self.machines.to_html(index=False)


def folder(name: str) -> Path:
    """Where a notebook saves a result of its own: inside its run folder under ``labkit run``
    (so the run folder holds it, and :func:`load` finds it), else ``runs/NAME-TIMESTAMP``."""
    import os
    import time

    from .runner import RUN_DIR_VARIABLE

    base = os.environ.get(RUN_DIR_VARIABLE)
    return Path(base) / name if base else Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def _key(run: Run, key: str) -> str:
    return run.machine if key == "machine" else run.engine


def load(folders: str | Path | Sequence[str | Path], machine: str | Sequence[str] | None = None) -> Runs:
    """Every run folder under ``folders`` (a run folder, or a folder holding some), with its
    machine; ``machine``: a name per folder given, instead of the one read from manifests."""
    given = [folders] if isinstance(folders, str | Path) else list(folders)
    names = [machine] if isinstance(machine, str) else (list(machine) if machine is not None else None)
    if not given:
        raise InvalidInput("Give at least one run folder.")
    if names is not None and len(names) != len(given):
        raise InvalidInput(f"machine= names each folder given: {len(given)} folders, {len(names)} names.")
    runs: list[Run] = []
    for i, root in enumerate(given):
        found = _read_tree(Path(root))
        for r in found:
            r.machine = names[i] if names else ""
            r.name = str(Path(Path(root).name) / r.folder.relative_to(root)).removesuffix("/.")
        runs += found
    _label_machines([r for r in runs if not r.machine])
    return Runs(runs)


def _read_tree(root: Path) -> list[Run]:
    if not root.exists():
        raise InvalidInput(f"No run folder at {root}.")
    manifests = sorted(root.rglob("manifest.json")) if root.is_dir() else []
    runs = [run for m in manifests if (run := _read(m.parent)) is not None]
    if not runs:
        raise InvalidInput(f"{root} holds no labkit run (a folder with manifest.json, written by "
                           "bench(out=...), BenchResult.save or `labkit run`).")
    return runs


def _read(folder: Path) -> Run | None:
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    if (folder / "requests.jsonl").exists():
        return Run(folder, "bench", manifest, result=BenchResult.load(folder))
    if "notebook" in manifest:
        results = folder / "results.json"
        recorded = _restore(json.loads(results.read_text())) if results.exists() else {}
        return Run(folder, "notebook", manifest, recorded=recorded)
    return None


def _restore(value: dict[str, Any]) -> dict[str, Any]:
    from .runner import _restore as restore

    return {k: restore(v) for k, v in value.items()}


def _label_machines(runs: list[Run]) -> None:
    """Host name where it tells machines apart; otherwise host name plus what differs."""
    idents = {tuple(str(r.environment.get(k)) for k in _IDENTITY): None for r in runs}
    by_host: dict[str, list[tuple]] = {}
    for ident in idents:
        by_host.setdefault(ident[0], []).append(ident)
    for host, group in by_host.items():
        for ident in group:
            if len(group) == 1:
                idents[ident] = host
                continue
            differs = [f"{v}" + (" cores" if k == "cpu_count" else " GiB" if k == "memory_gib" else "")
                       for k, v in zip(_IDENTITY[1:], ident[1:], strict=True)
                       if len({g[_IDENTITY.index(k)] for g in group}) > 1 and v != "None"]
            idents[ident] = f"{host} ({', '.join(differs)})"
    for r in runs:
        r.machine = idents[tuple(str(r.environment.get(k)) for k in _IDENTITY)]
