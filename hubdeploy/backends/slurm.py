"""Notebook servers as Slurm batch jobs, driven through the Slurm commands.

Why the commands (sbatch, squeue, scancel) and not slurmrestd: every Slurm site has them
and munge on its login nodes, while slurmrestd with JWT is optional, often not deployed,
and versioned per release (``/slurm/v0.0.38/`` in 22.05). The commands run as argv lists
(``asyncio.create_subprocess_exec``, never a shell), behind an optional ``submit_prefix``
argv: ``["docker", "exec", "-i", "-u", "jovyan", "slurmctld"]`` in the tests,
``["ssh", "submit-host"]`` or ``["sudo", "-u", "{name}"]`` at a site. With ``ssh_ca_key``
a server's own commands go through ``ssh_user_prefix`` instead, logged in as its account
with a certificate that is valid for minutes (:mod:`hubdeploy.backends.sshcert`).

What goes where (see :mod:`hubdeploy.backends.slurm_script`):

- the job script: ``#SBATCH`` options and the runtime wrapper, from validated profile
  values and fixed text only;
- the notebook command: the script's arguments (``sbatch ... /dev/stdin ARG...``);
- the API token and the hub's other variables: ``sbatch --export=NAME,...`` of the
  submitting process's environment, never in argv or in the stored script. With a
  ``submit_prefix`` the variables must cross it: ``submit_env_option`` (``"-e"`` for
  ``docker exec``) adds ``-e NAME`` per variable before the prefix's last word, which
  passes the value from our environment. ``ssh`` passes no environment (short of
  ``AcceptEnv`` on the far side), so ``submit_env_stdin`` sends the values as the first
  lines of stdin instead, read by a fixed ``sh`` program there (:data:`READ_ENV`) that
  exports them and execs sbatch, whose stdin is then the script.

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
import os
import shlex
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hubdeploy.backends.base import (
    Backend,
    BackendConfig,
    BackendError,
    Found,
    PollResult,
    Running,
    ServerSpec,
    Stopped,
    Unknown,
)
from hubdeploy.backends.slurm_parse import (
    ALIVE_STATES,
    DEFAULT_ENV_SKIP,
    ENDING,
    FINAL_STATES,
    HOST,
    INVALID_ACCOUNT,
    INVALID_JOB,
    JOB_ID,
    LIST_FORMAT,
    ON_NODE_STATES,
    PATH_RE,
    READ_ENV,
    CommandError,
    JobInfo,
    JobRow,
    env_lines,
    export_option,
    judge,
    node_trouble,
    parse_job_rows,
    parse_node_states,
    parse_squeue,
    progress_event,
    sbatch_message,
    validate_state,
    with_node_trouble,
)
from hubdeploy.backends.slurm_script import OptionError, job_options, render
from hubdeploy.backends.sshcert import CertificateAuthority, CertificateError
from hubdeploy.contract import layout, names, slurmcmd
from hubdeploy.contract.backends import SLURM
from hubdeploy.contract.identity import Identity

# Who runs the commands that are nobody's job (the listings of slurmcmd) when the prefix
# names an account: root. A job's own commands (its squeue, its scancel) run as its owner.
ADMIN = {"uid": "0", "gid": "0", "name": "root"}
_PLACEHOLDERS = ("{uid}", "{gid}", "{name}")

# Job states in which the server process exists or will exist (squeue %T).


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


class SlurmBackend(Backend):
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
        self.submit_prefix: list[str] = list(c.submit_prefix)
        self.env_option = c.submit_env_option
        self.env_stdin = c.submit_env_stdin
        self.unreachable_code = c.submit_unreachable_code
        self.ca: CertificateAuthority | None = None
        if c.ssh_ca_key:
            self.ca = CertificateAuthority(c.ssh_ca_key, c.ssh_cert_dir, c.ssh_cert_minutes,
                                           key_id=layout.project_name(c.site) if c.site else layout.PROJECT_PREFIX)
        self.name_prefix = "-".join(p for p in (c.prefix or layout.PROJECT_PREFIX, c.site) if p)
        self.command_timeout = c.command_timeout
        self.poll_interval = c.poll_interval
        self.start_poll_min = min(c.start_poll_min, self.poll_interval)
        self.start_timeout = c.start_timeout
        self.stop_timeout = c.stop_timeout
        self.env_skip = frozenset(c.env_skip)
        self._nodes: tuple[float, dict[str, str]] | None = None
        # Accounts whose association this process has made (or found): once per user.
        self._associated: set[str] = set()

    # -- running commands -------------------------------------------------------------

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
        account = None
        if self.ca is not None:
            if spec.identity is None:
                raise BackendError("per-user SSH certificates need the server's account; there is none")
            account = spec.identity.name
        env = self.export_env(spec)
        node = {"python": self.config.node_python, "scontrol": self.config.node_scontrol}
        try:
            options = job_options(spec.profile, export=sorted(env), node_agent=self.config.node_agent, **node)
        except OptionError as exc:
            raise BackendError(f"profile {spec.profile.name!r}: {exc}") from None
        script = render(options)
        name = self.job_name(spec)
        state.update(job_name=name, phase="submitting", **({"account": account} if account else {}))
        if self.fills_account and spec.identity is not None:
            state["owner"] = whose(spec.identity)
        argv = [
            "sbatch",
            "--parsable",
            f"--job-name={name}",
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
            if code == self.unreachable_code:
                raise BackendError(f"cannot reach Slurm to submit (exit {code}): {err.strip()[-300:]}")
            if INVALID_ACCOUNT in err and spec.identity is not None:
                # The association may have gone with the accounting database (a new
                # volume under a running hub): the next start makes it again.
                self._associated.discard(spec.identity.name)
            raise BackendError(f"Slurm refused the job: {sbatch_message(err)}")
        job_id = out.strip().splitlines()[-1].split(";")[0] if out.strip() else ""
        if not JOB_ID.match(job_id):
            state["phase"] = "failed"
            raise BackendError(f"sbatch answered {out.strip()[:200]!r}, not a job id")
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
        try:
            code, _, err = await self.run(argv, account=account, who=who)
        except CommandError as exc:
            raise BackendError(f"cannot cancel Slurm job {job_id or name}: {exc}") from None
        if code != 0 and INVALID_JOB not in err and ENDING not in err:
            raise BackendError(f"scancel {job_id or name} failed: {err.strip()[-300:]}")
        return code

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
        try:
            code, _, err = await self.run(["scancel", server_id], who=who)
        except CommandError as exc:
            raise BackendError(f"cannot cancel Slurm job {server_id}: {exc}") from None
        if code != 0 and INVALID_JOB not in err and ENDING not in err:
            raise BackendError(f"scancel {server_id} failed: {err.strip()[-300:]}")


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
