"""The swarm backend's reading of task states, placement and resources (pure)."""

from hubdeploy.backends import swarm_tasks as st
from hubsections import profile


def task(state, index, err="", exit_code=None, message=""):
    status = {"State": state, "Err": err, "Message": message}
    if exit_code is not None:
        status["ContainerStatus"] = {"ContainerID": "c" * 12, "ExitCode": exit_code}
    return {"Version": {"Index": index}, "NodeID": "n1", "Status": status}


def test_no_task_yet():
    assert st.view([]).phase == "none"


def test_newest_task_decides():
    tasks = [task("failed", 5, err="boom", exit_code=1), task("running", 9, exit_code=0)]
    assert st.view(tasks).phase == "running"
    assert st.view(list(reversed(tasks))).phase == "running"


def test_ended_task_keeps_exit_code_and_reason():
    seen = st.view([task("failed", 3, err="task: non-zero exit (3)", exit_code=3)])
    assert (seen.phase, seen.exit_code, seen.reason) == ("ended", 3, "task: non-zero exit (3)")
    done = st.view([task("complete", 3, exit_code=0, message="finished")])
    assert (done.phase, done.exit_code, done.reason) == ("ended", 0, "finished")
    assert st.view([task("rejected", 1, err="No such image")]).phase == "ended"


def test_pending_with_scheduler_error_is_unschedulable():
    reason = "no suitable node (scheduling constraints not satisfied on 1 node)"
    seen = st.view([task("pending", 2, err=reason)])
    assert (seen.phase, seen.reason) == ("unschedulable", reason)
    assert st.view([task("pending", 2)]).phase == "starting"
    assert st.view([task("preparing", 2, message="preparing")]).reason == "preparing"


def test_placement_from_profile():
    assert st.placement(profile()) == {}
    assert st.placement(profile(placement={"constraints": ["node.labels.role==login"],
                                           "spread": ["node.labels.rack"]})) == {
        "constraints": ["node.labels.role==login"],
        "preferences": [("spread", "node.labels.rack")],
    }


def test_resources_limits_reservations_and_pids():
    assert st.resources(profile(pids_limit=64)) == {"Limits": {"Pids": 64}}
    got = st.resources(profile(cpu=1.5, mem_limit=2**30, reserve={"cpu": 0.25, "mem": 2**28}, pids_limit=512))
    assert got == {
        "Limits": {"NanoCPUs": 1_500_000_000, "MemoryBytes": 2**30, "Pids": 512},
        "Reservations": {"NanoCPUs": 250_000_000, "MemoryBytes": 2**28},
    }
