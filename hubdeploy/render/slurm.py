"""The stack's own Slurm cluster: slurm.conf, job_submit.lua, and its accounting
database (slurmdbd.conf, and the accounts and limits the controller sets there).

What a job may get equals what the spawn form offers (:func:`job_limits`: the largest
compute profile's cores, memory and time, one node), and one user's share of the cluster
is bounded (:func:`user_limits`). Slurm enforces both, through the QOS every job runs
under (``AccountingStorageEnforce=limits``: per-user limits exist only with slurmdbd),
the partitions' limits, and job_submit.lua for what those do not cover; an sbatch over
them fails with Slurm's own message.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

from hubdeploy.contract.identity import RESERVED_IDS
from hubdeploy.contract.layout import (
    NODE_AGENT_PROGRAM,
    NODE_AGENT_SOCKET,
    NODE_AGENT_STATE,
    NODE_JOBS_DIR,
    NODE_SERVER_PORTS,
    NODE_SERVER_SOCKET,
    SLURMDBD_PORT,
    SLURMDBD_SERVICE,
)
from hubdeploy.contract.slurmcmd import DEFAULT_ACCOUNT, QOS, UNCHANGED
from hubdeploy.contract.values import SLURM_NAME_PATTERN, memory_bytes, parse_time
from hubdeploy.site.model import Site
from hubdeploy.site.profiles import allowance

SLURM_NODE_PREFIX = "c"


def node_names(site: Site) -> list[str]:
    """The stack cluster's NodeNames, which are also the containers' hostnames and aliases."""
    assert site.slurm is not None and site.slurm.cluster is not None
    return [f"{SLURM_NODE_PREFIX}{i}" for i in range(1, site.slurm.cluster.nodes + 1)]


# How long a port stays unused after its job ended (a route the hub has yet to remove
# then points at nothing), and how often the agent looks for processes that left their job.
PORT_QUARANTINE = 24 * 3600
SWEEP_SECONDS = 1.0
# How long a job's launcher may take from asking for its port to its server listening.
AGENT_START_WAIT = 900
# What each service reads: the nodes slurm.conf alone, so that a change of the
# controller's files (limits, accounts) recreates the controller and keeps the nodes,
# and the notebooks running there.
NODE_FILES = ("slurm/slurm.conf", "slurm/agent.json")
CONTROLLER_FILES = ("slurm/slurm.conf", "slurm/job_submit.lua", "slurm/accounting.json")
DBD_FILES = ("slurm/slurmdbd.conf",)


def files(site: Site) -> dict[str, bytes]:
    """``slurm/slurm.conf``, ``job_submit.lua``, ``accounting.json``, ``slurmdbd.conf`` and
    ``agent.json`` (the nodes' agent)."""
    return {
        "slurm/slurm.conf": slurm_conf(site),
        "slurm/agent.json": agent_config(),
        "slurm/job_submit.lua": job_submit_lua(site),
        "slurm/accounting.json": accounting_json(site),
        "slurm/slurmdbd.conf": slurmdbd_conf(site),
    }


@dataclass(frozen=True)
class JobLimits:
    """The most one job may get: cores, memory (MiB), minutes, nodes."""

    cpus: int
    mem_mib: int
    minutes: int
    nodes: int = 1


@dataclass(frozen=True)
class UserLimits:
    """What one user may hold at once: jobs (running or pending), nodes and cores
    (None: no core limit) of their running jobs."""

    jobs: int
    nodes: int
    cpus: int | None


def _cluster(site: Site):
    assert site.slurm is not None and site.slurm.cluster is not None
    return site.slurm.cluster


def _core_share(site: Site) -> int:
    """A node's memory per core (MiB)."""
    c = _cluster(site)
    return max(1, memory_bytes(c.memory) // 2**20 // c.cpus)


def job_limits(site: Site) -> JobLimits:
    """The largest compute profile's form: its most cores, memory and time (each the
    largest over the profiles; a profile without a memory size gets the default per core,
    one without a time the partition's limit, i.e. slurm.cluster.max_time), on one node.
    Without compute profiles, a node and max_time."""
    c = _cluster(site)
    longest = parse_time(c.max_time)
    found = [allowance(p) for p in site.profiles if p.node == "compute"]
    if not found:
        return JobLimits(c.cpus, memory_bytes(c.memory) // 2**20, longest)
    share = _core_share(site)
    return JobLimits(
        cpus=max(a.cpus for a in found),
        mem_mib=max(math.ceil(a.mem_bytes / 2**20) if a.mem_bytes else share * a.cpus for a in found),
        minutes=max(a.minutes or longest for a in found),
    )


def default_mem_per_cpu(site: Site) -> int:
    """DefMemPerCPU (MiB): what a job that names no memory gets per core. Without it
    Slurm gives such a job all of its node's memory; with a node's share per core, capped
    so that a job of up to job_limits' cores stays within its memory, a plain ``sbatch``
    from a notebook runs."""
    limits = job_limits(site)
    return max(1, min(_core_share(site), limits.mem_mib // limits.cpus))


def user_limits(site: Site) -> UserLimits:
    c = _cluster(site)
    return UserLimits(jobs=c.user_limits.jobs, nodes=c.user_nodes, cpus=c.user_limits.cpus)


def accounts(site: Site) -> list[str]:
    """The cluster's accounts: the site's, or one; the first is every user's default."""
    return list(_cluster(site).accounts or [DEFAULT_ACCOUNT])


# Containers without privileges: no cgroups (22.05 has no CgroupPlugin=disabled), so
# task/cgroup cannot confine a job (README: Compute-node limits). What holds without them:
# each job's memory is sampled from /proc and a job over its --mem is killed, and the node
# container's own memory and CPU bounds (render/hardening.py) hold every job together.
_FIXED = [
    "SlurmctldHost=slurmctld",
    "SlurmUser=slurm",
    "AuthType=auth/munge",
    "StateSaveLocation=/var/spool/slurmctld",
    "SlurmdSpoolDir=/var/spool/slurmd",
    "SlurmctldPidFile=/run/slurmctld.pid",
    "SlurmdPidFile=/run/slurmd.pid",
    "ProctrackType=proctrack/linuxproc",
    "TaskPlugin=task/none",
    "JobAcctGatherType=jobacct_gather/linux",
    # Sampled every 2 s: a job that allocates past its --mem lives at most that long
    # over it (the node container's bound stops a faster one).
    "JobAcctGatherFrequency=task=2",
    "JobAcctGatherParams=OverMemoryKill",
    # The accounting database (slurmdbd, its own service): "limits" enforces the QOS's
    # limits and implies "associations" (no job of a user without one); "qos" refuses
    # a QOS the user's association does not list.
    "AccountingStorageType=accounting_storage/slurmdbd",
    f"AccountingStorageHost={SLURMDBD_SERVICE}",
    "AccountingStorageEnforce=associations,limits,qos",
    # Every job passes job_submit.lua (job_submit_lua).
    "JobSubmitPlugins=lua",
    "SelectType=select/cons_tres",
    "SelectTypeParameters=CR_Core_Memory",
    # The nodes share the host's cores: schedule what the site declares.
    "SlurmdParameters=config_overrides",
    "ReturnToService=2",
    "MinJobAge=60",
    "SlurmctldTimeout=30",
    # Notebooks are interactive: a node that stops answering shows as not responding
    # (`*`) within about SlurmdTimeout/3 (the controller's ping interval), which the
    # Slurm backend turns into a stopped server, and Slurm marks it DOWN and ends its jobs
    # after SlurmdTimeout. The cost of a short value: a node that misses every ping for a
    # minute (a host saturated for that long) loses its jobs. A controller that is away
    # does not count against the nodes: after its restart it pings them afresh, and
    # ReturnToService=2 brings back a node marked down once it registers.
    "SlurmdTimeout=60",
    "InactiveLimit=0",
    "KillWait=5",
    "SchedulerType=sched/backfill",
    # sbatch never starts a job itself: the controller's background loop does, at most
    # once a second and, by default, not within batch_sched_delay=3 s of its previous
    # scheduling pass (any job's start or end). A notebook is interactive: schedule at
    # the next tick (measured up to 2.2 s of sbatch -> RUNNING before, under 1 s now).
    "SchedulerParameters=batch_sched_delay=0",
    "MpiDefault=none",
    "EnforcePartLimits=ALL",
    # Users see only their own jobs (squeue, scontrol show job); acting on another's job
    # (scancel, scontrol update, srun --jobid) is refused by Slurm in any case.
    "PrivateData=jobs",
    # The nodes' agent (images/slurm/node-agent.py): each job's private directory before
    # it runs and its TMPDIR in it; afterwards the directory goes, and with the user's last
    # job on the node, whatever of theirs is left there.
    f"Prolog={NODE_AGENT_PROGRAM}-prolog",
    f"Epilog={NODE_AGENT_PROGRAM}-epilog",
    f"TaskProlog={NODE_AGENT_PROGRAM}-task-prolog",
]


def slurm_conf(site: Site) -> bytes:
    """slurm.conf of the stack's cluster: no privileges, no cgroups, accounting in slurmdbd."""
    c = _cluster(site)
    nodes = node_names(site)
    mem_mb = memory_bytes(c.memory) // 2**20
    limits = job_limits(site)
    lines = [
        "# Rendered by hubdeploy from the site description; edit the site file, not this.",
        f"ClusterName={site.name}",
        *_FIXED,
        f"DefMemPerCPU={default_mem_per_cpu(site)}",
    ]
    lines += [f"NodeName={n} CPUs={c.cpus} RealMemory={mem_mb} State=UNKNOWN" for n in nodes]
    for i, part in enumerate(c.partitions):
        # The longest and largest job the spawn form allows, for sbatch in a notebook
        # alike (EnforcePartLimits=ALL: refused at submit); the QOS says the same.
        lines.append(f"PartitionName={part} Nodes={','.join(nodes)} Default={'YES' if i == 0 else 'NO'} "
                     f"MaxTime={limits.minutes} MaxNodes={limits.nodes} State=UP")
    return ("\n".join(lines) + "\n").encode()


def qos_argv(site: Site) -> list[str]:
    """The QOS every job runs under, set to the cluster's limits. DenyOnLimit: a job over
    a per-job limit, or over a per-user one on its own, is refused at submit rather than
    left pending forever; a job within them waits while its user holds the rest."""
    job, user = job_limits(site), user_limits(site)
    # -1 clears a limit a previous site file set.
    per_user = f"node={user.nodes},cpu={user.cpus if user.cpus is not None else -1}"
    return ["sacctmgr", "-i", "modify", "qos", QOS, "set", f"MaxWall={job.minutes}",
            f"MaxTRESPerJob=cpu={job.cpus},mem={job.mem_mib}M,node={job.nodes}",
            f"MaxSubmitJobsPerUser={user.jobs}", f"MaxTRESPerUser={per_user}", "Flags=DenyOnLimit"]


def accounting_commands(site: Site) -> list[list[str]]:
    """What the controller runs, as root, before slurmctld starts (every start: each
    command leaves what exists as it is, and sets the limits anew): the cluster, its
    accounts, and the QOS's limits. Users' associations are the hub's, at each user's
    first start (hubdeploy.contract.slurmcmd.add_user_argv)."""
    return [
        ["sacctmgr", "-i", "add", "cluster", site.name],
        ["sacctmgr", "-i", "add", "account", ",".join(accounts(site)), f"cluster={site.name}"],
        qos_argv(site),
    ]


def accounting_json(site: Site) -> bytes:
    """``accounting.json``, which the controller's entrypoint reads: a command that
    answers once slurmdbd does, the commands, and the words with which sacctmgr says
    that nothing needed doing (it then exits 1)."""
    doc = {
        "wait": ["sacctmgr", "-n", "-P", "show", "cluster", "format=cluster"],
        "commands": accounting_commands(site),
        "unchanged": list(UNCHANGED),
    }
    return (json.dumps(doc, indent=1) + "\n").encode()


def slurmdbd_conf(site: Site) -> bytes:
    """slurmdbd.conf: MariaDB in the same container, reached over its unix socket as the
    OS user slurm (MariaDB's unix_socket authentication), so there is no password."""
    lines = [
        "# Rendered by hubdeploy from the site description; edit the site file, not this.",
        "AuthType=auth/munge",
        f"DbdHost={SLURMDBD_SERVICE}",
        f"DbdPort={SLURMDBD_PORT}",
        "SlurmUser=slurm",
        "PidFile=/run/slurmdbd.pid",
        "StorageType=accounting_storage/mysql",
        # localhost: the client library's unix socket, never TCP (the server listens on none).
        "StorageHost=localhost",
        "StorageUser=slurm",
        "StorageLoc=slurm_acct_db",
    ]
    return ("\n".join(lines) + "\n").encode()


def agent_config() -> bytes:
    """The nodes' agent settings, from the contract (NODE_AGENT_CONFIG on every node)."""
    return (json.dumps({
        "jobs_dir": NODE_JOBS_DIR,
        "socket": NODE_AGENT_SOCKET,
        "server_socket": NODE_SERVER_SOCKET,
        "ports": list(NODE_SERVER_PORTS),
        "quarantine": PORT_QUARANTINE,
        "sweep": SWEEP_SECONDS,
        "start_wait": AGENT_START_WAIT,
        "state_file": NODE_AGENT_STATE,
        # Accounts whose processes the sweep leaves alone (root, daemons, munge, slurm).
        "system_ids": [[ids[0], ids[-1]] for ids, _ in RESERVED_IDS if ids[0] < 1000 or ids[0] >= 60000],
        "scratch_dirs": ["/tmp", "/var/tmp", "/dev/shm"],
    }, indent=1, sort_keys=True) + "\n").encode()



def lua_string(value: str) -> str:
    # Account names are SlurmNames ([A-Za-z0-9_.+-]): nothing in them needs escaping, and
    # this refuses to write anything that would.
    assert re.fullmatch(SLURM_NAME_PATTERN, value), value
    return f'"{value}"'


def job_submit_lua(site: Site) -> bytes:
    """The controller's job_submit.lua: what the QOS and partition limits do not refuse.

    - ``-w``/``--nodelist``: a user would pick the node another user's server runs on;
      the hub's own jobs never name one.
    - ``--mem=0`` / ``--mem-per-cpu=0`` (all of a node's memory) and ``--exclusive`` (the
      whole node): more than any form offers. The QOS refuses ``--mem=0`` only while a
      job's memory limit is below a node's, and leaves an exclusive job pending forever.
    - with ``slurm.cluster.accounts``, an account not listed: refused with Slurm's own
      ESLURM_INVALID_ACCOUNT (as the associations also do; this also holds for an account
      the site drops, whose associations remain), and a job naming none gets the first.

    Each refusal says why to the user (``slurm.log_user``) and returns a Slurm error code,
    so sbatch fails at once with Slurm's words for it.
    """
    accounts = _cluster(site).accounts
    parts = [_lua_form_checks(job_limits(site).mem_mib)]
    if accounts:
        parts.append(_lua_accounts(accounts))
    parts.append(_lua_entry_points(bool(accounts)))
    return "".join(parts).encode()


def _lua_form_checks(mem_mib: int) -> str:
    """``refuse`` and ``over_the_form``: what no job may ask for, at submit or modify."""
    return f"""\
-- Rendered by hubdeploy from the site description; edit the site file, not this.

-- An error code this Slurm does not define is nil, which Slurm reads as success.
local function refuse(code, ...)
  slurm.log_user(...)
  return code or slurm.ERROR
end

local function over_the_form(job_desc)
  if job_desc.req_nodes ~= nil and job_desc.req_nodes ~= "" then
    return refuse(slurm.ESLURM_ACCESS_DENIED,
      "choosing nodes (-w/--nodelist %s) is not allowed on this cluster: Slurm places every job",
      job_desc.req_nodes)
  end
  if job_desc.min_mem_per_node == 0 or job_desc.min_mem_per_cpu == 0 then
    return refuse(slurm.ESLURM_ACCOUNTING_POLICY,
      "--mem=0 (all of a node's memory) is not allowed on this cluster: ask for at most {mem_mib}M")
  end
  if job_desc.shared == 0 then
    return refuse(slurm.ESLURM_ACCOUNTING_POLICY,
      "--exclusive (a whole node) is not allowed on this cluster: ask for cores and memory")
  end
  return nil
end
"""


def _lua_accounts(accounts: list[str]) -> str:
    """The admitted accounts, the default one, and the refusal of any other."""
    admitted = ", ".join(f"[{lua_string(a)}] = true" for a in accounts)
    return f"""
local admitted = {{{admitted}}}
local default_account = {lua_string(accounts[0])}

local function not_admitted(account)
  return refuse(slurm.ESLURM_INVALID_ACCOUNT, "account %s is not one of this cluster's accounts", account)
end
"""


# With cluster.accounts: a submit without an account gets the default one; a submit or a
# modify that names another account is refused.
_SUBMIT_ACCOUNT = """
  if job_desc.account == nil or job_desc.account == "" then
    job_desc.account = default_account
  elseif not admitted[job_desc.account] then
    return not_admitted(job_desc.account)
  end"""
_MODIFY_ACCOUNT = """
  if job_desc.account ~= nil and job_desc.account ~= "" and not admitted[job_desc.account] then
    return not_admitted(job_desc.account)
  end"""


def _lua_entry_points(accounts: bool) -> str:
    """``slurm_job_submit`` and ``slurm_job_modify``, the functions Slurm calls."""
    submit_account = _SUBMIT_ACCOUNT if accounts else ""
    modify_account = _MODIFY_ACCOUNT if accounts else ""
    return f"""
function slurm_job_submit(job_desc, part_list, submit_uid)
  local refused = over_the_form(job_desc)
  if refused ~= nil then
    return refused
  end{submit_account}
  return slurm.SUCCESS
end

-- scontrol update must not get round the checks either.
function slurm_job_modify(job_desc, job_rec, part_list, modify_uid)
  local refused = over_the_form(job_desc)
  if refused ~= nil then
    return refused
  end{modify_account}
  return slurm.SUCCESS
end
"""
