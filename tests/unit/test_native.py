"""Choosing a llama.cpp build that runs on this CPU, and the torch dtype decision: fast,
against fake builds whose llama-bench crashes or passes the way real ones do."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from labkit.errors import EngineError
from labkit.native import cpu, torch_dtypes
from labkit.native import llamacpp as ll

PASSING = """#!/bin/sh
echo '[{"n_prompt": 128, "n_gen": 0, "avg_ts": 500.0}, {"n_prompt": 0, "n_gen": 8, "avg_ts": 90.0}]'
"""
SIGILL = "#!/bin/sh\necho 'loading model' >&2\nkill -ILL $$\n"


def fake_build(root: Path, bench_script: str) -> Path:
    """A build folder whose llama-bench behaves like ``bench_script``."""
    (root / "bin").mkdir(parents=True)
    for t in ll.TOOLS:
        f = root / "bin" / t
        f.write_text(bench_script if t == "llama-bench" else "#!/bin/sh\n")
        f.chmod(f.stat().st_mode | stat.S_IEXEC)
    return root


def test_a_build_killed_by_sigill_is_skipped_and_the_reason_recorded(tmp_path):
    builds = {"native": fake_build(tmp_path / "native", SIGILL),
              "avx512": fake_build(tmp_path / "avx512", PASSING)}
    candidates = ll.variants(["avx", "avx2", "fma", "f16c", "avx512f", "avx512_bf16", "amx_tile"])
    made = []

    def make(v):
        made.append(v.name)
        return builds[v.name]

    chosen, path, result, tried = ll.choose(candidates, make, lambda b: ll.probe(b, Path("m.gguf")))
    assert chosen.name == "avx512" and path == builds["avx512"] and made == ["native", "avx512"]
    assert result.ok and result.prompt_tok_s == 500.0 and result.decode_tok_s == 90.0
    assert tried[0]["variant"] == "native" and not tried[0]["ok"]
    assert "SIGILL" in tried[0]["reason"] and "illegal instruction" in tried[0]["reason"]
    assert tried[1]["ok"]


def test_no_build_that_runs_is_an_engine_error_naming_each_failure(tmp_path):
    bad = fake_build(tmp_path / "bad", SIGILL)
    failing = fake_build(tmp_path / "failing", "#!/bin/sh\necho boom >&2\nexit 3\n")
    with pytest.raises(EngineError) as e:
        ll.choose([ll.Variant("native", (), ""), ll.Variant("avx2", (), "")],
                  lambda v: bad if v.name == "native" else failing,
                  lambda b: ll.probe(b, Path("m.gguf")))
    assert "native: killed by SIGILL" in str(e.value) and "avx2: exited with code 3" in str(e.value)
    assert "labkit doctor" in str(e.value)


@pytest.mark.parametrize("script, reason", [
    ("#!/bin/sh\necho not json\n", "no usable result"),
    ("#!/bin/sh\necho '[{\"n_prompt\": 128, \"n_gen\": 0, \"avg_ts\": 0}]'\n", "no usable result"),
    ("#!/bin/sh\nkill -SEGV $$\n", "SIGSEGV"),
])
def test_probe_judges_what_llama_bench_did(tmp_path, script, reason):
    result = ll.probe(fake_build(tmp_path, script) / "bin", Path("m.gguf"))
    assert not result.ok and reason in result.reason


def test_probe_that_hangs_fails_instead_of_waiting_forever(tmp_path):
    b = fake_build(tmp_path, "#!/bin/sh\nexec sleep 30\n") / "bin"
    result = ll.probe(b, Path("m.gguf"), timeout_s=0.5)
    assert not result.ok and "did not finish" in result.reason


def test_variants_never_ask_for_amx_outside_native_and_respect_cmake_args():
    flags = ["avx", "avx2", "fma", "f16c", "avx512f", "avx512_vbmi", "avx512_vnni", "avx512_bf16",
             "amx_tile", "amx_int8", "amx_bf16"]
    names = [v.name for v in ll.variants(flags)]
    assert names[:3] == ["native", "avx512", "avx2"]
    for v in ll.variants(flags)[1:]:
        assert not any(a.startswith("-DGGML_AMX") and a.endswith("ON") for a in v.cmake)
        assert "-DGGML_NATIVE=OFF" in v.cmake
    avx512 = ll.variants(flags)[1].cmake
    assert "-DGGML_AVX512_BF16=ON" in avx512 and "-DGGML_AVX512_VNNI=ON" in avx512
    assert [v.name for v in ll.variants(["avx", "avx2", "fma", "f16c"])][:2] == ["native", "avx2"]
    assert [v.name for v in ll.variants(flags, ["-DGGML_NATIVE=OFF", "-DGGML_AVX2=ON"])] == ["custom"]


def test_cpu_fingerprint_ignores_flag_order_and_sees_a_new_flag():
    f = {"model": "X", "machine": "x86_64", "flags": ["avx2", "avx"]}
    assert cpu.fingerprint(f) == cpu.fingerprint({**f, "flags": ["avx", "avx2"]})
    assert cpu.fingerprint(f) != cpu.fingerprint({**f, "flags": ["avx", "avx2", "amx_tile"]})


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LABKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(ll, "llama_cpp_python_version", lambda: "0.0.test")
    monkeypatch.setattr(ll, "probe", lambda b, model=None: ll.Probe(True, "passed (fake)"))
    built = []

    def fake_make(version, user, fp, work, progress, say):
        def make(v):
            entry = ll._entry(version, v, user, fp)

            def build(tmp):
                built.append(v.name)
                fake_build(tmp, PASSING)
                (tmp / "build.json").write_text(json.dumps(
                    {"variant": v.name, "cmake_args": list(v.cmake), "cpu": dict(cpu.features())}))

            if entry.exists() and not ll._same_cpu(entry, fp):
                import shutil

                shutil.rmtree(entry)
            return ll.build_atomically(entry, build)
        return make

    monkeypatch.setattr(ll, "_make", fake_make)
    return built


def test_a_cached_build_is_reused_on_the_same_cpu(cache):
    first = ll.current_build(progress=False)
    second = ll.current_build(progress=False)
    assert cache == ["native"] and first.path == second.path
    assert (first.path / "probe.json").exists()


def test_a_cached_build_recorded_for_another_cpu_is_rebuilt_not_reused(cache):
    first = ll.current_build(progress=False)
    meta = json.loads((first.path / "build.json").read_text())
    meta["cpu"]["flags"] = [*meta["cpu"]["flags"], "amx_tile"]  # made on a CPU with AMX
    (first.path / "build.json").write_text(json.dumps(meta))
    second = ll.current_build(progress=False)
    assert cache == ["native", "native"]
    assert json.loads((second.path / "build.json").read_text())["cpu"] == dict(cpu.features())


def test_torch_dtype_decision():
    native = {"float32": {"s_per_matmul": 1.0, "rel_err": 0.0},
              "bfloat16": {"s_per_matmul": 0.6, "rel_err": 0.004}}
    emulated = {**native, "bfloat16": {"s_per_matmul": 5.0, "rel_err": 0.004}}
    assert torch_dtypes.decide(native, reported_bf16=True).bfloat16_native
    assert not torch_dtypes.decide(emulated, reported_bf16=True).bfloat16_native
    assert not torch_dtypes.decide(native, reported_bf16=False).bfloat16_native
    crashed = torch_dtypes.decide(None, True, "the matmul check was killed by SIGILL")
    assert not crashed.bfloat16_native and not crashed.float32_ok and "SIGILL" in crashed.reason


def test_vllm_on_cpu_gets_the_in_engine_core_executor_and_a_sized_thread_pool(monkeypatch):
    from labkit.engines import defaults

    monkeypatch.setattr(defaults, "has_cuda", lambda: False)
    env, used, device = defaults.vllm_env(1, 1)
    assert (env["OMP_NUM_THREADS"], used, device) == ("1", 1, "cpu")
    assert defaults.cpu_executor(None) == defaults.UNI_EXECUTOR
    # The user's choice stands, and several workers keep vLLM's own process executor.
    assert defaults.cpu_executor("mp") == "mp"
    assert defaults.cpu_executor(None, parallel=2) is None
    monkeypatch.setattr(defaults, "has_cuda", lambda: True)
    assert defaults.cpu_executor(None) is None


def test_vllm_parallel_sizes_and_executor_pass_through_checked(monkeypatch):
    from labkit.engines import defaults
    from labkit.errors import InvalidInput

    monkeypatch.setattr(defaults, "has_cuda", lambda: True)
    got = defaults.parallelism(2, 1, 1, "ray")
    assert got == {"tensor_parallel_size": 2, "distributed_executor_backend": "ray"}
    assert defaults.as_flags(got) == ["--tensor-parallel-size", "2", "--distributed-executor-backend", "ray"]
    assert defaults.parallelism(1, 2, 2) == {"pipeline_parallel_size": 2, "data_parallel_size": 2}
    monkeypatch.setattr(defaults, "has_cuda", lambda: False)
    assert defaults.parallelism() == {"distributed_executor_backend": defaults.UNI_EXECUTOR}
    for bad in ({"tensor": 0}, {"pipeline": 1.5}, {"data": True}, {"backend": "threads"}):
        with pytest.raises(InvalidInput):
            defaults.parallelism(**bad)


def test_vllm_server_refuses_a_parallel_layout_given_twice():
    from labkit.engines.servers import _parallel_args
    from labkit.errors import InvalidInput

    assert _parallel_args(["--tensor-parallel-size", "2"], 1, 1, 1, None) == {}  # extra_args alone: theirs
    with pytest.raises(InvalidInput, match="tensor_parallel_size"):
        _parallel_args(["-tp=2"], 2, 1, 1, None)
    with pytest.raises(InvalidInput, match="distributed_executor_backend"):
        _parallel_args(["--pipeline-parallel-size", "2"], 1, 1, 1, "ray")


def test_arm_cores_of_one_flag_list_are_told_apart_by_their_part():
    from labkit.native.cpu import fingerprint, read_cpuinfo

    def arm(part: str, features: str) -> str:
        return fingerprint(read_cpuinfo(f"processor\t: 0\nFeatures\t: {features}\nCPU implementer\t: 0x41\n"
                                        f"CPU architecture: 8\nCPU variant\t: 0x1\nCPU part\t: {part}\n"))

    base = "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp"
    assert arm("0xd0c", base) != arm("0xd08", base)  # Graviton2 (Neoverse N1) is not a Raspberry Pi 4 (A72)
    assert arm("0xd40", base + " sve i8mm bf16") != arm("0xd4f", base + " sve i8mm bf16")  # Graviton3, 4
    assert "asimddp" in read_cpuinfo(f"Features\t: {base}\n")["flags"]  # Linux's name for dotprod


def _fake_sdist(cache: Path, version: str) -> None:
    import io
    import tarfile

    (cache / "src").mkdir(parents=True, exist_ok=True)
    with tarfile.open(cache / "src" / f"llama_cpp_python-{version}.tar.gz", "w:gz") as tar:
        data = f"# llama.cpp of {version}\n".encode()
        info = tarfile.TarInfo(f"llama_cpp_python-{version}/vendor/llama.cpp/CMakeLists.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


def test_the_source_tree_is_the_version_asked_for_not_the_installed_one(tmp_path, monkeypatch):
    # make passes the version its requirements file pins: after the pin is raised, .venv still
    # holds the old binding, and the new sdist must be the one fetched and built
    monkeypatch.setenv("LABKIT_CACHE", str(tmp_path))
    monkeypatch.delenv("LABKIT_LLAMACPP_SRC", raising=False)
    monkeypatch.setattr(ll, "llama_cpp_python_version", lambda: "0.0.1")  # the installed one
    monkeypatch.setattr(ll, "_download_sdist", lambda *a: pytest.fail("went to the network"))
    _fake_sdist(tmp_path, "9.9.9")
    tree = ll.source_tree("9.9.9")
    assert (tree / "CMakeLists.txt").read_text() == "# llama.cpp of 9.9.9\n"
    assert ll.sdist_archive("9.9.9") == tmp_path / "src" / "llama_cpp_python-9.9.9.tar.gz"
