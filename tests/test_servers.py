"""Managed servers: free ports, startup failures, and no process outliving its owner."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap

import psutil
import pytest

import labkit
from labkit.errors import InvalidInput, ServerError

from .conftest import MODEL


def _tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def test_server_binds_loopback_and_close_ends_its_whole_tree():
    srv = labkit.load("llama-server", model=MODEL, threads=1, context=256)
    try:
        assert srv.url.startswith("http://127.0.0.1:")
        procs = _tree(srv.info.pid)
        assert any("llama-server" in " ".join(p.cmdline()) for p in procs)
    finally:
        srv.close()
    gone, alive = psutil.wait_procs(procs, timeout=30)
    assert not alive


def test_port_already_taken_is_refused_before_starting():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        with pytest.raises(InvalidInput, match=f"Port {port}.*in use"):
            labkit.load("llama-server", model=MODEL, port=port)


def test_server_that_exits_during_startup_shows_its_log():
    with pytest.raises(ServerError, match="exited with code") as err:
        labkit.load("llama-server", model=MODEL, extra_args=["--no-such-flag"])
    assert "no-such-flag" in err.value.log_tail


def test_server_dies_with_its_owner_even_on_sigkill(tmp_path):
    # A separate Python process owns a llama-server and is then killed without any chance
    # to clean up (as a crashed Jupyter kernel would be): the reaper must end the server.
    script = textwrap.dedent(f"""
        import labkit, sys
        srv = labkit.load("llama-server", model={MODEL!r}, threads=1, context=256)
        print(srv.info.pid, flush=True)
        sys.stdin.read()
    """)
    owner = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        root = int(owner.stdout.readline())
        procs = _tree(root)
        assert len(procs) >= 2
    finally:
        owner.kill()
        owner.wait()
    gone, alive = psutil.wait_procs(procs, timeout=60)
    assert not alive, [p.cmdline() for p in alive]


def test_failed_test_midway_leaves_no_server():
    holder = {}
    with pytest.raises(RuntimeError), labkit.load("llama-server", model=MODEL, threads=1,
                                                  context=256) as srv:
        holder["procs"] = _tree(srv.info.pid)
        raise RuntimeError("a test failing half-way")
    gone, alive = psutil.wait_procs(holder["procs"], timeout=30)
    assert not alive


@pytest.mark.parametrize("name", ["llama-server", "vllm-server"])
def test_astream_gives_the_same_tokens_as_stream(engine_by_name, name):
    """The load generator's asyncio path and the threaded path are the same request."""
    import asyncio

    srv = engine_by_name(name)

    async def collect():
        try:
            return [t async for t in srv.astream("The capital of France is", max_tokens=12)]
        finally:
            await srv.aclose()

    async_tokens = asyncio.run(collect())
    sync_tokens = list(srv.stream("The capital of France is", max_tokens=12))
    assert [t.token_id for t in async_tokens] == [t.token_id for t in sync_tokens]
    assert "".join(t.text for t in async_tokens) == "".join(t.text for t in sync_tokens)
    times = [t.t_s for t in async_tokens]
    assert times == sorted(times) and times[0] > 0


@pytest.mark.parametrize("port", [70000, -1, "abc", 8.5])
def test_a_port_that_cannot_be_one_is_invalid_input(port):
    with pytest.raises(InvalidInput, match="0..65535"):
        labkit.load("llama-server", model=MODEL, port=port)


def test_port_zero_picks_a_free_port_and_an_api_key_is_required_and_never_written(tmp_path):
    import httpx

    key = "sekret-key-0123456789"
    with labkit.load("llama-server", model=MODEL, port=0, api_key=key, threads=1, context=256,
                     log_dir=str(tmp_path)) as srv:
        assert srv.info.args["port"] > 0
        assert httpx.get(srv.url + "/models").status_code == 401  # the server requires it
        res = labkit.bench(srv, concurrency=[1], requests_per_level=1, out=tmp_path / "run",
                           workload=labkit.workloads.synthetic(input_tokens=8, output_tokens=4),
                           progress=False)
        assert res.summary["completed"].iloc[0] == 1
        assert all(key not in " ".join(p.cmdline()) for p in _tree(srv.info.pid))
        assert key not in str(srv.info.to_dict())
    for f in tmp_path.rglob("*"):
        if f.is_file():
            assert key not in f.read_text(errors="replace"), f


def test_a_url_that_is_not_an_openai_server_says_so_in_one_line():
    import http.server
    import threading

    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's naming)
            body = b"<html><body><h1>Not Found</h1>" + b"x" * 5000 + b"</body></html>"
            self.send_response(404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = http.server.HTTPServer(("127.0.0.1", 0), NotFound)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        with pytest.raises(labkit.InvalidInput) as err:
            labkit.load("openai", url=f"http://127.0.0.1:{httpd.server_address[1]}/v1")
        msg = str(err.value)
        assert "does not serve the OpenAI API (GET /v1/models: HTTP 404" in msg
        assert "<html" not in msg and len(msg) < 400
    finally:
        httpd.shutdown()


def test_a_reaper_told_to_stop_takes_its_server_with_it():
    """`kill` or `pkill -f labkit` reaching the reaper (the server's parent, which ends it
    with its owner) must not leave the server orphaned and running."""
    with labkit.load("mock-server") as mock:
        reaper = psutil.Process(mock.process.pid)
        (server,) = reaper.children()
        reaper.terminate()
        gone, alive = psutil.wait_procs([server], timeout=30)  # not the reaper: its status is labkit's to read
        assert not alive, server.cmdline()
        assert mock.health() == "mock-server was killed by SIGTERM"  # what happened, not "exited with code 0"
        assert not reaper.is_running() or reaper.status() == psutil.STATUS_ZOMBIE


def test_servers_sample_with_labkits_parameters_not_defaults_of_their_own(vllm_server):
    # vLLM's server would fill what a request leaves out from the model's generation_config.json
    args = [a for p in _tree(vllm_server.info.pid) for a in p.cmdline()]
    assert "--generation-config" in args and args[args.index("--generation-config") + 1] == "vllm"


def test_a_model_name_is_matched_to_the_server_that_answers_it(llama_server):
    from labkit.engines.openai import served_as

    # llama-server answers to any name: one it does not list is still llama-server's
    with labkit.load("openai", url=llama_server.url, model="any-name") as named:
        assert (named.model, named.flavor) == ("any-name", "llama-server")
    mixed = [{"id": "a", "owned_by": "vllm"}, {"id": "b", "owned_by": "llamacpp", "aliases": ["b2"]}]
    assert served_as(mixed, "b2", "u") == ("b2", "llama-server") and served_as(mixed, None, "u") == ("a", "vllm")
    with pytest.raises(InvalidInput, match=r"u does not list model 'c'; it serves 'a', 'b'"):
        served_as(mixed, "c", "u")  # which kind of server would answer it is unknown


def test_engine_starts_in_one_process_take_turns(tmp_path):
    import threading

    from labkit._procs import STARTING
    from labkit.engines._output import output_to

    def try_to_start(got):
        got.append(STARTING.acquire(blocking=False))
        if got[-1]:
            STARTING.release()

    during, after = [], []
    with output_to(tmp_path / "engine.log"):  # an in-process engine loading, its output redirected
        t = threading.Thread(target=try_to_start, args=(during,))
        t.start()
        t.join()
    t = threading.Thread(target=try_to_start, args=(after,))
    t.start()
    t.join()
    assert during == [False] and after == [True]  # a second start (another panel's) waits its turn
