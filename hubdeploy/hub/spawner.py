"""HubdeploySpawner: JupyterHub's side of a notebook server; the process is a backend's.

The spawner offers the site's profiles, turns the chosen one into Spawner traits and a
:class:`~hubdeploy.backends.base.ServerSpec`, and keeps the backend's per-server state in
the hub database, so that a hub restarted with ``cleanup_servers=False`` finds its running
notebooks again. Where and how the process runs is the backend's business.
"""

from __future__ import annotations

import html
import json
from typing import Any

from jupyterhub.spawner import Spawner
from tornado import web
from traitlets import Dict, List, Unicode, default

from hubdeploy.backends import get_backend
from hubdeploy.backends.base import (
    ADOPTED_TOKEN_KEY,
    Backend,
    Running,
    ServerSpec,
    Stopped,
)

# One backend per (name, config) for the whole hub: a shared Docker client or scheduler
# session, not one per user.
_BACKENDS: dict[tuple[str, str], Backend] = {}


def _check_user_options(spawner: HubdeploySpawner, user_options: dict) -> None:
    # JupyterHub >= 5.3 calls this before start(): an unknown profile is refused with
    # 400 before anything is created (start() checks again for older hubs).
    spawner.select_profile(user_options)


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

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._backend_state: dict[str, Any] = {}
        # Original values of the traits the last applied profile changed.
        self._profile_saved: dict[str, Any] = {}

    # The server listens on all interfaces of its container, always on the same port:
    # every container has its own address, so ports never collide.
    @default("ip")
    def _default_ip(self):
        return "0.0.0.0"

    @default("port")
    def _default_port(self):
        return 8888

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
                + "</label></div>"
            )
        return (
            '<fieldset class="hubdeploy-profiles"><legend>Choose a server profile</legend>'
            + "".join(items)
            + "</fieldset>"
        )

    def profile_from_form(self, form_data: dict[str, list[str]]) -> dict[str, str]:
        """Form data (or /spawn query arguments) -> ``{"profile": name}``; 400 when unknown."""
        values = form_data.get("profile") or []
        name = values[0] if values else self.default_profile()["name"]
        return {"profile": self.select_profile({"profile": name})["name"]}

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

    def get_backend(self) -> Backend:
        """The shared backend instance for this spawner's backend name and config."""
        images = sorted({p["image_ref"] for p in self.profiles if p.get("image_ref")})
        config = {**self.backend_config, "allowed_images": images}
        key = (self.backend, json.dumps(config, sort_keys=True, default=str))
        if key not in _BACKENDS:
            _BACKENDS[key] = get_backend(self.backend)(config, log=self.log)
        return _BACKENDS[key]

    async def start(self):
        """Apply the chosen profile and start the server through the backend."""
        profile = self.select_profile(self.user_options)
        self._apply_profile(profile)
        effective = {**profile, "cpu": self.cpu_limit, "mem_limit": self.mem_limit}
        spec = ServerSpec(
            user=self.user.name,
            server_name=self.name or "",
            profile=effective,
            env={k: str(v) for k, v in self.get_env().items()},
            cmd=[*self.cmd, *self.get_args()],
            port=self.port,
        )
        # The same dict object that progress() reads while the backend fills it.
        state = self._backend_state
        state.clear()
        self.log.info("starting %s with profile %s on backend %s", self._log_name, profile["name"], self.backend)
        host, port = await self.get_backend().start(spec, state)
        token = state.pop(ADOPTED_TOKEN_KEY, None)
        if token:
            # JupyterHub accepts the adopted server's own token (as for DockerSpawner).
            self.api_token = token
        state["profile"] = profile["name"]
        return host, port

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
            state["hubdeploy"] = {"backend": self.backend, "state": dict(self._backend_state)}
        return state

    def load_state(self, state):
        """Restore the backend state saved by :meth:`get_state` (after a hub restart)."""
        super().load_state(state)
        saved = (state or {}).get("hubdeploy")
        if not saved:
            return
        if saved.get("backend") != self.backend:
            self.log.warning(
                "%s was started by backend %r, the hub now uses %r; polling it with the latter",
                self._log_name,
                saved.get("backend"),
                self.backend,
            )
        self._backend_state = self.get_backend().load_state(saved.get("state") or {})

    def clear_state(self):
        """Forget the backend state (the hub calls this after stop and before a start)."""
        super().clear_state()
        self._backend_state = {}
