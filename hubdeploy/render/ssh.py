"""The hub's ssh command for a site's Slurm reached through its login host."""

from __future__ import annotations

from hubdeploy.contract.layout import SSH_KEY, SSH_KNOWN_HOSTS_PATH, secret_path
from hubdeploy.schema import SlurmSSH


def ssh_argv(ssh: SlurmSSH) -> list[str]:
    """The hub's ssh command up to the host: the remote command follows, quoted.

    No user config (``-F /dev/null``) and no prompts (``BatchMode``): a key that is not
    accepted fails at once with ssh's own message. Only the keys in the site's
    known_hosts are trusted. Connections are multiplexed (``ControlMaster``) so that the
    squeue polls of a starting server do not each pay for a handshake.
    """
    return [
        "ssh", "-F", "/dev/null", "-T",
        "-i", secret_path(SSH_KEY), "-o", "IdentitiesOnly=yes",
        "-o", "BatchMode=yes",
        "-o", "StrictHostKeyChecking=yes",
        "-o", f"UserKnownHostsFile={SSH_KNOWN_HOSTS_PATH}",
        "-o", "GlobalKnownHostsFile=/dev/null",
        "-o", "ConnectTimeout=10",
        "-o", "ServerAliveInterval=10",
        "-o", "ServerAliveCountMax=3",
        "-o", "ControlMaster=auto",
        "-o", "ControlPath=/tmp/hubdeploy-ssh-%C",
        "-o", "ControlPersist=300",
        "-p", str(ssh.port),
        "-l", ssh.user,
        "--", ssh.host,
    ]
