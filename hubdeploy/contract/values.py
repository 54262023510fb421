"""The shapes of values both sides check, and the one check of resources against limits.

The schema validates a site file with these patterns; the spawner parses a user's form
choices and the Slurm backend a profile with these parsers; and :func:`check_limits` is
the only place that compares what a server asks for with its profile's ``slurm.limits``.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # values sits below hub.json's shape: the limits are only read
    from hubdeploy.contract.hubjson import SlurmLimits


class OptionError(ValueError):
    """A value that is malformed or over a profile's limits; the message is shown to the user."""


# Memory sizes as Docker and Slurm both understand them: 512M, 2G, 1.5G (powers of 1024).
MEMORY_PATTERN = r"^(\d+(?:\.\d+)?)([KMGT])$"
_MEMORY = re.compile(MEMORY_PATTERN)
_SCALE = {"K": 1, "M": 2, "G": 3, "T": 4}

# Slurm partition, account, QOS and reservation names: letters, digits and _ . + -
SLURM_NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.+-]{0,63}$"
# Slurm durations: minutes, MM:SS, HH:MM:SS or D-HH[:MM[:SS]].
SLURM_TIME_PATTERN = r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$"
_TIME = re.compile(SLURM_TIME_PATTERN)
# An environment variable name, as a POSIX shell (and sbatch --export) accepts it.
ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"
ENV_NAME = re.compile(ENV_NAME_PATTERN)
# Processes and threads of a login-node server's container unless its profile says
# otherwise: a JupyterLab server with a few kernels uses under 100.
DEFAULT_PIDS_LIMIT = 512


def memory_bytes(value: str) -> int:
    """``"2G"`` -> 2147483648; :class:`OptionError` for anything that is not a size."""
    m = _MEMORY.match(str(value).strip())
    if not m:
        raise OptionError(f"memory {value!r} is not a size such as 2G or 512M")
    return int(float(m.group(1)) * 1024 ** _SCALE[m.group(2)])


def parse_time(value: Any) -> int:
    """Slurm time -> minutes: ``90``, ``"90"``, ``"1:30:00"``, ``"2-00:00:00"``, ``"MM:SS"``."""
    if isinstance(value, bool):
        raise OptionError(f"time limit {value!r} is not a duration")
    if isinstance(value, int):
        if value <= 0:
            raise OptionError(f"time limit {value} must be positive (minutes)")
        return value
    m = _TIME.match(str(value).strip())
    if not m:
        raise OptionError(f"time limit {value!r} is not minutes, HH:MM:SS or D-HH:MM:SS")
    days, a, b, c = m.groups()
    if days is not None:  # D-HH[:MM[:SS]]
        seconds = int(days) * 86400 + int(a) * 3600 + int(b or 0) * 60 + int(c or 0)
    elif c is not None:  # HH:MM:SS
        seconds = int(a) * 3600 + int(b) * 60 + int(c)
    elif b is not None:  # MM:SS
        seconds = int(a) * 60 + int(b)
    else:  # minutes
        seconds = int(a) * 60
    if seconds <= 0:
        raise OptionError(f"time limit {value!r} must be positive")
    return math.ceil(seconds / 60)


def check_limits(
    profile: str,
    limits: SlurmLimits,
    *,
    cpus: int | None = None,
    mem_bytes: int | None = None,
    time_minutes: int | None = None,
    gpus: int | None = None,
) -> None:
    """Refuse (:class:`OptionError`) what is over a profile's ``slurm.limits``: each of
    ``max_cpu``, ``max_mem`` (bytes), ``max_time`` (a Slurm time) and ``max_gpus`` that
    is set. A value that is None is not asked for and passes.
    """
    if cpus is not None and limits.max_cpu is not None and cpus > limits.max_cpu:
        raise OptionError(f"profile {profile!r} asks for {cpus} cores; its limit is {limits.max_cpu}")
    if mem_bytes is not None and limits.max_mem is not None and mem_bytes > limits.max_mem:
        raise OptionError(
            f"profile {profile!r} asks for {math.ceil(mem_bytes / 2**20)} MiB of memory; "
            f"its limit is {limits.max_mem // 2**20} MiB"
        )
    if time_minutes is not None and limits.max_time is not None and time_minutes > parse_time(limits.max_time):
        raise OptionError(f"profile {profile!r} asks for {time_minutes} minutes; its limit is {limits.max_time}")
    if gpus is not None and limits.max_gpus is not None and gpus > limits.max_gpus:
        raise OptionError(f"profile {profile!r} asks for {gpus} GPUs; its limit is {limits.max_gpus}")
