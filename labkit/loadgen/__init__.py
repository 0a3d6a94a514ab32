"""Load testing: workloads, the load generator, metrics and results.

>>> import labkit
>>> res = labkit.bench(engine, concurrency=[1, 2, 4, 8], requests_per_level=16,
...                    workload=labkit.workloads.chat(input_tokens=128, output_tokens=64))
>>> res.summary; res.requests; res.memory; res.save("runs/my-bench")
"""

from . import workloads
from .importers import from_llama_bench, from_vllm_bench
from .metrics import request_metrics, summarize
from .result import BenchResult
from .run import bench, run_request

__all__ = ["BenchResult", "bench", "from_llama_bench", "from_vllm_bench", "request_metrics",
           "run_request", "summarize", "workloads"]
