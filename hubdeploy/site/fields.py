"""What every section of the site file shares: the closed base model, the value types
its keys take (names, memory sizes, Slurm names and times, packages) and
:class:`SiteValueError`, a cross-field problem that knows where below a model it sits.

Every model forbids unknown keys (``extra="forbid"``) so that a misspelt key is an
error rather than a silent no-op (the-littlest-jupyterhub once accepted unknown
top-level keys because its ``additionalProperties: false`` sat at the wrong depth).
The deliberate escape hatches are ``hub.config``, ``hub.authenticator.config`` and
``profiles[].spawner_config``: free-form JupyterHub traits, like z2jh's ``hub.config``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

from pydantic import BaseModel, ConfigDict, StringConstraints

from hubdeploy.contract.values import (
    ENV_NAME_PATTERN,
    MEMORY_PATTERN,
    SLURM_NAME_PATTERN,
    SLURM_TIME_PATTERN,
)

EnvName = Annotated[str, StringConstraints(pattern=ENV_NAME_PATTERN)]
# Names end up in container, volume, network and image names: keep them to the
# characters every one of those accepts, and short enough to leave room for suffixes.
Name = Annotated[str, StringConstraints(pattern=r"^[a-z](?:[a-z0-9-]{0,29}[a-z0-9])?$")]
Memory = Annotated[str, StringConstraints(pattern=MEMORY_PATTERN)]
# A trait-section name such as "JupyterHub" or "Spawner".
TraitSection = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
# pip requirement or Debian package: no options, no URLs with spaces, no shell.
Package = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._+\-\[\],<>=!~*]*$")]
# A username allowed for admin_users; anything printable except whitespace and '/'.
Username = Annotated[str, StringConstraints(pattern=r"^[^\s/]{1,255}$")]
SlurmName = Annotated[str, StringConstraints(pattern=SLURM_NAME_PATTERN)]
SlurmTime = Annotated[str, StringConstraints(pattern=SLURM_TIME_PATTERN)]
AbsPath = Annotated[str, StringConstraints(pattern=r"^/[A-Za-z0-9_./+-]{0,1023}$")]


# One problem below a validated model: its place relative to the model, and what is wrong.
Problem = tuple[tuple[str | int, ...], str]


class SiteValueError(ValueError):
    """A cross-field problem that knows where below the validated model it sits.

    A model validator's error is reported by pydantic at the model itself (e.g. the
    whole site); ``problems`` carries ``(relative location, message)`` pairs so the
    loader can point at ``profiles[2].image`` instead, and report all of them at once.
    """

    def __init__(self, problems: list[Problem]):
        super().__init__("; ".join(msg for _, msg in problems))
        self.problems = problems


class Closed(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def repeated_names(names: Sequence[str | None], noun: str, key: str, at: tuple[str | int, ...] = ()) -> dict[int, Problem]:
    """Index -> the problem of each name that repeats an earlier one in ``key`` (naming
    the first); a None name is skipped (already refused for another reason)."""
    first: dict[str, int] = {}
    problems: dict[int, Problem] = {}
    for j, name in enumerate(names):
        if name is None:
            continue
        if name in first:
            problems[j] = ((*at, j, "name"), f"duplicate {noun} name {name!r} (first: {key}[{first[name]}])")
        else:
            first[name] = j
    return problems
