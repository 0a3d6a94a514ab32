"""Load from several processes, against labkit's real loopback mock server: every request
comes back once, percentiles come from the raw rows, a dead or frozen worker costs only its
own requests, and calibrate() measures the client."""

from __future__ import annotations

import json
import os
import signal

import httpx
import numpy as np
import psutil
import pytest

import labkit
from labkit.errors import InvalidInput
from labkit.loadgen import drivers as drivers_mod
from labkit.loadgen import workers as workers_mod
from labkit.loadgen import workloads

SMALL = workloads.synthetic(input_tokens=8, output_tokens=16)


@pytest.fixture(scope="module")
def mock():
    with labkit.load("mock-server") as engine:
        yield engine


def test_the_mock_server_speaks_the_openai_api(mock):
    root = mock.url[: -len("/v1")]
    assert httpx.get(root + "/version").json()["version"].startswith("labkit-mock")
    gen = mock.generate(["one two three"], max_tokens=5)[0]
    assert gen.text == " tok" * 5 and gen.finish_reason == "length" and len(gen.token_times_s) == 5
    chat = mock.chat([[{"role": "user", "content": "hi"}]], max_tokens=3)[0]
    assert chat.text == " tok" * 3
    plain = httpx.post(mock.url + "/completions", json={"prompt": "a b", "max_tokens": 2}).json()
    assert plain["usage"] == {"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4}
    assert mock.caveats() and "No model" in mock.caveats()[0]


def test_rows_from_two_workers_are_every_request_once(mock, tmp_path):
    res = labkit.bench(mock, concurrency=[4], rate=[200.0], duration_s=0.2, requests_per_level=40,
                       workload=SMALL, warmup=1, progress=False, workers=2, out=tmp_path / "run")
    for (mode, level), rows in res.requests.groupby(["mode", "level"]):
        assert sorted(rows["index"]) == list(range(len(rows))), (mode, level)  # no loss, no duplicate
        assert set(rows["worker"]) == {0, 1}
        assert rows["error"].isna().all() and (rows["output_tokens"] == 16).all()
    closed = res.requests[res.requests["mode"] == "concurrency"]
    assert len(closed) == 40
    # one clock: every request left after it was ready, and within the sweep
    assert (closed["start_s"] >= closed["ready_s"]).all() and (closed["start_s"] > 0).all()
    saved = labkit.BenchResult.load(tmp_path / "run")
    assert len(saved.requests) == len(res.requests) and saved.manifest["workers"] == 2


def test_percentiles_come_from_the_merged_raw_rows():
    with labkit.load("mock-server", token_delay_ms=2) as paced:  # chunks apart: gaps to measure
        res = labkit.bench(paced, concurrency=[6], requests_per_level=60, workload=SMALL, warmup=0,
                           progress=False, workers=2)
    s, r = res.summary.iloc[0], res.requests
    for p in (50, 90, 99):
        assert s[f"ttft_p{p}_ms"] == pytest.approx(np.percentile(r["ttft_s"], p) * 1000)
    gaps = [g for lst in r["itl_s"] for g in lst]
    assert s["itl_p99_ms"] == pytest.approx(np.percentile(gaps, 99) * 1000)
    assert s["client_processes"] == 3  # this process and its two workers, each measured
    assert {"dispatch_delay_p50_ms", "dispatch_delay_p99_ms", "client_bound", "client_note"} <= set(s.index)


@pytest.mark.parametrize(("sig", "says"), [(signal.SIGKILL, "load process 1 ended"),
                                            (signal.SIGSTOP, "load process 1 stopped responding")])
def test_a_worker_that_dies_or_hangs_costs_only_its_own_requests(monkeypatch, sig, says):
    # Stuck after 10 s of silence, not 60 (2 s was seen to catch a healthy worker starved of CPU)
    monkeypatch.setattr(drivers_mod, "SILENT_S", 10.0)
    send = workers_mod.ProcessDriver.send
    hit = []

    def send_then_signal(self, jobs):
        send(self, jobs)
        if not hit:  # worker 1 dies, or freezes alive, with its first requests in hand
            hit.append(self._procs[1].pid)
            os.kill(self._procs[1].pid, sig)

    monkeypatch.setattr(workers_mod.ProcessDriver, "send", send_then_signal)
    with labkit.load("mock-server", token_delay_ms=50) as slow:
        res = labkit.bench(slow, concurrency=[4, 2], requests_per_level=8, workload=SMALL, warmup=0,
                           progress=False, workers=2)
    r = res.requests
    lost = r[r["worker"] == 1]
    assert hit and len(lost) >= 2 and lost["error"].str.contains(says).all()
    assert r[r["worker"] == 0]["error"].isna().all()  # the other worker's requests are all kept
    later = r[r["level"] == 2]  # the lost process gets no more: the next level runs on the live one
    assert len(later) == 8 and set(later["worker"]) == {0} and later["error"].isna().all()
    assert not psutil.pid_exists(hit[0]) or psutil.Process(hit[0]).status() == psutil.STATUS_ZOMBIE


def test_bad_worker_counts_are_refused_and_too_many_warned(mock, monkeypatch):
    for bad in (0, -1, "2", 1.5, True):
        with pytest.raises(InvalidInput, match="workers"):
            labkit.bench(mock, concurrency=[1], requests_per_level=1, workload=SMALL, progress=False, workers=bad)
    monkeypatch.setattr(workers_mod, "usable_cores", lambda: 1)
    with pytest.warns(RuntimeWarning, match="workers=2 load processes on 1 usable cores"):
        labkit.bench(mock, concurrency=[1], requests_per_level=2, workload=SMALL, warmup=0, progress=False,
                     workers=2)


def test_calibrate_measures_what_the_client_sustains():
    cal = labkit.calibrate(workers=[1, 2], users=(4,), requests_per_level=24, progress=False)
    t = cal.table
    assert list(t["workers"]) == [1, 2]
    assert (t["max_req_per_s"] > 0).all() and (t["max_chunks_per_s"] > t["max_req_per_s"]).all()
    assert t["dispatch_delay_p99_ms"].notna().all() and (t["client_cpu_cores"] > 0).all()
    assert cal.scaling().iloc[0] == 1.0 and "Client calibration" in cal._repr_html_()
    with pytest.raises(InvalidInput, match="workers"):
        labkit.calibrate(workers=[0])


def test_an_api_key_reaches_the_server_from_every_worker_and_nothing_written(tmp_path, monkeypatch, capfd):
    key, extra = "sk-test-0123456789abcdef", "gw-secret-9876543210"
    monkeypatch.setenv("MY_GATEWAY_KEY", key)
    with labkit.load("mock-server", api_key=key, log_dir=str(tmp_path / "logs")) as gated:
        assert httpx.get(gated.url + "/models").status_code == 401  # it requires the key
        with pytest.raises(InvalidInput, match="NOT_SET_ANYWHERE"):
            labkit.load("openai", url=gated.url, api_key_env="NOT_SET_ANYWHERE")
        with labkit.load("openai", url=gated.url, api_key_env="MY_GATEWAY_KEY",
                         headers={"X-Gateway": extra}) as ext:
            assert ext.info.args["server_version"].startswith("labkit-mock")  # the endpoint's identity
            res = labkit.bench(ext, concurrency=[2], requests_per_level=6, workload=SMALL, warmup=0,
                               progress=False, workers=2, out=tmp_path / "run")
            assert res.summary["completed"].iloc[0] == 6 and set(res.requests["worker"]) == {0, 1}
            res.save(tmp_path / "saved")
            shown = res._repr_html_() + ext.info._repr_html_() + str(res.manifest)
    out, err = capfd.readouterr()
    for secret in (key, extra):
        assert secret not in shown + out + err
        for f in tmp_path.rglob("*"):
            if f.is_file():
                assert secret not in f.read_text(errors="replace"), f
    assert res.manifest["engine"]["args"]["header_names"] == ["X-Gateway"]
    assert res.manifest["environment"]["hostname"]  # which client host measured it


def test_the_cli_calibrates_and_benches_with_workers_as_json(capsys):
    from labkit.cli import main

    assert main(["calibrate", "--workers", "1", "--users", "4", "--requests", "16", "--json"]) == 0
    table = json.loads(capsys.readouterr().out)  # only JSON on stdout
    assert table[0]["workers"] == 1 and table[0]["max_chunks_per_s"] > 0
    with labkit.load("mock-server") as m:
        assert main(["bench", "--engine", "openai", "--url", m.url, "--model", "labkit-mock", "--workers", "2",
                     "--concurrency", "2", "--requests", "4", "--workload", "synthetic", "--input-tokens", "8",
                     "--output-tokens", "4", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rows[0]["completed"] == 4 and rows[0]["client_processes"] == 3
    assert main(["bench", "--engine", "openai", "--url", "http://127.0.0.1:1/v1", "--workers", "ray:x"]) == 2


def test_a_server_too_busy_to_answer_a_health_check_is_not_taken_for_dead(monkeypatch):
    import labkit.engines.openai as openai_mod

    monkeypatch.setattr(openai_mod, "_HEALTH_TIMEOUT_S", 0.5)
    with labkit.load("mock-server") as srv:
        os.killpg(srv.process.pgid, signal.SIGSTOP)  # alive, answering nothing (as if every thread streamed)
        try:
            busy = srv.health()
        finally:
            os.killpg(srv.process.pgid, signal.SIGCONT)
        assert busy is None and srv.health() is None
        os.killpg(srv.process.pgid, signal.SIGKILL)
        assert "killed by SIGKILL" in srv.health()  # gone is still gone
