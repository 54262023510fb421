"""HubdeploySpawner: JupyterHub's side of a notebook server; the process is a backend's.

The spawner offers the site's profiles, turns the chosen one into Spawner traits and a
:class:`~hubdeploy.backends.base.ServerSpec`, and keeps the backend's per-server state in
the hub database, so that a hub restarted with ``cleanup_servers=False`` finds its running
notebooks again. Where and how the process runs is the backend's business.
"""

from __future__ import annotations

import asyncio
import html
import json
from typing import Any

from jupyterhub.spawner import Spawner
from tornado import web
from traitlets import Dict, List, Unicode, default

from hubdeploy.backends import backend_config, get_backend
from hubdeploy.backends.base import (
    Backend,
    BackendError,
    Running,
    ServerSpec,
    Stopped,
)
from hubdeploy.contract.identity import Identity, IdentityError
from hubdeploy.contract.layout import NOTEBOOK_PORT
from hubdeploy.contract.values import OptionError, check_limits, memory_bytes, parse_time
from hubdeploy.hub.identity import DEFAULT_TEMPLATE, IdentitySource, ensure_home, get_source, write_nss

try:  # JupyterHub >= 6.0
    from jupyterhub.spawner import SpawnException
except ImportError:  # pragma: no cover - older hubs: a plain HTTPError carries the message too
    SpawnException = None

# What a user may choose for a compute profile, within the site's lists and limits.
SLURM_CHOICES = ("partition", "time", "cpu", "memory")


def apply_slurm_choices(profile: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    """The profile with the user's choices (partition, time, cpu, memory) written in.

    A partition must be one of the profile's; a time, core count or memory may be chosen
    only where the profile sets the matching limit, and must be within it
    (:func:`~hubdeploy.contract.values.check_limits`, the check the Slurm backend makes
    too). Raises OptionError (shown to the user) otherwise; nothing unchecked reaches the
    job script. Empty values mean "the profile's default" (an untouched form field).
    """
    chosen = {k: options.get(k) for k in SLURM_CHOICES if options.get(k) not in (None, "")}
    if not chosen:
        return profile
    name = profile["name"]
    if profile.get("node") != "compute":
        raise OptionError(f"profile {name!r} runs on a login node: {', '.join(chosen)} cannot be chosen")
    slurm = dict(profile.get("slurm") or {})
    limits = slurm.get("limits") or {}
    fixed = {"time": "max_time", "cpu": "max_cpu", "memory": "max_mem"}
    for key, limit in fixed.items():
        if key in chosen and not limits.get(limit):
            raise OptionError(f"profile {name!r} has a fixed {'memory size' if key == 'memory' else key} "
                              f"({key} cannot be chosen)")
    out = dict(profile)
    if "partition" in chosen:
        allowed = slurm.get("partitions") or ([slurm["partition"]] if slurm.get("partition") else [])
        if chosen["partition"] not in allowed:
            raise OptionError(f"partition {chosen['partition']!r} is not offered; choose one of {', '.join(allowed)}")
        slurm["partition"] = chosen["partition"]
    if "time" in chosen:
        slurm["time"] = str(parse_time(chosen["time"]))
    if "cpu" in chosen:
        try:
            out["cpu"] = int(str(chosen["cpu"]).strip())
        except ValueError:
            raise OptionError(f"cores {chosen['cpu']!r} is not a whole number") from None
        if out["cpu"] < 1:
            raise OptionError(f"cores {chosen['cpu']!r} must be at least 1")
    if "memory" in chosen:
        out["mem_limit"] = memory_bytes(str(chosen["memory"]))
        if out["mem_limit"] <= 0:
            raise OptionError(f"memory {chosen['memory']!r} must be more than nothing")
    check_limits(name, limits, cpus=out.get("cpu") if "cpu" in chosen else None,
                 mem_bytes=out["mem_limit"] if "memory" in chosen else None,
                 time_minutes=int(slurm["time"]) if "time" in chosen else None)
    out["slurm"] = slurm
    return out


def refused(message: str, status: int) -> web.HTTPError:
    """An HTTPError whose message reaches the user (API, spawn page, progress stream)."""
    if SpawnException is not None:
        # A SpawnException is a handled refusal: logged in one line, no traceback.
        err = SpawnException(message, reason="backend", status_code=status)
    else:  # pragma: no cover
        err = web.HTTPError(status, "%s", message)
    err.jupyterhub_message = message
    return err


# One identity source per configuration for the whole hub (the auto source's lock and
# the file source's cache are shared by every user's spawner).
_SOURCES: dict[str, IdentitySource] = {}


def identity_source(config: dict[str, Any]) -> IdentitySource:
    key = json.dumps(config, sort_keys=True, default=str)
    if key not in _SOURCES:
        _SOURCES[key] = get_source(config)
    return _SOURCES[key]


def start_failed(exc: BackendError) -> web.HTTPError:
    """The HTTP error a backend's failed start becomes, so its words reach the user.

    JupyterHub answers any other exception from ``start()`` with a bare 500 "Internal
    Server Error" (the reason only in the hub's log, with a traceback) and counts it toward
    ``consecutive_failure_limit``. An HTTPError's message is the API response's
    ``message`` and the spawn page's text; ``jupyterhub_message`` is what the progress
    stream's "Spawn failed: ..." event shows. 503: the site cannot start this server now
    (a scheduler refusing the job, an engine without the image), not a malformed request.
    """
    return refused(str(exc) or type(exc).__name__, 503)


# One backend per (name, config) for the whole hub: a shared Docker client or scheduler
# session, not one per user.
_BACKENDS: dict[tuple[str, str], Backend] = {}


def _check_user_options(spawner: HubdeploySpawner, user_options: dict) -> None:
    # JupyterHub >= 5.3 calls this before start(): an unknown profile is refused with
    # 400 before anything is created (start() checks again for older hubs).
    spawner.resolve_profile(user_options)


def _slurm_fields(p: dict[str, Any]) -> str:
    """The choices a compute profile offers: partition from its list, time, cores and
    memory where it sets a limit. Named ``<profile>.<choice>``; checked again server-side."""
    if p.get("node") != "compute":
        return ""
    slurm = p.get("slurm") or {}
    limits = slurm.get("limits") or {}
    prefix = html.escape(str(p["name"]))
    fields = []
    parts = slurm.get("partitions") or []
    if len(parts) > 1:
        opts = "".join(
            f'<option value="{html.escape(x)}"{" selected" if x == slurm.get("partition") else ""}>{html.escape(x)}</option>'
            for x in parts
        )
        fields.append(f'<label>Partition <select class="form-select" name="{prefix}.partition">{opts}</select></label>')
    if limits.get("max_time"):
        fields.append(
            f'<label>Time limit (minutes or HH:MM:SS, at most {html.escape(str(limits["max_time"]))}) '
            f'<input class="form-control" name="{prefix}.time" value="{html.escape(str(slurm.get("time") or ""))}"></label>'
        )
    if limits.get("max_cpu"):
        fields.append(
            f'<label>Cores <input class="form-control" type="number" min="1" max="{int(limits["max_cpu"])}" '
            f'name="{prefix}.cpu" value="{int(p.get("cpu") or 1)}"></label>'
        )
    if limits.get("max_mem"):
        fields.append(
            f'<label>Memory (e.g. 2G, at most {int(limits["max_mem"]) // 2**20}M) '
            f'<input class="form-control" name="{prefix}.memory"></label>'
        )
    return f'<div class="hubdeploy-slurm ms-4">{"".join(fields)}</div>' if fields else ""


class HubdeploySpawner(Spawner):
    """Starts notebook servers from the site's profiles through a hubdeploy backend."""

    profiles = List(
        Dict(),
        help="The site's profiles, in hub.json's format (docs/design.md). "
        "Users choose one; with a single profile there is no form.",
    ).tag(config=True)
    backend = Unicode("docker", help="Entry-point name in the hubdeploy.backends group.").tag(config=True)
    backend_config = Dict(help="Free-form configuration of the backend (hub.json spawner.backend_config).").tag(
        config=True
    )
    backends = Dict(
        help="Further backends, name -> config (hub.json spawner.backends), e.g. {'slurm': {...}}.",
    ).tag(config=True)
    node_backends = Dict(
        {"compute": "slurm"},
        help="Profile node type -> backend name; other node types use `backend`.",
    ).tag(config=True)
    identity = Dict(
        {"source": "shared"},
        help="Where users' POSIX accounts come from (hub.json identity; hubdeploy.contract.identity).",
    ).tag(config=True)

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._backend_state: dict[str, Any] = {}
        # The backend of the current (or last) server: profiles choose it by node type.
        self._backend_name: str | None = None
        # Original values of the traits the last applied profile changed.
        self._profile_saved: dict[str, Any] = {}
        self._prepared: dict[str, Any] | None = None  # the profile run_pre_spawn_hook applied

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

    # -- profiles ---------------------------------------------------------------------

    def default_profile(self) -> dict[str, Any]:
        """The profile marked ``default``, else the first one."""
        if not self.profiles:
            raise web.HTTPError(500, "HubdeploySpawner.profiles is empty: the site defines no profile")
        return next((p for p in self.profiles if p.get("default")), self.profiles[0])

    def select_profile(self, user_options: dict | None) -> dict[str, Any]:
        """The profile ``user_options["profile"]`` names (the default when absent).

        Raises ``HTTPError(400)`` naming the available profiles for an unknown name: the
        REST API passes ``user_options`` through unchecked.
        """
        default = self.default_profile()
        name = (user_options or {}).get("profile")
        if name is None or name == "":
            return default
        for p in self.profiles:
            if p.get("name") == name:
                return p
        available = ", ".join(str(p.get("name")) for p in self.profiles)
        raise web.HTTPError(400, f"Unknown profile {name!r}. Available profiles: {available}")

    @staticmethod
    def profile_form(spawner: HubdeploySpawner) -> str:
        """HTML radio buttons, one per profile; empty (no form) with a single profile."""
        if len(spawner.profiles) <= 1:
            return ""
        try:
            chosen = spawner.select_profile(spawner.user_options)["name"]
        except web.HTTPError:  # a remembered profile the site has since removed
            chosen = spawner.default_profile()["name"]
        items = []
        for i, p in enumerate(spawner.profiles):
            facts = []
            if p.get("cpu"):
                facts.append(f"{p['cpu']:g} CPU")
            if p.get("mem_limit"):
                facts.append(f"{p['mem_limit'] / 1024**3:.3g} GiB")
            items.append(
                '<div class="form-check">'
                f'<input class="form-check-input" type="radio" name="profile" id="hubdeploy-profile-{i}" '
                f'value="{html.escape(str(p["name"]))}"{" checked" if p["name"] == chosen else ""}>'
                f'<label class="form-check-label" for="hubdeploy-profile-{i}">'
                f"<strong>{html.escape(str(p.get('display_name') or p['name']))}</strong>"
                + (f' <span class="text-muted">({html.escape(", ".join(facts))})</span>' if facts else "")
                + (f"<br><small>{html.escape(str(p.get('description') or ''))}</small>" if p.get("description") else "")
                + "</label>"
                + _slurm_fields(p)
                + "</div>"
            )
        return (
            '<fieldset class="hubdeploy-profiles"><legend>Choose a server profile</legend>'
            + "".join(items)
            + "</fieldset>"
        )

    def profile_from_form(self, form_data: dict[str, list[str]]) -> dict[str, str]:
        """Form data (or /spawn query arguments) -> ``{"profile": name, ...choices}``; 400 when
        the profile is unknown or a choice is not allowed."""
        values = form_data.get("profile") or []
        name = values[0] if values else self.default_profile()["name"]
        profile = self.select_profile({"profile": name})
        options = {"profile": profile["name"]}
        for key in SLURM_CHOICES:
            # Fields are per profile in the form; the bare key works for /spawn?time=60.
            got = form_data.get(f"{profile['name']}.{key}") or form_data.get(key) or []
            if got and got[0].strip():
                options[key] = got[0].strip()
        self.resolve_profile(options)
        return options

    def resolve_profile(self, user_options: dict | None) -> dict[str, Any]:
        """The chosen profile with the user's checked choices written in; 400 when not allowed."""
        profile = self.select_profile(user_options)
        try:
            return apply_slurm_choices(profile, user_options or {})
        except OptionError as exc:
            raise web.HTTPError(400, str(exc)) from None

    def _apply_profile(self, profile: dict[str, Any]) -> None:
        # A spawner object lives across its server's restarts: undo what the previous
        # profile set, so choosing B after A does not keep A's environment.
        for name, value in self._profile_saved.items():
            setattr(self, name, value)
        self._profile_saved = {}
        overrides: dict[str, Any] = {}
        if profile.get("cpu") is not None:
            overrides["cpu_limit"] = float(profile["cpu"])
        if profile.get("mem_limit") is not None:
            overrides["mem_limit"] = int(profile["mem_limit"])
        if profile.get("environment"):
            overrides["environment"] = {**self.environment, **profile["environment"]}
        for key, value in (profile.get("spawner_config") or {}).items():
            if not self.has_trait(key):
                raise web.HTTPError(500, f"profile {profile['name']!r}: spawner_config sets unknown trait {key!r}")
            current = overrides.get(key, getattr(self, key))
            # Dicts merge, as in JupyterHub's group overrides, so a profile adds to the
            # site's environment instead of replacing it.
            overrides[key] = {**current, **value} if isinstance(current, dict) and isinstance(value, dict) else value
        for key, value in overrides.items():
            self._profile_saved[key] = getattr(self, key)
            setattr(self, key, value)

    # -- backend ----------------------------------------------------------------------

    def backend_for(self, profile: dict[str, Any]) -> str:
        """The backend name of a profile: by its node type (compute -> slurm), else ``backend``."""
        return self.node_backends.get(profile.get("node") or "login", self.backend)

    def get_backend(self, name: str | None = None) -> Backend:
        """The shared backend instance of ``name`` (default: this server's, else ``backend``)."""
        name = name or self._backend_name or self.backend
        if name == self.backend:
            base = self.backend_config
        elif name in self.backends:
            base = self.backends[name]
        else:
            raise web.HTTPError(500, f"backend {name!r} is not configured (hub.json spawner.backends)")
        config = backend_config(base, self.profiles)
        key = (name, json.dumps(config, sort_keys=True, default=str))
        if key not in _BACKENDS:
            _BACKENDS[key] = get_backend(name)(config, log=self.log)
        return _BACKENDS[key]

    def _prepare(self) -> dict[str, Any]:
        profile = self.resolve_profile(self.user_options)
        self._backend_name = self.backend_for(profile)
        self._apply_profile(profile)
        return profile

    def run_pre_spawn_hook(self):
        """Apply the chosen profile before JupyterHub starts its clock.

        JupyterHub reads ``start_timeout`` before ``start()`` runs, so a profile's
        ``spawner_config`` applied in ``start()`` could not lengthen it (a compute profile
        waits in a batch queue). A bad choice raises 400 here, as it would in ``start()``.
        """
        self._prepared = self._prepare()
        return super().run_pre_spawn_hook()

    async def start(self):
        """Apply the chosen profile (unless the pre-spawn hook did) and start the server
        through the backend."""
        profile, self._prepared = self._prepared or self._prepare(), None
        effective = {**profile, "cpu": self.cpu_limit, "mem_limit": self.mem_limit}
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
        self.log.info("starting %s with profile %s on backend %s", self._log_name, profile["name"], self._backend_name)
        try:
            host, port = await self.get_backend().start(spec, state)
        except BackendError as exc:
            raise start_failed(exc) from exc
        state["profile"] = profile["name"]
        await self._wait_listening(host, port)
        return host, port

    async def resolve_identity(self) -> Identity:
        """This user's account, with a home and (for the stack's cluster) published to
        the nodes; a SpawnException naming the source when there is none. Never another
        account instead."""
        source = identity_source(self.identity)
        try:
            account = await source.lookup(self.user.name)
        except IdentityError as exc:
            raise refused(str(exc), 403) from None
        homes, nss = self.identity.get("homes_dir"), self.identity.get("nss_dir")
        if homes:
            await asyncio.to_thread(ensure_home, homes, account, self.identity.get("home_template") or DEFAULT_TEMPLATE)
        if nss:
            await asyncio.to_thread(write_nss, nss, [account])
        self.log.info("%s runs as %s (uid %d) from identity source %s", self._log_name, account.name,
                      account.uid, source.describe())
        return account

    async def _wait_listening(self, host: str, port: int) -> None:
        """Return as soon as the server accepts connections (bounded by http_timeout).

        JupyterHub's own readiness check backs off exponentially (0.2, 0.4, 0.8, 1.6 s...),
        which alone added about a second to every spawn; a 50 ms connect loop here lets
        its first check succeed. A server that never listens is left to that check, which
        reports the failure in JupyterHub's own words.
        """
        deadline = asyncio.get_running_loop().time() + self.http_timeout
        while asyncio.get_running_loop().time() < deadline:
            try:
                _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout=1)
            except (OSError, asyncio.TimeoutError):
                await asyncio.sleep(0.05)
                continue
            writer.close()
            return

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
        """The backend's progress events for the start in flight."""
        async for event in self.get_backend().progress(self._backend_state):
            yield event

    # -- state ------------------------------------------------------------------------

    def get_state(self):
        """JupyterHub's state plus the backend's, under ``hubdeploy``."""
        state = super().get_state()
        if self._backend_state:
            state["hubdeploy"] = {"backend": self._backend_name or self.backend, "state": dict(self._backend_state)}
        return state

    def load_state(self, state):
        """Restore the backend state saved by :meth:`get_state` (after a hub restart)."""
        super().load_state(state)
        saved = (state or {}).get("hubdeploy")
        if not saved:
            return
        name = saved.get("backend")
        if name != self.backend and name not in self.backends:
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
