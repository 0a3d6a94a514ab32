"""A model on a card, measured: the planner's layer split for a GPU of a given size, run for
real on a synthetic model of the shape, with its peak VRAM against that size.

This is how the verdict's "26B on a 12 GB card" row is measured rather than planned: the
weights are random, so the text is noise, but the memory and the single-user speed are
real. A bigger card than the one asked about is fine: the plan's split is what is run, and
the measured peak says whether it would have fitted the smaller one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from . import memory
from .errors import InvalidInput
from .planner import FitPlan, GiB, fit, parse_bytes


@dataclass
class CardRun:
    """The planned split for a card, and what running it measured."""

    model: str
    quant: str
    gpu: str
    card_gib: float  # the card asked about, not the one it ran on
    gpu_layers: int
    n_layers: int
    planned_gpu_gib: float
    measured_gpu_gib: float | None  # the server's own VRAM (NVML per process), peak
    output_tok_s_1_user: float | None
    tpot_p50_ms: float | None

    @property
    def fits(self) -> bool | None:
        if self.measured_gpu_gib is None:
            return None
        return self.measured_gpu_gib <= self.card_gib

    @property
    def plan_error_pct(self) -> float | None:
        if not self.measured_gpu_gib:
            return None
        return (self.planned_gpu_gib - self.measured_gpu_gib) / self.measured_gpu_gib * 100

    def text(self) -> str:
        """One line for a verdict row."""
        if self.measured_gpu_gib is None:
            return (f"ran {self.gpu_layers} of {self.n_layers} layers on {self.gpu}, but NVML "
                    "reported no VRAM for the server: fit not measured")
        return (f"measured on {self.gpu}: {self.quant} with the planned {self.gpu_layers} of "
                f"{self.n_layers} layers used {self.measured_gpu_gib:.2f} GiB of VRAM "
                f"({'fits' if self.fits else 'does not fit'} {self.card_gib:g} GiB; planned "
                f"{self.planned_gpu_gib:.2f}), {self.output_tok_s_1_user or 0:.1f} tok/s at 1 user "
                "on that GPU (synthetic weights)")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "fits": self.fits, "plan_error_pct": self.plan_error_pct}

    def _repr_html_(self) -> str:
        return f"<p><b>{self.model}</b>: {self.text()}</p>"


def measure(shape: str | dict[str, Any] | Path, quant: str = "IQ3_S", gpu_memory: str | float = "12GiB",
            *, context: int = 512, requests: int = 2, output_tokens: int = 32,
            progress: bool = True) -> CardRun:
    """Run ``shape`` (a synthetic shape name, config dict or config.json) at ``quant`` with the
    layer split the planner chose for ``gpu_memory``, and measure its VRAM and speed.

    Needs an NVIDIA GPU (NVML) at least as large as the plan, and disk for the synthetic
    file (refused up front with the size it needs).
    """
    from . import synthetic
    from .engines import load
    from .loadgen import bench, workloads

    if memory.nvml() is None:  # looked up on the module: the tests' fake NVML replaces it there
        raise InvalidInput("Measuring a model on a card needs an NVIDIA GPU (NVML found none); "
                           "labkit.fit(...) plans the same split without one.")
    card = parse_bytes(gpu_memory)
    if not card:
        raise InvalidInput(f"gpu_memory={gpu_memory!r}: give the card's size, e.g. '12GiB'.")
    m = synthetic.synthetic(shape, quant=quant, progress=progress)
    plan = fit(m, engines=["llama-server"], quant=quant, context=context, users=1,
               gpu_memory=card)
    row = plan.row("llama-server")
    layers = int(row["gpu_layers"] or 0)
    with load("llama-server", model=m, gpu_layers=layers, parallel=1, context=context) as srv:
        res = bench(srv, concurrency=[1], requests_per_level=requests, warmup=1, progress=progress,
                    workload=workloads.synthetic(input_tokens=128, output_tokens=output_tokens,
                                                 ignore_eos=True))
    return _card_run(m, card, row, res, plan)


def _card_run(m: Any, card: float, row: dict[str, Any], res: Any, plan: FitPlan) -> CardRun:
    mem, s = res.memory, res.summary.iloc[0]
    vram = float(mem["vram_process_bytes"].max()) if "vram_process_bytes" in mem else 0.0
    return CardRun(str(m), m.quant, memory.gpu_name() or "an NVIDIA GPU", card / GiB,
                   int(row["gpu_layers"] or 0), plan.model.n_layers, float(row["gpu_gib"]),
                   vram / GiB if vram > 0 else None,
                   _num(s.get("output_tok_per_s")), _num(s.get("tpot_p50_ms")))


def _num(x: Any) -> float | None:
    return None if x is None or x != x else float(x)
