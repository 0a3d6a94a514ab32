"""The `labkit` command's answers to bad input and failed jobs (labkit.cli), against a small
fake OpenAI server on 127.0.0.1 where a server is needed (no engine is started)."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from aiohttp import web

from labkit.cli import build_parser, check_engine_flags, engine_kwargs, main
from labkit.errors import InvalidInput

from .fake_server import serve
from .test_apicheck import _models

ROOT = Path(__file__).resolve().parents[2]


def _sse(text: str) -> bytes:
    return f"data: {json.dumps({'choices': [{'index': 0, 'delta': {'content': text}}]})}\n\n".encode()


async def _streamed_reply(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    for part in ("Hi", " there"):
        await resp.write(_sse(part))
    usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    end = {"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}], "usage": usage}
    await resp.write(f"data: {json.dumps(end)}\n\ndata: [DONE]\n\n".encode())
    return resp


async def _unauthorized(request: web.Request) -> web.Response:
    return web.json_response({"error": {"message": "invalid api key"}}, status=401)


def _every_other_fails() -> web.RouteDef:
    count = itertools.count()

    async def handler(request: web.Request) -> web.StreamResponse:
        return await (_unauthorized if next(count) % 2 else _streamed_reply)(request)

    return web.post("/v1/chat/completions", handler)


def _error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("labkit: ")]


def test_a_bench_where_no_request_completed_fails_with_one_error_line(capsys):
    for url in serve([web.get("/v1/models", _models), web.post("/v1/chat/completions", _unauthorized)]):
        code = main(["bench", "--engine", "openai", "--url", url, "--concurrency", "1", "--requests", "3"])
    err = capsys.readouterr().err
    assert code == 1, err
    errors = [line for line in _error_lines(err) if line.startswith("labkit: error:")]
    assert len(errors) == 1 and "no request completed: all" in errors[0]
    assert "HTTP 401" in err


def test_a_bench_where_some_requests_failed_warns_and_exits_0(capsys):
    for url in serve([web.get("/v1/models", _models), _every_other_fails()]):
        code = main(["bench", "--engine", "openai", "--url", url, "--concurrency", "1", "--requests", "4"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert any(line.startswith("labkit: warning:") and "requests failed" in line for line in _error_lines(err))


def test_capacity_where_every_request_failed_is_an_error_not_a_missed_slo(capsys):
    for url in serve([web.get("/v1/models", _models), web.post("/v1/chat/completions", _unauthorized)]):
        code = main(["capacity", "--engine", "openai", "--url", url, "--slo", "ttft_p99_ms=2000",
                     "--max-level", "2"])
    out, err = capsys.readouterr()
    assert code == 1, err
    assert "no request completed at any level" in err
    assert "broke the SLO" not in out  # the measured table stays; the SLO verdict does not
    assert "errors" in out


@pytest.mark.parametrize("argv, named", [
    (["bench", "--requests", "x"], "argument --requests: invalid int value: 'x'"),
    (["conformance", "--timeout", "0"], "argument --timeout: takes a number of seconds above 0"),
    (["conformance", "--timeout", "-5"], "argument --timeout"),
    (["conformance", "--timeout", "nan"], "argument --timeout"),
    (["generate", "--logprobs", "0", "hi"], "argument --logprobs: takes a top-k from 1 to 20"),
    (["no-such-command"], "invalid choice: 'no-such-command'"),
    ([], "the following arguments are required: command"),
])
def test_argument_errors_are_one_labkit_error_line(capsys, argv, named):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert err.count("\n") == 1 and err.startswith("labkit: error: ") and named in err, err
    assert "usage:" not in err


@pytest.mark.parametrize("argv, message", [
    (["--engine", "openai", "--url", "http://x/v1", "--threads", "-3"], "--threads does not apply to --engine openai"),
    (["--engine", "openai", "--url", "http://x/v1", "--context", "4096"], "--context does not apply"),
    (["--engine", "llama.cpp", "--url", "http://x/v1"], "--url does not apply to --engine llama.cpp"),
    (["--engine", "vllm", "--gpu-layers", "10"], "--gpu-layers does not apply to --engine vllm"),
    (["--engine", "vllm-server", "--parallel", "4"], "--parallel does not apply to --engine vllm-server"),
])
def test_a_flag_that_does_not_fit_the_engine_is_refused_by_name(argv, message):
    args = build_parser().parse_args(["bench", *argv])
    with pytest.raises(InvalidInput, match=message):
        engine_kwargs(args)


def test_flags_that_fit_are_passed_on():
    args = build_parser().parse_args(["bench", "--engine", "llama-server", "--parallel", "4", "--gpu-layers", "9"])
    assert engine_kwargs(args) == {"model": "smollm2-135m", "parallel": 4, "gpu_layers": 9}


def test_compare_takes_a_flag_that_fits_one_of_its_engines_and_refuses_one_that_fits_none():
    args = build_parser().parse_args(["compare", "--engines", "llama.cpp,openai", "--url", "http://x/v1",
                                      "--threads", "2", "hi"])
    check_engine_flags(args, ["llama.cpp", "openai"])  # --url for openai, --threads for llama.cpp
    args = build_parser().parse_args(["compare", "--engines", "llama.cpp,vllm", "--parallel", "2", "hi"])
    with pytest.raises(InvalidInput, match="--parallel does not apply to any of --engines llama.cpp,vllm"):
        check_engine_flags(args, ["llama.cpp", "vllm"])


@pytest.mark.parametrize("command", [["bench", "--engine", "openai", "--url", "http://127.0.0.1:9/v1"],
                                     ["capacity", "--engine", "openai", "--url", "http://127.0.0.1:9/v1",
                                      "--slo", "ttft_p99_ms=100"]])
def test_an_out_that_is_a_file_is_refused_before_the_engine_loads(tmp_path, capsys, command):
    afile = tmp_path / "afile"
    afile.write_text("")
    # Port 9 has no server: an engine loaded first would fail on the connection instead.
    assert main([*command, "--out", str(afile / "run")]) == 2
    err = capsys.readouterr().err
    assert "is a file, not a folder" in err and "connect" not in err.lower()


def test_a_closed_stdout_ends_quietly_with_141():
    read, write = os.pipe()
    os.close(read)  # no reader from the start: the first write fails, whenever it comes
    try:
        proc = subprocess.run([sys.executable, "-m", "labkit.cli", "models", "--json"], stdout=write,
                              stderr=subprocess.PIPE, text=True, timeout=120,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    finally:
        os.close(write)
    assert proc.returncode == 141, proc.stderr
    assert "Traceback" not in proc.stderr and "BrokenPipeError" not in proc.stderr
