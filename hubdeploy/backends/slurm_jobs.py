"""What the slurm backend asks Slurm about jobs and nodes, and how it cancels a job:
squeue for one job and for the site's listing, sinfo's node states (cached), scancel.
The answers are read by :mod:`hubdeploy.backends.slurm_parse`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from hubdeploy.backends.base import BackendError, Found, PollResult, Stopped, Unknown
from hubdeploy.backends.slurm_commands import SlurmCommands
from hubdeploy.backends.slurm_config import SlurmConfig
from hubdeploy.backends.slurm_parse import (
    ENDING,
    INVALID_JOB,
    JOB_ID,
    LIST_FORMAT,
    CommandError,
    JobInfo,
    JobRow,
    node_trouble,
    parse_job_rows,
    parse_node_states,
    parse_squeue,
    with_node_trouble,
)
from hubdeploy.contract import layout, names, slurmcmd


class SlurmJobs(SlurmCommands):
    """The part of :class:`~hubdeploy.backends.slurm.SlurmBackend` that reads jobs and
    nodes and cancels jobs, including the jobs the hub lost. Abstract."""

    def __init__(self, config: SlurmConfig, log=None):
        super().__init__(config, log)
        c = self.config
        self.name_prefix = "-".join(p for p in (c.prefix or layout.PROJECT_PREFIX, c.site) if p)
        self._nodes: tuple[float, dict[str, str]] | None = None

    async def query(self, job_id: str, account: str | None = None,
                    who: Mapping[str, Any] | None = None) -> PollResult | JobInfo:
        """squeue for one job: its :class:`JobInfo`, or Stopped / Unknown."""
        try:
            code, out, err = await self.run(slurmcmd.job_query_argv(job_id), account=account, who=who)
        except CommandError as exc:
            return Unknown(str(exc))
        if code != 0:
            if INVALID_JOB in err:
                return Stopped(0)  # gone past MinJobAge
            return Unknown(f"squeue exited {code}: {err.strip()[-300:] or out.strip()[-300:]}")
        try:
            info = parse_squeue(out)
        except ValueError as exc:
            return Unknown(str(exc))
        return Stopped(0) if info is None else info

    async def node_states(self) -> dict[str, str] | None:
        """Every node's sinfo state (cached for ``node_cache_seconds``); None when sinfo
        cannot be asked, which tells nothing about any node."""
        now = time.monotonic()
        if self._nodes is not None and now - self._nodes[0] < self.config.node_cache_seconds:
            return self._nodes[1]
        try:
            code, out, err = await self.run(slurmcmd.node_states_argv())
            if code != 0:
                raise CommandError(["sinfo"], code, err)
            states = parse_node_states(out)
        except (CommandError, ValueError) as exc:
            self.log.warning("cannot read Slurm's node states: %s", exc)
            return None
        self._nodes = (now, states)
        return states

    async def node_trouble(self, node: str) -> str | None:
        """:func:`node_trouble` of one node; None also when its state cannot be read."""
        states = await self.node_states() if node else None
        state = (states or {}).get(node)
        return node_trouble(state) if state else None

    async def _scancel(self, state: Mapping[str, Any]) -> int | None:
        """scancel a server's job (by id, or by name when the submit was cut short) as
        its owner; scancel's exit status, None when there is nothing to cancel.
        BackendError when Slurm cannot be asked or refuses."""
        job_id, name = state.get("job_id"), state.get("job_name")
        if job_id:
            argv = ["scancel", job_id]
        elif name:
            argv = ["scancel", f"--name={name}"]  # a submit that failed midway
        else:
            return None
        account, who = self.owner(state), self.job_owner(state)
        if who is None and self.fills_account:
            # A job recorded without its owner: Slurm's listing says whose it is.
            row = await self._find_row(job_id, name)
            if row is None:
                return None  # gone already
            who = row.owner
        return await self._cancel(job_id or name, argv, account=account, who=who)

    async def _cancel(self, job: str, argv: list[str], account: str | None = None,
                      who: Mapping[str, Any] | None = None) -> int:
        """Run one scancel; its exit status. BackendError when Slurm cannot be asked or
        refuses; a job that is gone or already ending is no refusal."""
        try:
            code, _, err = await self.run(argv, account=account, who=who)
        except CommandError as exc:
            raise BackendError(f"cannot cancel Slurm job {job}: {exc}") from None
        if code != 0 and INVALID_JOB not in err and ENDING not in err:
            raise BackendError(f"scancel {job} failed: {err.strip()[-300:]}")
        return code

    # -- jobs the hub lost ------------------------------------------------------------

    async def list_servers(self) -> list[Found]:
        """This site's notebook jobs that squeue shows (pending, running, completing).

        ``--me``: only jobs of the account the hub submits as, so a user's own job that
        happens to carry a similar name is never listed, let alone cancelled. Per-user jobs
        belong to many accounts: root lists them all (slurmcmd's listing), by name.
        """
        rows = await self._rows()
        prefix = names.server_prefix(self.name_prefix)
        found = [row.found() for row in rows if row.name.startswith(prefix)]
        states = await self.node_states() if any(f.node for f in found) else None
        return [with_node_trouble(f, states) for f in found]

    async def _rows(self) -> list[JobRow]:
        argv = slurmcmd.list_jobs_argv() if self.per_user else ["squeue", "-h", "--me", "-o", LIST_FORMAT]
        try:
            code, out, err = await self.run(argv)
        except CommandError as exc:
            raise BackendError(f"cannot list Slurm jobs: {exc}") from None
        if code != 0:
            raise BackendError(f"squeue exited {code}: {(err.strip() or out.strip())[-300:]}")
        return parse_job_rows(out)

    async def _find_row(self, job_id: str | None, name: str | None) -> JobRow | None:
        """The listing's row of a job, by id (or by name when there is no id yet)."""
        rows = await self._rows()
        return next((r for r in rows if (r.job_id == job_id if job_id else r.name == name)), None)

    def server_id(self, state: Mapping[str, Any]) -> str | None:
        return state.get("job_id") or None

    def server_name(self, state: Mapping[str, Any]) -> str | None:
        return state.get("job_name") or None

    async def remove(self, server_id: str) -> None:
        """scancel one job (an id :meth:`list_servers` returned), as its owner."""
        if not JOB_ID.match(server_id):
            raise BackendError(f"{server_id!r} is not a Slurm job id")
        who = None
        if self.fills_account:
            row = await self._find_row(server_id, None)
            if row is None:
                return  # gone meanwhile
            who = row.owner
        await self._cancel(server_id, ["scancel", server_id], who=who)
