"""How the slurm backend runs a Slurm command: argv lists, never a shell.

The commands run as argv lists (``asyncio.create_subprocess_exec``), behind an optional
``submit_prefix`` argv: ``["docker", "exec", "-i", "-u", "jovyan", "slurmctld"]`` in the
tests, ``["ssh", "submit-host"]`` or ``["sudo", "-u", "{name}"]`` at a site. With
``ssh_ca_key`` a server's own commands go through ``ssh_user_prefix`` instead, logged in as
its account with a certificate that is valid for minutes (:mod:`hubdeploy.backends.sshcert`).

A job's variables (the API token among them) never go in argv. With a ``submit_prefix``
they must cross it: ``submit_env_option`` (``"-e"`` for ``docker exec``) adds ``-e NAME``
per variable before the prefix's last word, which passes the value from our environment.
``ssh`` passes no environment (short of ``AcceptEnv`` on the far side), so
``submit_env_stdin`` sends the values as the first lines of stdin instead, read by a fixed
``sh`` program there (:data:`~hubdeploy.backends.slurm_parse.READ_ENV`) that exports them
and execs the command, whose stdin is then the rest (sbatch's script).
"""

from __future__ import annotations

import asyncio
import os
import shlex
from collections.abc import Mapping, Sequence
from typing import Any

from hubdeploy.backends.base import Backend
from hubdeploy.backends.slurm_config import SlurmConfig
from hubdeploy.backends.slurm_parse import READ_ENV, CommandError, env_lines
from hubdeploy.backends.sshcert import CertificateAuthority, CertificateError
from hubdeploy.contract import layout
from hubdeploy.contract.identity import Identity

# Who runs the commands that are nobody's job (the listings of slurmcmd) when the prefix
# names an account: root. A job's own commands (its squeue, its scancel) run as its owner.
ADMIN = {"uid": "0", "gid": "0", "name": "root"}
_PLACEHOLDERS = ("{uid}", "{gid}", "{name}")


class SlurmCommands(Backend):
    """The part of :class:`~hubdeploy.backends.slurm.SlurmBackend` that runs commands:
    :meth:`run`, and whose account a server's commands run as. Abstract."""

    config: SlurmConfig

    def __init__(self, config: SlurmConfig, log=None):
        super().__init__(config, log)
        c = self.config
        self.submit_prefix: list[str] = list(c.submit_prefix)
        self.env_option = c.submit_env_option
        self.env_stdin = c.submit_env_stdin
        self.unreachable_code = c.submit_unreachable_code
        self.command_timeout = c.command_timeout
        self.ca: CertificateAuthority | None = None
        if c.ssh_ca_key:
            self.ca = CertificateAuthority(c.ssh_ca_key, c.ssh_cert_dir, c.ssh_cert_minutes,
                                           key_id=layout.project_name(c.site) if c.site else layout.PROJECT_PREFIX)

    @property
    def fills_account(self) -> bool:
        """Whether the prefix names the server's account (placeholders in it)."""
        return any(p in w for w in self.submit_prefix for p in _PLACEHOLDERS)

    @property
    def per_user(self) -> bool:
        """Whether jobs are submitted as each server's own account (placeholders or certificates)."""
        return self.fills_account or self.ca is not None

    def _prefix(self, who: Mapping[str, Any] | None, account: str | None = None) -> list[str]:
        if self.ca is not None and account is not None:
            return self._user_prefix(account)
        return _fill(self.submit_prefix, {k: str(v) for k, v in (who or ADMIN).items()})

    def _user_prefix(self, account: str) -> list[str]:
        """ssh as ``account`` with its certificate (made, or reused while valid)."""
        assert self.ca is not None
        try:
            cred = self.ca.credentials(account)
        except (CertificateError, OSError) as exc:
            raise CommandError(["ssh"], None, f"no SSH certificate for {account}: {exc}") from None
        return _fill(self.config.ssh_user_prefix,
                     {"name": account, "dir": cred.directory, "key": cred.key, "cert": cred.cert})

    def _argv(self, argv: Sequence[str], env_names: Sequence[str] = (), who: Mapping[str, Any] | None = None,
              account: str | None = None) -> list[str]:
        words = list(argv)
        if env_names and self.env_stdin:
            words = ["sh", "-c", READ_ENV, "sh", *words]
        if self.config.submit_quote:
            words = [shlex.join(words)]
        if not self.submit_prefix and account is None:
            return words
        prefix = self._prefix(who, account)
        head, last = prefix[:-1], prefix[-1:]
        passes = [w for n in env_names for w in (self.env_option, n)] if self.env_option and not self.env_stdin else []
        return [*head, *passes, *last, *words]

    async def run(
        self,
        argv: Sequence[str],
        *,
        stdin: bytes | None = None,
        env: Mapping[str, str] | None = None,
        who: Mapping[str, Any] | None = None,
        account: str | None = None,
    ) -> tuple[int, str, str]:
        """Run one Slurm command; ``(returncode, stdout, stderr)``. CommandError if it hangs.

        ``env`` adds variables to the command's environment (and, with
        ``submit_env_option``, passes them through the prefix) without putting a value
        in argv. ``who`` (uid, gid and name; :func:`whose`) fills the prefix's placeholders,
        root's when None; ``account`` (with certificates) runs the command as that account
        over ssh.
        """
        full = self._argv(argv, sorted(env or ()), who, account)
        if env and self.env_stdin:
            stdin = env_lines(env) + (stdin or b"")
            env = None  # they travel on stdin; ssh itself needs none of them
        try:
            proc = await asyncio.create_subprocess_exec(
                *full,
                stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env={**os.environ, **(env or {})},
            )
        except OSError as exc:  # the prefix or Slurm program is missing
            raise CommandError(full[:1], None, f"cannot run {full[0]}: {exc}") from exc
        try:
            out, err = await asyncio.wait_for(proc.communicate(stdin), self.command_timeout)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
            raise CommandError(argv, None, f"no answer within {self.command_timeout:g}s") from None
        return (
            proc.returncode,
            out.decode(errors="replace"),
            err.decode(errors="replace"),
        )

    def owner(self, state: Mapping[str, Any]) -> str | None:
        """The account that runs a server's squeue and scancel: with certificates its
        job's owner, since a site's Slurm lets only the owner (or an operator) cancel a
        job, and ``PrivateData=jobs`` shows a job to its owner only. None (the one
        submit account) otherwise, and for a job submitted before certificates."""
        return state.get("account") if self.ca is not None else None

    def job_owner(self, state: Mapping[str, Any]) -> dict[str, Any] | None:
        """Who a server's job belongs to (recorded at submit when the prefix names the
        account): its squeue and scancel run as that account, never as root."""
        return state.get("owner") if self.fills_account else None


def whose(ident: Identity) -> dict[str, Any]:
    """An account as the prefix's placeholders and a server's saved state name it."""
    return {"uid": ident.uid, "gid": ident.gid, "name": ident.name}


def _fill(words: Sequence[str], values: Mapping[str, str]) -> list[str]:
    """``words`` with each ``{key}`` replaced by its value."""
    out = []
    for word in words:
        for key, value in values.items():
            word = word.replace("{" + key + "}", value)
        out.append(word)
    return out
