"""The GPU check: labkit's CUDA path, measured in one short lease of a GPU machine.

    python benchmarks/gpu_check.py prepare DIR        # here: what the GPU machine cannot fetch
    python benchmarks/gpu_check.py run DIR --out OUT  # there (benchmarks/gpu_check.sh)
    python benchmarks/gpu_check.py run DIR --out OUT --dry-run   # on a CPU, in `make test`

The GPU machine has CUDA, cmake, ninja, PyTorch, pandas, psutil, aiohttp, httpx and
nvidia-ml-py, but no network and no llama.cpp sources, and only 64 MiB travel with the
working tree. ``prepare`` writes into DIR: a trimmed llama.cpp tree (ggml with its CPU and
CUDA backends, src, include, common, vendor, and the tools labkit runs), the ``gguf`` wheel
and the bundled model's tokenizer metadata. ``run`` then, within ``--budget-s``:

1. builds llama.cpp with CUDA for the detected architecture only, through labkit's own build
   path (the build is probed on a real prompt batch before use);
2. writes synthetic 1B and 8B models at Q4_K_M (real shapes and tensor types, random weights);
3. for each, with all layers and with half of them on the GPU: llama-bench's prompt and
   decode speed; labkit's bench through llama-server ``-np 32`` at 1/8/32 users with the NVML
   memory timeline (checked against nvidia-smi sampled alongside), planned against measured
   VRAM, labkit's single-user decode against llama-bench, and joules per output token;
4. if time is left, the seed's "26B on a 12 GB card" row: the planner's layer split for a
   26B shape at IQ3_S, run for real, with its peak VRAM against 12 GiB;
5. writes ``gpu_check.json`` and ``gpu_check.md`` into OUT after every step, so a run cut
   short keeps what it measured.

``--dry-run`` does all of it on the CPU with tiny shapes and no CUDA (the trimmed tree is
only configured, not built), so the script cannot rot between GPU leases.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import gpu_check_cuda  # noqa: E402

# When the budget runs out (monotonic): a step's own timeouts stop there, not minutes later.
_DEADLINE = float("inf")


def _timeout(cap_s: float) -> float:
    """A subprocess's timeout: ``cap_s``, cut to what is left of the budget (at least 20 s)."""
    return max(20.0, min(cap_s, _DEADLINE - time.monotonic()))

# Parts of the llama.cpp tree the build needs; everything else (models, docs, tests, other
# backends) stays behind to fit the 64 MiB that travel.
KEEP_TOP = ("CMakeLists.txt", "LICENSE", "cmake", "licenses", "src", "include", "common", "vendor",
            "app")
KEEP_TOOLS = ("llama-bench", "server", "mtmd", "ui", "quantize", "perplexity")
# What no build step reads: the web UI's own sources (labkit builds it without npm, which
# embeds no assets; llama-server runs --no-webui) and mtmd's test media.
DROP_FILES = {"tools/ui": ("src", "tests", "static", "package-lock.json"),
              "tools/mtmd": ("test-1.jpeg", "test-2.mp3", "test-3.mp4", "tests")}
DROP_BACKENDS = ("ggml-cann", "ggml-et", "ggml-hexagon", "ggml-hip", "ggml-metal", "ggml-musa",
                 "ggml-opencl", "ggml-openvino", "ggml-sycl", "ggml-virtgpu", "ggml-vulkan",
                 "ggml-webgpu", "ggml-zdnn", "ggml-zendnn")
TINY = {"name": "tiny", "model_type": "llama", "hidden_size": 256, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 512,
        "vocab_size": 49152, "tie_word_embeddings": True}
# The README's "26B on a 12 GB card" shape (Gemma-2-27B's dimensions).
SHAPE_26B = {"name": "26b", "model_type": "llama", "num_hidden_layers": 46, "hidden_size": 4608,
             "num_attention_heads": 32, "num_key_value_heads": 16, "head_dim": 128,
             "vocab_size": 256000, "intermediate_size": 36864}


def log(msg: str) -> None:
    print(f"[gpu-check {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --- prepare --------------------------------------------------------------------------------
def prepare(target: Path, cuda_archs: list[str] | None = None) -> dict[str, Any]:
    """Write the trimmed llama.cpp tree, the gguf wheel and the tokenizer JSON into ``target``,
    and with ``cuda_archs`` llama.cpp's CUDA backend compiled here for each (gpu_check_cuda)."""
    from labkit.native.llamacpp import source_tree
    from labkit.synthetic import tokenizer_metadata

    src = source_tree()
    if target.exists():
        shutil.rmtree(target)
    tree = target / "llama.cpp"
    tree.mkdir(parents=True)
    for name in KEEP_TOP:
        p = src / name
        if p.is_dir():
            shutil.copytree(p, tree / name)
        elif p.exists():
            shutil.copy2(p, tree / name)
    shutil.copytree(src / "ggml", tree / "ggml",
                    ignore=lambda d, names: [n for n in names if n in DROP_BACKENDS])
    (tree / "scripts").mkdir()
    shutil.copy2(src / "scripts" / "ui-assets.cmake", tree / "scripts")  # the server's UI step
    (tree / "tools").mkdir()
    for name in KEEP_TOOLS:
        drop = DROP_FILES.get(f"tools/{name}", ())
        shutil.copytree(src / "tools" / name, tree / "tools" / name,
                        ignore=lambda d, names, drop=drop: [n for n in names if n in drop])
    # The upstream tools/CMakeLists.txt adds every tool; this one adds only those kept.
    (tree / "tools" / "CMakeLists.txt").write_text(
        "find_package(Threads REQUIRED)\nllama_add_compile_flags()\n" +
        "".join(f"add_subdirectory({t})\n" for t in ("llama-bench", "quantize", "perplexity", "mtmd"))
        + "if (LLAMA_BUILD_SERVER)\n  add_subdirectory(ui)\n  add_subdirectory(server)\nendif()\n")
    wheels = target / "wheels"
    wheels.mkdir()
    from importlib import metadata

    version = metadata.version("gguf")
    gpu_check_cuda.download_wheel(f"gguf=={version}", wheels, "gguf-*.whl")
    (target / "tokenizer.json").write_text(json.dumps(tokenizer_metadata()))
    # Source packs ~6x smaller: with a CUDA module beside it, the tree alone would not fit.
    with tarfile.open(target / "llama.cpp.tar.xz", "w:xz") as tar:
        tar.add(tree, arcname="llama.cpp")
    shutil.rmtree(tree)
    cuda = gpu_check_cuda.prepare(target, cuda_archs) if cuda_archs else []
    size = sum(f.stat().st_size for f in target.rglob("*") if f.is_file())
    info = {"llama_cpp_src": str(src), "gguf": version, "bytes": size, "cuda_modules": cuda}
    (target / "prepared.json").write_text(json.dumps(info, indent=1))
    log(f"prepared {target}: {size / 2**20:.1f} MiB")
    if size > 56 * 2**20:
        raise SystemExit(f"{target} is {size / 2**20:.1f} MiB; with the repo it must stay under 64 MiB")
    return info


# --- run ------------------------------------------------------------------------------------
class Report:
    """The check's results, written to OUT after every step."""

    def __init__(self, out: Path, dry_run: bool):
        self.out = out
        self.data: dict[str, Any] = {"dry_run": dry_run, "started_utc": _utc(), "steps": {},
                                     "models": [], "runs": [], "errors": []}
        out.mkdir(parents=True, exist_ok=True)

    def step(self, name: str, **values: Any) -> None:
        self.data["steps"][name] = values
        self.save()

    def skip(self, what: str, left_s: float) -> None:
        """A step the budget had no room for: said in the report, not silently dropped."""
        self.data.setdefault("skipped", []).append({"what": what, "budget_left_s": round(left_s)})
        log(f"skipped {what}: {left_s:.0f} s of the budget left")
        self.save()

    def error(self, where: str, e: BaseException) -> None:
        self.data["errors"].append({"where": where, "error": f"{type(e).__name__}: {e}"[:3000]})
        log(f"FAILED {where}: {type(e).__name__}: {str(e)[:500]}")
        self.save()

    def save(self) -> None:
        from labkit._cache import write_atomically

        self.data["updated_utc"] = _utc()  # (a kill mid-write leaves the previous files whole)
        write_atomically(self.out / "gpu_check.json", json.dumps(self.data, indent=1, default=str))
        write_atomically(self.out / "gpu_check.md", markdown(self.data))


def _utc() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _gpu() -> dict[str, Any] | None:
    if shutil.which("nvidia-smi") is None:
        return None
    q = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version,compute_cap",
                        "--format=csv,noheader,nounits"], capture_output=True, text=True)
    if q.returncode != 0 or not q.stdout.strip():
        return None
    name, mem, driver, cc = [x.strip() for x in q.stdout.splitlines()[0].split(",")]
    return {"name": name, "memory_mib": float(mem), "driver": driver, "compute_cap": cc}


class SmiSampler:
    """nvidia-smi's own view of device memory and power, sampled every 200 ms meanwhile."""

    def __init__(self, path: Path):
        self.path = path
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> SmiSampler:
        if shutil.which("nvidia-smi"):
            self.f = open(self.path, "w")  # noqa: SIM115 (closed in __exit__)
            self.proc = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=timestamp,memory.used,power.draw,utilization.gpu",
                 "--format=csv,noheader,nounits", "-lms", "200"], stdout=self.f,
                stderr=subprocess.DEVNULL)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.f.close()

    def peak_mib(self) -> float | None:
        if self.proc is None or not self.path.exists():
            return None
        vals = []
        for line in self.path.read_text().splitlines():
            parts = [p.strip() for p in line.split(",")]
            if len(parts) >= 2:
                try:
                    vals.append(float(parts[1]))
                except ValueError:
                    continue
        return max(vals) if vals else None


def llama_bench(bin_dir: Path, gguf: Path, ngl: int, dry: bool) -> dict[str, float]:
    args = ["-p", "32", "-n", "8", "-r", "1"] if dry else ["-p", "512", "-n", "128", "-r", "2"]
    cmd = [str(bin_dir / "llama-bench"), "-m", str(gguf), "-ngl", str(ngl), "-fa", "1",
           "-t", str(os.cpu_count() or 2), "-o", "json", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=_timeout(300))
    if proc.returncode != 0:
        raise RuntimeError(f"llama-bench failed ({proc.returncode}): {proc.stderr[-1500:]}")
    rows = json.loads(proc.stdout)
    pp = next(r["avg_ts"] for r in rows if r["n_gen"] == 0)
    tg = next(r["avg_ts"] for r in rows if r["n_prompt"] == 0)
    return {"pp_tok_s": float(pp), "tg_tok_s": float(tg)}


def measure(model: Any, ngl: int, levels: list[int], n_requests: dict[int, int], out_tokens: int,
            card_bytes: float | None, bin_dir: Path, work: Path, dry: bool) -> dict[str, Any]:
    """One model at one -ngl: llama-bench, labkit's bench through llama-server, the plan."""
    import labkit
    from labkit.loadgen import workloads

    a = model.arch
    context, parallel = 512, max(levels)
    rec: dict[str, Any] = {"model": str(model), "gpu_layers": ngl, "layers": a.n_layers,
                           "levels": levels}
    t0 = time.perf_counter()
    rec["llama_bench"] = llama_bench(bin_dir, model.gguf, ngl, dry)
    from labkit.memory import nvml

    dev = nvml()
    idle = dev.used_bytes() if dev else None
    smi = SmiSampler(work / f"smi-{model.name}-{ngl}.csv")
    with smi, labkit.load("llama-server", model=model, gpu_layers=ngl, parallel=parallel,
                          context=context, threads=os.cpu_count(), flash_attn=not dry) as srv:
        for lv in levels:  # one level per bench, so a level that fails keeps the others
            try:
                r = labkit.bench(srv, concurrency=[lv], requests_per_level=n_requests[lv],
                                 workload=workloads.synthetic(input_tokens=128, output_tokens=out_tokens,
                                                              ignore_eos=True),
                                 progress=False, kv_interval_s=None, warmup=1)
                row = r.summary.iloc[0].to_dict()
            except Exception as e:
                rec.setdefault("levels_measured", []).append({"level": lv, "error": f"{type(e).__name__}: {e}"[:500]})
                continue
            rec.setdefault("levels_measured", []).append({k: row.get(k) for k in (
                "level", "completed", "errors", "output_tok_per_s", "ttft_p50_ms", "tpot_p50_ms",
                "gpu_energy_j", "j_per_output_token", "peak_vram_process_bytes",
                "peak_vram_used_bytes", "peak_rss_bytes")})
            mem = r.memory
            for col, key in (("vram_used_bytes", "nvml_peak_used_mib"),
                             ("vram_process_bytes", "nvml_peak_process_mib"),
                             ("rss_bytes", "peak_rss_mib")):
                if col in mem:
                    rec[key] = max(rec.get(key, 0.0), float(mem[col].max()) / 2**20)
    rec["smi_peak_used_mib"] = smi.peak_mib()
    if idle is not None and rec.get("nvml_peak_used_mib"):
        rec["nvml_used_over_idle_mib"] = rec["nvml_peak_used_mib"] - idle / 2**20
    if rec["smi_peak_used_mib"] and rec.get("nvml_peak_used_mib"):
        rec["nvml_over_smi"] = rec["nvml_peak_used_mib"] / rec["smi_peak_used_mib"]
    one = next((x for x in rec.get("levels_measured", []) if x["level"] == min(levels)), {})
    if one.get("tpot_p50_ms"):
        rec["labkit_decode_tok_s"] = 1000.0 / one["tpot_p50_ms"]
        rec["decode_vs_llama_bench"] = rec["labkit_decode_tok_s"] / rec["llama_bench"]["tg_tok_s"]
    plan = labkit.fit(model, engines=["llama-server"], quant=model.quant, context=context,
                      users=parallel, gpu_memory=card_bytes, gpu_layers=ngl if card_bytes else None)
    row = plan.row("llama-server")
    rec["plan"] = {k: row.get(k) for k in ("weights_gib", "kv_total_gib", "overhead_gib",
                                           "gpu_gib", "cpu_gib", "total_gib", "gpu_layers", "where")}
    measured = {"cpu_bytes": rec["peak_rss_mib"] * 2**20} if rec.get("peak_rss_mib") else {}
    # The server's own VRAM (NVML per process); where a VM hides that, the device's rise.
    gpu_mib = rec.get("nvml_peak_process_mib") or rec.get("nvml_used_over_idle_mib")
    if card_bytes and gpu_mib:
        measured["gpu_bytes"] = gpu_mib * 2**20
    rec["plan_vs_measured"] = plan.check(measured).to_dict("records")
    rec["seconds"] = time.perf_counter() - t0
    return rec


def run(prep: Path, out: Path, dry: bool, budget_s: float) -> int:
    global _DEADLINE
    t_start = time.monotonic()
    _DEADLINE = t_start + budget_s
    left = lambda: budget_s - (time.monotonic() - t_start)  # noqa: E731
    report = Report(out, dry)
    work = Path(os.environ.get("GPU_CHECK_WORK", "/tmp/labkit-gpu-check"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ["LABKIT_SYNTHETIC_TOKENIZER"] = str(prep / "tokenizer.json")
    gpu = _gpu()
    report.step("environment", python=platform.python_version(), cpu_count=os.cpu_count(), gpu=gpu,
                nvcc=shutil.which("nvcc"), cmake=shutil.which("cmake"))
    if not dry and gpu is None:
        report.error("environment", RuntimeError("no GPU found by nvidia-smi"))
        return 1
    if not dry:  # a fresh cache: nothing built on the CPU machine is trusted here but the module
        os.environ.setdefault("LABKIT_CACHE", str(work / "cache"))
    from labkit import synthetic
    from labkit.native import llamacpp

    # 1. the build (dry run: configure the trimmed tree only; the CPU build is reused)
    t0 = time.perf_counter()
    try:
        tiny = synthetic.synthetic(TINY, quant="F16", progress=False)  # needs no ggml: a probe model
        if dry:
            cfg = work / "configure"
            shutil.rmtree(cfg, ignore_errors=True)
            proc = subprocess.run(["cmake", "-S", str(_source(prep, work)), "-B", str(cfg),
                                   "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_TESTS=OFF",
                                   "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=ON",
                                   "-DLLAMA_USE_PREBUILT_UI=OFF"],
                                  capture_output=True, text=True)
            if proc.returncode == 0:  # build steps that run scripts, not compilers: quick
                proc = subprocess.run(["cmake", "--build", str(cfg), "--target", "llama-ui-assets"],
                                      capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"the trimmed tree does not configure and build:\n"
                                   f"{proc.stdout[-1500:]}{proc.stderr[-1500:]}")
            shutil.rmtree(cfg, ignore_errors=True)
            _configure_cpu_side(prep, work)
            build = llamacpp.current_build(progress=False)
        else:
            build, cuda, gpu_probe = _lease_build(prep, work, gpu, tiny, report, left)
        report.step("build", seconds=time.perf_counter() - t0, variant=build.variant,
                    cmake_args=build.cmake_args, probe=build.probe.to_dict(), tried=build.tried,
                    cuda=None if dry else cuda, gpu_probe=None if dry else gpu_probe)
        log(f"build ok in {time.perf_counter() - t0:.0f} s: {build.probe.reason}")
    except Exception as e:
        report.error("build", e)
        return 1
    os.environ["LABKIT_GGML_LIB"] = str(build.bin_dir)
    card = gpu["memory_mib"] * 2**20 if gpu else None

    # 2-3. synthetic models, each measured with all and with half of its layers on the GPU
    plans = [("smollm2-135m", [1, 2], {1: 2, 2: 4}, 8), ("tiny", [1, 2], {1: 2, 2: 4}, 8)] if dry \
        else [("llama-3-8b", [1, 8, 32], {1: 4, 8: 16, 32: 32}, 128),
              ("llama-3.2-1b", [1, 8, 32], {1: 4, 8: 16, 32: 32}, 128)]
    made: dict[str, Any] = {}
    for shape, *_ in plans:
        if left() < 45:
            report.skip(f"synthesizing {shape}", left())
            break
        try:
            t0 = time.perf_counter()
            m = synthetic.synthetic(TINY if shape == "tiny" else shape, quant="Q4_K_M", progress=False)
            made[shape] = m
            from gguf import GGUFReader

            on_disk = sum(int(t.n_bytes) for t in GGUFReader(m.gguf).tensors)
            report.data["models"].append({"model": str(m), "seconds": time.perf_counter() - t0,
                                          "weight_bytes_planned": m.weight_bytes,
                                          "weight_bytes_in_file": on_disk,
                                          "file_bytes": m.gguf.stat().st_size})
            report.save()
            log(f"synthesized {m} ({m.gguf.stat().st_size / 2**30:.2f} GiB) in {time.perf_counter() - t0:.0f} s")
        except Exception as e:
            report.error(f"synthesize {shape}", e)
    partial = []
    for shape, levels, reqs, out_tok in plans:
        if shape not in made:
            continue
        m = made[shape]
        full = 0 if dry else m.arch.n_layers + 1
        partial.append((shape, levels, reqs, out_tok))
        if left() < 40:
            report.skip(f"measuring {shape}", left())
            continue
        _measure_into(report, m, full, levels, reqs, out_tok, card, build, work, dry)
    # 4. the seed's card row (26B at IQ3_S with the planner's split for 12 GiB), before the
    # half-layer runs: those repeat a split measured before, this one is the seed's question.
    if not dry and left() < 150:
        report.skip("26B on a 12 GiB card", left())
    elif not dry:
        _card_row(report, card, build, work)
    for shape, _levels, _reqs, out_tok in partial:  # half the layers: slower, so last
        m = made[shape]
        if dry:
            continue
        if left() < 90:
            report.skip(f"{m} at half its layers", left())
            continue
        few = {1: 4, 8: 16}
        _measure_into(report, m, m.arch.n_layers // 2, [1, 8], few, min(out_tok, 64), card, build,
                      work, dry)
    report.data["seconds"] = time.monotonic() - t_start
    report.save()
    print(markdown(report.data), flush=True)
    log(f"done in {report.data['seconds']:.0f} s; errors: {len(report.data['errors'])}")
    return 1 if report.data["errors"] else 0


def _source(prep: Path, work: Path) -> Path:
    """The trimmed llama.cpp tree, unpacked into ``work`` (afresh: it is what gets built)."""
    packed = prep / "llama.cpp.tar.xz"
    if not packed.exists():
        raise FileNotFoundError(f"{packed} is missing: run `benchmarks/gpu_check.sh --prepare` again")
    dest = work / "src"
    shutil.rmtree(dest, ignore_errors=True)
    with tarfile.open(packed) as tar:
        tar.extractall(dest, filter="data")
    return dest / "llama.cpp"


def _cuda_args(gpu: dict[str, Any]) -> str:
    # GGML_NATIVE: one CPU variant, so a failure on the CUDA side is not rebuilt three more
    # times for CPU variants that cannot fix it.
    arch = gpu["compute_cap"].replace(".", "")
    return f"-DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES={arch} -DGGML_CUDA_FA_ALL_QUANTS=OFF -DGGML_NATIVE=ON"


# A CUDA compile on the lease took 222 s and 367 s on 16 cores (two H100 runs).
_COMPILE_S = 300.0


def _configure_cpu_side(prep: Path, work: Path) -> None:
    """Dry run: configure the trimmed tree as the lease's quick path does (loadable backends,
    the explicit instruction set), so those flags are checked before a GPU depends on them."""
    from labkit.native import cpu
    from labkit.native.llamacpp import _BASE_CMAKE

    args = gpu_check_cuda.cpu_side_args(cpu.features()["flags"])
    if args is None:  # not x86: the lease would compile CUDA instead
        return
    cfg = work / "configure-cpu-side"
    shutil.rmtree(cfg, ignore_errors=True)
    proc = subprocess.run(["cmake", "-S", str(_source(prep, work)), "-B", str(cfg), *_BASE_CMAKE, *args],
                          capture_output=True, text=True)
    shutil.rmtree(cfg, ignore_errors=True)
    if proc.returncode != 0:
        raise RuntimeError(f"the CPU side of the prebuilt-module path does not configure ({' '.join(args)}):\n"
                           f"{proc.stdout[-1500:]}{proc.stderr[-1500:]}")


def _lease_build(prep: Path, work: Path, gpu: dict[str, Any], tiny: Any, report: Report,
                 left: Any) -> tuple[Any, str, dict[str, Any] | None]:
    """llama.cpp on the lease: its CPU side beside the CUDA module that travelled, if one fits
    this GPU and loads; else, or if anything in that fails, CUDA compiled here as before (if
    the budget has room for it). Returns the build, how its CUDA backend came to be, and the
    probe with every layer on the GPU (None where the compiled build's own probe stands)."""
    from labkit.native import cpu, llamacpp

    os.environ["LABKIT_LLAMACPP_SRC"] = str(_source(prep, work))
    module = gpu_check_cuda.prebuilt(prep, gpu["compute_cap"])
    args = gpu_check_cuda.cpu_side_args(cpu.features()["flags"])
    here, why_not = gpu_check_cuda.nvcc_version(), None
    if module is None:
        why_not = f"no module prepared for compute capability {gpu['compute_cap']}"
    elif args is None:
        why_not = "no explicit instruction set for this CPU (GGML_NATIVE cannot load backends)"
    elif here and here.split(".")[0] != module[1]["nvcc"].split(".")[0]:
        why_not = f"prepared with CUDA {module[1]['nvcc']}, this machine has {here}"
    else:
        try:
            os.environ["CMAKE_ARGS"] = " ".join(args)
            log(f"building llama.cpp's CPU side with {os.environ['CMAKE_ARGS']} on {os.cpu_count()} cores")
            build = llamacpp.current_build(progress=False, probe_model=tiny.gguf)
            why_not, gpu_probe = _attach(build, module, tiny)
        except Exception as e:  # any failure of the quick path costs only its time
            why_not, gpu_probe = f"{type(e).__name__}: {e}"[:1500], None
        if why_not is None:
            info = module[1]
            return build, (f"prebuilt for sm_{info['arch']} by prepare (nvcc {info['nvcc']}, cuBLAS "
                           f"{info['cublas']}); CPU side built here"), gpu_probe
        log(f"the prepared CUDA module is not used: {why_not}")
    # Said now: a run killed during the compile below still tells why the module was not used.
    report.step("cuda_module", used=False, why_not=why_not)
    if left() < _COMPILE_S:
        raise TimeoutError(f"{left():.0f} s of the budget left, and compiling CUDA here takes about "
                           f"{_COMPILE_S:.0f} s: not started ({why_not})")
    os.environ["CMAKE_ARGS"] = _cuda_args(gpu)
    log(f"building llama.cpp with {os.environ['CMAKE_ARGS']} on {os.cpu_count()} cores")
    return llamacpp.current_build(progress=False, probe_model=tiny.gguf), f"compiled here ({why_not})", None


def _attach(build: Any, module: tuple[Path, dict[str, Any]], tiny: Any) -> tuple[str | None, dict[str, Any] | None]:
    """Put the travelled CUDA module beside the CPU build: (None, the probe) if llama-server
    then lists a CUDA device and the probe passes with every layer on it, else (why not, the
    probe if it ran)."""
    from labkit.native import llamacpp

    path, info = module
    gpu_check_cuda.unpack(path, build.bin_dir / gpu_check_cuda.MODULE)
    devices = gpu_check_cuda.cuda_devices(build.bin_dir)
    if "CUDA0" not in devices:
        return f"llama-server lists no CUDA device with it: {devices[-800:]}", None
    probe = llamacpp.probe(build.bin_dir, tiny.gguf, extra_args=("-ngl", "99"))
    if not probe.ok:
        return f"the probe failed on the GPU: {probe.reason}", probe.to_dict()
    log(f"CUDA module from prepare (nvcc {info['nvcc']}, cuBLAS {info['cublas']}) loads: {probe.reason}")
    return None, probe.to_dict()


def _card_row(report: Report, card: float | None, build: Any, work: Path) -> None:
    import labkit
    from labkit import synthetic

    try:
        plan = labkit.fit(SHAPE_26B, engines=["llama-server"], quant="IQ3_S", context=512,
                          users=1, gpu_memory="12GiB").row("llama-server")
        m = synthetic.synthetic(SHAPE_26B, quant="IQ3_S", progress=False)
        rec = measure(m, int(plan["gpu_layers"]), [1], {1: 2}, 32, card, build.bin_dir, work, False)
        used = rec.get("nvml_peak_process_mib") or rec.get("nvml_used_over_idle_mib") or 0.0
        rec["card_row"] = {"planned_gpu_layers": plan["gpu_layers"], "planned_gpu_gib": plan["gpu_gib"],
                           "measured_gpu_gib": used / 1024, "fits_12_gib": used / 1024 <= 12.0}
        report.data["runs"].append(rec)
        report.save()
    except Exception as e:
        report.error("26B on a 12 GiB card", e)


def _measure_into(report: Report, m: Any, ngl: int, levels: list[int], reqs: dict[int, int],
                  out_tok: int, card: float | None, build: Any, work: Path, dry: bool) -> None:
    try:
        log(f"measuring {m} with -ngl {ngl} at {levels} users")
        rec = measure(m, ngl, levels, reqs, out_tok, card, build.bin_dir, work, dry)
        report.data["runs"].append(rec)
        report.save()
        log(f"{m} -ngl {ngl}: " + ", ".join(f"{x['level']} users {_f(x.get('output_tok_per_s'), '.0f')} tok/s"
                                             for x in rec.get("levels_measured", [])))
    except Exception as e:
        report.error(f"measure {m} -ngl {ngl}", e)


def _f(x: Any, fmt: str = ".1f") -> str:
    return "-" if x is None or (isinstance(x, float) and x != x) else format(x, fmt)


def markdown(d: dict[str, Any]) -> str:
    """The short report: one table per question the check answers."""
    env = d["steps"].get("environment", {})
    gpu = env.get("gpu") or {}
    b = d["steps"].get("build", {})
    lines = [f"# labkit GPU check{' (dry run on CPU)' if d['dry_run'] else ''}", "",
             f"{gpu.get('name', 'no GPU')}, {_f(gpu.get('memory_mib'), '.0f')} MiB, driver "
             f"{gpu.get('driver', '-')}; {env.get('cpu_count')} CPUs; started {d['started_utc']}", "",
             f"Build: {b.get('variant', '-')} in {_f(b.get('seconds'), '.0f')} s; probe: "
             f"{(b.get('probe') or {}).get('reason', '-')}"
             + (f"; on the GPU (-ngl 99): {b['gpu_probe'].get('reason', '-')}" if b.get("gpu_probe") else "")
             + (f"; CUDA: {b['cuda']}" if b.get("cuda") else ""), ""]
    if d["models"]:
        lines += ["| synthetic model | planned weight bytes | in the file | written in |", "|---|---|---|---|"]
        lines += [f"| {m['model']} | {m['weight_bytes_planned']:,} | {m['weight_bytes_in_file']:,} | "
                  f"{m['seconds']:.0f} s |" for m in d["models"]]
        lines.append("")
    if d["runs"]:
        lines += ["| model | -ngl | llama-bench pp / tg tok/s | labkit 1-user decode tok/s (ratio) | "
                  "tok/s at 1 / 8 / 32 users | J per output token | VRAM planned / measured GiB (error) | "
                  "NVML / nvidia-smi peak |", "|---|---|---|---|---|---|---|---|"]
        for r in d["runs"]:
            lb = r["llama_bench"]
            tps = " / ".join(_f(x.get("output_tok_per_s"), ".0f") for x in r.get("levels_measured", []))
            jpt = " / ".join(_f(x.get("j_per_output_token"), ".2f") for x in r.get("levels_measured", []))
            gpu_row = next((p for p in r.get("plan_vs_measured", []) if p["where"] == "gpu"), None)
            vram = (f"{gpu_row['planned_gib']:.2f} / {gpu_row['measured_gib']:.2f} "
                    f"({gpu_row['error_pct']:+.0f}%)") if gpu_row else "-"
            lines.append(f"| {r['model']} | {r['gpu_layers']} | {lb['pp_tok_s']:.0f} / {lb['tg_tok_s']:.0f} | "
                         f"{_f(r.get('labkit_decode_tok_s'), '.0f')} ({_f(r.get('decode_vs_llama_bench'), '.2f')}) | "
                         f"{tps} | {jpt} | {vram} | {_f(r.get('nvml_over_smi'), '.3f')} |")
            if "card_row" in r:
                c = r["card_row"]
                lines.append(f"| ↳ 26B card row | planned {c['planned_gpu_layers']} layers, "
                             f"{c['planned_gpu_gib']:.2f} GiB | measured {c['measured_gpu_gib']:.2f} GiB | "
                             f"fits 12 GiB: {c['fits_12_gib']} | | | | |")
        lines.append("")
    for k in d.get("skipped", []):
        lines.append(f"- skipped **{k['what']}**: only {k['budget_left_s']} s of the budget left")
    for e in d["errors"]:
        lines.append(f"- **{e['where']}**: {e['error'][:400]}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    pp = sub.add_parser("prepare")
    pp.add_argument("dir", type=Path)
    pp.add_argument("--cuda-arch", action="append", default=[],
                    help="also compile llama.cpp's CUDA backend here for this compute capability "
                         "(90: H100, H200), so the lease builds only the CPU side; needs nvcc")
    rp = sub.add_parser("run")
    rp.add_argument("dir", type=Path)
    rp.add_argument("--out", type=Path, required=True)
    rp.add_argument("--dry-run", action="store_true")
    rp.add_argument("--budget-s", type=float, default=420.0)
    args = p.parse_args(argv)
    if args.cmd == "prepare":
        prepare(args.dir, args.cuda_arch)
        return 0
    return run(args.dir, args.out, args.dry_run, args.budget_s)


if __name__ == "__main__":
    sys.exit(main())
