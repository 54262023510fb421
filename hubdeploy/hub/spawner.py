"""HubdeploySpawner: JupyterHub's side of a notebook server; the process is a backend's.

The spawner offers the site's profiles, turns the chosen one into Spawner traits and a
:class:`~hubdeploy.backends.base.ServerSpec`, and keeps the backend's per-server state in
the hub database, so that a hub restarted with ``cleanup_servers=False`` finds its running
notebooks again. Where and how the process runs is the backend's business.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

from jupyterhub.spawner import Spawner
from tornado import web
from traitlets import Dict, Instance, Integer, List, Unicode, default

from hubdeploy.backends import get_backend
from hubdeploy.backends.base import (
    Backend,
    BackendConfig,
    BackendError,
    Running,
    ServerSpec,
    Stopped,
)
from hubdeploy.contract.backends import SLURM, STATE_KEY, read_saved_state, saved_state
from hubdeploy.contract.hubjson import Profile
from hubdeploy.contract.identity import Identity, IdentityConfig, IdentityError
from hubdeploy.contract.layout import NOTEBOOK_PORT
from hubdeploy.contract.values import OptionError
from hubdeploy.hub import accounts
from hubdeploy.hub.listening import wait_listening
from hubdeploy.hub.profiles import default_profile, form_html, from_form, resolve, select_profile, trait_overrides
from hubdeploy.hub.spawnqueue import QueueTimeout, StartClock, StartTimeout, Ticket, run_within, shared_queue
from hubdeploy.hub.web import OptionsError, refused, start_failed

# Seconds between checks of a waiting start's place in line (a bound: changes wake it sooner).
QUEUE_POLL = 5.0
# Margin of JupyterHub's own start timeout over the spawner's (see _widen_start_timeout).
OUTER_MARGIN = 60


def waiting_message(ahead: int, limit: int) -> str:
    """What a user whose start waits for its turn reads in the progress stream."""
    return (f"waiting: {ahead} starts ahead (this hub starts {limit} servers at a time; "
            f"waiting does not count against the start timeout)")


def _state_changes(state: dict[str, Any]):
    """A progress check for a backend's start: True when it recorded something new in
    ``state`` (a phase, an id) since the last check."""
    seen = [dict(state)]

    async def changed() -> bool:
        now = dict(state)
        moved, seen[0] = now != seen[0], now
        return moved

    return changed


# One backend per (name, config) for the whole hub: a shared Docker client or scheduler
# session, not one per user.
_BACKENDS: dict[tuple[str, BackendConfig], Backend] = {}


def _check_user_options(spawner: HubdeploySpawner, user_options: dict) -> None:
    # JupyterHub >= 5.3 calls this hook before the pre-spawn hook, but logs a traceback
    # for any exception it raises, a refusal included. run_pre_spawn_hook checks the
    # options right after it, before anything is created, and refuses in one log line.
    return None


class HubdeploySpawner(Spawner):
    """Starts notebook servers from the site's profiles through a hubdeploy backend."""

    profiles = List(
        Instance(Profile),
        help="The site's profiles (hub.json spawner.profiles). Users choose one; with a "
        "single profile there is no form.",
    ).tag(config=True)
    # No defaults of their own for what hub.json carries: the site file's schema has them.
    backend = Unicode(help="The backend of login profiles (hub.json spawner.backend), an entry-point "
                      "name in the hubdeploy.backends group.").tag(config=True)
    backend_configs = Dict(
        value_trait=Instance(BackendConfig),
        help="Backend name -> its own Config, read from hub.json's spawner.backend_config "
        "and spawner.backends (hubdeploy.backends.backend_configs).",
    ).tag(config=True)
    node_backends = Dict(
        {"compute": SLURM},
        help="Profile node type -> backend name; other node types use `backend`.",
    ).tag(config=True)
    identity = Instance(
        IdentityConfig,
        allow_none=True,
        help="Where users' POSIX accounts come from (hub.json identity; hubdeploy.contract.identity).",
    ).tag(config=True)
    concurrent_spawn_limit = Integer(
        help="Starts that run at once in this hub (hub.json spawner.concurrent_spawn_limit); "
        "more wait in order, and their waiting does not count against start_timeout.",
    ).tag(config=True)
    queue_timeout = Integer(
        1800,
        help="Seconds a start may wait for its turn before it is refused as 'the hub is busy'.",
    ).tag(config=True)
    start_timeout_max = Integer(
        600,
        help="Ceiling of a start that keeps progressing: start_timeout is extended, a budget "
        "at a time, while the server's process runs, but never past this many seconds "
        "from its turn (nor below start_timeout).",
    ).tag(config=True)

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._backend_state: dict[str, Any] = {}
        # The backend of the current (or last) server: profiles choose it by node type.
        self._backend_name: str | None = None
        # Original values of the traits the last applied profile changed.
        self._profile_saved: dict[str, Any] = {}
        self._prepared: Profile | None = None  # the profile run_pre_spawn_hook applied
        # The start's own budget while JupyterHub's start_timeout holds the outer bound.
        self._start_budget: int | None = None
        self._ticket: Ticket | None = None  # this start's place in the spawn queue

    # The server listens on all interfaces of its container, always on the same port:
    # every container has its own address, so ports never collide.
    @default("ip")
    def _default_ip(self):
        return "0.0.0.0"

    @default("port")
    def _default_port(self):
        return NOTEBOOK_PORT

    @default("options_form")
    def _default_options_form(self):
        return HubdeploySpawner.profile_form

    @default("options_from_form")
    def _default_options_from_form(self):
        return self.profile_from_form

    @default("apply_user_options")
    def _default_apply_user_options(self):
        return _check_user_options

    # -- profiles (hubdeploy.hub.profiles) --------------------------------------------

    def _profiles(self) -> list[Profile]:
        if not self.profiles:
            raise web.HTTPError(500, "HubdeploySpawner.profiles is empty: the site defines no profile")
        return self.profiles

    @staticmethod
    def profile_form(spawner: HubdeploySpawner) -> str:
        """HTML radio buttons, one per profile; empty (no form) with a single profile."""
        if len(spawner.profiles) <= 1:
            return ""
        try:
            chosen = select_profile(spawner.profiles, (spawner.user_options or {}).get("profile"))
        except OptionError:  # a remembered profile the site has since removed
            chosen = default_profile(spawner.profiles)
        return form_html(spawner.profiles, chosen.name)

    def profile_from_form(self, form_data: dict[str, list[str]]) -> dict[str, str]:
        """Form data (or /spawn query arguments) -> ``{"profile": name, ...choices}``; 400 when
        the profile is unknown or a choice is not allowed."""
        try:
            return from_form(self._profiles(), form_data)
        except (OptionError, OptionsError) as exc:
            raise refused(str(exc)) from None

    def resolve_profile(self, user_options: dict | None) -> Profile:
        """The chosen profile with the user's checked choices written in; 400 when not allowed."""
        try:
            return resolve(self._profiles(), user_options)
        except (OptionError, OptionsError) as exc:
            raise refused(str(exc)) from None

    def _apply_profile(self, profile: Profile) -> None:
        # A spawner object lives across its server's restarts: undo what the previous
        # profile set, so choosing B after A does not keep A's environment.
        for name, value in self._profile_saved.items():
            setattr(self, name, value)
        self._profile_saved = {}
        try:
            overrides = trait_overrides(self, profile)
        except KeyError as exc:
            raise web.HTTPError(500, f"profile {profile.name!r}: spawner_config sets unknown trait {exc}") from None
        for key, value in overrides.items():
            self._profile_saved[key] = getattr(self, key)
            setattr(self, key, value)

    # -- backend ----------------------------------------------------------------------

    def backend_for(self, profile: Profile) -> str:
        """The backend name of a profile: by its node type (compute -> slurm), else ``backend``."""
        return self.node_backends.get(profile.node, self.backend)

    def get_backend(self, name: str | None = None) -> Backend:
        """The shared backend instance of ``name`` (default: this server's, else ``backend``)."""
        name = name or self._backend_name or self.backend
        config = self.backend_configs.get(name)
        if config is None:
            raise web.HTTPError(500, f"backend {name!r} is not configured (hub.json spawner.backends)")
        if (name, config) not in _BACKENDS:
            _BACKENDS[name, config] = get_backend(name)(config, log=self.log)
        return _BACKENDS[name, config]

    def _prepare(self) -> Profile:
        profile = self.resolve_profile(self.user_options)
        self._backend_name = self.backend_for(profile)
        self._apply_profile(profile)
        return profile

    def run_pre_spawn_hook(self):
        """Apply the chosen profile before JupyterHub starts its clock.

        JupyterHub reads ``start_timeout`` before ``start()`` runs, so a profile's
        ``spawner_config`` applied in ``start()`` could not lengthen it (a compute profile
        waits in a batch queue). A bad choice raises 400 here, as it would in ``start()``.

        It is also the last moment before JupyterHub reads ``start_timeout``: see
        :meth:`_widen_start_timeout`.
        """
        self._restore_start_timeout()
        self._ticket = None
        self._prepared = self._prepare()
        self._widen_start_timeout()
        return super().run_pre_spawn_hook()

    def _widen_start_timeout(self) -> None:
        """Make JupyterHub's timeout the outer bound and keep the site's as the start's budget.

        JupyterHub 6.1.1 (``User.spawn``) reads ``start_timeout`` once, right after this
        hook, and wraps ``start()`` in ``asyncio.wait_for(start(), start_timeout)``, which
        cancels it when the time is up. Whatever happens inside ``start()`` (a wait in the
        queue, a slow but progressing start) cannot extend that. So JupyterHub gets the
        largest time a start may legitimately take (the queue's bound plus the start's
        ceiling plus a margin, a backstop that never fires first), and ``start()`` applies
        the site's ``start_timeout`` itself, counted from the moment its turn comes and
        extended while the server progresses (:class:`StartClock`). The site's value is
        put back when ``start()`` ends, so every other reader sees it unchanged.
        """
        self._start_budget = self.start_timeout
        self.start_timeout = self.queue_timeout + max(self.start_timeout_max, self._start_budget) + OUTER_MARGIN

    def _restore_start_timeout(self) -> None:
        if self._start_budget is not None:
            self.start_timeout, self._start_budget = self._start_budget, None

    async def start(self):
        """Wait for a slot in the hub's spawn queue, then start the server through the
        backend within the site's start_timeout, counted from that moment (see
        :meth:`_widen_start_timeout`)."""
        budget = self._start_budget if self._start_budget is not None else self.start_timeout
        ticket = self._ticket = shared_queue(self.concurrent_spawn_limit).enter(self._log_name)
        try:
            if not ticket.admitted:
                self.log.info("%s waits for its turn: %d starts ahead", self._log_name, ticket.ahead)
            try:
                await ticket.wait(self.queue_timeout)
            except QueueTimeout as exc:
                raise refused(f"The hub is busy starting other servers: {exc}. Please try again later.",
                              503, "busy") from None
            clock = StartClock(budget, self.start_timeout_max)
            try:
                return await self._start_admitted(clock)
            except StartTimeout as exc:
                raise refused(f"Server did not start: {exc} (start_timeout {budget} s counts from its "
                              f"turn in the queue and is extended while the start progresses, up to "
                              f"{clock.ceiling:g} s)", 504, "timeout") from None
        finally:
            ticket.release()
            self._restore_start_timeout()

    async def _start_admitted(self, clock: StartClock):
        """Apply the chosen profile (unless the pre-spawn hook did) and start the server
        through the backend; return when it listens."""
        profile, self._prepared = self._prepared or self._prepare(), None
        # What the backend runs with: the Spawner's values, which a profile's
        # spawner_config or the site's pass-through config may have changed.
        effective = replace(profile, cpu=self.cpu_limit, mem_limit=self.mem_limit)
        account = await self.resolve_identity()
        spec = ServerSpec(
            user=self.user.name,
            server_name=self.name or "",
            profile=effective,
            env={k: str(v) for k, v in self.get_env().items()},
            cmd=[*self.cmd, *self.get_args()],
            port=self.port,
            identity=account,
        )
        # The same dict object that progress() reads while the backend fills it.
        state = self._backend_state
        state.clear()
        self.log.info("starting %s with profile %s on backend %s", self._log_name, profile.name, self._backend_name)
        try:
            host, port = await run_within(clock, self.get_backend().start(spec, state),
                                          _state_changes(state), "the backend's start")
        except BackendError as exc:
            raise start_failed(exc) from exc
        state["profile"] = profile.name
        await self._await_listening(host, port)
        return host, port

    async def _await_listening(self, host: str, port: int) -> None:
        """Wait until the server listens: ``http_timeout``, extended a timeout at a time
        while its process runs (it is importing on a busy machine), up to
        ``start_timeout_max``. A server that still does not listen is left to JupyterHub's
        own check, which reports it in JupyterHub's words."""
        clock = StartClock(self.http_timeout, self.start_timeout_max)
        while not await self._wait_listening(host, port, clock.remaining()):
            if not (await self._process_runs() and clock.extend()):
                return
            self.log.info("%s runs but does not listen yet after %.0f s: waiting longer",
                          self._log_name, clock.elapsed())

    async def _process_runs(self) -> bool:
        """True while the backend says the server's process runs (still importing, most
        likely); an exit fails the start at once with its status."""
        result = await self.get_backend().poll(self._backend_state)
        if isinstance(result, Stopped):
            raise refused(f"The server's process exited with status {result.status} before it listened", 503, "backend")
        return isinstance(result, Running)

    async def resolve_identity(self) -> Identity:
        """This user's account (:func:`hubdeploy.hub.accounts.resolve`); a SpawnException
        naming the source when there is none. Never another account instead."""
        if self.identity is None:
            raise web.HTTPError(500, "HubdeploySpawner.identity is not set (hub.json identity)")
        try:
            account, source = await accounts.resolve(self.identity, self.user.name)
        except IdentityError as exc:
            raise refused(str(exc), 403, "identity") from None
        self.log.info("%s runs as %s (uid %d) from identity source %s", self._log_name, account.name,
                      account.uid, source.describe())
        return account

    async def _wait_listening(self, host: str, port: int, timeout: float | None = None) -> bool:
        """True as soon as the server accepts connections; False after ``timeout`` s
        (default ``http_timeout``). Waiting here, inside ``start()``, puts the slow part
        (the server importing) under a progress-aware clock (:meth:`_await_listening`), so
        JupyterHub's ``http_timeout`` then only covers an HTTP answer from a server that
        already listens (:mod:`hubdeploy.hub.listening`)."""
        return await wait_listening(host, port, self.http_timeout if timeout is None else timeout)

    async def stop(self, now=False):
        """Stop the server through the backend (its persistent data stays)."""
        await self.get_backend().stop(self._backend_state)

    async def poll(self):
        """None while running or when the backend cannot tell; the exit status once stopped."""
        if self._start_pending:
            return None  # the hub's contract: a server being started counts as running
        if not self._backend_state:
            return 0
        result = await self.get_backend().poll(self._backend_state)
        if isinstance(result, Running):
            return None
        if isinstance(result, Stopped):
            if result.reason:
                self.log.warning("%s stopped: %s", self._log_name, result.reason)
            return result.status
        # Unknown: keep the server on the books; dropping it would lose a live server
        # (and its route) over a transient daemon or scheduler hiccup.
        self.log.warning("cannot tell whether %s is running: %s", self._log_name, result.reason)
        return None

    async def progress(self):
        """'waiting: N starts ahead' while the start waits for its turn, then the
        backend's progress events for the start in flight."""
        async for event in self._queue_progress():
            yield event
        async for event in self.get_backend().progress(self._backend_state):
            yield event

    async def _queue_progress(self):
        """One event per change of this start's place in line, until its turn comes.

        Bounded by the queue's own timeout; the hub also stops reading once the start ends.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.queue_timeout + QUEUE_POLL
        # The progress stream can open before start() has taken its place.
        while self._ticket is None and self._start_pending and loop.time() < deadline:
            await asyncio.sleep(0.1)
        ticket, shown = self._ticket, None
        while ticket is not None and not ticket.admitted and loop.time() < deadline:
            ahead = ticket.ahead
            if ahead == 0:  # left the line without a slot: the start is over
                return
            if ahead != shown:
                shown = ahead
                yield {"progress": 0, "message": waiting_message(ahead, ticket.queue.limit)}
            await ticket.queue.changed(QUEUE_POLL)

    # -- state ------------------------------------------------------------------------

    def get_state(self):
        """JupyterHub's state plus the backend's, under ``hubdeploy``."""
        state = super().get_state()
        if self._backend_state:
            state[STATE_KEY] = saved_state(self._backend_name or self.backend, self._backend_state)
        return state

    def load_state(self, state):
        """Restore the backend state saved by :meth:`get_state` (after a hub restart)."""
        super().load_state(state)
        saved = read_saved_state(state)
        if not saved:
            return
        name = saved.get("backend")
        if name not in self.backend_configs:
            self.log.warning(
                "%s was started by backend %r, which the hub no longer has; polling it with %r",
                self._log_name,
                name,
                self.backend,
            )
            name = self.backend
        self._backend_name = name
        self._backend_state = self.get_backend(name).load_state(saved.get("state") or {})

    def clear_state(self):
        """Forget the backend state (the hub calls this after stop and before a start)."""
        super().clear_state()
        self._backend_state = {}
        self._backend_name = None
