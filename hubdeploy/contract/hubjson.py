"""hub.json: the data ``hubdeploy render`` writes and the hub's static config reads.

The TypedDicts below are the whole shape (docs/design.md shows an example). The CLI side
builds a :class:`HubJson` (``hubdeploy.render.hubdata``); the hub side reads it with
:func:`load` (``config/jupyterhub_config.py``, ``hubdeploy.hub.orphans``). Secrets are
never in it: only the paths of the files that hold them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal, TypedDict

from hubdeploy.contract.identity import IdentityConfig
from hubdeploy.contract.layout import HUB_JSON_ENV, HUB_JSON_PATH


class HubSection(TypedDict):
    ip: str
    port: int
    connect_url: str


class ProxySection(TypedDict):
    api_url: str
    token_file: str
    route_check_interval: int


class DatabaseSection(TypedDict, total=False):
    url: str  # always present
    password_file: str  # PostgreSQL only: the password never enters hub.json


# The functional form: "class" is a Python keyword.
AuthenticatorSection = TypedDict("AuthenticatorSection", {"class": str, "config": dict[str, Any]})


class ServiceEntry(TypedDict):
    name: str
    token_file: str
    url: str | None
    scopes: list[str]


class Volume(TypedDict):
    source: str
    target: str
    read_only: bool


class SlurmLimits(TypedDict):
    max_cpu: int | None
    max_mem: int | None  # bytes
    max_time: str | None
    max_gpus: int | None


class ProfileSlurm(TypedDict):
    """What ``hubdeploy.backends.slurm_script.job_options`` reads."""

    partition: str | None
    partitions: list[str]
    account: str | None
    qos: str | None
    time: str | None
    gpus: int
    runtime: Literal["native", "apptainer", "podman-hpc", "shifter"]
    image: str | None
    path_prepend: list[str]
    limits: SlurmLimits


class _ProfileRequired(TypedDict):
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
    volumes: list[Volume]
    environment: dict[str, str]
    default: bool
    spawner_config: dict[str, Any]


class Placement(TypedDict):
    constraints: list[str]  # swarm constraints, e.g. node.labels.role==login
    spread: list[str]  # node labels to spread over


class Reserve(TypedDict):
    cpu: float | None  # cores
    mem: int | None  # bytes


class Profile(_ProfileRequired, total=False):
    slurm: ProfileSlurm  # compute profiles only
    placement: Placement  # login profiles with orchestrator swarm
    reserve: Reserve  # login profiles with orchestrator swarm


class SpawnerSection(TypedDict, total=False):
    backend: str  # always present: the backend of login profiles
    backend_config: dict[str, Any]  # always present
    profiles: list[Profile]  # always present
    # Further backends by name (compute profiles' "slurm"), with their configs.
    backends: dict[str, dict[str, Any]]
    # Starts run at once by the hub; more wait in order (hubdeploy.hub.spawnqueue).
    concurrent_spawn_limit: int  # always present


class HubJson(TypedDict):
    site: str
    hub: HubSection
    cookie_secret_file: str
    proxy: ProxySection
    database: DatabaseSection
    authenticator: AuthenticatorSection
    admin_users: list[str]
    # Longest username the hub accepts, in characters after normalisation (hubdeploy.hub.web).
    username_max_length: int
    named_server_limit_per_user: int
    tls: bool  # the proxy terminates TLS: hub cookies are Secure
    services: list[ServiceEntry]
    spawner: SpawnerSection
    identity: IdentityConfig
    # The site's pass-through JupyterHub traits, applied last so that they win.
    config: dict[str, dict[str, Any]]


def path() -> Path:
    """Where the hub side finds hub.json (``$HUBDEPLOY_HUB_JSON`` overrides the mount)."""
    return Path(os.environ.get(HUB_JSON_ENV, HUB_JSON_PATH))


def load(where: Path | str | None = None) -> HubJson:
    """Read hub.json (default: :func:`path`)."""
    return json.loads(Path(where or path()).read_text(encoding="utf-8"))


def dumps(data: HubJson) -> bytes:
    """hub.json's bytes: sorted keys, so the same site renders the same file."""
    return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()
