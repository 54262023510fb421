"""Notebook servers as one-replica Docker Swarm services, spread over login nodes.

The manager the hub talks to schedules each server onto a node that satisfies its
profile's ``placement``; names, labels, accounts, homes and limits follow the docker
backend's rules (this class reuses its plumbing). Differences that come from swarm:

- The server is a service (restart condition ``none``) on an attachable overlay network,
  reached by a per-instance alias with ``dnsrr`` endpoints (task addresses, no VIP).
- The user's passwd and group lines travel as swarm configs mounted over ``/etc/passwd``
  and ``/etc/group``: the node that runs the task may be another machine, so nothing
  can be uploaded into the container before it starts.
- ``start`` returns once the task runs: a task no node can take fails the start with
  swarm's own reason (``no suitable node (...)``) after ``schedule_grace`` seconds.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import docker
import docker.errors
from docker.types import (
    ConfigReference,
    ContainerSpec,
    EndpointSpec,
    NetworkAttachmentConfig,
    Placement,
    RestartPolicy,
    TaskTemplate,
)

from hubdeploy.backends import accounts, swarm_tasks
from hubdeploy.backends.base import BackendError, Found, PollResult, Running, ServerSpec, Stopped, Unknown
from hubdeploy.backends.docker import _UNREACHABLE, DockerBackend, DockerConfig
from hubdeploy.contract.backends import SWARM
from hubdeploy.contract.labels import SWARM_SERVICE_ID
from hubdeploy.contract.layout import LABEL_SITE, LABEL_USER

# Seconds to retry removing a stopped server's configs while the manager lets go of them.
CONFIG_REMOVE_WAIT = 10

_MESSAGES = {
    "create": (20, "Creating the swarm service"),
    "starting": (50, "Swarm is placing the server"),
    "running": (90, "Task running, waiting for the server to answer"),
}


@dataclass(frozen=True, kw_only=True)
class SwarmConfig(DockerConfig):
    """hub.json ``spawner.backend_config`` of the swarm backend (``network`` is an
    attachable overlay network)."""

    schedule_grace: int = 10  # seconds a task may stay unschedulable before the start fails
    task_timeout: int = 300  # seconds from service creation to a running task


class SwarmBackend(DockerBackend):
    """One-replica services on the swarm the hub's engine manages (config: :class:`SwarmConfig`)."""

    Config = SwarmConfig
    name = SWARM

    def __init__(self, config: SwarmConfig, log=None):
        super().__init__(config, log)
        # Stopped servers whose container and configs are still going (held until done:
        # the loop keeps no reference to a future of its own).
        self.releasing: set[asyncio.Future] = set()
        # Account configs a start in flight has found or made and is about to mount: a
        # stopped server's release must not remove one between the lookup and the new
        # service (a restart reuses the same configs). Changed and read under the lock.
        self._configs_lock = threading.Lock()
        self._configs_starting: Counter[str] = Counter()

    config: SwarmConfig

    # -- start ------------------------------------------------------------------------

    async def start(self, spec: ServerSpec, state: dict[str, Any]) -> tuple[str, int]:
        name, host = self._names(spec)
        state.update(service_name=name, phase="create")
        try:
            state["service_id"] = await self._run(self._create_sync, spec, name, host, state)
            await self._wait_running(state)
        except BackendError:
            state["phase"] = "failed"
            await self._remove_quietly(state)
            raise
        except docker.errors.APIError as exc:
            state["phase"] = "failed"
            await self._remove_quietly(state)
            raise BackendError(f"swarm refused to start {name}: {exc.explanation or exc}") from exc
        except _UNREACHABLE as exc:
            state["phase"] = "failed"
            raise BackendError(f"cannot reach the swarm manager: {type(exc).__name__}") from exc
        return host, spec.port

    def _create_sync(self, spec: ServerSpec, name: str, host: str, state: dict[str, Any]) -> str:
        client = self.client()
        for old in client.services.list(filters={"name": name}):
            if old.name == name:  # the filter matches prefixes
                self.log.info("removing stale service %s", name)
                old.remove()
        user = self._as_user(spec)
        starting: list[str] = []
        try:
            return self._create_service(client, spec, name, host, state, user, starting)
        finally:
            with self._configs_lock:
                self._configs_starting.subtract(starting)
                self._configs_starting = +self._configs_starting  # drops the zeros

    def _create_service(self, client, spec: ServerSpec, name: str, host: str, state: dict[str, Any],
                        user: Mapping[str, Any], starting: list[str]) -> str:
        container = ContainerSpec(
            spec.profile.image_ref,
            command=list(spec.cmd),
            env={**spec.env, **self._user_env(spec)},
            workdir=user.get("working_dir"),
            user=user.get("user"),
            groups=[str(g.gid) for g in spec.identity.groups] if spec.identity is not None else None,
            labels=self.labels(spec),
            mounts=self._mounts(client, spec, state),
            configs=self._account_configs(client, spec, state, starting),
            init=self.config.init,
            cap_drop=["ALL"],  # swarm has no no-new-privileges option: nothing to gain then
            stop_grace_period=self.config.stop_timeout * 10**9,
        )
        resources = swarm_tasks.resources(spec.profile)
        template = TaskTemplate(
            container,
            resources=resources or None,
            restart_policy=RestartPolicy(condition="none"),
            placement=Placement(**swarm_tasks.placement(spec.profile)),
            networks=[NetworkAttachmentConfig(self.network, aliases=[host])],
        )
        created = client.api.create_service(
            template,
            name=name,
            labels=self.labels(spec),
            # The Engine API's own spelling: docker-py's ServiceMode writes "replicated",
            # which the engine matches only with case ignored, and the engine proxy
            # refuses any key that is not exactly a field's name.
            mode={"Replicated": {"Replicas": 1}},
            endpoint_spec=EndpointSpec(mode="dnsrr"),
        )
        return created["ID"]

    def _account_configs(self, client, spec: ServerSpec, state: dict[str, Any],
                         starting: list[str]) -> list[ConfigReference] | None:
        """The image's passwd/group with the user's lines, as swarm configs (named by
        content, so a user's servers share them and a changed account gets new ones)."""
        ident = spec.identity
        if ident is None:
            return None
        image = spec.profile.image_ref
        texts = self._etc_cache.get(image)
        if texts is None:
            # Never started, on no network; named and labelled as the site's (the engine
            # proxy allows nothing else).
            probe = client.containers.create(image, command=["true"], labels={LABEL_SITE: self.site},
                                             name=f"{self.prefix}-etc-probe-{secrets.token_hex(4)}",
                                             network_mode="none", cap_drop=["ALL"],
                                             security_opt=["no-new-privileges:true"], pids_limit=16)
            try:
                texts = tuple(accounts.read_archive_file(probe.get_archive(p)[0], p.rsplit("/", 1)[1])
                              for p in ("/etc/passwd", "/etc/group"))
            finally:
                probe.remove(force=True)
            self._etc_cache[image] = texts
        merged = accounts.with_account(texts[0], texts[1], ident)
        if merged is None:
            return None
        named = []
        for path, text in zip(("/etc/passwd", "/etc/group"), merged):
            digest = hashlib.sha256(text.encode()).hexdigest()[:16]
            named.append((path, text, f"{self.prefix}-{path.rsplit('/', 1)[1]}-{digest}"))
        state["configs"] = [cname for _, _, cname in named]
        with self._configs_lock:
            self._configs_starting.update(state["configs"])
            starting += state["configs"]
        refs = []
        for path, text, cname in named:
            found = [c for c in client.configs.list(filters={"name": cname}) if c.name == cname]
            config = found[0] if found else client.configs.create(
                name=cname, data=text.encode(), labels={LABEL_SITE: self.site, LABEL_USER: spec.user})
            refs.append(ConfigReference(config.id, cname, filename=path, uid="0", gid="0", mode=0o444))
        return refs

    async def _wait_running(self, state: dict[str, Any]) -> None:
        """Until the task runs; BackendError with swarm's reason when it cannot."""
        deadline = time.monotonic() + self.config.task_timeout
        unschedulable_since = None
        while time.monotonic() < deadline:
            seen = await self._run(self._task_view, state)
            state["task_state"], state["task_reason"] = seen.state, seen.reason
            if seen.phase == "running":
                state["phase"] = "running"
                return
            if seen.phase == "ended":
                raise BackendError(f"the server's task {seen.state} before it ran: {seen.reason}")
            if seen.phase == "unschedulable":
                unschedulable_since = unschedulable_since or time.monotonic()
                if time.monotonic() - unschedulable_since >= self.config.schedule_grace:
                    raise BackendError(f"swarm cannot place the server: {seen.reason}")
            else:
                unschedulable_since = None
            state["phase"] = "starting"
            await asyncio.sleep(0.25)
        raise BackendError(f"the server's task did not run within {self.config.task_timeout} s "
                           f"(last state {state.get('task_state') or 'none'}: {state.get('task_reason') or '-'})")

    def _task_view(self, state: Mapping[str, Any]) -> swarm_tasks.TaskView | None:
        """The service's newest task; None when the service is gone."""
        api = self.client().api
        ref = state.get("service_id") or state.get("service_name")
        try:
            api.inspect_service(ref)
        except docker.errors.NotFound:
            return None
        return swarm_tasks.view(api.tasks(filters={"service": ref}))

    # -- stop / poll ------------------------------------------------------------------

    async def stop(self, state: dict[str, Any]) -> None:
        """Remove the service and return once its server process has exited.

        Swarm destroys a stopped task's container some seconds later (2.4 s here, after
        the 2 s it waits for gossip before it stops a task on an overlay network); only
        then does the manager let go of the account configs. That wait goes on in the
        background (:attr:`releasing`), so a user's stop is not held up by it; ``down``
        removes whatever configs a hub that went away left behind.
        """
        if not (state.get("service_id") or state.get("service_name")):
            return
        try:
            service_id, configs = await self._run(self._remove_service, state)
            if service_id is None:
                await self._run(self._remove_configs, configs)
                return
            await self._until_no_container(service_id, running=True)
        except _UNREACHABLE as exc:
            raise BackendError(f"cannot stop {state.get('service_name')}: {type(exc).__name__}: {exc}") from exc
        task = asyncio.ensure_future(self._release(service_id, configs))
        self.releasing.add(task)
        task.add_done_callback(self._released)

    async def remove(self, server_id: str) -> None:
        """Stop one server and wait until its container and configs are gone too: ``down``
        removes the users network next, which no container may still be attached to."""
        try:
            service_id, configs = await self._run(self._remove_service, {"service_id": server_id})
            if service_id is not None:
                await self._release(service_id, configs)
            else:
                await self._run(self._remove_configs, configs)
        except _UNREACHABLE as exc:
            raise BackendError(f"cannot remove service {server_id}: {type(exc).__name__}: {exc}") from exc

    async def _remove_quietly(self, state: dict[str, Any]) -> None:
        try:
            await self.stop(state)
        except BackendError as exc:
            self.log.warning("%s", exc)

    def _remove_service(self, state: Mapping[str, Any]) -> tuple[str | None, list[str]]:
        """Remove the site's service: (its id, or None if there was none of this site;
        the account configs to remove once it is gone)."""
        client = self.client()
        configs = list(state.get("configs") or ())
        try:
            service = client.services.get(state.get("service_id") or state.get("service_name"))
            spec = service.attrs["Spec"]
            if spec.get("Labels", {}).get(LABEL_SITE) != self.site:
                return None, configs
            # The spec names its configs too (a remove by id has no state).
            refs = spec["TaskTemplate"].get("ContainerSpec", {}).get("Configs") or []
            configs += [r["ConfigName"] for r in refs if r.get("ConfigName") not in configs]
            service.remove()
        except docker.errors.NotFound:
            return None, configs
        return service.id, configs

    async def _until_no_container(self, service_id: str, *, running: bool) -> None:
        """Until the removed service has no running container (``running``: the server
        has exited), or none at all on this engine (then the manager lets go of its
        configs, and ``down`` can remove the network it was attached to); bounded by the
        stop grace period."""
        deadline = time.monotonic() + self.config.stop_timeout + 10
        filters: dict[str, Any] = {"label": f"{SWARM_SERVICE_ID}={service_id}"}
        if running:
            filters["status"] = "running"
        while time.monotonic() < deadline and await self._run(self.client().api.containers,
                                                               all=not running, filters=filters):
            await asyncio.sleep(0.2)

    async def _release(self, service_id: str, configs: list[str]) -> None:
        await self._until_no_container(service_id, running=False)
        await self._run(self._remove_configs, configs)

    def _released(self, task: asyncio.Future) -> None:
        self.releasing.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.log.warning("removing a stopped server's configs: %s", task.exception())

    def _remove_configs(self, configs: list[str]) -> None:
        """Remove the configs no other server of the site mounts (the user's other
        server keeps them), retrying while the manager still counts a removed task."""
        client = self.client()
        pending = list(configs)
        deadline = time.monotonic() + CONFIG_REMOVE_WAIT
        while pending:
            cname = pending.pop(0)
            try:
                with self._configs_lock:
                    if self._configs_starting[cname] > 0:
                        continue  # kept: a start is about to mount it
                    client.configs.get(cname).remove()
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as exc:
                if "in use" not in str(exc.explanation or exc) or time.monotonic() > deadline:
                    continue  # kept: the user's other server uses it (removed with that one)
                if self._config_users(client, cname) <= 0:
                    pending.append(cname)
                    time.sleep(0.2)

    def _config_users(self, client, cname: str) -> int:
        """How many of this site's services still mount config ``cname``."""
        count = 0
        for svc in client.api.services(filters={"label": f"{LABEL_SITE}={self.site}"}):
            refs = svc["Spec"]["TaskTemplate"].get("ContainerSpec", {}).get("Configs") or []
            count += any(r.get("ConfigName") == cname for r in refs)
        return count

    async def poll(self, state: dict[str, Any]) -> PollResult:
        if not (state.get("service_id") or state.get("service_name")):
            return Stopped(0)
        try:
            seen = await self._run(self._task_view, state)
        except _UNREACHABLE as exc:
            return Unknown(f"swarm manager: {type(exc).__name__}: {exc}")
        if seen is None:
            return Stopped(0, "the service is gone")
        if seen.phase == "ended":
            return Stopped(seen.exit_code, f"task {seen.state}: {seen.reason}")
        if seen.phase == "unschedulable" and state.get("phase") == "running":
            # Placed once and now waiting for a node again (its node left the swarm).
            return Stopped(0, f"task {seen.state}: {seen.reason}")
        return Running()

    # -- servers the hub lost ---------------------------------------------------------

    async def list_servers(self) -> list[Found]:
        try:
            found = await self._run(self._list_sync)
        except _UNREACHABLE as exc:
            raise BackendError(f"cannot list services: {type(exc).__name__}: {exc}") from exc
        return sorted(found, key=lambda f: f.name)

    def _list_sync(self) -> list[Found]:
        api = self.client().api
        out = []
        for svc in api.services(filters={"label": [f"{LABEL_SITE}={self.site}", LABEL_USER]}):
            seen = swarm_tasks.view(api.tasks(filters={"service": svc["ID"]}))
            labels = svc["Spec"].get("Labels") or {}
            out.append(Found(id=svc["ID"], name=svc["Spec"]["Name"], state=seen.state or seen.phase,
                             node=seen.node, reason=seen.reason, detail=f"user {labels.get(LABEL_USER)}"))
        return out

    def server_id(self, state: Mapping[str, Any]) -> str | None:
        return state.get("service_id") or None

    def server_name(self, state: Mapping[str, Any]) -> str | None:
        return state.get("service_name") or None

    async def progress(self, state: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """One event per phase and per new swarm reason (``no suitable node (...)``)."""
        seen = None
        deadline = time.monotonic() + self.config.task_timeout + 30
        while time.monotonic() < deadline:
            phase = state.get("phase")
            now = (phase, state.get("task_state"), state.get("task_reason"))
            if now != seen and phase in _MESSAGES:
                seen = now
                pct, message = _MESSAGES[phase]
                if phase == "starting" and state.get("task_state"):
                    message = f"Swarm task {state['task_state']}"
                    if state.get("task_reason"):
                        message += f": {state['task_reason']}"
                yield {"progress": pct, "message": message}
            if phase in ("running", "failed"):
                return
            await asyncio.sleep(0.2)
