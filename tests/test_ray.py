"""Load from Ray actors on a local two-node Ray cluster (head and worker on 127.0.0.1, started
here with Ray's own test cluster), against labkit's loopback mock server."""

from __future__ import annotations

import os
import signal

import psutil
import pytest

import labkit
from labkit.loadgen import drivers as drivers_mod
from labkit.loadgen import workloads

ray = pytest.importorskip("ray", reason="Ray is the optional extra 'ray' (environments/*.txt install it)")
cluster_utils = pytest.importorskip("ray.cluster_utils")

SMALL = workloads.synthetic(input_tokens=8, output_tokens=8)


@pytest.fixture(scope="module")
def cluster():
    c = cluster_utils.Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    c.add_node(num_cpus=1)
    c.wait_for_nodes()
    yield c
    c.shutdown()


def test_a_sweep_from_ray_actors_on_two_nodes_keeps_every_request_and_cleans_up(cluster, tmp_path):
    with labkit.load("mock-server") as mock:
        res = labkit.bench(mock, concurrency=[4], requests_per_level=24, workload=SMALL, warmup=1,
                           progress=False, workers="ray", ray_address=cluster.address, out=tmp_path / "run")
    r = res.requests
    assert sorted(r["index"]) == list(range(24)) and r["error"].isna().all()
    assert set(r["worker"]) == {0, 1}  # one actor per node
    assert (r["start_s"] >= r["ready_s"]).all()  # one clock: no request left before it was ready
    load = res.manifest["load"]
    assert load["driver"] == "RayDriver" and load["ray_nodes"] == 2 and load["clock_error_ms"] >= 0
    assert not ray.is_initialized()  # labkit connected for the sweep, and let go
    ray.init(address=cluster.address, namespace="labkit")
    try:
        for name in load["ray_actors"]:
            with pytest.raises(ValueError):  # killed at the end of the sweep
                ray.get_actor(name, namespace="labkit")
    finally:
        ray.shutdown()


def test_an_unreachable_ray_address_is_a_clear_error():
    with labkit.load("mock-server") as mock, pytest.raises(labkit.InvalidInput, match="Cannot reach the Ray cluster"):
        labkit.bench(mock, concurrency=[1], requests_per_level=1, workload=SMALL, progress=False,
                     workers="ray", ray_address="127.0.0.1:1")


def test_a_ray_actor_that_hangs_is_killed_and_costs_only_its_own_requests(cluster, monkeypatch):
    from labkit.loadgen.ray_workers import RayDriver

    monkeypatch.setattr(drivers_mod, "SILENT_S", 10.0)  # stuck after 10 s without a ping answered, not 60
    send = RayDriver.send
    stopped = []

    def send_then_stop(self, jobs):
        send(self, jobs)
        if not stopped:  # actor 1 freezes, alive, with its first requests in hand
            stopped.append(ray.get(self._actors[1].__ray_call__.remote(lambda actor: os.getpid())))
            os.kill(stopped[0], signal.SIGSTOP)

    monkeypatch.setattr(RayDriver, "send", send_then_stop)
    try:
        with labkit.load("mock-server", token_delay_ms=50) as slow:
            res = labkit.bench(slow, concurrency=[4, 2], requests_per_level=8, workload=SMALL, warmup=0,
                               progress=False, workers="ray:2", ray_address=cluster.address)
    finally:
        if stopped and psutil.pid_exists(stopped[0]):  # whatever happened, no frozen actor left behind
            os.kill(stopped[0], signal.SIGKILL)
    r = res.requests
    lost = r[r["worker"] == 1]
    assert stopped and len(lost) >= 2
    assert lost["error"].str.contains("Ray load actor 1 stopped responding").all()
    assert r[r["worker"] == 0]["error"].isna().all()  # the other actor's requests are all kept
    later = r[r["level"] == 2]  # the killed actor gets no more: the next level runs on the live one
    assert len(later) == 8 and set(later["worker"]) == {0} and later["error"].isna().all()
