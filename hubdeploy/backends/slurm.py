"""Notebook servers as Slurm batch jobs, driven through the Slurm commands.

Why the commands (sbatch, squeue, scancel) and not slurmrestd: every Slurm site has them
and munge on its login nodes, while slurmrestd with JWT is optional, often not deployed,
and versioned per release (``/slurm/v0.0.38/`` in 22.05). How a command reaches Slurm (a
prefix such as dexec or ssh, per-user SSH certificates, the job's variables) is
:mod:`hubdeploy.backends.slurm_commands`; what the backend asks Slurm about jobs and
nodes, and how it cancels them, :mod:`hubdeploy.backends.slurm_jobs`; its config,
:mod:`hubdeploy.backends.slurm_config`.

What goes where (see :mod:`hubdeploy.backends.slurm_script`):

- the job script: ``#SBATCH`` options and the runtime wrapper, from validated profile
  values and fixed text only;
- the notebook command: the script's arguments (``sbatch ... /dev/stdin ARG...``);
- the API token and the hub's other variables: ``sbatch --export=NAME,...`` of the
  submitting process's environment, never in argv or in the stored script (through a
  prefix: ``submit_env_option`` or ``submit_env_stdin``).

The node picks its own port and reports it with ``scontrol update Comment=`` (the
script's first lines); :meth:`SlurmBackend.start` returns Slurm's BatchHost and that
port. The host never comes from the job itself, so a user editing their job's comment can
at most point the proxy at another port of their own node.

poll never says "stopped" when it cannot ask: only squeue's "Invalid job id", an empty
answer or a final job state mean stopped; a timeout, an unreachable controller, munge
errors and every other failure are :class:`~hubdeploy.backends.base.Unknown`.
(batchspawner's long-standing bug was to read a failed squeue as "job gone".)
The one "stopped" besides these is Slurm's own word on the job's node (:func:`judge`):
DOWN, or not responding for ``node_lost_grace`` seconds while squeue still says RUNNING.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

from hubdeploy.backends.base import BackendError, PollResult, Running, ServerSpec, Stopped, Unknown
from hubdeploy.backends.slurm_commands import whose
from hubdeploy.backends.slurm_config import SlurmConfig
from hubdeploy.backends.slurm_jobs import SlurmJobs
from hubdeploy.backends.slurm_parse import (
    ALIVE_STATES,
    FINAL_STATES,
    HOST,
    INVALID_ACCOUNT,
    JOB_ID,
    ON_NODE_STATES,
    PATH_RE,
    CommandError,
    JobInfo,
    export_option,
    judge,
    progress_event,
    sbatch_message,
    validate_state,
)
from hubdeploy.backends.slurm_script import OptionError, job_options, render
from hubdeploy.contract import names, slurmcmd
from hubdeploy.contract.backends import SLURM
from hubdeploy.contract.identity import Identity

__all__ = ["SlurmBackend", "SlurmConfig"]


class SlurmBackend(SlurmJobs):
    """Notebook servers as Slurm jobs (``sbatch``/``squeue``/``scancel``; config:
    :class:`SlurmConfig`).

    Profile fields: ``cpu``, ``mem_limit``, ``volumes`` and the ``slurm`` section read by
    :func:`hubdeploy.backends.slurm_script.job_options`.
    """

    Config = SlurmConfig
    name = SLURM
    config: SlurmConfig

    def __init__(self, config: SlurmConfig, log=None):
        super().__init__(config, log)
        c = self.config
        self.poll_interval = c.poll_interval
        self.start_poll_min = min(c.start_poll_min, self.poll_interval)
        self.start_timeout = c.start_timeout
        self.stop_timeout = c.stop_timeout
        self.env_skip = frozenset(c.env_skip)
        # Accounts whose association this process has made (or found): once per user.
        self._associated: set[str] = set()

    # -- start ------------------------------------------------------------------------

    def job_name(self, spec: ServerSpec) -> str:
        """``{prefix}-nb-{escaped user}[--{escaped server}]``: one name per server."""
        return names.container_name(self.name_prefix, spec.user, spec.server_name)

    def export_env(self, spec: ServerSpec) -> dict[str, str]:
        """The spawner's variables that the job gets (minus ``env_skip``), and its
        account's HOME, USER and LOGNAME (the submitting process may not have them)."""
        env = {k: v for k, v in spec.env.items() if k not in self.env_skip}
        # sshd sets them for a login as the account; a prefix such as dexec does not.
        if spec.identity is not None and self.fills_account:
            ident = spec.identity
            env.update(HOME=ident.home, USER=ident.name, LOGNAME=ident.name)
        return env

    async def associate(self, ident: Identity | None) -> None:
        """Give the server's account its association (``association_accounts``) unless
        this process did already; BackendError if Slurm refuses. The account must be
        known to the controller first (the hub publishes it before the start), or Slurm
        binds the association to no uid and refuses the user's jobs."""
        accounts = self.config.association_accounts
        if not accounts or ident is None or ident.name in self._associated:
            return
        try:
            argv = slurmcmd.add_user_argv(ident.name, accounts)
            code, out, err = await self.run(argv)
        except ValueError as exc:
            raise BackendError(f"no Slurm association for {ident.name}: {exc}") from None
        except CommandError as exc:
            raise BackendError(f"cannot add {ident.name}'s Slurm association: {exc}") from None
        said = (out + err).strip()
        if code != 0 and not any(word in said for word in slurmcmd.UNCHANGED):
            raise BackendError(f"Slurm refused {ident.name}'s association (exit {code}): {said[-300:]}")
        self._associated.add(ident.name)
        self.log.info("Slurm association of %s with %s: %s", ident.name, ",".join(accounts),
                      "made" if code == 0 else "there already")


    async def start(self, spec: ServerSpec, state: dict[str, Any]) -> tuple[str, int]:
        """Submit the job and wait until it runs and reports its port; ``(BatchHost, port)``."""
        await self.associate(spec.identity)
        account = self._account(spec)
        env = self.export_env(spec)
        script = self._script(spec, env)
        name = self.job_name(spec)
        state.update(job_name=name, phase="submitting", **({"account": account} if account else {}))
        if self.fills_account and spec.identity is not None:
            state["owner"] = whose(spec.identity)
        job_id = await self._sbatch(spec, state, script, env, account)
        state.update(job_id=job_id, phase="pending")
        self.log.info("submitted Slurm job %s (%s) for %s", job_id, name, spec.user)
        try:
            host, port = await self._wait_started(state)
        except BaseException:
            state["phase"] = "failed"
            raise
        state.update(host=host, port=port, phase="started")
        # When the hub learned where the server is: the gap to the job's own port report
        # (slurmctld's log) is this backend's polling lag.
        self.log.info("Slurm job %s runs on %s, server port %s", job_id, host, port)
        return host, port

    def _account(self, spec: ServerSpec) -> str | None:
        """The account whose certificate submits the job; None without certificates."""
        if self.ca is None:
            return None
        if spec.identity is None:
            raise BackendError("per-user SSH certificates need the server's account; there is none")
        return spec.identity.name

    def _script(self, spec: ServerSpec, env: Mapping[str, str]) -> str:
        """The job script for the server's profile, exporting ``env``'s names."""
        node = {"python": self.config.node_python, "scontrol": self.config.node_scontrol}
        try:
            options = job_options(spec.profile, export=sorted(env), node_agent=self.config.node_agent, **node)
        except OptionError as exc:
            raise BackendError(f"profile {spec.profile.name!r}: {exc}") from None
        return render(options)

    async def _sbatch(self, spec: ServerSpec, state: dict[str, Any], script: str, env: dict[str, str],
                      account: str | None) -> str:
        """Submit the job script; its job id. BackendError (phase "failed") if Slurm
        cannot be reached or refuses the job."""
        argv = [
            "sbatch",
            "--parsable",
            f"--job-name={state['job_name']}",
            *self._where(spec),
            # Names only: the values come from sbatch's environment, never from argv.
            export_option(sorted(env), self.config.export_all),
            "/dev/stdin",
            *spec.cmd,
        ]
        try:
            code, out, err = await self.run(argv, stdin=script.encode(), env=env, who=state.get("owner"),
                                            account=account)
        except CommandError as exc:
            state["phase"] = "failed"
            # The job may exist (sbatch hung after submitting): stop() cancels by name.
            raise BackendError(f"cannot submit to Slurm: {exc}") from None
        if code != 0:
            state["phase"] = "failed"
            raise self._refused(spec, code, err)
        job_id = out.strip().splitlines()[-1].split(";")[0] if out.strip() else ""
        if not JOB_ID.match(job_id):
            state["phase"] = "failed"
            raise BackendError(f"sbatch answered {out.strip()[:200]!r}, not a job id")
        return job_id

    def _refused(self, spec: ServerSpec, code: int, err: str) -> BackendError:
        """What a failed sbatch means: the prefix could not get through, or Slurm said no."""
        if code == self.unreachable_code:
            return BackendError(f"cannot reach Slurm to submit (exit {code}): {err.strip()[-300:]}")
        if INVALID_ACCOUNT in err and spec.identity is not None:
            # The association may have gone with the accounting database (a new
            # volume under a running hub): the next start makes it again.
            self._associated.discard(spec.identity.name)
        return BackendError(f"Slurm refused the job: {sbatch_message(err)}")

    def _where(self, spec: ServerSpec) -> list[str]:
        """The job's working directory and output: its user's home where the nodes have it."""
        ident = spec.identity
        if self.config.output_in_home and ident is not None:
            if not PATH_RE.match(ident.home):
                raise BackendError(f"home {ident.home!r} of {ident.name} is not a plain absolute path")
            return [f"--chdir={ident.home}", f"--output={ident.home}/.hubdeploy/logs/slurm-%j.log"]
        return [f"--output={self.config.output}"]

    async def _wait_started(self, state: dict[str, Any]) -> tuple[str, int]:
        """Poll squeue until the job runs and its comment has the port.

        Fast at first, backing off (x1.5) to ``poll_interval``, and fast again whenever the
        job's state changes: a free node runs a job within a second of sbatch and the port
        follows soon after RUNNING. A fixed 2 s interval left the hub up to 2.3 s behind the
        job's port report; this is 0.05-0.5 s (measured with
        benchmarks/compute_spawn_latency.py). On the demo cluster jupyterhub-singleuser's
        own 2-3 s start hides most of that lag; a faster-starting server does not. A job
        that waits in a queue costs no more squeue calls than before.
        """
        deadline = time.monotonic() + self.start_timeout
        job_id, account, who = state["job_id"], self.owner(state), self.job_owner(state)
        delay, seen = self.start_poll_min, None
        while time.monotonic() < deadline:
            result = await self.query(job_id, account, who)
            if isinstance(result, JobInfo):
                if result.state != seen:
                    delay, seen = self.start_poll_min, result.state
                state.update(
                    job_state=result.state,
                    reason=result.reason,
                    start_time=result.start_time,
                )
                if result.state == "RUNNING":
                    state["phase"] = "running"
                    port = result.port
                    if port is not None:
                        if not HOST.match(result.batch_host):
                            raise BackendError(f"job {job_id} runs on {result.batch_host!r}, not a host name")
                        return result.batch_host, port
                elif result.state not in ALIVE_STATES:
                    raise BackendError(
                        f"Slurm job {job_id} ended before the server started ({result.state}"
                        + (f", {result.reason}" if result.reason and result.reason != "None" else "")
                        + "); see its output file"
                    )
            elif isinstance(result, Stopped):
                raise BackendError(f"Slurm job {job_id} ended before the server started; see its output file")
            else:  # Unknown: the controller may come back; the deadline bounds the wait
                state["reason"] = f"scheduler not answering: {result.reason}"
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, self.poll_interval)
        raise BackendError(f"Slurm job {job_id} did not start within {self.start_timeout:g}s")

    # -- stop / poll ------------------------------------------------------------------

    async def stop(self, state: dict[str, Any]) -> None:
        """scancel the job (pending or running) and wait, bounded, until it is gone."""
        job_id = state.get("job_id")
        code = await self._scancel(state)
        if not job_id or code != 0:  # nothing to cancel, by name, or already gone
            return
        account, who = self.owner(state), self.job_owner(state)
        deadline = time.monotonic() + self.stop_timeout
        last: Any = None
        while time.monotonic() < deadline:
            last = await self.query(job_id, account, who)
            if isinstance(last, Stopped) or (isinstance(last, JobInfo) and last.state in FINAL_STATES):
                return
            if isinstance(last, JobInfo) and await self._on_lost_node(last):
                return
            await asyncio.sleep(min(self.poll_interval, 1.0))
        # Slurm accepted the cancel; it finishes the job on its own.
        self.log.warning(
            "Slurm job %s not gone %gs after scancel: %s",
            job_id,
            self.stop_timeout,
            last,
        )

    async def _on_lost_node(self, info: JobInfo) -> bool:
        """After scancel: whether the job waits on a node Slurm reports in trouble. Slurm
        finishes it when the node answers or is marked down; nobody need wait for that."""
        trouble = await self.node_trouble(info.batch_host) if info.batch_host else None
        if trouble is None:
            return False
        self.log.warning(
            "Slurm job %s cancelled; node %s %s, so Slurm finishes the job when it gets to it (now %s)",
            info.job_id, info.batch_host, trouble, info.state,
        )
        return True

    async def poll(self, state: dict[str, Any]) -> PollResult:
        """Running / Stopped(status) / Unknown from squeue and the job's node; never raises."""
        job_id = state.get("job_id")
        if not job_id:
            return Stopped(0)
        try:
            result = await self.query(job_id, self.owner(state), self.job_owner(state))
            if not isinstance(result, JobInfo):
                return result
            return await self._judge(result, state)
        except Exception as exc:  # poll must answer; a bug here must not drop servers
            self.log.exception("unexpected error polling Slurm job %s", job_id)
            return Unknown(f"unexpected {type(exc).__name__}: {exc}")

    async def _judge(self, info: JobInfo, state: dict[str, Any]) -> PollResult:
        """:func:`judge` with the node's state, remembering in ``state`` since when the
        node has been in trouble (logged when first seen and when it ends the server)."""
        on_node = info.state in ON_NODE_STATES and info.batch_host
        trouble = await self.node_trouble(info.batch_host) if on_node else None
        before = state.get("node_lost_since")
        result, since = judge(info, trouble, before, time.time(), self.config.node_lost_grace)
        if since is None:
            state.pop("node_lost_since", None)
        else:
            state["node_lost_since"] = since
            if before is None and isinstance(result, Running):
                self.log.warning(
                    "Slurm job %s: node %s %s; the server is reported stopped if that lasts %g s",
                    info.job_id, info.batch_host, trouble, self.config.node_lost_grace,
                )
        if isinstance(result, Stopped) and result.reason:
            self.log.warning("Slurm job %s: %s", info.job_id, result.reason)
            await self._release(info, state)
        return result

    async def _release(self, info: JobInfo, state: Mapping[str, Any]) -> None:
        """Cancel a job whose server is given up with its node. JupyterHub does not stop
        a server its poll found stopped, and Slurm keeps the job, with its cores and its
        user's share of the cluster (user_limits), until it marks the node down, then
        requeues it: a user at their node limit could not start again on another node
        until then. Best effort: a failure is logged, and the node's end ends the job."""
        try:
            await self._scancel(state)
        except BackendError as exc:
            self.log.warning("Slurm job %s on a lost node not cancelled: %s", info.job_id, exc)

    # -- progress / state -------------------------------------------------------------

    async def progress(self, state: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Queue state, pending reason and expected start time while the start runs."""
        seen = None
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            phase = state.get("phase")
            event = progress_event(state)
            key = (event or {}).get("message")
            if event and key != seen:
                seen = key
                yield event
            if phase in ("started", "failed"):
                return
            await asyncio.sleep(0.5)

    def load_state(self, state: Mapping[str, Any]) -> dict[str, Any]:
        """Validated copy of a saved state (see :func:`validate_state`)."""
        out = validate_state(state)
        if state and not out:
            self.log.warning("ignoring unusable Slurm backend state with keys %s", sorted(state))
        return out
