"""llama.cpp, compiled once per machine for both the Python binding and the tools, and checked.

One build of the llama.cpp tree vendored in the installed llama-cpp-python's source
distribution gives the shared libraries the binding loads (``LLAMA_CPP_LIB_PATH``) and the
tools labkit runs (llama-server, llama-bench, llama-quantize, llama-perplexity), so both run
exactly the same llama.cpp and it is compiled once, not twice.

A build is never trusted because it compiled. CPU flags are what the CPU *reports*, and a VM
can report AMX and trap it (SIGILL at ``tileloadd`` on the first prompt batch). So each build
is probed in a child process: llama-bench runs a real prompt batch and a few decode steps on
a real model. The first variant that survives is used, in this order:

===========  ===================================================================
``native``   ``-march=native``: everything the CPU reports, AMX included
``avx512``   the AVX-512 subsets it reports (VBMI, VNNI, BF16), never AMX
``avx2``     AVX2 + FMA + F16C
``generic``  no extensions beyond the compiler's x86-64 baseline
===========  ===================================================================

Builds and the decision are cached under ``~/.cache/labkit/llama.cpp``, keyed by the
llama-cpp-python version, the cmake arguments (``CMAKE_ARGS`` included, e.g.
``-DGGML_CUDA=on``) and the CPU's fingerprint; each entry records the CPU features it was
built and probed on, and an entry whose record does not match this CPU is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

from .._cache import build_atomically, cache_dir
from .._exits import signal_name
from ..errors import EngineError
from . import cpu

__all__ = ["TOOLS", "Variant", "Probe", "Build", "variants", "probe", "choose", "current_build",
           "tools_dir", "lib_dir", "tool", "source_tree", "convert_script", "llama_cpp_python_version"]

TOOLS = ("llama-server", "llama-bench", "llama-quantize", "llama-perplexity")
_BASE_CMAKE = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_BUILD_SERVER=ON",
    "-DLLAMA_BUILD_TOOLS=ON",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DBUILD_SHARED_LIBS=ON",  # the binding loads libllama.so from the same folder
    "-DCMAKE_BUILD_WITH_INSTALL_RPATH=ON",
    "-DCMAKE_INSTALL_RPATH=$ORIGIN",  # tools find the libraries beside them, wherever cached
    "-DLLAMA_USE_PREBUILT_UI=OFF",  # no download at build time; labkit runs --no-webui anyway
)
# Given to cmake as CMAKE_PROJECT_INCLUDE: mtmd (images and audio, which labkit never sends;
# llama-server links it) is compiled at -O0, to shorten the first setup on 2 cores (gcc 12:
# 115 -> 62 CPU seconds). Everything on the measured path keeps -O3: lowering common and the
# server to -O1 saved another 100 CPU seconds but made llama-server ~4% slower at 8 users
# (148 vs 153-154 output tok/s; common's sampler fills a vocabulary-sized array per token).
# Eight files of common run only at startup or in tools labkit does not time (argument
# parsing, download, HF cache, presets, memory fitting, console, imatrix, tensor debugging):
# 46 of its 190 CPU seconds at -O3, 25 at -O0, which they get too; so do three of the
# server's that labkit never reaches (its built-in agent tools, the MCP client, router mode).
# The 157 files of src/models/ (one graph builder per architecture, ~1 s each, mostly parsing
# the same headers) are compiled 16 to a file (CMake's unity build): same flags, same code,
# ~130 CPU seconds less. common, the server's and mtmd's files are compiled 8 to a file the
# same way (most of their time is parsing nlohmann/json and the chat parsers' headers again):
# 551 -> 437 CPU seconds for the whole build, 276 -> 220 s on 2 cores; llama-server the same
# within noise (6 alternating pairs, chat 128/64 tokens: 1 user 59.0 vs 57.7 output tok/s,
# t = 1.6; 8 users 77.8 vs 77.3; single runs spread +-4%). Files with options of their own
# (-O0 above) stay out of the batches (CMake's rule); mtmd-helper must not see mtmd's
# internal headers, which a batch would show it.
# project() runs it once per project (llama.cpp, then ggml): it defers once, to the end of
# the top-level directory, when every target exists.
_QUICK_TOOLS = """\
if(NOT LABKIT_QUICK_TOOLS)
  set(LABKIT_QUICK_TOOLS ON)
  function(labkit_quick_tools)
    if(TARGET mtmd)
      set_property(TARGET mtmd APPEND PROPERTY COMPILE_OPTIONS -O0)
    endif()
    if(TARGET llama-common)
      foreach(f arg download hf-cache preset fit console imatrix-loader debug)
        set_source_files_properties(${CMAKE_SOURCE_DIR}/common/${f}.cpp TARGET_DIRECTORY llama-common
                                    PROPERTIES COMPILE_OPTIONS -O0)
      endforeach()
    endif()
    if(TARGET server-context AND TARGET llama-server-impl)
      foreach(f tools mcp)
        set_source_files_properties(${CMAKE_SOURCE_DIR}/tools/server/server-${f}.cpp
                                    TARGET_DIRECTORY server-context PROPERTIES COMPILE_OPTIONS -O0)
      endforeach()
      set_source_files_properties(${CMAKE_SOURCE_DIR}/tools/server/server-models.cpp
                                  TARGET_DIRECTORY llama-server-impl PROPERTIES COMPILE_OPTIONS -O0)
    endif()
    if(TARGET llama)
      get_target_property(srcs llama SOURCES)
      foreach(s ${srcs})
        if(NOT s MATCHES "/models/")
          if(NOT IS_ABSOLUTE "${s}")
            set(s "${CMAKE_SOURCE_DIR}/src/${s}")
          endif()
          set_source_files_properties(${s} TARGET_DIRECTORY llama PROPERTIES SKIP_UNITY_BUILD_INCLUSION ON)
        endif()
      endforeach()
      set_target_properties(llama PROPERTIES UNITY_BUILD ON UNITY_BUILD_BATCH_SIZE 16)
    endif()
    foreach(t llama-common mtmd server-context llama-server-impl)
      if(TARGET ${t})
        get_target_property(srcs ${t} SOURCES)
        get_target_property(dir ${t} SOURCE_DIR)
        foreach(s ${srcs})
          if(NOT IS_ABSOLUTE "${s}")
            set(s "${dir}/${s}")
          endif()
          if(s MATCHES "mtmd-helper")
            set_source_files_properties(${s} TARGET_DIRECTORY ${t} PROPERTIES SKIP_UNITY_BUILD_INCLUSION ON)
          endif()
        endforeach()
        set_target_properties(${t} PROPERTIES UNITY_BUILD ON UNITY_BUILD_BATCH_SIZE 8)
      endif()
    endforeach()
  endfunction()
  cmake_language(DEFER DIRECTORY ${CMAKE_SOURCE_DIR} CALL labkit_quick_tools)
endif()
"""
# Every x86 switch is set explicitly in every variant: variants share one build folder (only
# ggml-cpu recompiles between them) and cmake would otherwise keep the previous value.
_X86 = ("AVX", "AVX2", "FMA", "F16C", "AVX512", "AVX512_VBMI", "AVX512_VNNI", "AVX512_BF16",
        "AVX_VNNI", "AMX_TILE", "AMX_INT8", "AMX_BF16")
_MINUTES_2_CORES = 3.7  # measured: shared libraries and the four tools, -j2, from nothing


@dataclass(frozen=True)
class Variant:
    """One way of compiling ggml's CPU backend."""

    name: str
    cmake: tuple[str, ...]
    why: str


def _switches(on: set[str], native: bool) -> tuple[str, ...]:
    return (f"-DGGML_NATIVE={'ON' if native else 'OFF'}",
            *(f"-DGGML_{s}={'ON' if s in on else 'OFF'}" for s in _X86 if not native))


def variants(flags: list[str] | set[str], user_args: list[str] | None = None) -> list[Variant]:
    """The builds worth trying on a CPU reporting ``flags``, best first.

    A user who sets ``GGML_NATIVE`` (or any ``GGML_AVX*``) in ``CMAKE_ARGS`` has chosen;
    that one variant is tried and nothing else.
    """
    if any(re.match(r"-DGGML_(NATIVE|AVX|AMX)", a) for a in user_args or []):
        return [Variant("custom", (), "the instruction set given in CMAKE_ARGS")]
    flags = set(flags)
    out = [Variant("native", _switches(set(), True), "-march=native: all the CPU reports")]
    base = {"AVX", "AVX2", "FMA", "F16C"}
    if "avx512f" in flags and "avx2" in flags:
        extra = {"AVX512"}
        extra |= {"AVX512_VBMI"} if flags & {"avx512_vbmi", "avx512vbmi"} else set()
        extra |= {"AVX512_VNNI"} if flags & {"avx512_vnni", "avx512vnni"} else set()
        extra |= {"AVX512_BF16"} if "avx512_bf16" in flags else set()
        out.append(Variant("avx512", _switches(base | extra, False),
                           "AVX-512 (" + ", ".join(sorted(extra)) + "), no AMX"))
    if "avx2" in flags:
        out.append(Variant("avx2", _switches(base, False), "AVX2, FMA, F16C; no AVX-512, no AMX"))
    if cpu.features()["machine"] in ("x86_64", "AMD64"):
        out.append(Variant("generic", _switches(set(), False), "x86-64 baseline only (slow)"))
    return out


@dataclass
class Probe:
    """What happened when a build ran a prompt batch and a few decode steps."""

    ok: bool
    reason: str
    returncode: int | None = None
    signal: str | None = None
    prompt_tok_s: float | None = None
    decode_tok_s: float | None = None
    output_tail: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def probe(bin_dir: Path, model: Path | None = None, timeout_s: float = 300.0,
          extra_args: tuple[str, ...] = ()) -> Probe:
    """Run ``llama-bench`` from ``bin_dir`` in a child process: a 128-token prompt batch and
    8 decode steps on ``model`` (default: the bundled model). Never raises for a crash."""
    if model is None:
        from ..models import DEFAULT_MODEL, resolve

        model = resolve(DEFAULT_MODEL)
    threads = str(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 2)
    cmd = [str(bin_dir / "llama-bench"), "-m", str(model), "-p", "128", "-n", "8", "-r", "1",
           "-t", threads, "-o", "json", *extra_args]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return Probe(False, f"did not finish within {timeout_s:.0f} s")
    except OSError as e:
        return Probe(False, f"could not start llama-bench: {e}")
    tail = (proc.stdout[-1500:] + proc.stderr[-1500:]).strip()
    sig = signal_name(proc.returncode)
    if sig:
        what = {"SIGILL": "illegal instruction: the build uses an instruction this CPU traps"}
        return Probe(False, f"killed by {sig} ({what.get(sig, 'crashed')})", proc.returncode,
                     sig, output_tail=tail)
    if proc.returncode != 0:
        return Probe(False, f"exited with code {proc.returncode}", proc.returncode,
                     output_tail=tail)
    try:
        rows = json.loads(proc.stdout)
        pp = next(r["avg_ts"] for r in rows if r["n_prompt"] > 0 and r["n_gen"] == 0)
        tg = next(r["avg_ts"] for r in rows if r["n_gen"] > 0 and r["n_prompt"] == 0)
    except (ValueError, KeyError, StopIteration, TypeError) as e:
        return Probe(False, f"llama-bench printed no usable result ({e})", 0, output_tail=tail)
    if not (pp > 0 and tg > 0):
        return Probe(False, f"nonsensical speeds (prompt {pp}, decode {tg} tok/s)", 0,
                     output_tail=tail)
    return Probe(True, f"passed: prompt batch {pp:.0f} tok/s, decode {tg:.0f} tok/s", 0,
                 prompt_tok_s=float(pp), decode_tok_s=float(tg))


@dataclass
class Build:
    """A checked llama.cpp build: where it is, how it was made, and why it was chosen."""

    variant: str
    path: Path
    cmake_args: list[str]
    cpu: dict
    probe: Probe
    tried: list[dict] = field(default_factory=list)

    @property
    def bin_dir(self) -> Path:
        """Tools and shared libraries (one folder: the tools' RPATH is ``$ORIGIN``)."""
        return self.path / "bin"

    def to_dict(self) -> dict:
        return {"variant": self.variant, "path": str(self.path), "cmake_args": self.cmake_args,
                "cpu": dict(self.cpu), "probe": self.probe.to_dict(), "tried": self.tried}

    def explain(self) -> str:
        lines = [f"llama.cpp build: {self.variant} ({self.path})"]
        for t in self.tried:
            lines.append(f"  {t['variant']:<8} {'ok  ' if t['ok'] else 'FAIL'} {t['reason']}")
        return "\n".join(lines)


def choose(candidates: list[Variant], make: Callable[[Variant], Path],
           check: Callable[[Path], Probe], log: Callable[[str], None] = lambda s: None,
           ) -> tuple[Variant, Path, Probe, list[dict]]:
    """Build and probe ``candidates`` in order; return the first that passes.

    ``make(variant)`` returns a build folder (with ``bin/``); ``check(bin_dir)`` probes it.
    Raises :class:`EngineError` naming every failure when none passes.
    """
    tried: list[dict] = []
    for v in candidates:
        try:
            path = make(v)
        except EngineError as e:
            tried.append({"variant": v.name, "ok": False, "reason": f"build failed: {e}"[:2000]})
            log(f"{v.name}: build failed")
            continue
        result = check(path / "bin")
        tried.append({"variant": v.name, "ok": result.ok, "reason": result.reason,
                      "why_tried": v.why})
        log(f"{v.name}: {result.reason}")
        if result.ok:
            return v, path, result, tried
    detail = "\n".join(f"  {t['variant']}: {t['reason']}" for t in tried)
    raise EngineError("No llama.cpp build runs on this machine:\n" + detail +
                      "\nRun `labkit doctor` for details, or set CMAKE_ARGS to choose flags.")


# --- sources -------------------------------------------------------------------------------
def llama_cpp_python_version() -> str:
    try:
        return metadata.version("llama-cpp-python")
    except metadata.PackageNotFoundError:
        pinned = _pinned_version()
        if pinned:
            return pinned
        raise EngineError(
            "llama-cpp-python is not installed. Run `make test` or `make demo` once, or "
            "`pip install -r environments/cpu.txt`.") from None


def _pinned_version() -> str | None:
    """The version environments/cpu.txt pins: setup builds before pip has installed it."""
    req = Path(__file__).resolve().parents[2] / "environments" / "cpu.txt"
    if req.exists():
        m = re.search(r"^llama-cpp-python==([\w.]+)", req.read_text(), re.M)
        if m:
            return m.group(1)
    return None


def source_tree(version: str | None = None) -> Path:
    """The llama.cpp tree to build: ``LABKIT_LLAMACPP_SRC`` if set (a trimmed tree, as the
    GPU check carries), else the llama-cpp-python sdist of ``version`` (default: the
    installed one), fetched once."""
    override = os.environ.get("LABKIT_LLAMACPP_SRC")
    if override:
        return Path(override)
    return _sdist(version) / "vendor" / "llama.cpp"


def _sdist(version: str | None = None) -> Path:
    """The unpacked llama-cpp-python sdist of ``version`` (default: the installed one)."""
    version = version or llama_cpp_python_version()
    target = cache_dir("src") / f"llama-cpp-python-{version}"

    def fetch(tmp: Path) -> None:
        with tarfile.open(sdist_archive(version)) as tar:
            tar.extractall(tmp, filter="data")
        (inner,) = [p for p in tmp.iterdir() if p.is_dir()]
        for child in inner.iterdir():
            child.rename(tmp / child.name)
        inner.rmdir()

    return build_atomically(target, fetch)


def sdist_archive(version: str) -> Path:
    """The llama-cpp-python ``version`` sdist in the cache, downloaded if it is not there (make
    installs the binding's Python code from it)."""
    dl = cache_dir("src")
    archive = dl / f"llama_cpp_python-{version}.tar.gz"
    if archive.exists() or _download_sdist(version, dl) is not None:
        return archive
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
           f"llama-cpp-python=={version}", "-d", str(dl), "-q"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not archive.exists():
        raise EngineError(f"Could not download the llama-cpp-python {version} source distribution "
                          f"to build llama.cpp:\n{proc.stderr[-2000:]}")
    return archive


def _download_sdist(version: str, dl: Path) -> Path | None:
    """The sdist straight from PyPI (checked against the sha256 PyPI gives): seconds, where
    ``pip download`` first installs build tools in an isolated environment to prepare
    metadata (~40 s on 2 busy cores). None when PyPI cannot be reached: pip then fetches it
    through its own configuration (mirrors, local indexes)."""
    import urllib.request

    try:
        index = urllib.request.Request("https://pypi.org/simple/llama-cpp-python/",  # PEP 691
                                       headers={"Accept": "application/vnd.pypi.simple.v1+json"})
        with urllib.request.urlopen(index, timeout=30) as r:
            files = json.load(r)["files"]
        name = f"llama_cpp_python-{version}.tar.gz"
        sdist = next(f for f in files if f["filename"] == name)
        dest = dl / name
        part = dl / (sdist["filename"] + ".part")
        digest = hashlib.sha256()
        with urllib.request.urlopen(sdist["url"], timeout=60) as r, open(part, "wb") as out:
            while chunk := r.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != sdist["hashes"]["sha256"]:
            part.unlink()
            return None
        part.rename(dest)
        return dest
    except (OSError, ValueError, KeyError, StopIteration):
        return None


def convert_script() -> Path:
    """llama.cpp's ``convert_hf_to_gguf.py`` from the same source tree."""
    return source_tree() / "convert_hf_to_gguf.py"


# --- building ------------------------------------------------------------------------------
def _user_args() -> list[str]:
    return os.environ.get("CMAKE_ARGS", "").split()


def _key(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:10]


def _entry(version: str, v: Variant, user: list[str], fp: str) -> Path:
    return cache_dir("llama.cpp") / f"{version}-{v.name}-{_key(_BASE_CMAKE, _QUICK_TOOLS, v.cmake, user, fp)}"


def _same_cpu(entry: Path, fp: str) -> bool:
    """Whether ``entry`` is complete and records being built on a CPU like this one."""
    try:
        meta = json.loads((entry / "build.json").read_text())
        made_on = cpu.fingerprint(meta["cpu"])
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return made_on == fp and all((entry / "bin" / t).exists() for t in TOOLS)


def _valid(entry: Path, fp: str) -> Probe | None:
    """The recorded probe of ``entry`` if it was built on this CPU and passed here, else None."""
    if not _same_cpu(entry, fp):
        return None  # made for another CPU: never run it here
    try:
        result = Probe(**json.loads((entry / "probe.json").read_text()))
    except (OSError, ValueError, TypeError):
        return None
    return result if result.ok else None


class _TextBar:
    """Progress in plain lines, every 10%: at setup the build starts while pip is still
    installing everything else, tqdm included."""

    def __init__(self, label: str):
        self.label, self.n, self._shown, self._t0 = label, 0.0, -10, time.monotonic()

    def refresh(self) -> None:
        if self.n >= self._shown + 10:
            self._shown = int(self.n // 10 * 10)
            print(f"{self.label}: {self._shown}% ({time.monotonic() - self._t0:.0f} s)",
                  file=sys.stderr, flush=True)

    def close(self) -> None:
        return None


def _bar(label: str):
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _TextBar(label)
    return tqdm(total=100, desc=label, unit="%", file=sys.stderr, leave=False,
                bar_format="{desc}: {percentage:3.0f}% [{elapsed}<{remaining}]")


def _run_build(cmd: list[str], log, label: str, progress: bool) -> None:
    """Run a cmake step, logging to ``log``; a progress bar follows the build's [n/m] lines."""
    bar = _bar(label) if progress else None
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        log.write(line)
        m = re.match(r"\[\s*(\d+)/(\d+)\]", line) or re.match(r"\[\s*(\d+)%\]", line)
        if bar is not None and m:
            pct = 100 * int(m.group(1)) / int(m.group(2)) if m.lastindex == 2 else int(m.group(1))
            bar.n = pct
            bar.refresh()
    code = proc.wait()
    if bar is not None:
        bar.close()
    if code != 0:
        log.flush()
        raise EngineError(f"Building llama.cpp failed ({' '.join(cmd[:3])}); log: {log.name}\n"
                          + Path(log.name).read_text()[-3000:])


def _make(version: str, user: list[str], fp: str, work: Path, progress: bool,
          say: Callable[[str], None]) -> Callable[[Variant], Path]:
    src = source_tree(version)  # the version the entry is named for, not whichever is installed

    def make(v: Variant) -> Path:
        entry = _entry(version, v, user, fp)
        if entry.exists() and not _same_cpu(entry, fp):
            shutil.rmtree(entry, ignore_errors=True)  # made for another CPU, or incomplete

        def build(tmp: Path) -> None:
            if shutil.which("cmake") is None:
                raise EngineError("cmake is needed to build llama.cpp: `apt-get install cmake`.")
            gen = ["-G", "Ninja"] if shutil.which("ninja") else []
            jobs = str(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 2)
            quick = work / "labkit-quick-tools.cmake"
            quick.write_text(_QUICK_TOOLS)
            args = [*_BASE_CMAKE, f"-DCMAKE_PROJECT_INCLUDE={quick}", *v.cmake, *user]
            say(f"building llama.cpp {version} ({v.name}: {v.why}); about "
                f"{_MINUTES_2_CORES * 2 / int(jobs):.0f} min on {jobs} cores the first time")
            with open(work / "build.log", "a") as log:
                _run_build(["cmake", "-S", str(src), "-B", str(work / "build"), *gen, *args],
                           log, "configure", False)
                _run_build(["cmake", "--build", str(work / "build"), "-j", jobs, "--target",
                            *TOOLS], log, f"llama.cpp {v.name}", progress)
            built = work / "build" / "bin"
            (tmp / "bin").mkdir()
            for f in built.iterdir():
                if f.name in TOOLS or ".so" in f.name:
                    shutil.copy2(f, tmp / "bin" / f.name, follow_symlinks=False)
            (tmp / "build.json").write_text(json.dumps({
                "version": version, "variant": v.name, "cmake_args": args,
                "cpu": dict(cpu.features()), "built_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                         time.gmtime())}))

        return build_atomically(entry, build)

    return make


def _say(msg: str) -> None:
    print(f"labkit: {msg}", file=sys.stderr, flush=True)


def current_build(progress: bool = True, recheck: bool = False,
                  probe_model: Path | None = None, version: str | None = None) -> Build:
    """The checked llama.cpp build for this machine, building and probing it if needed.

    ``recheck=True`` probes the chosen build again (``labkit doctor``) instead of trusting
    the recorded result. ``version``: llama-cpp-python's, whose vendored llama.cpp is built
    (default: the installed one; make names the pinned one, which pip installs meanwhile).
    """
    version = version or llama_cpp_python_version()
    user = _user_args()
    feats = cpu.features()
    fp = cpu.fingerprint()
    choice_file = cache_dir("llama.cpp") / f"choice-{version}-{_key(_BASE_CMAKE, _QUICK_TOOLS, user, fp)}.json"
    if choice_file.exists():
        try:
            rec = json.loads(choice_file.read_text())
            entry = Path(rec["path"])
            result = _valid(entry, fp)
            if result is not None and recheck:
                result = probe(entry / "bin", probe_model)
                (entry / "probe.json").write_text(json.dumps(result.to_dict()))
            if result is not None and result.ok:
                meta = json.loads((entry / "build.json").read_text())
                return Build(rec["variant"], entry, meta["cmake_args"], meta["cpu"], result,
                             rec.get("tried", []))
        except (OSError, ValueError, KeyError):
            pass
        choice_file.unlink(missing_ok=True)

    def check(bin_dir: Path) -> Probe:
        cached = _valid(bin_dir.parent, fp)
        if cached is not None and not recheck:
            return cached
        result = probe(bin_dir, probe_model)
        (bin_dir.parent / "probe.json").write_text(json.dumps(result.to_dict()))
        return result

    work = Path(tempfile.mkdtemp(prefix="build-", dir=cache_dir("llama.cpp")))
    try:
        v, entry, result, tried = choose(variants(feats["flags"], user),
                                         _make(version, user, fp, work, progress, _say),
                                         check, lambda s: _say(f"llama.cpp build {s}"))
    finally:
        shutil.rmtree(work, ignore_errors=True)  # object files: 100s of MB, never reused
    build = Build(v.name, entry, json.loads((entry / "build.json").read_text())["cmake_args"],
                  dict(feats), result, tried)
    choice_file.write_text(json.dumps(build.to_dict()))
    _say(f"using llama.cpp build '{v.name}' ({v.why}): {result.reason}")
    return build


def tools_dir() -> Path:
    """Folder holding the checked tools (and the shared libraries the binding loads)."""
    return current_build().bin_dir


lib_dir = tools_dir


def tool(name: str) -> Path:
    """Path to one built tool, e.g. ``tool("llama-server")``."""
    if name not in TOOLS:
        raise EngineError(f"Unknown llama.cpp tool {name!r}; labkit builds {', '.join(TOOLS)}.")
    return tools_dir() / name


def _main() -> None:
    """`python -m labkit.native.llamacpp [--source] [--version V]`: build and check ahead of
    time, or only fetch and unpack the sdist (--source)."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m labkit.native.llamacpp")
    ap.add_argument("--source", action="store_true", help="only fetch the sdist (make installs the binding from it)")
    ap.add_argument("--version", help="llama-cpp-python version (default: the installed one; make passes "
                                      "the one its requirements file pins)")
    a = ap.parse_args()
    if a.source:
        version = a.version or llama_cpp_python_version()
        sdist_archive(version)  # the archive too: an unpacked tree alone is not enough for pip
        print(_sdist(version))
    else:
        print(current_build(version=a.version).explain())


if __name__ == "__main__":
    _main()
