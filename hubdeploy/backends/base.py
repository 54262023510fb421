"""Where a notebook server process runs: the one abstract class a backend implements.

The spawner (:class:`hubdeploy.hub.spawner.HubdeploySpawner`) owns everything JupyterHub
cares about: profiles, the options form, the environment, the API token, persisting state.
A backend owns only the process: start it somewhere, tell whether it still runs, stop it.

Subclass :class:`Backend` and override:

- :meth:`Backend.start`
- :meth:`Backend.stop`
- :meth:`Backend.poll`
- optionally :meth:`Backend.progress` and :meth:`Backend.close`
- optionally :meth:`Backend.list_servers`, :meth:`Backend.server_id` and
  :meth:`Backend.remove`, so that ``hubdeploy orphans`` can find servers (containers,
  jobs) the hub no longer tracks, and remove them when an operator says so

and register the class under the ``hubdeploy.backends`` entry-point group::

    [project.entry-points."hubdeploy.backends"]
    slurm = "mysite.backends:SlurmBackend"

One backend instance serves every server of a hub (so a Docker client or a scheduler
session is shared), hence it keeps no per-server attributes. What it needs to find a
server again lives in a per-server ``state`` dict: JSON-able, owned by the backend, opaque
to the spawner, which stores it in the hub database (``Spawner.get_state``) and hands the
same dict back after a hub restart (``Spawner.load_state``).
"""

from __future__ import annotations

import abc
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from hubdeploy.contract import strict
from hubdeploy.contract.hubjson import Profile
from hubdeploy.contract.identity import Identity
from hubdeploy.contract.layout import NOTEBOOK_PORT


@dataclass(frozen=True)
class ServerSpec:
    """Everything a backend needs to start one notebook server.

    ``profile`` is one of hub.json's ``spawner.profiles`` with the user's choices and the
    spawner's effective values written in: ``cpu`` (cores) and ``mem_limit`` (bytes) may
    differ from hub.json when a profile's ``spawner_config`` or the site's pass-through
    config overrides them. ``env`` includes the hub's JUPYTERHUB_* variables and the API
    token, so a backend must not log it. ``cmd`` is the full argv; the server listens on
    ``port`` on all interfaces of wherever it runs.
    """

    user: str
    server_name: str
    profile: Profile
    env: Mapping[str, str] = field(default_factory=dict)
    cmd: list[str] = field(default_factory=lambda: ["jupyterhub-singleuser"])
    port: int = NOTEBOOK_PORT
    # The account the server runs as (hubdeploy.hub.identity); None: the image's user.
    identity: Identity | None = None

    def __repr__(self) -> str:  # keep the API token out of logs and tracebacks
        return (
            f"ServerSpec(user={self.user!r}, server_name={self.server_name!r}, "
            f"profile={self.profile.name!r}, cmd={self.cmd!r}, port={self.port})"
        )


@dataclass(frozen=True)
class Running:
    """The server process exists and runs (or is starting)."""


@dataclass(frozen=True)
class Stopped:
    """The server process is gone; ``status`` is its exit status (0 if not known).

    ``reason`` says why when the backend knows more than an exit status (``node c1 is not
    responding``); the spawner logs it.
    """

    status: int = 0
    reason: str = ""


@dataclass(frozen=True)
class Unknown:
    """The backend cannot tell: the daemon or scheduler did not answer.

    Never report a transient failure as :class:`Stopped`: the hub would drop a live
    server from its books (batchspawner's long-standing bug with a failed ``squeue``).
    """

    reason: str


PollResult = Running | Stopped | Unknown


@dataclass(frozen=True)
class Found:
    """One server process a backend sees, tracked by the hub or not (``list_servers``).

    ``id`` is what :meth:`Backend.server_id` returns for the state of the server that
    owns it (a job id, a container id) and what :meth:`Backend.remove` takes; ``name`` is
    the job or container name the backend derives from user and server name; ``state``
    is the backend's word for it (``RUNNING``, ``PENDING``, ``running``, ``exited``);
    ``node`` where it runs (a Slurm node; empty while pending or for a container),
    ``reason`` the scheduler's reason for its state (a pending job's ``Resources``) and
    ``detail`` anything else an operator should read (``node c1 is not responding``).
    """

    id: str
    name: str
    state: str
    detail: str = ""
    node: str = ""
    reason: str = ""

class BackendError(Exception):
    """A start or stop that failed for a reason a person can act on.

    The message is shown to the user on the spawn page: it must never contain a secret.
    """


# kw_only: a subclass adds required fields after the base class's defaults.
@dataclass(frozen=True, kw_only=True)
class BackendConfig:
    """The keys every backend's config has; a backend subclasses it and adds its own
    fields (with defaults, or without for required keys). Closed: :func:`parse_config`
    refuses a key no field declares, so a misspelt key is an error, not a silent default."""

    # The image references of the site's profiles (added by backends.backend_configs): a backend
    # starts only these.
    allowed_images: tuple[str, ...] = ()


C = TypeVar("C", bound=BackendConfig)


def parse_config(cls: type[C], data: Mapping[str, Any], backend: str) -> C:
    """``data`` (JSON: hub.json's config of ``backend``) as a ``cls``; ValueError naming
    the key for an unknown, missing, mistyped or inconsistent one
    (:func:`hubdeploy.contract.strict.read`, then the class's own ``__post_init__``)."""
    return strict.read(cls, data, f"{backend} backend config")


class Backend(abc.ABC):
    """Base class of notebook backends.

    ``config`` is the backend's own :attr:`Config` (a closed :class:`BackendConfig`): the
    hub reads it from hub.json with :func:`parse_config` when it starts
    (:func:`hubdeploy.backends.backend_configs`), so a misspelt key stops the hub there.
    """

    Config: type[BackendConfig] = BackendConfig
    #: The backend's entry-point name, for messages.
    name = "notebook"

    def __init__(self, config: BackendConfig, log: logging.Logger | None = None):
        if not isinstance(config, self.Config):
            raise TypeError(f"the {self.name} backend takes a {self.Config.__name__}, not {type(config).__name__}")
        self.config = config
        self.log = log or logging.getLogger(f"hubdeploy.backends.{type(self).__name__}")

    @abc.abstractmethod
    async def start(self, spec: ServerSpec, state: dict[str, Any]) -> tuple[str, int]:
        """Start the server described by ``spec``; return ``(host, port)`` the proxy reaches.

        ``state`` is an empty dict that belongs to this server. Record in it, as soon as
        they are known, whatever :meth:`poll`, :meth:`stop` and :meth:`progress` need
        (a container id, a job id): progress reads it while start is still running, and a
        start that fails or times out is followed by :meth:`stop` with the same dict.
        Values must be JSON-able.

        Return only when the process has been started (not necessarily answering HTTP:
        the hub waits for that itself). Raise :class:`BackendError` with a readable message
        when the server cannot start (an image outside the allowlist, a full queue).

        A server of the same name that the hub does not track (left by a lost database,
        a crash) is replaced, never adopted: its token and OAuth client belong to a
        session the hub no longer knows, so it could not log its user in.
        """

    @abc.abstractmethod
    async def stop(self, state: dict[str, Any]) -> None:
        """Stop the server that ``state`` describes and release its compute resources.

        Called after a successful start, after a failed start (``state`` may then be
        partial or empty) and for servers found running after a hub restart. Persistent
        data (home volumes) is kept. Stopping a server that is already gone is not an
        error. Raise when the daemon or scheduler cannot be reached: the server may still
        run, and saying otherwise would leak it silently.
        """

    @abc.abstractmethod
    async def poll(self, state: dict[str, Any]) -> PollResult:
        """Tell whether the server that ``state`` describes runs. Never raises.

        - :class:`Running` while the process exists, including while it starts.
        - :class:`Stopped` with its exit status once it has ended or no longer exists;
          also for an empty ``state`` (poll may be called before start, when the hub
          restarts and loads state for a server that never started).
        - :class:`Unknown` with a reason when the daemon or scheduler cannot be asked
          (connection refused, timeout, a 5xx answer). The spawner keeps the server on
          the hub's books and asks again at the next poll.
        """

    async def progress(self, state: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Yield progress events while :meth:`start` runs.

        Events are JupyterHub's: ``{"progress": 0..100, "message": text}``. ``state`` is
        the dict :meth:`start` is filling. The generator must end by itself (bounded in
        time); the hub also stops reading it once the start is over. The default yields
        nothing.
        """
        return
        yield  # pragma: no cover - makes this an async generator

    def load_state(self, state: Mapping[str, Any]) -> dict[str, Any]:
        """Turn state read back from the hub database into the dict the methods expect.

        The default copies it; override to migrate state written by an older version.
        """
        return dict(state)

    # -- finding servers the hub lost (optional) ---------------------------------------

    async def list_servers(self) -> list[Found] | None:
        """Every server process this backend started for this site that still exists.

        Tracked or not: the caller (:mod:`hubdeploy.hub.orphans`) compares the answer with
        the states the hub holds. ``None`` means this backend cannot list (the default).
        Raise :class:`BackendError` when the daemon or scheduler cannot be asked: an
        incomplete list must never be mistaken for "nothing left behind".
        """
        return None

    def server_id(self, state: Mapping[str, Any]) -> str | None:
        """The :attr:`Found.id` of the process ``state`` describes, if it has one yet."""
        return None

    def server_name(self, state: Mapping[str, Any]) -> str | None:
        """The :attr:`Found.name` ``state`` records before its id is known (a start in flight)."""
        return None

    async def remove(self, server_id: str) -> None:
        """Remove one process :meth:`list_servers` reported (cancel the job, remove the
        container). Only ever called for a server the hub does not track."""
        raise BackendError(f"{type(self).__name__} cannot remove servers")

    async def close(self) -> None:
        """Release shared resources (clients, thread pools) when the hub shuts down."""
