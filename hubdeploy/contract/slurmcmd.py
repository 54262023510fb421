"""The Slurm commands the hub runs in the stack's controller, as both sides know them.

The Slurm backend runs them (through :mod:`hubdeploy.hub.dexec`), and the engine proxy
allows an exec into the controller only when it is one of them: a user's own command as
that user (``sbatch``, ``squeue``, ``scancel``, ``sinfo``: Slurm decides what the user
may do), or, as root, exactly one of the read-only listings below, with no environment.
Nothing else runs as root there: root in the controller reads the munge key, which
forges a credential for any uid.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

# What a user's own commands may be (the program, never a path: the controller's PATH).
USER_COMMANDS = frozenset({"sbatch", "squeue", "scancel", "sinfo"})

# squeue/sinfo output formats the backend parses (hubdeploy.backends.slurm_parse).
SQUEUE_FORMAT = "%i|%T|%r|%S|%B|%k"  # the comment (free text) last: it may contain '|'
# id, state, nodes, reason, and whose: user name, uid, gid; the job name (free text) last
LIST_FORMAT = "%i|%T|%N|%r|%u|%U|%G|%j"
NODE_FORMAT = "%N|%T"  # node name, long state with its flag suffix (sinfo -N)

_JOB_ID = re.compile(r"^\d{1,12}$")


def list_jobs_argv() -> list[str]:
    """Every job of the cluster (``PrivateData=jobs`` shows them to root only): the
    orphan listing, which also says whose each job is."""
    return ["squeue", "-h", "-a", "-o", LIST_FORMAT]


def node_states_argv() -> list[str]:
    return ["sinfo", "-h", "-N", "-o", NODE_FORMAT]


def job_query_argv(job_id: str) -> list[str]:
    """One job's state, node and comment, whoever owns it."""
    return ["squeue", "-h", "-t", "all", "-j", job_id, "-o", SQUEUE_FORMAT]


def is_root_read(argv: Sequence[str]) -> bool:
    """Whether ``argv`` is one of the listings above (the only commands run as root)."""
    argv = list(argv)
    if argv in (list_jobs_argv(), node_states_argv()):
        return True
    return (len(argv) == 8 and _JOB_ID.match(argv[5]) is not None
            and argv == job_query_argv(argv[5]))
