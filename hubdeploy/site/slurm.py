"""The ``slurm`` section: where compute profiles' jobs go, either a small cluster
hubdeploy runs inside the stack (``cluster``) or a site's own Slurm (``submit``,
directly or over ssh).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, StringConstraints, field_validator, model_validator

from hubdeploy.site.fields import Closed, Memory, Name, SiteValueError, SlurmName, SlurmTime


class SlurmUserLimits(Closed):
    """What one user may hold at once on the stack's cluster (Slurm's QOS limits per
    user); a user's notebook servers there are among their jobs."""

    jobs: int = Field(10, ge=1, le=10000, description="Jobs a user may have at once, running or pending; "
                      "an sbatch past it is refused.")
    nodes: int | None = Field(None, ge=1, le=16, description="Nodes a user's running jobs may occupy at once "
                              "(jobs sharing a node count it once); further jobs wait. Default: one fewer "
                              "than slurm.cluster.nodes (at least 1), so no user holds every node.")
    cpus: int | None = Field(None, ge=1, le=4096, description="Cores a user's running jobs may hold at once; "
                             "further jobs wait. Default: no limit but nodes.")


class SlurmClusterSpec(Closed):
    """A small Slurm cluster hubdeploy runs inside the stack (slurmctld + N slurmd)."""

    nodes: int = Field(2, ge=1, le=16, description="Compute-node containers, named c1..cN (the NodeNames).")
    cpus: int = Field(2, ge=1, le=256, description="CPUs Slurm schedules per node.")
    memory: Memory = Field("2G", description="Memory Slurm schedules per node.")
    partitions: list[SlurmName] = Field(
        default_factory=lambda: ["compute"], min_length=1,
        description="Partitions over all nodes; the first is the default.",
    )
    image: Name = Field("base", description="Image the nodes run (plus Slurm and munge): 'base' or a collaboration.")
    max_time: SlurmTime = Field(
        "8:00:00", description="Longest time limit a profile may give or offer (its time, limits.max_time); "
        "a job's limit is the longest the profiles allow.")
    accounts: list[SlurmName] | None = Field(
        None, min_length=1,
        description="Accounts the cluster admits; sbatch refuses any other with Slurm's own 'Invalid account' "
        "error. The first is the account of jobs that name none. Default: one account, hubdeploy.",
    )
    user_limits: SlurmUserLimits = Field(default_factory=SlurmUserLimits,
                                         description="What one user may hold at once.")

    @field_validator("partitions")
    @classmethod
    def _unique_parts(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("partitions lists a partition twice")
        return v

    @field_validator("accounts")
    @classmethod
    def _unique_accounts(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and len(set(v)) != len(v):
            raise ValueError("accounts lists an account twice")
        return v

    @model_validator(mode="after")
    def _user_nodes(self) -> "SlurmClusterSpec":
        if self.user_limits.nodes is not None and self.user_limits.nodes > self.nodes:
            raise SiteValueError([(("user_limits", "nodes"), f"user_limits.nodes {self.user_limits.nodes} is more "
                                   f"than the cluster's {self.nodes} nodes")])
        return self

    @property
    def user_nodes(self) -> int:
        """Nodes one user may occupy at once: as set, or one fewer than the cluster has."""
        return self.user_limits.nodes or max(1, self.nodes - 1)


# A host name or address as ssh takes it (no user@, no options: never starts with '-').
SSHHost = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:\[\]][A-Za-z0-9_.:\[\]-]{0,252}$")]
# A POSIX login name (useradd's rule); ssh -l takes it as one word.
LoginName = Annotated[str, StringConstraints(pattern=r"^[a-z_][a-z0-9_.-]{0,31}$")]


class SlurmSSH(Closed):
    """The hub submits over SSH to a site's login (submit) host as one account.

    The host's key must be in ``known_hosts`` (nothing is trusted on first use). The
    hub's key is generated once into ``.hubdeploy/secrets/slurm_ssh_key`` (its ``.pub``
    goes into the account's ``~/.ssh/authorized_keys`` on the host) unless
    ``identity_file`` names the site's own. The submit account's shell must be POSIX
    (sh, bash, zsh): the command is quoted for it. The job's variables (the server's API
    token among them) reach sbatch on the host through ssh's stdin, never through argv.
    """

    host: SSHHost = Field(description="The submit host, as the hub resolves it.")
    user: LoginName = Field(description="The account on the submit host whose jobs the notebooks are.")
    port: int = Field(22, ge=1, le=65535)
    known_hosts: str = Field(description="File with the submit host's public key(s), known_hosts format.")
    identity_file: str | None = Field(
        None, description="The site's own private key (mode 0600); default: a key hubdeploy generates."
    )
    certificates: bool = Field(
        False, description="Submit each server's job as its user, with a short-lived SSH certificate from "
        "the hub's CA (the host's sshd trusts .hubdeploy/secrets/slurm_ssh_ca.pub with TrustedUserCAKeys); "
        "'user' then runs only the commands that are nobody's (the orphan listing and its cancels).")
    certificate_minutes: int = Field(5, ge=1, le=60, description="How long each user certificate is valid.")


class SlurmSubmit(Closed):
    """An existing site's Slurm: how the hub runs sbatch/squeue/scancel there."""

    ssh: SlurmSSH | None = Field(None, description="Submit over SSH to a login host (instead of prefix).")
    prefix: list[str] = Field(
        default_factory=list,
        description="argv before every Slurm command, e.g. [ssh, login1]; empty: the hub image has the client.",
    )
    env_option: str | None = Field(
        None, description="Option that passes one variable through the prefix (-e for docker exec)."
    )
    quote: bool = Field(False, description="Shell-quote the command after the prefix (ssh).")
    output: str | None = Field(None, description="sbatch --output of notebook jobs.")

    @model_validator(mode="after")
    def _ssh_alone(self) -> "SlurmSubmit":
        if self.ssh is not None and (self.prefix or self.env_option or self.quote):
            raise ValueError("'ssh' builds its own command: leave prefix, env_option and quote unset")
        return self


class SiteSlurm(Closed):
    """Where compute profiles' jobs go: a cluster in the stack, or a site's submit path."""

    cluster: SlurmClusterSpec | None = None
    submit: SlurmSubmit | None = None

    @model_validator(mode="after")
    def _one(self) -> "SiteSlurm":
        if (self.cluster is None) == (self.submit is None):
            raise ValueError("slurm needs exactly one of 'cluster' or 'submit'")
        return self
