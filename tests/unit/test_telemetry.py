"""The telemetry timeline's arithmetic and sources, without engines: counters become rates,
levels get their means and peaks, a fake NVML's energy becomes joules per token."""

from __future__ import annotations

import itertools
import warnings
import weakref
from pathlib import Path

import pandas as pd
import pytest

import labkit
from labkit import memory
from labkit.engines.prometheus import parse_prometheus, server_metrics
from labkit.loadgen import workloads
from labkit.loadgen.telemetry import per_level, rates

from .fake_engine import FakeKvEngine

DATA = Path(__file__).parent / "data"
SMALL = workloads.synthetic(input_tokens=8, output_tokens=4)


def _raw(rows: list[tuple[float, str, str, str, float]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["t_s", "phase", "source", "metric", "value"])


def test_counters_become_rates_and_cpu_seconds_cores_busy():
    raw = _raw([(0.0, "idle", "server", "generation_tokens", 100.0), (2.0, "concurrency 8", "server", "generation_tokens", 300.0),
                (4.0, "concurrency 8", "server", "generation_tokens", 50.0),  # a restart: no rate
                (0.0, "idle", "host:engine_core", "cpu_seconds", 10.0), (2.0, "concurrency 8", "host:engine_core", "cpu_seconds", 13.0),
                (2.0, "concurrency 8", "server", "running", 8.0)])
    t = rates(raw)
    gen = t[t["metric"] == "generation_tokens_per_s"]
    assert gen["value"].tolist() == [100.0]  # (300 - 100) / 2 s; the fall to 50 gives nothing
    assert t[t["metric"] == "cpu_util"]["value"].tolist() == [1.5]  # 3 CPU seconds in 2 s
    assert t[t["metric"] == "running"]["value"].tolist() == [8.0]  # gauges as read
    assert "cpu_seconds" not in set(t["metric"])


def test_each_level_gets_its_queue_means_kv_peak_and_cpu_by_role():
    t = _raw([(1, "concurrency 8", "server", "running", 6.0), (2, "concurrency 8", "server", "running", 8.0),
              (1, "concurrency 8", "server", "waiting", 0.0), (2, "concurrency 8", "server", "waiting", 4.0),
              (2, "concurrency 8", "server", "kv_used_fraction", 0.25), (3, "concurrency 8", "server", "kv_used_fraction", 0.5),
              (2, "concurrency 8", "host:api_server", "cpu_util", 0.4), (2, "concurrency 8", "host", "machine_cpu_util", 1.9)])
    lv = per_level(t).set_index("phase").loc["concurrency 8"]
    assert lv["running_mean"] == 7.0 and lv["waiting_mean"] == 2.0 and lv["waiting_max"] == 4.0
    assert lv["kv_used_frac_max"] == 0.5
    assert lv["cpu_util_api_server"] == 0.4 and lv["cpu_util_machine"] == 1.9
    assert "preemptions_per_s" not in lv.index  # a concept the engine lacks: absent, not zero


def test_a_levels_cpu_use_is_its_own_not_the_idle_time_before_it():
    """Busy 1.5 s between levels, idle through a 3 s level: the level used no CPU. The
    interval that ends at the level's first reading is the gap before it, and a few-ms edge
    interval weighs its few ms, not as much as a 2 s one."""
    rows = [(0.0, "idle", None, 0.0), (1.5, "concurrency 1", "start", 1.5), (3.5, "concurrency 1", None, 1.5),
            (4.5, "concurrency 1", "end", 1.5), (4.51, "idle", None, 1.5),
            # a second round of the same level straight after: the gap is still not the level's
            (5.0, "concurrency 1", "start", 2.0), (5.01, "concurrency 1", None, 2.01),
            (7.01, "concurrency 1", "end", 2.01)]
    raw = pd.DataFrame([{"t_s": t, "phase": p, "source": "host:labkit_client", "metric": "cpu_seconds",
                         "value": v, "edge": e} for t, p, e, v in rows])
    t = rates(raw)
    assert "edge" not in t.columns
    assert t.loc[t["t_s"] == 1.5, "phase"].item() == "idle" and t.loc[t["t_s"] == 5.0, "phase"].item() == "idle"
    lv = per_level(t).set_index("phase")["cpu_util_labkit_client"]
    # inside the level: 0 CPU-s over 3 s, then 0.01 CPU-s over 2.01 s (a plain mean: 0.25)
    assert lv["concurrency 1"] == pytest.approx(0.01 / 5.01)
    assert lv["idle"] > 0.9


def test_per_level_of_a_timeline_saved_without_intervals_is_a_plain_mean():
    t = _raw([(1, "concurrency 8", "host:api_server", "cpu_util", 0.2), (2, "concurrency 8", "host:api_server", "cpu_util", 0.4)])
    assert per_level(t)["cpu_util_api_server"].item() == pytest.approx(0.3)


class TelemetryKvEngine(FakeKvEngine):
    """Reports server metrics, and runs "in process" (its memory is this process's)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._baseline = memory.engine_baseline("telemetry-kv (m)")

    def memory_scope(self):
        return memory.EngineMemory([], self._baseline)

    def _close(self):
        self._baseline.release()
        super()._close()

    def server_snapshot(self):
        return {"running": float(self.started % 3), "generation_tokens": float(4 * self.started)}


class FakeNvml:
    """The one fake allowed: NVML where there is no GPU. Energy rises 10 J per reading."""

    def __init__(self):
        self._energy = itertools.count(0, 10)

    def used_bytes(self) -> int:
        return 2**30

    def process_bytes(self, pids: set[int]) -> int:
        return 2**29

    def name(self) -> str:
        return "Fake GPU"

    def energy_j(self) -> float:
        return float(next(self._energy))

    def power_w(self) -> float:
        return 250.0

    def utilization_pct(self) -> float:
        return 80.0


def test_a_bench_with_telemetry_has_a_tidy_timeline_and_summary_columns(monkeypatch, tmp_path):
    monkeypatch.setattr(memory, "nvml", lambda: FakeNvml())
    monkeypatch.setattr("labkit.loadgen.telemetry.nvml", lambda: FakeNvml())
    res = labkit.bench(TelemetryKvEngine(), concurrency=[2], requests_per_level=6, workload=SMALL, warmup=0,
                       progress=False, telemetry=True, telemetry_interval_s=0.01, out=tmp_path / "run")
    t = res.telemetry
    assert list(t.columns) == ["t_s", "phase", "source", "metric", "value", "dt_s"]
    assert {"server", "host", "host:in_process", "gpu"} <= set(t["source"])
    assert {"running", "generation_tokens_per_s", "cpu_util", "rss_bytes", "util_pct", "power_w"} <= set(t["metric"])
    s = res.summary.iloc[0]
    assert s["phase"] == "concurrency 2" and s["running_mean"] >= 0 and s["cpu_util_in_process"] >= 0
    # The energy path: the level's joules are the counter's rise across the level.
    mem = res.memory[res.memory["phase"] == "concurrency 2"]
    assert s["gpu_energy_j"] == mem["gpu_energy_j"].max() - mem["gpu_energy_j"].min() > 0
    assert s["j_per_output_token"] == pytest.approx(s["gpu_energy_j"] / 24)
    saved = labkit.BenchResult.load(tmp_path / "run")
    assert len(saved.telemetry) == len(t) and saved.telemetry_absent == res.telemetry_absent


def test_telemetry_off_reads_no_server_metrics():
    class Counting(TelemetryKvEngine):
        snapshots = 0

        def server_snapshot(self):
            Counting.snapshots += 1
            return super().server_snapshot()

    res = labkit.bench(Counting(), concurrency=[2], requests_per_level=4, workload=SMALL, warmup=0, progress=False)
    assert Counting.snapshots == 0 and res.telemetry.empty


def test_an_engine_without_metrics_gives_absent_columns_and_says_why():
    from .fake_engine import FakeEngine

    res = labkit.bench(FakeEngine(), concurrency=[1], requests_per_level=2, workload=SMALL, warmup=0,
                       progress=False, telemetry=True, telemetry_interval_s=0.01)
    assert "server" not in set(res.telemetry["source"])
    assert "reports no metrics" in res.telemetry_absent["server"]
    assert "running_mean" not in res.summary.columns


def test_a_bad_interval_is_refused():
    with pytest.raises(labkit.InvalidInput, match="telemetry_interval_s"):
        labkit.bench(FakeKvEngine(), concurrency=[1], telemetry=True, telemetry_interval_s=0)


def test_both_servers_real_pages_map_to_the_shared_names():
    vllm = server_metrics(parse_prometheus((DATA / "vllm_metrics.txt").read_text()), "vllm")
    assert vllm["running"] == 1.0 and vllm["waiting"] == 0.0  # not waiting_by_reason
    assert vllm["kv_used_fraction"] == pytest.approx(0.0027548209366391463)
    assert vllm["prefix_query_tokens"] == 64.0 and vllm["prompt_tokens"] == 64.0 and vllm["preemptions"] == 0.0
    llama = server_metrics(parse_prometheus((DATA / "llamacpp_metrics.txt").read_text()), "llama-server")
    assert llama["running"] == 2.0 and llama["waiting"] == 2.0
    assert {"prompt_tokens", "generation_tokens", "decode_calls"} <= set(llama)
    assert "preemptions" not in llama and "kv_used_fraction" not in llama  # absent, not zero


def test_llama_server_kv_use_comes_from_its_busy_slots(monkeypatch):
    import json

    from labkit.engines.openai import HttpEngine

    slots = json.loads((DATA / "llamacpp_slots.json").read_text())
    eng = HttpEngine.__new__(HttpEngine)
    monkeypatch.setattr(eng, "slots", lambda: slots, raising=False)
    snap = eng._llamacpp_kv(parse_prometheus((DATA / "llamacpp_metrics.txt").read_text()))
    busy = [s for s in slots if s["is_processing"]]
    used = sum(s["n_prompt_tokens"] + s["next_token"][0]["n_decoded"] for s in busy)
    assert snap["running"] == len(busy) == 2 and snap["kv_used_tokens"] == used > 0
    assert snap["kv_used_fraction"] == used / sum(s["n_ctx"] for s in slots)


def test_a_source_that_fails_loses_its_reading_not_the_run(monkeypatch):
    class BrokenNvml(FakeNvml):
        def used_bytes(self) -> int:
            raise RuntimeError("NVML: GPU is lost")

    monkeypatch.setattr("labkit.loadgen.telemetry.nvml", lambda: BrokenNvml())
    res = labkit.bench(TelemetryKvEngine(), concurrency=[1], requests_per_level=2, workload=SMALL, warmup=0,
                       progress=False, telemetry=True, telemetry_interval_s=0.01)
    assert "gpu" not in set(res.telemetry["source"]) and {"server", "host"} <= set(res.telemetry["source"])



class _Reads(FakeKvEngine):
    """Notes each scrape of its "server": which reader, and how many requests had started."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.reads: list[tuple[str, int]] = []

    def kv_account(self):
        self.reads.append(("kv", self.started))
        return super().kv_account()

    def server_snapshot(self):
        self.reads.append(("snapshot", self.started))
        return FakeKvEngine.kv_account(self)


def test_without_telemetry_the_server_is_read_once_after_each_level_and_never_during_it():
    eng = _Reads()
    res = labkit.bench(eng, concurrency=[1, 2], requests_per_level=4, workload=SMALL, warmup=1, progress=False)
    # one read after the warm-up and after each level, when all their requests had started
    assert eng.reads == [("kv", 1), ("kv", 1 + 4), ("kv", 1 + 8)]
    assert list(res.kv["phase"]) == ["idle", "concurrency 1", "concurrency 2"]


def test_kv_interval_polls_during_levels_when_asked():
    eng = _Reads(token_s=0.005)
    labkit.bench(eng, concurrency=[1], requests_per_level=6, workload=SMALL, warmup=0, progress=False,
                 kv_interval_s=0.001)
    assert len(eng.reads) > 1 and {k for k, _ in eng.reads} == {"kv"}


def test_with_telemetry_one_reader_scrapes_and_its_readings_are_the_kv_account():
    eng = _Reads()
    res = labkit.bench(eng, concurrency=[2], requests_per_level=4, workload=SMALL, warmup=0, progress=False,
                       telemetry=True, telemetry_interval_s=60)
    assert {k for k, _ in eng.reads} == {"snapshot"}  # no second reader beside telemetry
    level = res.kv[res.kv["phase"] == "concurrency 2"]
    assert list(level["kv_used_tokens"]) == [0.0, 4.0]  # the level's two edges
    assert (res.kv["kv_capacity_tokens"] == 1024).all()


def test_a_levels_energy_is_its_own_rounds_not_the_levels_run_between_them():
    rows, joules = [], 0.0
    for _round in range(2):
        for phase, used in (("concurrency 1", 10.0), ("concurrency 8", 100.0)):
            rows.append({"t_s": len(rows), "phase": phase, "rss_bytes": 1, "gpu_energy_j": joules, "gpu_power_w": 50.0})
            joules += used
            rows.append({"t_s": len(rows), "phase": phase, "rss_bytes": 1, "gpu_energy_j": joules, "gpu_power_w": 50.0})
    rows[3], rows[4] = rows[4], rows[3]  # a background sample appended after the next phase's edge
    peaks = memory.phase_peaks(pd.DataFrame(rows)).set_index("phase")
    assert peaks.loc["concurrency 1", "gpu_energy_j"] == 20.0 and peaks.loc["concurrency 8", "gpu_energy_j"] == 200.0


def test_cpu_energy_sums_the_packages_only(tmp_path, monkeypatch):
    from labkit.loadgen import telemetry as tel

    for zone, name, uj in [("intel-rapl:0", "package-0", 5_000_000), ("intel-rapl:0:0", "core", 3_000_000),
                           ("intel-rapl:0:1", "uncore", 1_000_000), ("intel-rapl:1", "package-1", 2_000_000),
                           ("intel-rapl:2", "psys", 9_000_000)]:
        (tmp_path / zone).mkdir()
        (tmp_path / zone / "name").write_text(name + "\n")
        (tmp_path / zone / "energy_uj").write_text(f"{uj}\n")
    (tmp_path / "intel-rapl").mkdir()  # the control type's own folder
    monkeypatch.setattr(tel, "RAPL", tmp_path)
    assert [f.parent.name for f in tel._rapl_files()] == ["intel-rapl:0", "intel-rapl:1"]


class FakePynvml:
    """NVML's module-level API over four GPUs in PCI order (nvidia-ml-py where there is none):
    GPU i uses i GiB, and process 100 + i runs on GPU i with (i + 1) MiB."""

    NVML_CLOCK_SM = 1

    class NVMLError(Exception):
        pass

    def nvmlInit(self):
        pass

    def nvmlDeviceGetCount(self):
        return 4

    def nvmlDeviceGetHandleByIndex(self, i):
        if not 0 <= i < 4:
            raise self.NVMLError("Invalid Argument")
        return i

    def nvmlDeviceGetUUID(self, h):
        return f"GPU-{h}{h}{h}{h}abcd-0000"

    def nvmlDeviceGetHandleByUUID(self, uuid):
        if uuid != "MIG-1111":  # one MIG instance, on GPU 1, stands for its numbers here
            raise self.NVMLError("Not Found")
        return 1

    def nvmlDeviceGetName(self, h):
        return f"GPU{h}"

    def nvmlDeviceGetMemoryInfo(self, h):
        return type("M", (), {"used": h * 2**30})

    def nvmlDeviceGetComputeRunningProcesses(self, h):
        return [type("P", (), {"pid": 100 + h, "usedGpuMemory": (h + 1) * 2**20})]

    def nvmlDeviceGetGraphicsRunningProcesses(self, h):
        return []

    def nvmlDeviceGetPowerUsage(self, h):
        return 1000 * (h + 1)


@pytest.mark.parametrize(("visible", "name", "used_gib"), [
    (None, "GPU0 x4", 6), ("0,1", "GPU0 x2", 1), ("2", "GPU2", 2), ("", None, None), ("-1", None, None),
    ("0,-1,1", "GPU0", 0), ("3,1", "GPU3 x2", 4), ("GPU-2222abcd-0000", "GPU2", 2), ("GPU-3333,1", "GPU3 x2", 4),
    ("1,9", "GPU1", 1), ("9,1", None, None), ("1111", None, None), ("MIG-1111", "GPU1", 1),
    ("MIG-2222", None, None)])
def test_nvml_reads_the_gpus_cuda_programs_here_see(monkeypatch, visible, name, used_gib):
    """CUDA_VISIBLE_DEVICES by index, GPU UUID (a unique prefix of GPU-..., as CUDA takes it)
    or MIG UUID, up to its first entry CUDA cannot use: memory and power summed over those
    GPUs, not NVML's GPU 0 (an index past the last GPU is not a UUID prefix)."""
    import sys

    monkeypatch.setitem(sys.modules, "pynvml", FakePynvml())
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert memory.gpu_name() == name
    dev = memory.nvml()
    if name is None:
        assert dev is None
        return
    assert dev.used_bytes() == used_gib * 2**30
    seen = [int(g) for g in name.removeprefix("GPU").split(" x")[:1]]
    assert dev.process_bytes({100 + seen[0]}) == (seen[0] + 1) * 2**20
    assert dev.process_bytes({100 + i for i in range(4)}) == sum((i + 1) * 2**20 for i in range(4)
                                                                  if i in {h for h in dev._handles})
    assert memory.Nvml(index=2).used_bytes() == 2 * 2**30  # one GPU, named


def test_an_in_process_engine_is_billed_only_its_own_vram_and_a_second_one_is_named(monkeypatch):
    """The process's VRAM before the engine loaded is not the engine's; another in-process
    engine alive while one is measured is said in the timeline and warned."""
    import os

    class Device(FakeNvml):
        held = 3 * 2**20  # this process on the GPU

        def process_bytes(self, pids):
            return self.held if os.getpid() in pids else 0

    dev = Device()
    monkeypatch.setattr(memory, "_DEVICE", [dev])
    monkeypatch.setattr(memory, "_OPEN", weakref.WeakSet())  # alone in this process
    base = memory.engine_baseline("fake (m)")
    assert base.vram == 3 * 2**20 and base.rss > 0
    dev.held = 10 * 2**20  # the engine loaded 7 MiB onto the GPU
    sampler = memory.MemorySampler(memory.EngineMemory([], base), device=dev)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # alone in the process: no warning
        sampler.start()
    sampler.stop()
    frame = sampler.frame()
    assert (frame["vram_process_bytes"] == 7 * 2**20).all() and "shared_process" not in frame
    other = memory.engine_baseline("other (m2)")
    second = memory.MemorySampler(memory.EngineMemory([], base), device=dev)
    with pytest.warns(UserWarning, match=r"another in-process engine was alive in this process \(other \(m2\)"):
        second.start()
    second.stop()
    assert second.frame()["shared_process"].str.contains("measure each in-process engine").all()
    other.release()  # closed: alone again
    assert memory.sharing(base) == []


def test_an_in_process_engine_holds_its_baseline_open_until_it_closes():
    engine = TelemetryKvEngine()
    assert engine.memory_scope().self_baseline in memory._OPEN
    engine.close()
    assert engine.memory_scope().self_baseline not in memory._OPEN


def test_only_an_in_process_engines_memory_is_said_to_be_shared(monkeypatch):
    """A server loaded by name beside an open in-process engine: its memory is its own tree
    (the loading scope and the server's scope say nothing); an in-process one's is shared."""
    monkeypatch.setattr(memory, "_OPEN", weakref.WeakSet())
    llama = memory.engine_baseline("llama.cpp (m)")  # open in this process, as in the quickstart
    sampler = memory.MemorySampler(memory.EngineMemory([], memory.Baseline(*memory.self_memory())),
                                   device=False, cpu_budget=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sampler.start()  # loading a server: not an engine's baseline
        sampler.retarget(memory.EngineMemory([]))  # the server's own tree
        assert sampler.sample()["n_processes"] == 0 and "shared_process" not in sampler.sample()
    vllm = memory.engine_baseline("vllm (m)")
    with pytest.warns(UserWarning, match=r"alive in this process \(llama.cpp \(m\)\)"):
        sampler.retarget(memory.EngineMemory([], vllm))
    assert "shared_process" in sampler.sample()
    sampler.stop()
    llama.release()


class _Flaky(FakeKvEngine):
    """A server whose scrapes give nothing for the first ``misses`` readings (starting up)."""

    def __init__(self, misses: int, **kw):
        super().__init__(**kw)
        self.misses, self.scrapes = misses, 0

    def memory_scope(self):
        return None

    def server_snapshot(self):
        self.scrapes += 1
        return {} if self.scrapes <= self.misses else {"running": 1.0}


def test_one_failed_first_scrape_does_not_turn_server_telemetry_off():
    from labkit.loadgen.telemetry import Telemetry

    tel = Telemetry(_Flaky(misses=1), 0.0, interval_s=3600, device=None).start()
    tel.sample()
    tel.sample()
    tel.stop()
    assert "server" not in tel.absent and (tel.frame()["source"] == "server").sum() == 3


def test_a_server_without_metrics_is_given_up_after_a_few_empty_scrapes_and_said_why():
    from labkit.loadgen.telemetry import SERVER_TRIES, Telemetry

    eng = _Flaky(misses=10**6)
    tel = Telemetry(eng, 0.0, interval_s=3600, device=None).start()
    for _ in range(SERVER_TRIES + 2):
        tel.sample()
    tel.stop()
    assert eng.scrapes == SERVER_TRIES and "gave no metrics" in tel.absent["server"]
    short = Telemetry(_Flaky(misses=10**6), 0.0, interval_s=3600, device=None).start()
    short.stop()  # two readings, both empty: absent all the same
    assert "gave no metrics" in short.absent["server"]


def test_a_levels_first_reading_starts_one_stretch_of_it_in_the_timeline():
    """The rates ending at a level's first reading are idle, its gauges the level's: in
    time order the idle ones come first, so the level is one unbroken stretch (one band)."""
    rows = []
    for t, phase, edge in ((0.0, "idle", None), (1.0, "concurrency 1", "start"), (2.0, "concurrency 1", "end")):
        for source, metric in (("host", "machine_cpu_seconds"), ("host:server", "cpu_seconds"),
                               ("host:server", "rss_bytes"), ("server", "running"), ("server", "prompt_tokens")):
            rows.append({"t_s": t, "phase": phase, "source": source, "metric": metric, "value": t, "edge": edge})
    t = rates(pd.DataFrame(rows))
    phases = t["phase"].tolist()
    changes = sum(a != b for a, b in zip(phases, phases[1:], strict=False))
    assert changes == 1 and phases[-1] == "concurrency 1"
