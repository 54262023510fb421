"""The Slurm commands the hub runs in the stack's controller, as both sides know them.

The Slurm backend runs them (through :mod:`hubdeploy.hub.dexec`), and the engine proxy
allows an exec into the controller only when it is one of them: a user's own command as
that user (``sbatch``, ``squeue``, ``scancel``, ``sinfo``: Slurm decides what the user
may do), or, as root, exactly one of root's commands below, with no environment: the
read-only listings, and the one write, a user's association (:func:`add_user_argv`).
Nothing else runs as root there: root in the controller reads the munge key, which
forges a credential for any uid.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from hubdeploy.contract.identity import POSIX_NAME_PATTERN
from hubdeploy.contract.values import SLURM_NAME_PATTERN

# The stack's cluster: jobs that name no account get this one when the site lists none
# (slurm.cluster.accounts), and every job runs under Slurm's own default QOS, which holds
# the cluster's limits (hubdeploy.render.slurm).
DEFAULT_ACCOUNT = "hubdeploy"
QOS = "normal"

# What a user's own commands may be (the program, never a path: the controller's PATH).
USER_COMMANDS = frozenset({"sbatch", "squeue", "scancel", "sinfo"})

# squeue/sinfo output formats the backend parses (hubdeploy.backends.slurm_parse).
SQUEUE_FORMAT = "%i|%T|%r|%S|%B|%k"  # the comment (free text) last: it may contain '|'
# id, state, nodes, reason, and whose: user name, uid, gid; the job name (free text) last
LIST_FORMAT = "%i|%T|%N|%r|%u|%U|%G|%j"
NODE_FORMAT = "%N|%T"  # node name, long state with its flag suffix (sinfo -N)

_JOB_ID = re.compile(r"^\d{1,12}$")
# An association's user is an account name (hubdeploy.contract.identity's rule, or the
# shared account jovyan); its accounts are Slurm names. Neither may hold '=' or ',',
# which would be another of sacctmgr's words.
_USER = re.compile(POSIX_NAME_PATTERN)
_ACCOUNT = re.compile(SLURM_NAME_PATTERN)
# sacctmgr -i says so (and exits 1) when everything asked for exists already.
UNCHANGED = ("Nothing new added", "already exists")


def list_jobs_argv() -> list[str]:
    """Every job of the cluster (``PrivateData=jobs`` shows them to root only): the
    orphan listing, which also says whose each job is."""
    return ["squeue", "-h", "-a", "-o", LIST_FORMAT]


def node_states_argv() -> list[str]:
    return ["sinfo", "-h", "-N", "-o", NODE_FORMAT]


def job_query_argv(job_id: str) -> list[str]:
    """One job's state, node and comment, whoever owns it."""
    return ["squeue", "-h", "-t", "all", "-j", job_id, "-o", SQUEUE_FORMAT]


def add_user_argv(name: str, accounts: Sequence[str]) -> list[str]:
    """The association of account ``name`` with each of ``accounts`` (the first its
    default), which the stack's cluster requires before the user's first sbatch
    (``AccountingStorageEnforce``). Adding one that exists changes nothing."""
    if not _USER.match(name) or not accounts or not all(_ACCOUNT.match(a) for a in accounts):
        raise ValueError(f"not an account name and Slurm accounts: {name!r}, {list(accounts)!r}")
    return ["sacctmgr", "-i", "add", "user", f"name={name}", f"account={','.join(accounts)}",
            f"defaultaccount={accounts[0]}"]


def _is_add_user(argv: list[str]) -> bool:
    if len(argv) != 7 or not argv[4].startswith("name=") or not argv[5].startswith("account="):
        return False
    try:
        return argv == add_user_argv(argv[4][len("name="):], argv[5][len("account="):].split(","))
    except ValueError:
        return False


def is_root_command(argv: Sequence[str]) -> bool:
    """Whether ``argv`` is one of root's commands above, exactly: a listing, one job's
    query, or a user's association."""
    argv = list(argv)
    if argv in (list_jobs_argv(), node_states_argv()):
        return True
    if len(argv) == 8 and _JOB_ID.match(argv[5]) is not None and argv == job_query_argv(argv[5]):
        return True
    return _is_add_user(argv)
