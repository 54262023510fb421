"""Notebook servers as containers on the Docker engine the hub talks to (the login node).

Every docker SDK call runs in a small thread pool: the SDK is synchronous, and a slow or
hung engine must never block the hub's event loop (the hub serves every user from it).

Containers are named by :mod:`hubdeploy.contract.names`, join the site's users network and
carry the labels ``hubdeploy.site/user/server/profile``. The hub and the proxy reach
each by a network alias of its own instance (``names.dns_name``: the container name's head
and a random tag), so a server restarted within seconds is never looked for at the
address a cached name lookup still holds. Servers run as their users' accounts
(``ServerSpec.identity``) with the homes mounted at ``homes_target``; in the one-account
layout each user has a home volume at ``/home/jovyan`` instead, which Docker fills with
the image's (empty, uid 1000 owned) ``/home/jovyan``.
"""

from __future__ import annotations

import asyncio
import functools
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import docker
import docker.errors
import requests.exceptions
from docker.types import Mount

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
from hubdeploy.backends import accounts
from hubdeploy.contract import names
from hubdeploy.contract.backends import DOCKER
from hubdeploy.contract.identity import etc_archive
from hubdeploy.contract.layout import LABEL_PROFILE, LABEL_SERVER, LABEL_SITE, LABEL_USER

HOME_TARGET = "/home/jovyan"
# Container states that mean "the process exists": paused and restarting servers come back.
_ALIVE = {"running", "restarting", "paused"}
# What "the engine did not answer" looks like through the SDK and requests.
_UNREACHABLE = (docker.errors.DockerException, requests.exceptions.RequestException, OSError)

_PHASES = {
    "image": (10, "Checking the image"),
    "volume": (30, "Preparing the home volume"),
    "create": (50, "Creating the container"),
    "start": (70, "Starting the container"),
    "started": (90, "Container started, waiting for the server to answer"),
}


@dataclass(frozen=True, kw_only=True)
class DockerConfig(BackendConfig):
    """hub.json ``spawner.backend_config`` of the docker backend."""

    network: str  # the users network the proxy reaches servers on
    prefix: str  # of container and volume names (hubdeploy-<site>)
    site: str  # the value of the site label
    docker_url: str | None = None  # default: DOCKER_HOST or the local socket
    timeout: int = 30  # seconds per engine call
    stop_timeout: int = 10  # seconds between SIGTERM and SIGKILL
    max_workers: int = 8  # engine calls in flight at once
    init: bool = True  # Docker's tini as PID 1
    # Where users' homes are when servers run as their own accounts: a volume name or a
    # host directory, mounted at homes_target (each home in it is its user's, 0700).
    # Unset: the one-account layout, a home volume per user at /home/jovyan.
    homes: str | None = None
    homes_target: str = "/home"

    def __post_init__(self):
        empty = [k for k in ("network", "prefix", "site") if not getattr(self, k)]
        if empty:
            raise ValueError(f"docker backend config lacks {', '.join(empty)}")


class DockerBackend(Backend):
    """Containers on the local Docker engine (config: :class:`DockerConfig`)."""

    Config = DockerConfig
    name = DOCKER
    config: DockerConfig

    def __init__(self, config: DockerConfig, log=None):
        super().__init__(config, log)
        self.network = self.config.network
        self.prefix = self.config.prefix
        self.site = self.config.site
        self.allowed_images = frozenset(self.config.allowed_images)
        self._client: docker.DockerClient | None = None
        self._client_lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=self.config.max_workers, thread_name_prefix="hubdeploy-docker")
        # An image's /etc/passwd and /etc/group, read once per image (they never change).
        self._etc_cache: dict[str, tuple[str, str]] = {}
        # Engine API requests made, in all (engine_calls) and by each worker thread (a
        # start runs in one thread from end to end, so its own count is a difference).
        self.engine_calls = 0
        self._count_lock = threading.Lock()
        self._thread_calls = threading.local()

    # -- plumbing ---------------------------------------------------------------------

    def _make_client(self) -> docker.DockerClient:
        """A new SDK client. Connects to the engine (API version negotiation)."""
        timeout = self.config.timeout
        url = self.config.docker_url
        client = docker.DockerClient(base_url=url, timeout=timeout) if url else docker.from_env(timeout=timeout)
        client.api.hooks["response"].append(self._count_call)
        return client

    def _count_call(self, response, *args, **kwargs):
        """requests' response hook: one more engine API call (for the start's log line)."""
        with self._count_lock:
            self.engine_calls += 1
        self._thread_calls.n = getattr(self._thread_calls, "n", 0) + 1
        return response

    def _calls_here(self) -> int:
        """Engine API calls this worker thread has made so far."""
        return getattr(self._thread_calls, "n", 0)

    def client(self) -> docker.DockerClient:
        """The shared client, created on first use; call from a worker thread only."""
        with self._client_lock:
            # Created lazily and not cached on failure, so an engine that comes back
            # after an outage is found again by the next call.
            if self._client is None:
                self._client = self._make_client()
            return self._client

    async def _run(self, fn: Callable, *args, **kwargs):
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    def labels(self, spec: ServerSpec) -> dict[str, str]:
        """The labels that mark a container as this site's server for ``spec``."""
        return {
            LABEL_SITE: self.site,
            LABEL_USER: spec.user,
            LABEL_SERVER: spec.server_name,
            LABEL_PROFILE: spec.profile.name,
        }

    # -- start ------------------------------------------------------------------------

    def _names(self, spec: ServerSpec) -> tuple[str, str]:
        """The server's name and its per-instance network alias, once its image is
        known to be one of the site's profile images."""
        image = spec.profile.image_ref
        if image not in self.allowed_images:
            raise BackendError(f"image {image!r} is not one of this site's profile images")
        name = names.container_name(self.prefix, spec.user, spec.server_name)
        return name, names.dns_name(name, secrets.token_hex(6))

    async def start(self, spec: ServerSpec, state: dict[str, Any]) -> tuple[str, int]:
        """Create and start the container; return ``(DNS name, port)`` on the users network."""
        name, host = self._names(spec)
        state.update(container_name=name, phase="image")
        try:
            await self._run(self._start_sync, spec, state, name, host)
        except BackendError:
            state["phase"] = "failed"
            raise
        except docker.errors.APIError as exc:
            state["phase"] = "failed"
            # The engine's explanation (bad mount source, out of memory) is what helps.
            raise BackendError(f"Docker refused to start {name}: {exc.explanation or exc}") from exc
        except _UNREACHABLE as exc:
            state["phase"] = "failed"
            raise BackendError(f"cannot reach the Docker engine: {type(exc).__name__}") from exc
        return host, spec.port

    def _start_sync(self, spec: ServerSpec, state: dict[str, Any], name: str, host: str) -> None:
        # Three engine calls in the usual case (create, put_archive, start): no image or
        # name look-up beforehand, since create answers both (404 no such image, 409 name in
        # use), and no inspect after it (the low-level API returns the id, all start needs).
        calls = self._calls_here()
        client = self.client()
        api = client.api
        image = spec.profile.image_ref
        mounts = self._mounts(client, spec, state)
        state["phase"] = "create"
        create = functools.partial(api.create_container, image, **self._create_args(api, spec, mounts, name, host))
        try:
            try:
                created = create()
            except docker.errors.APIError as exc:
                if exc.status_code != 409:
                    raise
                # Never adopted (see Backend.start): start fresh; the home keeps the data.
                self.log.info("removing stale container %s", name)
                api.remove_container(name, force=True)
                created = create()
        except docker.errors.ImageNotFound:
            # No registry to pull from: images only come from `hubdeploy up`.
            raise BackendError(f"image {image} is not on this Docker engine; run `hubdeploy up`") from None
        container_id = created["Id"]
        # Recorded before start: a failed start is followed by stop(state), which removes it.
        state.update(container_id=container_id, phase="start")
        if spec.identity is not None:
            self._add_account(api, container_id, image, spec.identity)
        api.start(container_id)
        state["phase"] = "started"
        self.log.info("started %s in %d engine API calls", name, self._calls_here() - calls)

    def _create_args(self, api, spec: ServerSpec, mounts: list[Mount], name: str, host: str) -> dict[str, Any]:
        """Keyword arguments of the low-level ``create_container`` for ``spec``."""
        host_kwargs: dict[str, Any] = {
            "mounts": mounts,
            "network_mode": self.network,
            # Docker's init (tini) as PID 1: reaps kernels' orphaned children and turns
            # SIGTERM into a prompt exit for servers that never installed a handler.
            "init": self.config.init,
        }
        if spec.profile.cpu:
            host_kwargs["nano_cpus"] = int(spec.profile.cpu * 1e9)
        if spec.profile.mem_limit:
            host_kwargs["mem_limit"] = spec.profile.mem_limit
        host_kwargs.update(self._confinement(spec))
        ident = spec.identity
        if ident is not None and ident.groups:
            host_kwargs["group_add"] = [str(g.gid) for g in ident.groups]
        return {
            "command": list(spec.cmd),
            "name": name,
            "environment": {**spec.env, **self._user_env(spec)},
            "labels": self.labels(spec),
            "detach": True,
            "host_config": api.create_host_config(**host_kwargs),
            "networking_config": api.create_networking_config(
                {self.network: api.create_endpoint_config(aliases=[host])}
            ),
            **self._as_user(spec),
        }

    def _mounts(self, client: docker.DockerClient, spec: ServerSpec, state: dict[str, Any]) -> list[Mount]:
        mounts = []
        if spec.profile.home:
            state["phase"] = "volume"
            if self.config.homes is not None and spec.identity is not None:
                kind = "bind" if self.config.homes.startswith("/") else "volume"
                mounts.append(Mount(self.config.homes_target, self.config.homes, type=kind))
            else:
                mounts.append(Mount(HOME_TARGET, self._ensure_home(client, spec.user), type="volume"))
        for vol in spec.profile.volumes:
            kind = "bind" if vol.source.startswith("/") else "volume"
            mounts.append(Mount(vol.target, vol.source, type=kind, read_only=vol.read_only))
        return mounts

    def _as_user(self, spec: ServerSpec) -> dict[str, Any]:
        """Who the server runs as and where it starts (its supplementary groups are host
        config: see _create_args)."""
        ident = spec.identity
        if ident is None:
            return {}
        return {"user": f"{ident.uid}:{ident.gid}", "working_dir": self._home(spec) or "/tmp"}

    def _confinement(self, spec: ServerSpec) -> dict[str, Any]:
        """No capabilities, no privilege gain through setuid binaries (su, mount, passwd
        stay in the image but cannot raise anything), and a bound on processes."""
        return {
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges:true"],
            "pids_limit": spec.profile.pids_limit,
        }

    def _home(self, spec: ServerSpec) -> str | None:
        """Where the server's home is: the user's own in the homes mount, the one-account
        layout's home volume, or none (a profile without a home)."""
        if not spec.profile.home:
            return None
        if self.config.homes is not None and spec.identity is not None:
            return spec.identity.home
        return HOME_TARGET

    def _user_env(self, spec: ServerSpec) -> dict[str, str]:
        ident = spec.identity
        if ident is None:
            return {}
        return {"USER": ident.name, "LOGNAME": ident.name, "HOME": self._home(spec) or "/tmp"}

    def _add_account(self, api, container_id: str, image: str, ident) -> None:
        """The user's passwd and group lines in the created container (see accounts)."""
        texts = self._etc_cache.get(image)
        if texts is None:
            texts = tuple(accounts.read_archive_file(api.get_archive(container_id, path)[0], path.rsplit("/", 1)[1])
                          for path in ("/etc/passwd", "/etc/group"))
            self._etc_cache[image] = texts
        merged = accounts.with_account(texts[0], texts[1], ident)
        if merged is not None:
            api.put_archive(container_id, "/", etc_archive(*merged))

    def _ensure_home(self, client: docker.DockerClient, user: str) -> str:
        # Creating a volume that exists returns it unchanged: one call, no look-up first.
        name = names.home_volume(self.prefix, user)
        client.api.create_volume(name, labels={LABEL_SITE: self.site, LABEL_USER: user})
        return name

    # -- stop / poll ------------------------------------------------------------------

    async def stop(self, state: dict[str, Any]) -> None:
        """Stop and remove the container; the home volume stays."""
        if not (state.get("container_id") or state.get("container_name")):
            return
        try:
            await self._run(self._stop_sync, state)
        except _UNREACHABLE as exc:
            raise BackendError(
                f"cannot stop {state.get('container_name')}: Docker engine error {type(exc).__name__}: {exc}"
            ) from exc

    def _stop_sync(self, state: dict[str, Any]) -> None:
        # By id straight away (no inspect first); a name alone is looked up and checked.
        target = state.get("container_id")
        if not target:
            container = self._find(state)
            if container is None:
                return
            target = container.id
        api = self.client().api
        try:
            api.stop(target, timeout=self.config.stop_timeout)
            api.remove_container(target, force=True)
        except docker.errors.NotFound:
            pass  # gone meanwhile: that is what we wanted
        except docker.errors.APIError as exc:
            if "already in progress" not in str(exc.explanation or ""):
                raise

    def _find(self, state: dict[str, Any]):
        client = self.client()
        if state.get("container_id"):
            try:
                return client.containers.get(state["container_id"])
            except docker.errors.NotFound:
                return None
        # A start that failed before create left only the name: touch the container of
        # that name only if it is this site's (someone may have reused the name).
        try:
            container = client.containers.get(state["container_name"])
        except docker.errors.NotFound:
            return None
        if (container.labels or {}).get(LABEL_SITE) != self.site:
            return None
        return container

    async def poll(self, state: dict[str, Any]) -> PollResult:
        """Running / Stopped(exit code) / Unknown when the engine does not answer."""
        if not (state.get("container_id") or state.get("container_name")):
            return Stopped(0)
        try:
            return await self._run(self._poll_sync, state)
        except _UNREACHABLE as exc:
            return Unknown(f"Docker engine: {type(exc).__name__}: {exc}")
        except Exception as exc:  # poll must answer; a bug here must not drop servers
            self.log.exception("unexpected error polling %s", state.get("container_name"))
            return Unknown(f"unexpected {type(exc).__name__}: {exc}")

    def _poll_sync(self, state: dict[str, Any]) -> PollResult:
        container = self._find(state)
        if container is None:
            return Stopped(0)
        st = container.attrs.get("State") or {}
        status = st.get("Status", container.status)
        if status in _ALIVE:
            return Running()
        if status == "created" and state.get("phase") != "started":
            return Running()  # our own start is between create and start
        return Stopped(int(st.get("ExitCode") or 0))

    # -- containers the hub lost ------------------------------------------------------

    async def list_servers(self) -> list[Found]:
        """This site's notebook containers, in any state (by their labels)."""
        try:
            containers = await self._run(
                lambda: self.client().containers.list(
                    all=True, filters={"label": [f"{LABEL_SITE}={self.site}", LABEL_USER]}
                )
            )
        except _UNREACHABLE as exc:
            raise BackendError(f"cannot list containers: Docker engine error {type(exc).__name__}: {exc}") from exc
        return sorted(
            (
                Found(
                    id=c.id,
                    name=c.name,
                    state=c.status,
                    detail=f"user {c.labels.get(LABEL_USER)}",
                )
                for c in containers
            ),
            key=lambda f: f.name,
        )

    def server_id(self, state: Mapping[str, Any]) -> str | None:
        return state.get("container_id") or None

    def server_name(self, state: Mapping[str, Any]) -> str | None:
        return state.get("container_name") or None

    async def remove(self, server_id: str) -> None:
        """Remove one container (its home volume stays)."""
        try:
            await self._run(self._stop_sync, {"container_id": server_id})
        except _UNREACHABLE as exc:
            raise BackendError(f"cannot remove container {server_id[:12]}: {type(exc).__name__}: {exc}") from exc

    # -- progress / close -------------------------------------------------------------

    async def progress(self, state: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """One event per start phase, until the start succeeded or failed (at most 10 minutes)."""
        seen = None
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            phase = state.get("phase")
            if phase != seen and phase in _PHASES:
                seen = phase
                pct, message = _PHASES[phase]
                yield {"progress": pct, "message": message}
            if phase in ("started", "failed"):
                return
            await asyncio.sleep(0.2)

    async def close(self) -> None:
        """Close the client and the thread pool."""
        self._executor.shutdown(wait=False)
        with self._client_lock:
            if self._client is not None:
                self._client.close()
                self._client = None
