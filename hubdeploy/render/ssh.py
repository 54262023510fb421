"""The hub's ssh commands for a site's Slurm reached through its login host."""

from __future__ import annotations

from hubdeploy.contract.layout import SSH_KEY, SSH_KNOWN_HOSTS_PATH, secret_path
from hubdeploy.site.slurm import SlurmSSH


def _options() -> list[str]:
    """What every one of the hub's ssh commands has.

    No user config (``-F /dev/null``) and no prompts (``BatchMode``): a key that is not
    accepted fails at once with ssh's own message. Only the keys in the site's
    known_hosts are trusted. Connections are multiplexed (``ControlMaster``) so that the
    squeue polls of a starting server do not each pay for a handshake.
    """
    return [
        "-o", "IdentitiesOnly=yes",
        "-o", "BatchMode=yes",
        "-o", "StrictHostKeyChecking=yes",
        "-o", f"UserKnownHostsFile={SSH_KNOWN_HOSTS_PATH}",
        "-o", "GlobalKnownHostsFile=/dev/null",
        "-o", "ConnectTimeout=10",
        "-o", "ServerAliveInterval=10",
        "-o", "ServerAliveCountMax=3",
        "-o", "ControlMaster=auto",
        "-o", "ControlPersist=300",
    ]


def ssh_argv(ssh: SlurmSSH) -> list[str]:
    """The hub's ssh command up to the host, as ``user``: the remote command follows, quoted."""
    return [
        "ssh", "-F", "/dev/null", "-T",
        "-i", secret_path(SSH_KEY),
        *_options(),
        "-o", "ControlPath=/tmp/hubdeploy-ssh-%C",
        "-p", str(ssh.port),
        "-l", ssh.user,
        "--", ssh.host,
    ]


def ssh_user_argv(ssh: SlurmSSH) -> list[str]:
    """The same as each user, with their short-lived certificate (``certificates: true``).

    The backend fills ``{name}`` (the account), ``{dir}`` (its private directory in the
    hub), ``{key}`` and ``{cert}``. The connection's socket is in that directory, so one
    user's master connection is never reused for another.
    """
    return [
        "ssh", "-F", "/dev/null", "-T",
        "-i", "{key}", "-o", "CertificateFile={cert}",
        *_options(),
        "-o", "ControlPath={dir}/ssh-%C",
        "-p", str(ssh.port),
        "-l", "{name}",
        "--", ssh.host,
    ]
