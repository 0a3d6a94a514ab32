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


# Under data parallelism vLLM gives one series per engine (label "engine"). Counts add up
# over them (requests running, waiting, KV capacity, counters); the KV fraction is the
# fullest engine's, a max: a sum could pass 1, and a mean would hide the one engine that is
# full and preempting.
_MAXED = frozenset({"kv_used_fraction"})


def _combine(out: dict[str, float], key: str, value: float) -> None:
    if key in _MAXED and key in out:
        out[key] = max(out[key], value)
    else:
        out[key] = out.get(key, 0) + value


def vllm_kv(samples: list[Sample]) -> dict[str, float]:
    """vLLM's metrics (server /metrics or ``LLM.get_metrics``) as a KV account, every
    engine's series combined (see ``_MAXED``)."""
    snap: dict[str, float] = {}
    engines = set()
    for metric, labels, value in samples:
        if metric in _VLLM:
            _combine(snap, _VLLM[metric], value)
            if metric == "vllm:kv_cache_usage_perc":
                engines.add(labels.get("engine"))
        elif metric == "vllm:cache_config_info":
            blocks, size = labels.get("num_gpu_blocks"), labels.get("block_size")
            if blocks and blocks != "None" and size:
                _combine(snap, "kv_capacity_tokens", int(blocks) * int(size))
    if len(engines) > 1:  # the fraction is one engine's (the fullest), the capacity all of theirs
        snap["kv_engines"] = float(len(engines))
    return snap


def llamacpp_kv(samples: list[Sample]) -> dict[str, float]:
    """llama-server's /metrics as a KV account (its capacity comes from /slots)."""
    return {_LLAMACPP[m]: v for m, _, v in samples if m in _LLAMACPP}


# One name per concept for both servers: the telemetry timeline's "server" source (README,
# "Telemetry"). Gauges are read as they are; counters are cumulative, and the timeline turns
# them into per-second rates. A concept an engine lacks gives no column, never a zero.
SERVER_METRICS: dict[str, tuple[str | None, str | None, str]] = {
    # shared name          vLLM (in process or /metrics)   llama-server /metrics            kind
    "running":             ("vllm:num_requests_running",   "llamacpp:requests_processing",   "gauge"),
    "waiting":             ("vllm:num_requests_waiting",   "llamacpp:requests_deferred",     "gauge"),
    "kv_used_fraction":    ("vllm:kv_cache_usage_perc",    "llamacpp:kv_cache_usage_ratio",  "gauge"),
    "prompt_tokens":       ("vllm:prompt_tokens",          "llamacpp:prompt_tokens",         "counter"),
    "generation_tokens":   ("vllm:generation_tokens",      "llamacpp:tokens_predicted",      "counter"),
    "preemptions":         ("vllm:num_preemptions",        None,                             "counter"),
    "prefix_hit_tokens":   ("vllm:prefix_cache_hits",      None,                             "counter"),
    "prefix_query_tokens": ("vllm:prefix_cache_queries",   None,                             "counter"),
    "decode_calls":        (None,                          "llamacpp:n_decode",              "counter"),
}
COUNTERS = frozenset(k for k, (_, _, kind) in SERVER_METRICS.items() if kind == "counter")


def server_metrics(samples: list[Sample], flavor: str) -> dict[str, float]:
    """``samples`` of vLLM (``flavor`` "vllm") or llama-server ("llama-server") under the
    shared names of :data:`SERVER_METRICS`. Counters are matched with or without the
    ``_total`` suffix Prometheus adds; labelled series (one per model or engine) are summed,
    but for the KV fraction, their max (see ``_MAXED``)."""
    col = 0 if flavor == "vllm" else 1
    wanted = {names[col]: shared for shared, names in SERVER_METRICS.items() if names[col]}
    out: dict[str, float] = {}
    for metric, _labels, value in samples:
        base = metric[: -len("_total")] if metric.endswith("_total") else metric
        shared = wanted.get(metric) or wanted.get(base)
        if shared is not None:
            _combine(out, shared, value)
    return out
