"""The stack's own Slurm cluster: slurm.conf and the account check (job_submit.lua)."""

from __future__ import annotations

import re

import json

from hubdeploy.contract.identity import RESERVED_IDS
from hubdeploy.contract.layout import (
    NODE_AGENT_SOCKET,
    NODE_JOBS_DIR,
    NODE_SERVER_PORTS,
    NODE_SERVER_SOCKET,
)
from hubdeploy.contract.values import SLURM_NAME_PATTERN, memory_bytes, parse_time
from hubdeploy.schema import Site

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


def files(site: Site) -> dict[str, bytes]:
    """``slurm/slurm.conf``, ``slurm/agent.json`` (the nodes' agent), and
    ``slurm/job_submit.lua`` when the cluster checks accounts."""
    out = {"slurm/slurm.conf": slurm_conf(site), "slurm/agent.json": agent_config()}
    lua = job_submit_lua(site)
    if lua is not None:
        out["slurm/job_submit.lua"] = lua
    return out


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
    "AccountingStorageType=accounting_storage/none",
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
    "Prolog=/usr/local/sbin/hubdeploy-node-agent-prolog",
    "Epilog=/usr/local/sbin/hubdeploy-node-agent-epilog",
    "TaskProlog=/usr/local/sbin/hubdeploy-node-agent-task-prolog",
]


def slurm_conf(site: Site) -> bytes:
    """slurm.conf of the stack's cluster: no privileges, no cgroups, no accounting database."""
    assert site.slurm is not None and site.slurm.cluster is not None
    c = site.slurm.cluster
    nodes = node_names(site)
    mem_mb = memory_bytes(c.memory) // 2**20
    lines = [
        "# Rendered by hubdeploy from the site description; edit the site file, not this.",
        f"ClusterName={site.name}",
        *_FIXED,
    ]
    if c.accounts:
        # Without slurmdbd Slurm knows no accounts (AllowAccounts would leave such jobs
        # pending forever): job_submit.lua (job_submit_lua) is the account check.
        lines.append("JobSubmitPlugins=lua")
    lines += [f"NodeName={n} CPUs={c.cpus} RealMemory={mem_mb} State=UNKNOWN" for n in nodes]
    for i, part in enumerate(c.partitions):
        # The site's longest job, for the spawn form and for sbatch run in a notebook alike.
        lines.append(f"PartitionName={part} Nodes={','.join(nodes)} Default={'YES' if i == 0 else 'NO'} "
                     f"MaxTime={parse_time(c.max_time)} State=UP")
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
        "state_file": "/run/hubdeploy/agent-ports.json",
        # Accounts whose processes the sweep leaves alone (root, daemons, munge, slurm).
        "system_ids": [[ids[0], ids[-1]] for ids, _ in RESERVED_IDS if ids[0] < 1000 or ids[0] >= 60000],
        "scratch_dirs": ["/tmp", "/var/tmp", "/dev/shm"],
    }, indent=1, sort_keys=True) + "\n").encode()



def lua_string(value: str) -> str:
    # Account names are SlurmNames ([A-Za-z0-9_.+-]): nothing in them needs escaping, and
    # this refuses to write anything that would.
    assert re.fullmatch(SLURM_NAME_PATTERN, value), value
    return f'"{value}"'


def job_submit_lua(site: Site) -> bytes | None:
    """The controller's job_submit.lua when ``slurm.cluster.accounts`` is set, else None.

    It plays the accounting database's part: a job naming another account is refused with
    Slurm's own ESLURM_INVALID_ACCOUNT, so sbatch fails at once with "Invalid account or
    account/partition combination specified" (what a site with slurmdbd answers), and a
    job naming none gets the first account, as a user's default account would.
    """
    assert site.slurm is not None and site.slurm.cluster is not None
    accounts = site.slurm.cluster.accounts
    if not accounts:
        return None
    admitted = ", ".join(f"[{lua_string(a)}] = true" for a in accounts)
    text = f"""\
-- Rendered by hubdeploy from the site description (slurm.cluster.accounts); edit the
-- site file, not this.
local admitted = {{{admitted}}}
local default_account = {lua_string(accounts[0])}

local function refuse(account)
  slurm.log_user("account %s is not one of this cluster's accounts", account)
  return slurm.ESLURM_INVALID_ACCOUNT
end

function slurm_job_submit(job_desc, part_list, submit_uid)
  if job_desc.account == nil or job_desc.account == "" then
    job_desc.account = default_account
  elseif not admitted[job_desc.account] then
    return refuse(job_desc.account)
  end
  return slurm.SUCCESS
end

-- scontrol update Account=... must not get round the check either.
function slurm_job_modify(job_desc, job_rec, part_list, modify_uid)
  if job_desc.account ~= nil and job_desc.account ~= "" and not admitted[job_desc.account] then
    return refuse(job_desc.account)
  end
  return slurm.SUCCESS
end
"""
    return text.encode()
