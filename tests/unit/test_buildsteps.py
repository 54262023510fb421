"""The build-step log: which steps a classic-builder build ran and which the cache served."""

from __future__ import annotations

from hubdeploy.images import buildsteps
from hubdeploy.images.buildsteps import StepLog

# What docker-py's decoded classic-builder stream holds, line by line (one cached step,
# one that ran with output, and the final LABEL).
STREAM = [
    "Step 1/4 : FROM hubdeploy/demo-base:0123456789ab",
    " ---> 4bb77c36a2b0",
    "Step 2/4 : COPY kernels/alpha-py1/runner.txt /tmp/hubdeploy/kernels/alpha-py1/",
    " ---> Using cache",
    " ---> 1e9e5b0d5c11",
    "Step 3/4 : RUN /opt/hubdeploy/uv/bin/uv pip install   --no-cache  -r x.txt",
    " ---> Running in 3a1b",
    "Resolved 31 packages in 245ms",
    " + six==1.17.0",
    "Removing intermediate container 3a1b",
    " ---> 77aa",
    "Step 4/4 : LABEL a=b",
    " ---> Running in 9f",
    "Successfully built 81c2",
]


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        self.now += 1.5
        return self.now


def test_parse_step():
    assert buildsteps.parse_step("Step 12/14 : RUN a   b \\  c") == (12, "RUN a b \\ c")
    assert buildsteps.parse_step(" ---> Using cache") is None
    assert buildsteps.parse_step("Stepping 1/2 : x") is None


def test_steps_cached_and_timed():
    log = StepLog("alpha", clock=Clock())
    started = [s.number for line in STREAM if (s := log.feed(line))]
    steps = log.close()
    assert started == [1, 2, 3, 4]
    assert [(s.number, s.keyword, s.cached) for s in steps] == [
        (1, "FROM", False), (2, "COPY", True), (3, "RUN", False), (4, "LABEL", False)]
    assert steps[2].instruction == "RUN /opt/hubdeploy/uv/bin/uv pip install --no-cache -r x.txt"
    # Each step lasts from its announcement to the next one; the last until close().
    assert [s.seconds for s in steps] == [1.5, 1.5, 1.5, 1.5]
    assert all(s.image == "alpha" for s in steps)
    assert buildsteps.ran(steps) == [steps[2].instruction, "LABEL a=b"]
    assert buildsteps.ran(steps, image="beta") == []
    assert steps[1].to_json()["cached"] is True


def test_a_cache_line_before_any_step_is_ignored():
    log = StepLog("x")
    log.feed(" ---> Using cache")
    assert log.close() == []
