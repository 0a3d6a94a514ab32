"""Load testing: workloads, the load generator, metrics and results.

``config`` (what a sweep measures) -> ``shapes`` (when requests leave) -> ``drivers`` (how
they reach an engine, by its declared capabilities) -> ``session`` (sampler, manifest,
writer, interruption) -> ``result`` (records, summary, persistence); ``run.bench`` ties them.
``slo`` (latency bounds), ``capacity`` (the search for the largest load within them) and
``sweep`` (engines x settings on one Pareto front) sit on top: each level of a search, and
each point of a sweep, is one ``bench`` run. ``intervals``: repeats and their uncertainty.
``client`` (is the load generator the bottleneck?), ``workers`` (load from several
processes) and ``calibrate`` (what the client sustains against the mock server).

>>> import labkit
>>> res = labkit.bench(engine, concurrency=[1, 2, 4, 8], requests_per_level=16,
...                    workload=labkit.workloads.chat(input_tokens=128, output_tokens=64))
>>> res.summary; res.requests; res.memory; res.save("runs/my-bench")
"""

from . import workloads
from .calibrate import Calibration, calibrate
from .capacity import Capacity, capacity
from .config import BenchConfig
from .drivers import run_request
from .importers import from_aiperf, from_guidellm, from_llama_bench, from_vllm_bench
from .metrics import request_metrics, summarize
from .result import BenchResult, RequestRecord, phase_name
from .run import bench
from .shapes import Concurrency, LoadShape, Rate
from .slo import SLO
from .sweep import Front, sweep

__all__ = ["SLO", "BenchConfig", "BenchResult", "Calibration", "Capacity", "calibrate", "Concurrency", "Front", "LoadShape", "Rate",
           "RequestRecord", "bench", "capacity", "sweep", "from_aiperf", "from_guidellm", "from_llama_bench", "from_vllm_bench", "phase_name", "request_metrics",
           "run_request", "summarize", "workloads"]
