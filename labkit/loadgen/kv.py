"""Each engine's own account of its KV cache: capacity and use, where it tells them.

"Used" memory is not "needed" memory: vLLM reserves its whole KV cache when it starts, so
the memory sampler sees it full from the first second. These readings say how much of that
reservation a load level really used.
"""

from __future__ import annotations

import re
from typing import Any

from ..engines.base import Engine

_LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+([-+0-9.eEinfNa]+)$')


def parse_prometheus(text: str) -> list[tuple[str, dict[str, str], float]]:
    """(name, labels, value) for every sample line of a Prometheus text page."""
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _LINE.match(line.strip())
        if not m:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        try:
            out.append((m.group(1), labels, float(m.group(3))))
        except ValueError:
            continue
    return out


def kv_snapshot(engine: Engine) -> dict[str, Any]:
    """The engine's KV cache facts right now (empty if it tells nothing)."""
    name = engine.name
    if name == "vllm":
        return _vllm_in_process(engine)
    metrics_text = getattr(engine, "metrics_text", None)
    if metrics_text is None:
        return {}
    samples = parse_prometheus(metrics_text())
    flavor = getattr(engine, "flavor", "")
    snap: dict[str, Any] = {}
    for metric, labels, value in samples:
        if flavor == "vllm":
            if metric == "vllm:kv_cache_usage_perc":
                snap["kv_used_fraction"] = value
            elif metric == "vllm:num_requests_running":
                snap["running"] = value
            elif metric == "vllm:num_requests_waiting":
                snap["waiting"] = value
            elif metric == "vllm:cache_config_info":
                blocks, size = labels.get("num_gpu_blocks"), labels.get("block_size")
                if blocks and blocks != "None" and size:
                    snap["kv_capacity_tokens"] = int(blocks) * int(size)
        elif flavor == "llama-server" and metric.startswith("llamacpp:"):
            key = metric.split(":", 1)[1]
            if key in ("kv_cache_usage_ratio", "kv_cache_tokens", "requests_processing",
                       "requests_deferred", "n_tokens_max"):
                snap[{"kv_cache_usage_ratio": "kv_used_fraction", "kv_cache_tokens": "kv_used_tokens",
                      "requests_processing": "running", "requests_deferred": "waiting"}.get(key, key)] = value
    if flavor == "llama-server" and hasattr(engine, "slots"):
        try:
            slots = engine.slots()
            snap["kv_capacity_tokens"] = sum(int(s.get("n_ctx", 0)) for s in slots)
            snap["running"] = sum(1 for s in slots if s.get("is_processing"))
        except Exception:
            pass
    return snap


def _vllm_in_process(engine: Engine) -> dict[str, Any]:
    snap: dict[str, Any] = {}
    try:
        llm = engine.llm
        cc = llm.llm_engine.vllm_config.cache_config
        if cc.num_gpu_blocks:
            snap["kv_capacity_tokens"] = int(cc.num_gpu_blocks) * int(cc.block_size)
        for m in llm.get_metrics():
            if m.name == "vllm:kv_cache_usage_perc":
                snap["kv_used_fraction"] = float(m.value)
            elif m.name == "vllm:num_requests_running":
                snap["running"] = float(m.value)
    except Exception:
        pass
    return snap
