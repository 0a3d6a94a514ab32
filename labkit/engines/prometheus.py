"""Prometheus text pages of the servers, and each server's KV cache metrics in labkit's terms
(the keys of :data:`labkit.engines.capabilities.KV_KEYS`)."""

from __future__ import annotations

import re

Sample = tuple[str, dict[str, str], float]

_LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+([-+0-9.eEinfNa]+)$')


def parse_prometheus(text: str) -> list[Sample]:
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


_VLLM = {"vllm:kv_cache_usage_perc": "kv_used_fraction", "vllm:num_requests_running": "running",
         "vllm:num_requests_waiting": "waiting"}
_LLAMACPP = {"llamacpp:kv_cache_usage_ratio": "kv_used_fraction",
             "llamacpp:kv_cache_tokens": "kv_used_tokens", "llamacpp:requests_processing": "running",
             "llamacpp:requests_deferred": "waiting", "llamacpp:n_tokens_max": "n_tokens_max"}


def vllm_kv(samples: list[Sample]) -> dict[str, float]:
    """vLLM's metrics (server /metrics or ``LLM.get_metrics``) as a KV account."""
    snap: dict[str, float] = {}
    for metric, labels, value in samples:
        if metric in _VLLM:
            snap[_VLLM[metric]] = value
        elif metric == "vllm:cache_config_info":
            blocks, size = labels.get("num_gpu_blocks"), labels.get("block_size")
            if blocks and blocks != "None" and size:
                snap["kv_capacity_tokens"] = int(blocks) * int(size)
    return snap


def llamacpp_kv(samples: list[Sample]) -> dict[str, float]:
    """llama-server's /metrics as a KV account (its capacity comes from /slots)."""
    return {_LLAMACPP[m]: v for m, _, v in samples if m in _LLAMACPP}
