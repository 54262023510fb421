"""A compute-node server whose node Slurm reports not responding or down: the pure
decision (node states, judge) and the backend's poll, stop and listing around it."""

from __future__ import annotations

import pytest
from test_slurm_parsing import FakeBackend, line, run

from hubdeploy.backends.base import Found, Running, Stopped, Unknown
from hubdeploy.backends.slurm_parse import (
    JobInfo,
    judge,
    node_trouble,
    parse_node_states,
    with_node_trouble,
)


def test_parse_node_states_one_line_per_node_and_partition():
    out = "c1|allocated*\nc2|idle\nc1|allocated*\n\n"
    assert parse_node_states(out) == {"c1": "allocated*", "c2": "idle"}


@pytest.mark.parametrize("out", ["sinfo: error: Unable to contact slurm controller\n", "c1\n", "|idle\n"])
def test_parse_node_states_refuses_what_it_cannot_read(out):
    with pytest.raises(ValueError):
        parse_node_states(out)


@pytest.mark.parametrize(
    "state, trouble",
    [
        ("allocated", None),
        ("mixed", None),
        ("idle", None),
        ("allocated*", "is not responding"),
        ("mixed*", "is not responding"),
        ("down*", "is not responding"),
        ("down", "is down"),
        ("down~", "is down"),
        # An administrator's "no new jobs": the jobs there keep running.
        ("drained", None),
        ("draining", None),
        ("fail", None),
        ("completing", None),
    ],
)
def test_node_trouble_only_slurms_own_verdicts(state, trouble):
    assert node_trouble(state) == trouble


def info(state="RUNNING", host="c1"):
    return JobInfo("7", state, "None", "N/A", host, "hubdeploy-port=9000")


@pytest.mark.parametrize(
    "job, trouble, since, now, expected, since_after",
    [
        # A healthy node: squeue decides, and a former trouble is forgotten.
        (info(), None, None, 100.0, Running(), None),
        (info(), None, 50.0, 100.0, Running(), None),
        # Not responding: running until the grace (20 s) has passed, counted from the
        # first sighting.
        (info(), "is not responding", None, 100.0, Running(), 100.0),
        (info(), "is not responding", 90.0, 100.0, Running(), 90.0),
        (info(), "is not responding", 80.0, 100.0, Stopped(1), 80.0),
        # Down: over at once.
        (info(), "is down", None, 100.0, Stopped(1), 100.0),
        # A job not on a node, or already ending, is squeue's business alone.
        (info("PENDING", ""), "is not responding", None, 100.0, Running(), None),
        (info("COMPLETING"), "is not responding", 10.0, 100.0, Stopped(0), None),
        (info("CANCELLED"), "is down", None, 100.0, Stopped(0), None),
    ],
)
def test_judge_decision_table(job, trouble, since, now, expected, since_after):
    result, after = judge(job, trouble, since, now, grace=20)
    assert (type(result), getattr(result, "status", None)) == (type(expected), getattr(expected, "status", None))
    assert after == since_after
    if isinstance(result, Stopped) and job.state == "RUNNING":
        assert result.reason.startswith(f"node c1 {trouble}")


def test_poll_reports_a_node_that_stops_answering_after_the_grace(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr("hubdeploy.backends.slurm.time.time", lambda: clock[0])
    b = FakeBackend([line("RUNNING")] * 3 + [(0, "", "")], sinfo=(0, "c1|allocated*\nc2|idle\n", ""),
                    node_lost_grace=20)
    state = {"job_id": "7"}
    assert run(b.poll(state)) == Running()
    assert state["node_lost_since"] == 1000.0
    clock[0] = 1010.0
    assert run(b.poll(state)) == Running()
    clock[0] = 1025.0
    result = run(b.poll(state))
    assert isinstance(result, Stopped) and result.status == 1
    assert result.reason.startswith("node c1 is not responding (for 25 s; Slurm still lists job 7 as RUNNING)")
    # Given up, the job is cancelled: its resources and its user's share go back at once.
    assert [c[0] for c in b.calls][-1] == ["scancel", "7"]


def test_a_failed_cancel_of_a_lost_job_still_reports_it_stopped():
    b = FakeBackend([line("RUNNING"), (1, "", "scancel: error: Unable to contact slurm controller\n")],
                    sinfo=(0, "c1|down\n", ""))
    result = run(b.poll({"job_id": "7"}))
    assert isinstance(result, Stopped) and result.reason.startswith("node c1 is down")


def test_poll_forgets_a_node_that_answers_again():
    b = FakeBackend([line("RUNNING")], sinfo=(0, "c1|allocated\n", ""))
    state = {"job_id": "7", "node_lost_since": 1.0}
    assert run(b.poll(state)) == Running()
    assert "node_lost_since" not in state


@pytest.mark.parametrize(
    "sinfo",
    [
        (1, "", "sinfo: error: Unable to contact slurm controller\n"),
        (0, "garbage\n", ""),
        (0, "c2|down*\n", ""),  # the job's node is not listed: nothing known of it
    ],
)
def test_poll_without_the_nodes_state_trusts_squeue(sinfo):
    state = {"job_id": "7", "node_lost_since": 1.0}
    assert run(FakeBackend([line("RUNNING")], sinfo=sinfo).poll(state)) == Running()


def test_poll_of_an_unreachable_scheduler_stays_unknown_whatever_the_nodes():
    b = FakeBackend([(1, "", "slurm_load_jobs error: Unable to contact slurm controller\n")],
                    sinfo=(0, "c1|down*\n", ""))
    assert isinstance(run(b.poll({"job_id": "7", "node_lost_since": 1.0})), Unknown)


def test_stop_does_not_wait_on_a_node_that_is_not_responding():
    b = FakeBackend([(0, "", ""), line("COMPLETING")] + [line("COMPLETING")] * 100,
                    sinfo=(0, "c1|allocated*\n", ""), stop_timeout=30)
    run(b.stop({"job_id": "7"}))
    assert [c[0][0] for c in b.calls] == ["scancel", "squeue"]


def test_stop_waits_for_a_job_on_a_healthy_node():
    b = FakeBackend([(0, "", ""), line("COMPLETING"), line("COMPLETING"), line("CANCELLED")])
    run(b.stop({"job_id": "7"}))
    assert len(b.calls) == 4


def test_listing_names_the_node_in_trouble():
    listed = (0, "7|RUNNING|c1|None|ann|20001|20001|hubdeploy-nb-ann\n"
                 "8|PENDING||Resources|bob|20002|20002|hubdeploy-nb-bob\n", "")
    b = FakeBackend([listed], sinfo=(0, "c1|allocated*\nc2|idle\n", ""))
    assert run(b.list_servers()) == [
        Found("7", "hubdeploy-nb-ann", "RUNNING", detail="node c1 is not responding", node="c1"),
        Found("8", "hubdeploy-nb-bob", "PENDING", reason="Resources"),
    ]


def test_listing_without_node_states_still_lists():
    f = Found("7", "n", "RUNNING", node="c1")
    assert with_node_trouble(f, None) == f
