"""hub.json: the data ``hubdeploy render`` writes and the hub side reads, typed once.

The frozen dataclasses below are the whole shape (docs/design.md shows an example). The
CLI side builds a :class:`HubJson` (``hubdeploy.render.hubdata``) and writes it with
:func:`dumps`; the hub side reads it with :func:`load` (``hubdeploy.hub.configure``,
``hubdeploy.hub.orphans``), which checks it strictly (:mod:`hubdeploy.contract.strict`): a
missing, unknown or mistyped key stops the hub at start, naming the key. Every key is
written, null where it does not apply, so the hub has no defaults of its own: the site
file's schema holds them all. Secrets are never in it: only the paths of the files that
hold them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from hubdeploy.contract.identity import IdentityConfig
from hubdeploy.contract.layout import HUB_JSON_ENV, HUB_JSON_PATH
from hubdeploy.contract.strict import ShapeError, json_name, plain, read


@dataclass(frozen=True)
class HubSection:
    ip: str
    port: int
    connect_url: str


@dataclass(frozen=True)
class ProxySection:
    api_url: str
    token_file: str
    route_check_interval: int


@dataclass(frozen=True)
class DatabaseSection:
    url: str
    password_file: str | None  # PostgreSQL only: the password never enters hub.json


@dataclass(frozen=True)
class AuthenticatorSection:
    class_: str = field(metadata=json_name("class"))  # an entry-point name or a class path
    config: dict[str, Any]


@dataclass(frozen=True)
class ServiceEntry:
    name: str
    token_file: str
    url: str | None
    scopes: tuple[str, ...]


@dataclass(frozen=True)
class Volume:
    source: str
    target: str
    read_only: bool


@dataclass(frozen=True)
class SlurmLimits:
    max_cpu: int | None
    max_mem: int | None  # bytes
    max_time: str | None
    max_gpus: int | None


# How a compute job runs the server: on the node itself, or in a container runtime.
Runtime = Literal["native", "apptainer", "charliecloud", "podman-hpc", "shifter"]


@dataclass(frozen=True)
class ProfileSlurm:
    """A compute profile's job settings (``hubdeploy.backends.slurm_script.job_options``)."""

    partition: str | None
    partitions: tuple[str, ...]
    account: str | None
    qos: str | None
    time: str | None
    gpus: int
    runtime: Runtime
    # charliecloud on the stack's cluster: the staged directory (layout.staged_image_dir).
    image: str | None
    # A container runtime binds it at the same path: the users' homes on the nodes.
    home_dir: str | None
    path_prepend: tuple[str, ...]
    limits: SlurmLimits


@dataclass(frozen=True)
class Placement:
    constraints: tuple[str, ...]  # swarm constraints, e.g. node.labels.role==login
    spread: tuple[str, ...]  # node labels to spread over


@dataclass(frozen=True)
class Reserve:
    cpu: float | None  # cores
    mem: int | None  # bytes


@dataclass(frozen=True)
class Profile:
    """One profile a user may start: what the spawner offers and a backend runs.

    The spawner hands backends a copy with its effective ``cpu`` and ``mem_limit``
    (``hubdeploy.backends.base.ServerSpec``), which a profile's ``spawner_config``, the
    site's pass-through config or a user's choice may have changed.
    """

    name: str
    display_name: str
    description: str
    image: str
    # What the backend runs: the image's local tag, or REGISTRY/NAME@sha256:DIGEST for a
    # login profile on a swarm with swarm.registry (every node pulls the same bytes).
    image_ref: str
    node: Literal["login", "compute"]
    cpu: float | None
    mem_limit: int | None  # bytes
    pids_limit: int  # processes and threads of a login-node container
    home: bool
    volumes: tuple[Volume, ...]
    environment: dict[str, str]
    default: bool
    spawner_config: dict[str, Any]
    slurm: ProfileSlurm | None  # compute profiles only
    placement: Placement | None  # login profiles with orchestrator swarm
    reserve: Reserve | None  # login profiles with orchestrator swarm


@dataclass(frozen=True)
class SpawnerSection:
    backend: str  # the backend of login profiles
    # Its config, read as that backend's own Config (hubdeploy.backends.configs).
    backend_config: dict[str, Any]
    # Further backends by name (compute profiles' "slurm"), with their configs.
    backends: dict[str, dict[str, Any]]
    profiles: tuple[Profile, ...]
    # Starts run at once by the hub; more wait in order (hubdeploy.hub.spawnqueue).
    concurrent_spawn_limit: int


@dataclass(frozen=True)
class HubJson:
    site: str
    hub: HubSection
    cookie_secret_file: str
    proxy: ProxySection
    database: DatabaseSection
    authenticator: AuthenticatorSection
    admin_users: tuple[str, ...]
    # Longest username the hub accepts, in characters after normalisation (hubdeploy.hub.web).
    username_max_length: int
    named_server_limit_per_user: int
    tls: bool  # the proxy terminates TLS: hub cookies are Secure
    services: tuple[ServiceEntry, ...]
    spawner: SpawnerSection
    identity: IdentityConfig
    # The site's pass-through JupyterHub traits, applied last so that they win.
    config: dict[str, dict[str, Any]]


def path() -> Path:
    """Where the hub side finds hub.json (``$HUBDEPLOY_HUB_JSON`` overrides the mount)."""
    return Path(os.environ.get(HUB_JSON_ENV, HUB_JSON_PATH))


def load(where: Path | str | None = None) -> HubJson:
    """Read and check hub.json (default: :func:`path`); ShapeError naming the file and
    the key when it is not JSON, repeats a key, or lacks, adds or mistypes one."""
    where = Path(where or path())
    try:
        data = json.loads(where.read_text(encoding="utf-8"), object_pairs_hook=_unique)
    except ValueError as exc:  # JSONDecodeError and _unique's refusal
        raise ShapeError(f"{where} is not valid JSON: {exc}") from None
    return read(HubJson, data, str(where))


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json keeps the last of a repeated key: two values written for one key is a fault.
    keys = [k for k, _ in pairs]
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise ValueError(f"key {', '.join(repeated)} is repeated")
    return dict(pairs)


def dumps(data: HubJson) -> bytes:
    """hub.json's bytes: sorted keys, so the same site renders the same file."""
    return (json.dumps(plain(data), indent=2, sort_keys=True) + "\n").encode()
