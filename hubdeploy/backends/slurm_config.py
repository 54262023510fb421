"""The slurm backend's config: hub.json's ``spawner.backends.slurm``, read once at start
(:func:`hubdeploy.backends.base.parse_config`)."""

from __future__ import annotations

from dataclasses import dataclass

from hubdeploy.backends.base import BackendConfig
from hubdeploy.backends.slurm_parse import DEFAULT_ENV_SKIP
from hubdeploy.contract import layout


@dataclass(frozen=True, kw_only=True)
class SlurmConfig(BackendConfig):
    """hub.json's config of the slurm backend; every key is optional."""

    # argv put before every Slurm command (default: none, the hub's own environment has
    # the Slurm client and munge): dexec for the stack's cluster, ssh for a site's. The
    # words {uid}, {gid} and {name} in it become the server's account for its sbatch
    # (the job then is that user's, by munge's word), and root's (0, 0, root) for the
    # commands that watch and cancel jobs.
    submit_prefix: tuple[str, ...] = ()
    # Option that passes one variable through the prefix ("-e" for docker exec);
    # inserted before the prefix's last word.
    submit_env_option: str | None = None
    # Per-user SSH certificates (slurm.submit.ssh.certificates): with the CA's private key
    # here, each server's sbatch, squeue and scancel run as its own account through
    # ssh_user_prefix, whose words {name}, {dir}, {key} and {cert} become the account, its
    # private directory and its short-lived key and certificate (hubdeploy.backends.sshcert).
    # submit_prefix stays the one account's, for the commands that are nobody's (the
    # orphan listing and the cancel of an untracked job).
    ssh_ca_key: str | None = None
    ssh_user_prefix: tuple[str, ...] = ()
    ssh_cert_minutes: float = 5
    ssh_cert_dir: str = "/tmp/hubdeploy-ssh"
    # Shell-quote the command after the prefix (ssh runs it through the remote shell).
    submit_quote: bool = False
    # Pass the job's variables as NAME=value lines ahead of the script on stdin (ssh).
    submit_env_stdin: bool = False
    # The exit status with which the prefix itself says it could not get through (ssh
    # 255, dexec 125): a failed submit then reads "cannot reach Slurm", not "Slurm
    # refused the job" (poll reads every failure as unknown).
    submit_unreachable_code: int | None = None
    # Job names start with "<prefix>-<site>-nb-".
    prefix: str = layout.PROJECT_PREFIX
    site: str | None = None
    # sbatch --output, relative to the job's working directory (the submit directory).
    output: str = "hubdeploy-slurm-%j.log"
    # The job runs in its user's home, and writes its output to ~/.hubdeploy/logs (which
    # the hub creates): only its user can read it. Needs homes that exist on the nodes.
    output_in_home: bool = False
    # Programs on the compute nodes.
    node_python: str = "python3"
    node_scontrol: str = "scontrol"
    # --export=ALL instead of --export=NAME,...: a name list (also ALL,NAME,...) makes
    # Slurm build the user's login environment on the node (an implicit --get-user-env:
    # su - user there, about a second), which a site may want for its modules; with ALL
    # the job gets the submitting environment, our variables included. The stack's own
    # cluster sets it (its submitting environment is the controller container's).
    export_all: bool = False
    # Variables of the spawner's environment not exported to the job.
    env_skip: tuple[str, ...] = DEFAULT_ENV_SKIP
    command_timeout: float = 30  # seconds per Slurm command
    poll_interval: float = 2  # seconds between squeue polls of a running server
    start_poll_min: float = 0.1  # the first poll interval of a start; backs off to poll_interval
    # The stack's own cluster: each node's root agent hands out the notebook's port and
    # relays it to the server's unix socket (images/slurm/node-agent.py).
    node_agent: bool = False
    # The backend's own bound on a start; the hub's start_timeout usually ends it first.
    start_timeout: float = 3600
    stop_timeout: float = 60  # how long stop waits for a cancelled job to go
    # How long Slurm must report a running server's node as not responding before poll
    # says the server stopped (a node that Slurm reports DOWN ends it at once).
    node_lost_grace: float = 20
    # How long one sinfo answer serves every server's poll: one call per poll round,
    # not one per server.
    node_cache_seconds: float = 2
    # The stack's own cluster enforces associations: before a user's first sbatch the
    # hub adds theirs, as root, with these accounts (the first their default). Empty: the
    # site's own Slurm, which manages its associations itself.
    association_accounts: tuple[str, ...] = ()

    def __post_init__(self):
        if self.submit_env_option and not self.submit_prefix:
            raise ValueError("slurm backend config: submit_env_option needs a submit_prefix")
        if self.ssh_ca_key and not self.ssh_user_prefix:
            raise ValueError("slurm backend config: ssh_ca_key needs an ssh_user_prefix")
