"""The engine protocol on every local engine, with the real bundled model."""

from __future__ import annotations

import os

import pytest

import labkit
from labkit.errors import EngineError, InvalidInput

from .conftest import CHAT, MODEL, PROMPTS

LOCAL = ["llama.cpp", "vllm", "llama-server", "vllm-server"]


@pytest.mark.parametrize("name", LOCAL)
def test_greedy_generation_is_nonempty_and_deterministic(engine_by_name, name):
    engine = engine_by_name(name)
    first = engine.generate(PROMPTS[:2], max_tokens=16, temperature=0)
    again = engine.generate(PROMPTS[:2], max_tokens=16, temperature=0)
    assert [g.text for g in first] == [g.text for g in again]
    for g in first:
        assert g.text.strip()
        assert g.token_ids and len(g.token_ids) <= 16
        assert g.finish_reason in ("length", "stop")
        assert g.ttft_s is not None and 0 < g.ttft_s <= g.e2e_s
        assert len(g.token_times_s) == len(g.token_ids)
        assert g.prompt_token_ids


@pytest.mark.parametrize("name", LOCAL)
def test_stream_yields_the_same_tokens_as_generate(engine_by_name, name):
    engine = engine_by_name(name)
    gen = engine.generate([PROMPTS[0]], max_tokens=12)[0]
    toks = [t for t in engine.stream(PROMPTS[0], max_tokens=12) if t.token_id is not None]
    assert [t.token_id for t in toks] == gen.token_ids
    assert "".join(t.text for t in toks) == gen.text
    times = [t.t_s for t in toks]
    assert times == sorted(times) and times[0] > 0


@pytest.mark.parametrize("name", LOCAL)
def test_chat_applies_the_template(engine_by_name, name):
    engine = engine_by_name(name)
    out = engine.chat(CHAT[:1], max_tokens=24)[0]
    assert out.text.strip()
    ids = engine.tokenize(CHAT[0], chat=True)
    raw = engine.tokenize(CHAT[0][0]["content"])
    assert len(ids) > len(raw)  # the template adds role markers around the message


@pytest.mark.parametrize("name", LOCAL)
def test_info_says_what_produced_the_numbers(engine_by_name, name):
    info = engine_by_name(name).info
    assert info.engine == name
    assert info.engine_version and info.model == "smollm2-135m" and info.model_path
    assert info.threads and info.threads >= 1
    assert info.pid


@pytest.mark.parametrize("name", LOCAL)
def test_bad_requests_are_clear_errors(engine_by_name, name):
    engine = engine_by_name(name)
    with pytest.raises(InvalidInput, match="max_tokens"):
        engine.generate(["hi"], max_tokens=0)
    with pytest.raises(InvalidInput, match="empty"):
        engine.generate([])
    with pytest.raises(InvalidInput):
        engine.generate(["word " * 3000], max_tokens=8)


@pytest.mark.parametrize(("local", "server"), [("llama.cpp", "llama-server"), ("vllm", "vllm-server")])
def test_same_engine_same_weights_same_greedy_text(engine_by_name, local, server):
    # Bit-equal logits are not promised: the server batches its slots and places each one's
    # KV cells where they are free, which changes the order of floating-point sums. Seen on an
    # AVX2 EPYC: llama-server parted from llama.cpp at a token whose top two were 0.016 nats
    # apart. So: same prompt tokens, and any parting only at a near-tie of the reference.
    cmp = labkit.compare({local: engine_by_name(local), server: engine_by_name(server)}, PROMPTS,
                         max_tokens=32)
    t = cmp.table[cmp.table["engine"] == server]
    assert t["same_prompt_tokens"].all()
    assert t.loc[t["identical_to_ref"], "first_divergence"].isna().all()  # same text, same tokens
    parted = t[~t["identical_to_ref"]]
    assert (parted["margin_at_divergence"] < labkit.comparison.NEAR_TIE_NATS).all(), parted
    assert len(parted) <= 1, parted  # a near-tie is rare: most prompts must match exactly


def test_concurrent_requests_are_batched_by_vllm(vllm_engine):
    outs = vllm_engine.generate(PROMPTS, max_tokens=8)
    assert len(outs) == len(PROMPTS)
    # Batched requests start together: every first token comes before the slowest finishes.
    assert max(g.ttft_s for g in outs) < max(g.e2e_s for g in outs)


def test_logprobs_on_in_process_engines(llama, vllm_engine):
    for engine in (llama, vllm_engine):
        g = engine.generate([PROMPTS[1]], max_tokens=4, logprobs=5)[0]
        assert g.logprobs and len(g.logprobs) == len(g.token_ids)
        for tid, top in zip(g.token_ids, g.logprobs, strict=True):
            assert tid in top and max(top.values()) <= 0.0
            # greedy: the chosen token is the most likely one
            assert top[tid] == pytest.approx(max(top.values()), abs=1e-3)


def test_closed_engine_refuses_requests():
    engine = labkit.load("llama.cpp", model="smollm2-135m", threads=1, context=256)
    engine.close()
    engine.close()  # twice is fine
    with pytest.raises(EngineError, match="closed"):
        engine.generate(["hi"])


def test_a_half_read_stream_makes_a_second_request_an_error_not_a_hang():
    llm = labkit.load("llama.cpp", model=MODEL, context=256)
    try:
        s = llm.stream("Once upon a time", max_tokens=8)
        next(s)  # the model is held until this stream ends
        with pytest.raises(EngineError, match="still streaming an earlier request in this thread"):
            llm.generate(["Hi"], max_tokens=2)
        s.close()
        assert llm.generate(["Hi"], max_tokens=2)[0].n_tokens == 2
        s = llm.stream("Once upon a time", max_tokens=8)
        next(s)
        llm.close()  # returns (it waited for itself before); the model goes when the stream does
        assert llm.closed and llm._llm is not None
        s.close()
        assert llm._llm is None
    finally:
        llm.close()


def test_unknown_engine_lists_the_known_ones():
    with pytest.raises(InvalidInput, match="llama-server.*vllm-server"):
        labkit.load("tensorrt")


def test_openai_engine_against_a_running_server(llama_server):
    ext = labkit.load("openai", url=llama_server.url)
    try:
        assert ext.flavor == "llama-server"
        out = ext.generate([PROMPTS[1]], max_tokens=8)[0]
        assert out.text == llama_server.generate([PROMPTS[1]], max_tokens=8)[0].text
    finally:
        ext.close()


def test_unreachable_url_is_a_clear_error():
    from labkit.engines.servers import free_port

    with pytest.raises(EngineError, match="Cannot reach"):
        labkit.load("openai", url=f"http://127.0.0.1:{free_port()}/v1")
    with pytest.raises(InvalidInput, match="http"):
        labkit.load("openai", url="localhost:8000")


def test_in_process_vllm_engine_core_dies_with_its_owner(vllm_owner):
    """vLLM spawns its engine core itself; when the owning process is killed without any
    chance to clean up (a crashed kernel, a SIGKILLed script), labkit's guard ends it."""
    import psutil

    assert vllm_owner.pids, "the owner printed no engine-core pids"
    procs = [q for p in vllm_owner.pids for q in [psutil.Process(p), *psutil.Process(p).children(recursive=True)]]
    # out of reach of a Ctrl-C or Jupyter interrupt, which go to the owner's whole group
    assert all(os.getpgid(p.pid) != os.getpgid(vllm_owner.proc.pid) for p in procs)
    vllm_owner.proc.kill()
    vllm_owner.proc.wait()
    gone, alive = psutil.wait_procs(procs, timeout=60)
    assert not alive, [p.cmdline() for p in alive]


def test_in_process_vllm_engine_core_dies_with_an_owner_killed_while_it_loads(tmp_path):
    """A kernel killed (or OOM-killed) while vLLM still loads: its engine core must not be
    left, however soon after it started (it joins its guard's process group as it starts)."""
    import subprocess
    import sys
    import time

    import psutil

    script = "import labkit, sys\nlabkit.load('vllm', model='smollm2-135m')\nsys.stdin.read()"
    with open(tmp_path / "owner.log", "w") as log:
        owner = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=log, stderr=log)
    try:
        parent, core = psutil.Process(owner.pid), None
        deadline = time.monotonic() + 300
        while core is None and owner.poll() is None and time.monotonic() < deadline:
            core = next((c for c in parent.children() if "EngineCore" in c.name()
                         or "spawn_main" in " ".join(c.cmdline())), None)
            time.sleep(0.05)  # polling a process tree we do not own: nothing to wait on
        assert core is not None, (tmp_path / "owner.log").read_text()[-2000:]
    finally:
        owner.kill()  # at once: no scan period of the guard's to wait out
        owner.wait()
    gone, alive = psutil.wait_procs([core], timeout=60)
    assert not alive, _why_alive(core, tmp_path / "owner.log")


def _why_alive(p, log) -> str:
    import os

    import psutil

    guards = [(g.pid, os.getpgid(g.pid), g.status()) for g in psutil.process_iter()
              if "labkit._guard" in " ".join(g.cmdline())]
    return (f"{p.cmdline()} in group {os.getpgid(p.pid)}, status {p.status()}; guards "
            f"(pid, group, status): {guards}; owner's log: {log.read_text()[-1500:]}")


def test_llama_cpp_reports_the_context_it_really_uses():
    with pytest.warns(UserWarning, match="uses a context of 256 tokens, not the 64"):
        eng = labkit.load("llama.cpp", model=MODEL, context=64, threads=1)
    with eng:
        assert eng.info.args["context"] == 256 and eng.info.args["context_requested"] == 64


@pytest.mark.parametrize("name", ["vllm", "vllm-server"])
def test_vllm_gguf_loader_is_offered_or_refused_clearly(name):
    """vLLM's own GGUF loader where the installed build has one; the CPU build has none,
    which must be a clear EngineError before anything starts, not a crash inside vLLM."""
    from labkit.engines.defaults import vllm_gguf_loader

    why = vllm_gguf_loader()
    if why is not None:
        with pytest.raises(EngineError, match="has no GGUF loader.*without gguf_loader=True"):
            labkit.load(name, model=MODEL, gguf_loader=True)
        return
    with labkit.load(name, model=MODEL, gguf_loader=True, context=256) as e:  # a build with one
        assert e.info.args["gguf_loader"] == "used" and e.info.model_path.endswith(".gguf")
        assert e.generate(["The capital of France is"], max_tokens=4)[0].token_ids


def test_asking_whether_vllm_has_a_gguf_loader_does_not_import_vllm():
    """A server engine's owner asks it; importing vLLM there would cost seconds and start
    vLLM's logger on the owner's stdout (a `--json` stream)."""
    import subprocess
    import sys

    code = ("import sys; from labkit.engines.defaults import vllm_gguf_loader; vllm_gguf_loader(); "
            "print('vllm' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout == "False\n", out.stderr


def test_in_process_vllm_reports_its_own_metrics(vllm_engine):
    # LLM turns stats off by default; labkit turns them on, or get_metrics() fails.
    vllm_engine.generate([PROMPTS[0]], max_tokens=4)
    snap = vllm_engine.server_snapshot()
    assert snap.get("generation_tokens", 0) > 0 and "kv_used_fraction" in snap and "running" in snap


def test_in_process_vllm_cancel_ends_running_requests(vllm_engine):
    import threading

    from labkit.engines.base import Submission

    started, done, seen = threading.Event(), threading.Event(), []

    def on_done(err):
        seen.append(err)
        if len(seen) == 2:
            done.set()

    toks: list = []
    subs = [Submission(p, lambda t: (toks.append(t), started.set()), on_done,
                       {"max_tokens": 200, "ignore_eos": True}) for p in PROMPTS[:2]]
    vllm_engine.submit(subs)
    assert started.wait(120)
    vllm_engine.cancel()
    assert done.wait(120) and seen == [None, None]
    assert sum(t.finish_reason == "cancelled" for t in toks) == 2
    assert vllm_engine.generate([PROMPTS[0]], max_tokens=4)[0].n_tokens == 4  # later ones run


@pytest.mark.parametrize("name", ["llama.cpp", "llama-server"])
def test_a_stop_string_split_over_tokens_leaves_none_of_itself(engine_by_name, name):
    engine = engine_by_name(name)
    toks = [t for t in engine.stream(PROMPTS[0], max_tokens=24) if t.token_id is not None and t.text]
    full = "".join(t.text for t in toks)
    at = 0
    for a, b in zip(toks, toks[1:], strict=False):
        at += len(a.text)
        stop = a.text[-1] + b.text[0]
        if full.find(stop) == at - 1:  # its first occurrence spans this token boundary
            break
    else:
        pytest.skip("no token boundary gives a stop string first seen there")
    assert engine.generate([PROMPTS[0]], max_tokens=24, stop=[stop])[0].text == full[:at - 1]


def test_llama_cpp_refuses_keywords_llama_would_ignore():
    with pytest.raises(InvalidInput, match="n_thread"):
        labkit.load("llama.cpp", model=MODEL, n_thread=4)
    with pytest.raises(InvalidInput, match="parallel"):
        labkit.load("llama.cpp", model=MODEL, parallel=8)


def test_http_engines_have_no_connection_limit_by_default(llama_server):
    assert llama_server.client_spec()["max_connections"] is None
