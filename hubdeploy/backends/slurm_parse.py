"""What the Slurm commands answer, read without Slurm: squeue and sinfo lines, job and
node states and what they mean for a notebook server, the backend's saved state, and the
progress events of a start. Pure functions, unit-tested on recorded output
(hubdeploy.backends.slurm_commands runs the commands).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hubdeploy.backends.base import BackendError, Found, PollResult, Running, Stopped, Unknown
from hubdeploy.backends.slurm_script import ENV_NAME, parse_port_comment
from hubdeploy.contract.identity import POSIX_NAME_PATTERN
from hubdeploy.contract.slurmcmd import LIST_FORMAT, NODE_FORMAT, SQUEUE_FORMAT

__all__ = ["LIST_FORMAT", "NODE_FORMAT", "SQUEUE_FORMAT"]  # and the names below

ALIVE_STATES = frozenset(
    {
        "PENDING",
        "CONFIGURING",
        "RUNNING",
        "SUSPENDED",
        "REQUEUED",
        "REQUEUE_HOLD",
        "REQUEUE_FED",
        "RESIZING",
        "RESV_DEL_HOLD",
        "SIGNALING",
        "STAGE_OUT",
    }
)
# Final states; the value is the exit status reported to the hub.
FINAL_STATES = {
    "COMPLETED": 0,
    "CANCELLED": 0,
    "FAILED": 1,
    "TIMEOUT": 1,
    "NODE_FAIL": 1,
    "PREEMPTED": 1,
    "BOOT_FAIL": 1,
    "DEADLINE": 1,
    "OUT_OF_MEMORY": 1,
    "SPECIAL_EXIT": 1,
    "REVOKED": 1,
}
# The job script ended; Slurm still cleans up. The server is gone, the allocation not yet.
COMPLETING = "COMPLETING"

# Alive states in which the job holds a node: its server lives or dies with that node.
ON_NODE_STATES = frozenset({"CONFIGURING", "RUNNING", "SUSPENDED", "SIGNALING", "STAGE_OUT", "RESIZING"})

ACCOUNT = re.compile(POSIX_NAME_PATTERN)
JOB_ID = re.compile(r"^\d{1,12}$")
HOST = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]{0,252}$")
INVALID_JOB = "Invalid job id specified"
# sbatch of a user with no association for the job's account (or an account refused).
INVALID_ACCOUNT = "Invalid account or account/partition combination specified"
# scancel of a job that is already ending (a cancelled job waiting on a lost node): done.
ENDING = "already completing or completed"
PATH_RE = re.compile(r"^/[A-Za-z0-9_./-]{1,1000}$")
# Variables of the hub's own environment that make no sense on a compute node.
DEFAULT_ENV_SKIP = (
    "PATH",
    "PYTHONPATH",
    "VIRTUAL_ENV",
    "CONDA_ROOT",
    "CONDA_DEFAULT_ENV",
)


@dataclass(frozen=True)
class JobInfo:
    """One line of ``squeue -o SQUEUE_FORMAT``."""

    job_id: str
    state: str
    reason: str
    start_time: str
    batch_host: str
    comment: str

    @property
    def port(self) -> int | None:
        return parse_port_comment(self.comment)


class CommandError(Exception):
    """A Slurm command that did not answer (timeout, missing program) or failed."""

    def __init__(self, argv: Sequence[str], returncode: int | None, stderr: str):
        self.argv, self.returncode, self.stderr = list(argv), returncode, stderr
        what = "timed out" if returncode is None else f"exited {returncode}"
        super().__init__(f"{argv[0]} {what}: {stderr.strip()[-500:]}")


def parse_squeue(stdout: str) -> JobInfo | None:
    """The first job line of squeue's output; None for no line (the job is gone)."""
    for line in stdout.splitlines():
        if not line.strip():
            continue
        parts = line.split("|", 5)
        if len(parts) != 6:
            raise ValueError(f"unexpected squeue line {line!r}")
        job_id, state, reason, start, host, comment = (p.strip() for p in parts)
        # squeue prints the base state; "CANCELLED by 1000" appears only in sacct.
        return JobInfo(job_id, state.split()[0] if state else "", reason, start, host, comment)
    return None


def classify(info: JobInfo | None) -> PollResult:
    """Running / Stopped / Unknown for one squeue answer (None: no line, exit 0)."""
    if info is None:
        return Stopped(0)
    if info.state in ALIVE_STATES:
        return Running()
    if info.state == COMPLETING:
        return Stopped(0)
    if info.state in FINAL_STATES:
        return Stopped(FINAL_STATES[info.state])
    return Unknown(f"job {info.job_id} is in state {info.state!r}, which hubdeploy does not know")


def parse_node_states(stdout: str) -> dict[str, str]:
    """``sinfo -h -N -o NODE_FORMAT`` -> node name: state (``allocated*``, ``down*``).

    A node in several partitions is printed once per partition, with the same state.
    """
    states = {}
    for line in stdout.splitlines():
        if not line.strip():
            continue
        name, sep, state = line.strip().partition("|")
        if not sep or not HOST.match(name) or not state:
            raise ValueError(f"unexpected sinfo line {line[:200]!r}")
        states[name] = state
    return states


def node_trouble(state: str) -> str | None:
    """What is wrong with a node in sinfo's words, for a server on it; None if nothing.

    Only Slurm's own verdicts count: ``*`` (the controller's pings get no answer) and
    DOWN (Slurm ends the node's jobs itself). DRAIN and FAIL are an administrator's
    "no new jobs here": the jobs on such a node keep running.
    """
    if "*" in state:
        return "is not responding"
    if state.rstrip("~#!%$@^-+").lower() == "down":
        return "is down"
    return None


def judge(
    info: JobInfo, trouble: str | None, lost_since: float | None, now: float, grace: float
) -> tuple[PollResult, float | None]:
    """The poll answer for a job squeue reports, given its node's trouble (None: none, or
    not known); also when the node was first seen in trouble. Pure (unit-tested).

    A job on a node that Slurm reports DOWN is over. One on a node that does not respond
    is reported stopped once that has lasted ``grace`` seconds, while Slurm itself still
    says RUNNING (until its SlurmdTimeout): a notebook whose node is gone is useless to
    its user, and a start elsewhere is refused while the hub believes it runs. The grace
    keeps a single missed ping of a busy node from ending a live server.
    """
    on_node = info.state in ON_NODE_STATES and bool(info.batch_host)
    if not on_node or trouble is None:
        return classify(info), None
    why = f"node {info.batch_host} {trouble}"
    if trouble == "is down":
        return Stopped(1, why), lost_since or now
    since = lost_since if lost_since is not None else now
    if now - since >= grace:
        return Stopped(1, f"{why} (for {now - since:.0f} s; Slurm still lists job {info.job_id} as {info.state})"), since
    return Running(), since


def sbatch_message(stderr: str) -> str:
    """Slurm's own words from sbatch's stderr, without the ``sbatch: error:`` noise."""
    lines = []
    for line in stderr.splitlines():
        line = line.strip()
        for noise in ("sbatch: error: ", "sbatch: "):
            if line.startswith(noise):
                line = line[len(noise) :]
                break
        if line:
            lines.append(line)
    return "; ".join(lines)[-1000:] or "sbatch failed without a message"


def validate_state(state: Mapping[str, Any]) -> dict[str, Any]:
    """Keep only well-formed keys of a state read back from the database.

    ``job_id`` (digits), ``job_name``, ``host`` (a hostname) and ``port`` (1-65535) are
    checked; anything else that is JSON-able is kept as is (progress details). A state
    without a usable job id and job name is empty: there is nothing to poll or stop.
    """
    out: dict[str, Any] = {}
    job_id = state.get("job_id")
    if isinstance(job_id, int) and not isinstance(job_id, bool):
        job_id = str(job_id)
    if isinstance(job_id, str) and JOB_ID.match(job_id):
        out["job_id"] = job_id
    name = state.get("job_name")
    if isinstance(name, str) and re.match(r"^[a-z0-9][a-z0-9_-]{0,127}$", name):
        out["job_name"] = name
    if not out:
        return {}
    host, port = state.get("host"), state.get("port")
    if isinstance(host, str) and HOST.match(host) and isinstance(port, int) and 0 < port < 65536:
        out.update(host=host, port=port)
    account = state.get("account")
    if isinstance(account, str) and ACCOUNT.match(account):
        out["account"] = account
    owner = state.get("owner")
    if (isinstance(owner, dict) and set(owner) == {"uid", "gid", "name"} and isinstance(owner["name"], str)
            and ACCOUNT.match(owner["name"]) and all(_whole(owner[k]) for k in ("uid", "gid"))):
        out["owner"] = {"uid": int(owner["uid"]), "gid": int(owner["gid"]), "name": owner["name"]}
    for key in ("phase", "job_state", "reason", "start_time", "profile"):
        if isinstance(state.get(key), str):
            out[key] = state[key]
    since = state.get("node_lost_since")
    if isinstance(since, (int, float)) and not isinstance(since, bool):
        out["node_lost_since"] = float(since)
    return out


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**32


# Runs on the far side of the prefix (``sh -c READ_ENV sh sbatch ...``): exports the
# NAME=value lines up to the first empty one, then execs its arguments, which read the
# rest of stdin. `read` takes one byte at a time from a pipe, so nothing past the empty
# line is consumed. Fixed text; the values are never parsed as shell.
READ_ENV = 'while IFS= read -r kv && [ -n "$kv" ]; do export "$kv"; done; exec "$@"'


def env_lines(env: Mapping[str, str]) -> bytes:
    """``NAME=value`` lines and an empty line, as :data:`READ_ENV` reads them."""
    lines = []
    for name in sorted(env):
        value = env[name]
        if not ENV_NAME.match(name):
            raise CommandError(["sbatch"], None, f"variable name {name!r} cannot be passed on")
        if "\n" in value or "\0" in value:
            raise CommandError(["sbatch"], None, f"variable {name} has a line break or NUL; it cannot be passed on")
        lines.append(f"{name}={value}\n")
    return "".join(lines).encode() + b"\n"


def export_option(names: Sequence[str], export_all: bool) -> str:
    """sbatch's ``--export``: the names whose values the job gets from sbatch's environment.

    ``ALL`` alone, never ``ALL,NAMES``: sbatch treats any value but the bare word ALL
    like a name list and has slurmd build the user's login environment first (``su -``
    on the node: about a second, and a failure for an account without a shadow entry).
    With ALL the names need no listing: their values are in sbatch's environment.
    """
    if export_all:
        return "--export=ALL"
    return "--export=" + ",".join(names) if names else "--export=NONE"


@dataclass(frozen=True)
class JobRow:
    """One line of ``squeue -o LIST_FORMAT``: a job and whose it is."""

    job_id: str
    state: str
    node: str
    reason: str
    user: str
    uid: str
    gid: str
    name: str

    @property
    def owner(self) -> dict[str, Any]:
        """Whose job it is, as a server's saved state keeps it."""
        return {"uid": int(self.uid), "gid": int(self.gid), "name": self.user}

    def found(self) -> Found:
        return Found(id=self.job_id, name=self.name, state=self.state, node=self.node,
                     reason="" if self.reason == "None" else self.reason)


def parse_job_rows(stdout: str) -> list[JobRow]:
    """Every line of ``squeue -o LIST_FORMAT``."""
    rows = []
    for line in stdout.splitlines():
        if not line.strip():
            continue
        parts = line.split("|", 7)  # the name last: a foreign job's name may contain '|'
        if len(parts) != 8 or not JOB_ID.match(parts[0]) or not (parts[5].isdigit() and parts[6].isdigit()):
            raise BackendError(f"unexpected squeue line {line[:200]!r}")
        rows.append(JobRow(*parts))
    return rows


def parse_job_list(stdout: str, name_prefix: str) -> list[Found]:
    """``squeue -o LIST_FORMAT`` lines -> the jobs whose name starts with ``name_prefix``,
    with their node and reason (``None`` reads as no reason)."""
    return [row.found() for row in parse_job_rows(stdout) if row.name.startswith(name_prefix)]


def with_node_trouble(found: Found, states: Mapping[str, str] | None) -> Found:
    """``found`` with its node's trouble as its detail (``node c1 is not responding``)."""
    state = (states or {}).get(found.node)
    trouble = node_trouble(state) if state else None
    if trouble is None:
        return found
    return dataclasses.replace(found, detail=f"node {found.node} {trouble}")


def progress_event(state: Mapping[str, Any]) -> dict[str, Any] | None:
    """The progress event for the start phase recorded in ``state``."""
    phase, job_id = state.get("phase"), state.get("job_id")
    if phase == "submitting":
        return {"progress": 10, "message": "Submitting the Slurm job"}
    if phase == "pending":
        reason = state.get("reason") or ""
        start = state.get("start_time") or ""
        msg = f"Slurm job {job_id} is {state.get('job_state', 'PENDING').lower()}"
        if reason and reason != "None":
            msg += f" ({reason})"
        if start and start not in ("N/A", "Unknown"):
            msg += f", expected to start at {start}"
        return {"progress": 30, "message": msg}
    if phase == "running":
        return {
            "progress": 60,
            "message": f"Slurm job {job_id} is running; waiting for the server's port",
        }
    if phase == "started":
        return {
            "progress": 90,
            "message": f"Server started on {state.get('host')}:{state.get('port')}",
        }
    return None
