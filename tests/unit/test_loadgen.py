"""The load generator against a fake engine: counts, a dying engine, and interrupts."""

from __future__ import annotations

import json
import threading
import time

import pytest

import labkit
from labkit.loadgen import workloads

from .fake_engine import FakeEngine, FakeSubmitEngine

SMALL = workloads.synthetic(input_tokens=8, output_tokens=4)


def test_closed_loop_levels_measure_every_request(tmp_path):
    res = labkit.bench(FakeEngine(), concurrency=[1, 3], requests_per_level=6, workload=SMALL,
                       warmup=0, progress=False, out=tmp_path / "run")
    s = res.summary.set_index("level")
    assert list(s.index) == [1, 3]
    assert (s["completed"] == 6).all() and (s["errors"] == 0).all() and (s["unmeasured"] == 0).all()
    assert (s["output_tokens"] == 24).all()
    assert res.ended == "completed"
    assert json.loads((tmp_path / "run" / "run.json").read_text())["ended"] == "completed"


def test_a_dying_engine_stops_the_sweep_and_marks_the_rest_not_sent(tmp_path):
    eng = FakeEngine(die_after=3)
    res = labkit.bench(eng, concurrency=[1, 2], requests_per_level=10, workload=SMALL, warmup=0,
                       progress=False, out=tmp_path / "run")
    assert res.ended == "engine died: fake was killed by SIGKILL"
    assert res.engine_log == "fake log: died"
    s = res.summary.set_index("level")
    assert s.loc[1, "completed"] == 3 and s.loc[1, "errors"] == 1
    assert s.loc[1, "unmeasured"] == 6 and s.loc[2, "unmeasured"] == 10
    assert eng.started == 4  # nothing was sent after the first sign of death
    saved = labkit.BenchResult.load(tmp_path / "run")
    assert saved.ended.startswith("engine died") and len(saved.requests) == 20


def test_stop_event_ends_the_sweep_as_interrupted_with_unmeasured_not_errors():
    stop = threading.Event()
    eng = FakeEngine(token_s=0.002)
    seen = []

    def after_level(res):
        seen.append(len(res.requests))
        stop.set()

    res = labkit.bench(eng, concurrency=[1, 2], requests_per_level=5, workload=SMALL, warmup=0,
                       progress=False, stop_event=stop, on_level_done=after_level)
    assert res.ended == "interrupted" and seen == [5]
    s = res.summary.set_index("level")
    assert s.loc[1, "completed"] == 5 and s.loc[2, "unmeasured"] == 5
    assert (s["errors"] == 0).all()


class _Recording(FakeEngine):
    """Remembers every prompt it was sent."""

    def __init__(self):
        super().__init__()
        self.prompts: list[str] = []
        self.chats = 0

    def _stream(self, prompt, params, chat, t0):
        self.chats += not isinstance(prompt, str)
        self.prompts.append(prompt if isinstance(prompt, str) else prompt[-1]["content"])
        return super()._stream(prompt, params, chat, t0)


def test_no_prompt_is_sent_twice_in_a_sweep_warm_up_included():
    """A server's prefix cache would turn a repeated prompt into a free prefill: the warm-up
    and each level get prompts of their own."""
    eng = _Recording()
    labkit.bench(eng, concurrency=[1, 2, 4], requests_per_level=5, workload=SMALL, warmup=2,
                 progress=False)
    assert len(eng.prompts) == 2 + 3 * 5
    assert len(set(eng.prompts)) == len(eng.prompts)


def test_bench_default_chat_workload_never_repeats_a_prompt_warm_up_included():
    # Unpadded, the 16 built-in questions once repeated every 16 requests.
    eng = _Recording()
    labkit.bench(eng, concurrency=[1, 2], requests_per_level=20, warmup=2, progress=False)
    assert len(eng.prompts) == 2 + 2 * 20 and len(set(eng.prompts)) == len(eng.prompts)
    assert eng.chats == len(eng.prompts)  # conversations still, sent through the chat template


def test_request_i_is_the_same_whatever_the_batch_it_is_built_in():
    eng = FakeEngine()
    whole = SMALL.build(eng, 6)
    assert SMALL.build(eng, 3, start=3) == whole[3:] and SMALL.build(eng, 2) == whole[:2]
    assert workloads.synthetic(8, 4, seed=1).build(eng, 6) != whole  # another seed, other prompts


class SlowSubmitEngine(FakeSubmitEngine):
    """A client that needs 40 ms to hand each request over: it cannot keep a fast schedule."""

    def submit(self, requests) -> None:
        time.sleep(0.04)  # the cost being modelled, not synchronisation
        super().submit(requests)


def test_an_open_loop_level_reports_how_well_it_kept_its_schedule():
    on_time = labkit.bench(FakeEngine(), rate=[20], duration_s=1.0, workload=SMALL, warmup=0,
                           progress=False)
    s = on_time.summary.iloc[0]
    assert on_time.requests["scheduled_s"].notna().all()
    assert not s["rate_short"] and s["sent_rate"] == pytest.approx(s["scheduled_rate"], rel=0.05)
    assert s["ttft_sched_p50_ms"] >= s["ttft_p50_ms"] and s["dispatch_delay_p50_ms"] < 20
    late = labkit.bench(SlowSubmitEngine(), rate=[100], duration_s=1.0, workload=SMALL, warmup=0,
                        progress=False).summary.iloc[0]
    assert late["rate_short"] and late["sent_rate"] < 0.5 * late["scheduled_rate"]
    # a user arriving on schedule waited for the client too: that wait is in their latency
    assert late["ttft_sched_p99_ms"] > late["ttft_p99_ms"] + late["dispatch_delay_p50_ms"] / 2
    closed = labkit.bench(FakeEngine(), concurrency=[2], requests_per_level=4, workload=SMALL, warmup=0,
                          progress=False)
    assert closed.requests["scheduled_s"].isna().all() and "rate_short" not in closed.summary


# --- multi-turn sessions ---------------------------------------------------------------------
def test_a_sessions_turn_carries_every_earlier_turn_and_the_engines_replies():
    eng = FakeEngine()
    w = workloads.multi_turn(turns=3, user_tokens=12, output_tokens=4, think_time_s=0.01)
    res = labkit.bench(eng, concurrency=[2], requests_per_level=6, workload=w, warmup=0, progress=False)
    scripted = [r.prompt[0]["content"] for r in w.build(eng, 6)]
    req = res.requests.sort_values("index")
    assert list(req["turn"]) == [1, 2, 3, 1, 2, 3] and (req["error"].isna()).all()
    reply = " w0 w1 w2 w3"  # what the fake says every time
    for prompt in eng.seen:
        session = next(i // 3 for i, text in enumerate(scripted) if text == prompt[-1]["content"])
        turn = len(prompt) // 2  # user, assistant, ..., user
        assert [m["content"] for m in prompt] == [x for j in range(turn) for x in
                                                  (scripted[session * 3 + j], reply)] + [scripted[session * 3 + turn]]
    # A later turn's length is the engine's own count of the whole conversation, and it
    # leaves only after the turn before it ended.
    assert list(req["input_tokens"]) == [len(eng.tokenize(p)) for p in
                                         sorted(eng.seen, key=lambda p: scripted.index(p[-1]["content"]))]
    for _, s in req.groupby(req["index"] // 3):
        ends = (s["start_s"] + s["e2e_s"]).to_numpy()
        assert (s["start_s"].to_numpy()[1:] >= ends[:-1] + 0.01).all()
    t = res.turns
    assert list(t["turn"]) == [1, 2, 3] and (t["requests"] == 2).all()
    assert t["input_tokens_mean"].is_monotonic_increasing
    s = res.summary.iloc[0]
    assert s["ttft_p50_ms_first_turn"] > 0 and s["ttft_p50_ms_later_turns"] > 0


def test_a_failed_turn_ends_its_session_and_its_later_turns_are_marked_not_sent():
    eng = FakeEngine(fail_from_message=5)  # the third turn (user, assistant, user, assistant, user) fails
    w = workloads.multi_turn(turns=4, user_tokens=12, output_tokens=4, think_time_s=0)
    res = labkit.bench(eng, concurrency=[1], requests_per_level=8, workload=w, warmup=0, progress=False)
    req = res.requests.sort_values("index")
    assert list(req["turn"]) == [1, 2, 3, 4] * 2
    assert req["error"].notna().tolist() == [False, False, True, False] * 2
    assert list(req.loc[req["turn"] == 4, "finish_reason"]) == ["not sent: turn 3 of its session failed"] * 2
    s = res.summary.iloc[0]
    assert (s["completed"], s["errors"], s["unmeasured"]) == (4, 2, 2) and res.ended == "completed"


def test_a_session_that_would_outgrow_the_context_is_refused_naming_the_turn():
    eng = FakeEngine()
    eng.info.args = {"context": 60}
    w = workloads.multi_turn(turns=4, user_tokens=12, output_tokens=16)
    with pytest.raises(labkit.InvalidInput, match="outgrows the engine's context of 60 at turn 3"):
        labkit.bench(eng, concurrency=[1], requests_per_level=4, workload=w, warmup=0, progress=False)
    assert eng.seen == []
    with pytest.raises(labkit.InvalidInput, match="turns must be a positive integer"):
        workloads.multi_turn(turns=0)
    with pytest.raises(labkit.InvalidInput, match="think_time_s"):
        workloads.multi_turn(think_time_s=-1)


def test_every_user_of_a_level_runs_a_session_whatever_the_request_count():
    w = workloads.multi_turn(turns=2, user_tokens=12, output_tokens=4, think_time_s=0)
    res = labkit.bench(FakeEngine(), concurrency=[4], requests_per_level=4, workload=w, warmup=0, progress=False)
    req = res.requests
    assert (req["turn"] == 1).sum() == 4 and len(req) == 8 and req["error"].isna().all()


def test_a_next_turn_that_cannot_be_sent_fails_its_session_instead_of_hanging():
    from labkit.loadgen.drivers import Job
    from labkit.loadgen.result import RequestRecord
    from labkit.loadgen.shapes import Concurrency, Pacer
    from labkit.loadgen.workloads import Request

    class FirstTurnsOnly:  # serves first turns at once; cannot send a next turn
        def send(self, jobs):
            if any(j.record.index % 2 for j in jobs):
                raise RuntimeError("can't start new thread")
            for j in jobs:
                j.on_done(j.record)

    seen = []
    job = lambda i, done: Job(Request("p", 4), RequestRecord("concurrency", 1, i), done)  # noqa: E731
    runner = threading.Thread(target=Pacer(FirstTurnsOnly(), threading.Event()).run,
                              args=(Concurrency(1, 4), job, seen.append, 2, 0.0), daemon=True)
    runner.start()
    runner.join(timeout=30)  # a guard: the level must end on its own
    assert not runner.is_alive()
    assert [(r.index, r.error) for r in seen] == [(0, None), (1, "RuntimeError: can't start new thread"),
                                                  (2, None), (3, "RuntimeError: can't start new thread")]


def test_after_is_for_engines_bench_loads_itself():
    with pytest.raises(labkit.InvalidInput, match="after= runs on the engine bench"):
        labkit.bench(FakeEngine(), concurrency=[1], requests_per_level=1, workload=SMALL, after=print)


def test_a_level_where_nothing_completed_is_strict_json_and_a_run_cut_off_says_so(tmp_path):
    from labkit.cli import _json

    res = labkit.bench(FakeEngine(die_after=3), concurrency=[1, 2], requests_per_level=10, workload=SMALL,
                       warmup=0, progress=False, out=tmp_path / "run")
    rows = res.summary.to_dict("records")
    assert any(v != v for row in rows for v in row.values() if isinstance(v, float))  # NaN figures
    for row in rows:  # --json's lines: a strict parser reads them, a figure not measured is null
        parsed = json.loads(_json(row), parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))
        assert all(parsed[k] is None for k, v in row.items() if isinstance(v, float) and v != v)
    (tmp_path / "run" / "run.json").unlink()  # as if the process had been killed mid-run
    cut = labkit.BenchResult.load(tmp_path / "run")
    assert cut.interrupted and cut.ended.startswith("did not finish") and len(cut.requests) == len(res.requests)


def test_a_request_failing_while_the_engine_is_being_checked_gets_it_checked_again():
    from labkit.loadgen.config import BenchConfig
    from labkit.loadgen.session import Session

    asked, answered = threading.Event(), []
    go = threading.Event()

    class DiesDuringTheCheck(FakeEngine):
        def health(self):
            answered.append(None)
            if len(answered) == 1:  # alive when first asked; dead by the time it is asked again
                asked.set()
                go.wait()
                return None
            return "fake was killed by SIGKILL"

    session = Session(DiesDuringTheCheck(), BenchConfig(concurrency=[1], workload=SMALL))
    session._check_alive()  # a first request failed: the check starts
    assert asked.wait(10)
    session._check_alive()  # a second one fails while the engine is being checked
    go.set()
    session._await_health()
    assert len(answered) == 2 and session.died == "fake was killed by SIGKILL" and session.stop.is_set()


def test_requests_a_driver_cannot_send_end_as_errors_and_the_level_ends():
    from labkit.loadgen.drivers import Driver, Job
    from labkit.loadgen.result import RequestRecord
    from labkit.loadgen.shapes import Concurrency, Pacer

    class Refusing(Driver):
        def send(self, jobs):
            raise RuntimeError("can't start new thread")

    records = []
    pacer = Pacer(Refusing(FakeEngine(), 0.0), threading.Event())
    level = threading.Thread(target=pacer.run, args=(Concurrency(2, 4), lambda i, done: Job(
        None, RequestRecord("concurrency", 2, i), done), records.append), daemon=True)
    level.start()
    level.join(timeout=60)  # a guard against a hang, not a measure of speed
    assert not level.is_alive()
    assert sorted(r.index for r in records) == [0, 1, 2, 3]
    assert all(r.error == "RuntimeError: can't start new thread" for r in records)


def test_a_level_with_more_users_than_requests_sends_one_per_user_and_says_so():
    with pytest.warns(UserWarning, match="concurrency 4: 4 requests"):
        res = labkit.bench(FakeEngine(), concurrency=[1, 4], requests_per_level=2, workload=SMALL,
                           warmup=0, progress=False)
    s = res.summary.set_index("level")
    assert s.loc[1, "requests"] == 2 and s.loc[4, "requests"] == 4 and s.loc[4, "completed"] == 4
    assert len(res.requests) == 6 and res.requests["prompt_sha"].nunique() == 6
