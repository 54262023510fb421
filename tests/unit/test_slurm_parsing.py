"""SlurmBackend's answers to every kind of Slurm command outcome (commands faked)."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from hubdeploy.backends.base import BackendError, Running, ServerSpec, Stopped, Unknown, parse_config
from hubdeploy.backends.slurm import SlurmBackend, SlurmConfig
from hubdeploy.backends.slurm_parse import (
    CommandError,
    JobInfo,
    classify,
    parse_squeue,
    progress_event,
    sbatch_message,
    validate_state,
)
from hubsections import profile

SLURM = {"partition": "interactive", "account": "a"}
PROFILE = profile(name="p", cpu=1, mem_limit=2**30, slurm=SLURM)
SPEC = ServerSpec(
    user="has@",
    server_name="",
    profile=PROFILE,
    env={"JUPYTERHUB_API_TOKEN": "s3cret", "PATH": "/hub"},
)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 20))


class FakeBackend(SlurmBackend):
    """Answers each command with the next outcome: (code, stdout, stderr) or an exception;
    sinfo (the node states) answers ``sinfo`` instead, every time."""

    def __init__(self, outcomes, sinfo=(0, "c1|allocated\nc2|idle\n", ""), **config):
        super().__init__(configured({"poll_interval": 0.01, "stop_timeout": 1, "node_cache_seconds": 0, **config}))
        self.outcomes = list(outcomes)
        self.sinfo = sinfo
        self.calls: list[tuple[list[str], bytes | None, dict]] = []

    async def run(self, argv, *, stdin=None, env=None, who=None, account=None):
        if argv[0] == "sinfo":
            if isinstance(self.sinfo, BaseException):
                raise self.sinfo
            return self.sinfo
        self.calls.append((list(argv), stdin, dict(env or {})))
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome


def configured(config):
    """The slurm backend's config as the hub reads it from hub.json."""
    return parse_config(SlurmConfig, config, "slurm")


def line(state, reason="None", comment="(null)", host="c1", start="N/A"):
    return (0, f"7|{state}|{reason}|{start}|{host}|{comment}\n", "")


# -- parsing ---------------------------------------------------------------------------


def test_parse_squeue():
    info = parse_squeue("\n42|RUNNING|None|2024-01-01T00:00:00|c1|hubdeploy:port=40000|extra\n")
    assert info == JobInfo(
        "42",
        "RUNNING",
        "None",
        "2024-01-01T00:00:00",
        "c1",
        "hubdeploy:port=40000|extra",
    )
    assert info.port is None  # a comment with trailing junk is not a port
    assert parse_squeue("") is None
    with pytest.raises(ValueError):
        parse_squeue("garbage")


@pytest.mark.parametrize(
    "state, expected",
    [
        ("PENDING", Running()),
        ("CONFIGURING", Running()),
        ("RUNNING", Running()),
        ("SUSPENDED", Running()),
        ("COMPLETING", Stopped(0)),
        ("COMPLETED", Stopped(0)),
        ("CANCELLED", Stopped(0)),
        ("FAILED", Stopped(1)),
        ("TIMEOUT", Stopped(1)),
        ("NODE_FAIL", Stopped(1)),
    ],
)
def test_classify(state, expected):
    assert classify(JobInfo("1", state, "", "", "", "")) == expected


def test_classify_unknown_state_is_unknown():
    assert isinstance(classify(JobInfo("1", "WEIRD", "", "", "", "")), Unknown)
    assert classify(None) == Stopped(0)


def test_sbatch_message():
    err = (
        "sbatch: error: hubdeploy-test: account nope does not exist\n"
        "sbatch: error: Batch job submission failed: Invalid account or account/partition combination specified\n"
    )
    assert sbatch_message(err) == (
        "hubdeploy-test: account nope does not exist; Batch job submission failed: "
        "Invalid account or account/partition combination specified"
    )
    assert sbatch_message("") == "sbatch failed without a message"


# -- state -----------------------------------------------------------------------------


def test_validate_state():
    good = {
        "job_id": "12",
        "job_name": "hubdeploy-nb-has-40",
        "host": "c1",
        "port": 40000,
        "phase": "started",
    }
    assert validate_state(good) == good
    assert validate_state({"job_id": 12})["job_id"] == "12"
    assert validate_state({"job_id": "12; rm"}) == {}
    assert validate_state({"job_id": True}) == {}
    assert validate_state({}) == {}
    # A bad host or port is dropped, the job id is kept (poll and stop still work).
    assert validate_state({"job_id": "3", "host": "a b", "port": 1}) == {"job_id": "3"}
    assert validate_state({"job_id": "3", "host": "c1", "port": 70000}) == {"job_id": "3"}
    assert FakeBackend([]).load_state({"job_id": "x"}) == {}


# -- poll ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "outcome, expected",
    [
        (line("RUNNING"), Running),
        (line("PENDING", "Resources"), Running),
        (line("COMPLETED"), Stopped),
        ((0, "", ""), Stopped),  # gone, within MinJobAge
        ((1, "", "slurm_load_jobs error: Invalid job id specified\n"), Stopped),
        (
            (
                1,
                "",
                "slurm_load_jobs error: Unable to contact slurm controller (connect failure)\n",
            ),
            Unknown,
        ),
        (
            (1, "", "slurm_load_jobs error: Socket timed out on send/recv operation\n"),
            Unknown,
        ),
        (
            (
                1,
                "",
                'squeue: error: Munge encode failed: Failed to access "/run/munge/munge.socket.2"\n',
            ),
            Unknown,
        ),
        (
            (1, "", "Error response from daemon: Container abc is not running\n"),
            Unknown,
        ),
        (
            (255, "", "ssh: connect to host login port 22: Connection refused\n"),
            Unknown,
        ),
        ((0, "garbage without fields\n", ""), Unknown),
        (CommandError(["squeue"], None, "no answer within 30s"), Unknown),
        (CommandError(["ssh"], None, "cannot run ssh: No such file"), Unknown),
    ],
)
def test_poll_never_stopped_on_a_transient_error(outcome, expected):
    assert isinstance(run(FakeBackend([outcome]).poll({"job_id": "7"})), expected)


def test_poll_without_job_is_stopped():
    assert run(FakeBackend([]).poll({})) == Stopped(0)


def test_poll_survives_a_bug():
    assert isinstance(run(FakeBackend([RuntimeError("boom")]).poll({"job_id": "7"})), Unknown)


def test_export_option_names_or_all():
    from hubdeploy.backends.slurm_parse import export_option

    assert export_option(["A", "B"], False) == "--export=A,B"  # Slurm builds the login env
    assert export_option([], False) == "--export=NONE"
    # Not ALL,A,B: sbatch would load the login environment for anything but the bare ALL.
    assert export_option(["A", "B"], True) == "--export=ALL"
    assert export_option([], True) == "--export=ALL"


# -- start -----------------------------------------------------------------------------


def test_start_submits_script_args_and_env():
    b = FakeBackend(
        [
            (0, "7\n", ""),
            line("PENDING", "Priority", start="2030-01-01T00:00:00"),
            (1, "", "Unable to contact slurm controller"),
            line("RUNNING"),
            line("RUNNING", comment="hubdeploy:port=40001"),
        ]
    )
    state: dict = {}
    assert run(b.start(SPEC, state)) == ("c1", 40001)
    argv, stdin, env = b.calls[0]
    assert argv[:2] == ["sbatch", "--parsable"]
    assert "--job-name=hubdeploy-nb-has-40" in argv
    assert "--export=JUPYTERHUB_API_TOKEN" in argv  # PATH of the hub is not exported
    assert argv[-2:] == ["/dev/stdin", "jupyterhub-singleuser"]
    assert env == {"JUPYTERHUB_API_TOKEN": "s3cret"}
    assert b"s3cret" not in stdin and all("s3cret" not in a for a in argv)
    assert b"#SBATCH --partition=interactive" in stdin
    assert state == {
        "job_name": "hubdeploy-nb-has-40",
        "job_id": "7",
        "phase": "started",
        "job_state": "RUNNING",
        "reason": "None",
        "start_time": "N/A",
        "host": "c1",
        "port": 40001,
    }


@pytest.mark.parametrize(
    "outcomes, message",
    [
        (
            [
                (
                    1,
                    "",
                    "sbatch: error: Batch job submission failed: Invalid partition name specified\n",
                )
            ],
            "Slurm refused the job: Batch job submission failed: Invalid partition name specified",
        ),
        (
            [CommandError(["sbatch"], None, "no answer within 30s")],
            "cannot submit to Slurm",
        ),
        ([(0, "Submitted\n", "")], "not a job id"),
        (
            [(0, "7\n", ""), line("FAILED", "NonZeroExitCode")],
            "ended before the server started (FAILED, NonZeroExitCode)",
        ),
        (
            [(0, "7\n", ""), (1, "", "Invalid job id specified")],
            "ended before the server started",
        ),
        (
            [
                (0, "7\n", ""),
                line("RUNNING", host="bad host", comment="hubdeploy:port=40001"),
            ],
            "not a host name",
        ),
    ],
)
def test_start_failures_are_backend_errors(outcomes, message):
    state: dict = {}
    with pytest.raises(BackendError) as err:
        run(FakeBackend(outcomes).start(SPEC, state))
    assert message in str(err.value)
    assert "s3cret" not in str(err.value)
    assert state["phase"] == "failed"


def test_a_submit_path_that_cannot_get_through_is_not_slurms_refusal():
    # ssh's own failure (255): the login host refused the key, or cannot be reached.
    b = FakeBackend([(255, "", "jovyan@login1: Permission denied (publickey).\n")], submit_unreachable_code=255)
    with pytest.raises(BackendError) as err:
        run(b.start(SPEC, {}))
    assert str(err.value) == "cannot reach Slurm to submit (exit 255): jovyan@login1: Permission denied (publickey)."
    # Without the setting (or with another code) sbatch's failure reads as Slurm's answer.
    b = FakeBackend([(1, "", "sbatch: error: Invalid account\n")], submit_unreachable_code=255)
    with pytest.raises(BackendError, match="Slurm refused the job: Invalid account"):
        run(b.start(SPEC, {}))


def test_start_refuses_bad_profile_before_slurm():
    b = FakeBackend([])
    spec = ServerSpec(user="u", server_name="", profile=profile(name="p", slurm={**SLURM, "partition": "a b"}))
    with pytest.raises(BackendError, match="profile 'p'"):
        run(b.start(spec, {}))
    assert b.calls == []


def test_start_polls_fast_then_backs_off_and_speeds_up_on_a_state_change(monkeypatch):
    # A free node starts the job within a second and reports the port soon after: the
    # first polls are 0.1 s apart, growing x1.5 to poll_interval; a new state starts over.
    delays = []
    real_sleep = asyncio.sleep

    async def sleep(seconds):
        delays.append(seconds)
        await real_sleep(0)

    monkeypatch.setattr("hubdeploy.backends.slurm.asyncio.sleep", sleep)
    b = FakeBackend(
        [(0, "7\n", "")] + [line("PENDING")] * 12 + [line("RUNNING"), line("RUNNING", comment="hubdeploy:port=40001")],
        poll_interval=2,
    )
    assert run(b.start(SPEC, {})) == ("c1", 40001)
    assert delays[:5] == pytest.approx([0.1, 0.15, 0.225, 0.3375, 0.50625])
    assert max(delays) == 2  # a long wait in the queue polls no more often than before
    assert delays[-1] == pytest.approx(0.1)  # RUNNING: the port follows within a moment


def test_start_is_bounded():
    b = FakeBackend([(0, "7\n", "")] + [line("PENDING")] * 1000, start_timeout=0.1)
    with pytest.raises(BackendError, match="did not start within"):
        run(b.start(SPEC, {}))


# -- stop ------------------------------------------------------------------------------


def test_stop_cancels_and_waits():
    b = FakeBackend([(0, "", ""), line("RUNNING"), line("COMPLETING"), line("CANCELLED")])
    run(b.stop({"job_id": "7"}))
    assert b.calls[0][0] == ["scancel", "7"]
    assert len(b.calls) == 4


def test_stop_of_gone_job_is_fine():
    gone = FakeBackend([(1, "", "scancel: error: Kill job error on job id 7: Invalid job id specified")])
    run(gone.stop({"job_id": "7"}))
    # Done at scancel's answer: no squeue waits for a job Slurm no longer has.
    assert [argv for argv, _, _ in gone.calls] == [["scancel", "7"]]
    never = FakeBackend([])
    run(never.stop({}))
    assert never.calls == []


def test_stop_after_failed_submit_cancels_by_name():
    b = FakeBackend([(0, "", "")])
    run(b.stop({"job_name": "hubdeploy-nb-u", "phase": "failed"}))
    assert b.calls[0][0] == ["scancel", "--name=hubdeploy-nb-u"]


def test_stop_raises_when_slurm_cannot_be_reached():
    with pytest.raises(BackendError, match="cannot cancel"):
        run(FakeBackend([CommandError(["scancel"], None, "no answer")]).stop({"job_id": "7"}))
    with pytest.raises(BackendError, match="scancel 7 failed"):
        run(FakeBackend([(1, "", "scancel: error: Unable to contact slurm controller")]).stop({"job_id": "7"}))


def test_stop_wait_is_bounded(caplog):
    b = FakeBackend([(0, "", "")] + [line("RUNNING")] * 1000, stop_timeout=0.1)
    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING, logger=b.log.name):
        run(b.stop({"job_id": "7"}))
    elapsed = time.monotonic() - t0
    # Returns after the bound (polling every poll_interval, 0.01 s), not at the first
    # RUNNING and not after the 1000 answers, and says that the job is not gone yet.
    assert 0.1 <= elapsed < 2, elapsed
    assert 2 < len(b.calls) < 1000
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.getMessage().startswith("Slurm job 7 not gone 0.1s after scancel: ")
    assert "RUNNING" in warning.getMessage()


# -- argv and progress -----------------------------------------------------------------


def test_prefix_and_env_passing():
    b = SlurmBackend(configured({"submit_prefix": ["docker", "exec", "-i", "ctr"], "submit_env_option": "-e"}))
    assert b._argv(["squeue", "-h"], ["A", "B"]) == [
        "docker",
        "exec",
        "-i",
        "-e",
        "A",
        "-e",
        "B",
        "ctr",
        "squeue",
        "-h",
    ]
    b = SlurmBackend(configured({"submit_prefix": ["ssh", "login"], "submit_quote": True}))
    assert b._argv(["sbatch", "/dev/stdin", "a b", "$HOME"]) == [
        "ssh",
        "login",
        "sbatch /dev/stdin 'a b' '$HOME'",
    ]
    assert SlurmBackend(configured({}))._argv(["squeue"]) == ["squeue"]
    with pytest.raises(ValueError):
        configured({"submit_prefix": "ssh login"})


def test_variables_cross_a_shell_prefix_on_stdin_not_argv():
    # ["sh", "-c"] + one quoted word is what ssh does on the far side ($SHELL -c WORDS).
    hostile = {
        "JUPYTERHUB_API_TOKEN": "s3cr3t-token",
        "A": "x y 'q' \"d\" $(echo pwned) `id`; exit 3",
        "EMPTY": "",
    }
    b = SlurmBackend(configured({"submit_prefix": ["sh", "-c"], "submit_quote": True, "submit_env_stdin": True}))
    program = 'printf "%s|" "$JUPYTERHUB_API_TOKEN" "$A" "$EMPTY" "$1"; cat'
    argv = ["sh", "-c", program, "x", "arg 'with' $(quotes)"]
    assert all("s3cr3t" not in w for w in b._argv(argv, sorted(hostile)))
    code, out, err = run(b.run(argv, stdin=b"#!/bin/bash\nscript\n", env=hostile))
    assert (code, err) == (0, "")
    assert out == "s3cr3t-token|" + hostile["A"] + "||arg 'with' $(quotes)|#!/bin/bash\nscript\n"
    # Without variables the command is run as it is (squeue, scancel).
    assert b._argv(["squeue", "-h"]) == ["sh", "-c", "squeue -h"]


def test_a_variable_with_a_line_break_is_refused_not_split():
    b = SlurmBackend(configured({"submit_prefix": ["sh", "-c"], "submit_quote": True, "submit_env_stdin": True}))
    with pytest.raises(CommandError, match="line break"):
        run(b.run(["true"], env={"A": "one\nB=two"}))


def test_real_subprocess_runner_timeout_and_missing_program():
    b = SlurmBackend(configured({"command_timeout": 0.5}))
    assert run(b.run(["sh", "-c", "echo out; echo err >&2; exit 3"])) == (
        3,
        "out\n",
        "err\n",
    )
    assert run(b.run(["sh", "-c", 'printf %s "$X"'], env={"X": "v"}))[1] == "v"
    with pytest.raises(CommandError, match="no answer"):
        run(b.run(["sleep", "5"]))
    with pytest.raises(CommandError, match="cannot run"):
        run(b.run(["/nonexistent/squeue"]))


def test_progress_events():
    st = {
        "phase": "pending",
        "job_id": "7",
        "job_state": "PENDING",
        "reason": "Resources",
        "start_time": "2030-01-01T10:00:00",
    }
    assert progress_event(st) == {
        "progress": 30,
        "message": "Slurm job 7 is pending (Resources), expected to start at 2030-01-01T10:00:00",
    }
    assert progress_event({"phase": "pending", "job_id": "7", "reason": "None", "start_time": "N/A"})["message"] == (
        "Slurm job 7 is pending"
    )

    async def collect():
        state = {"phase": "submitting"}
        events = []

        async def advance():
            await asyncio.sleep(0.1)
            state.update(phase="pending", job_id="7", reason="Priority")
            await asyncio.sleep(0.7)
            state.update(phase="started", host="c1", port=40000)

        task = asyncio.ensure_future(advance())
        async for ev in FakeBackend([]).progress(state):
            events.append(ev["progress"])
        await task
        return events

    assert run(collect()) == [10, 30, 90]
