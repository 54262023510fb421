"""The contract's protocols, each side against the other: the backends' names, the
spawner's saved state that ``hubdeploy orphans`` reads back, and the orphans command
the CLI side runs in the hub's container and the rows it reads."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import pytest

from hubdeploy.backends import get_backend, installed_backends
from hubdeploy.backends.base import Found, parse_config
from hubdeploy.contract import orphans as protocol
from hubdeploy.contract.backends import DOCKER, SLURM, SWARM
from hubdeploy.hub import orphans as hub_orphans

pytest.importorskip("jupyterhub")
from jupyterhub.objects import Hub  # noqa: E402

from hubdeploy.hub.spawner import HubdeploySpawner  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def test_the_backends_entry_points_are_the_contracts_names():
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["entry-points"]["hubdeploy.backends"]
    assert sorted(declared) == sorted([DOCKER, SLURM, SWARM]) == installed_backends()
    for name in declared:
        assert get_backend(name).name == name


def _spawner(**config) -> HubdeploySpawner:
    return HubdeploySpawner(user=SimpleNamespace(name="ann", url="/user/ann/", escaped_name="ann"), hub=Hub(),
                            orm_spawner=SimpleNamespace(name="", server=None), **config)


@pytest.mark.parametrize("backend, state, server_id", [
    (SLURM, {"job_id": "17", "job_name": "hubdeploy-s-nb-ann--gpu"}, "17"),
    (DOCKER, {"container_id": "c0ffee", "container_name": "hubdeploy-s-nb-ann--gpu"}, "c0ffee"),
])
def test_what_the_spawner_saves_is_what_orphans_reads(backend, state, server_id):
    configs = {DOCKER: parse_config(get_backend(DOCKER).Config,
                                    {"network": "n", "prefix": "hubdeploy-s", "site": "s"}, DOCKER),
               SLURM: parse_config(get_backend(SLURM).Config, {"prefix": "hubdeploy", "site": "s"}, SLURM)}
    spawner = _spawner(backend=DOCKER, backend_configs=configs)
    spawner._backend_name, spawner._backend_state = backend, dict(state)
    saved = spawner.get_state()
    # What the hub's REST API hands hubdeploy-cli: the spawner state of each server.
    users = [{"name": "ann", "servers": {"gpu": {"state": saved}}}]
    backends = {name: get_backend(name)(cfg) for name, cfg in spawner.backend_configs.items()}
    (tracked,) = hub_orphans.tracked_servers(users, backends, DOCKER)
    assert (tracked.owner, tracked.backend, tracked.id) == (protocol.owner("ann", "gpu"), backend, server_id)
    # And a restarted hub's spawner reads back what it saved.
    again = _spawner(backend=DOCKER, backend_configs=configs)
    again.load_state(saved)
    assert (again._backend_name, again._backend_state) == (backend, state)


def test_rows_carry_every_key_of_the_protocol():
    found = {SLURM: [Found("17", "hubdeploy-s-nb-ann", "RUNNING", node="c1")]}
    (row,) = hub_orphans.classify(found, [hub_orphans.Tracked("ann", SLURM, "17", None)])
    assert set(row) == set(protocol.Row.__annotations__)
    assert set(protocol.Row.__annotations__) == {f.name for f in dataclasses.fields(Found)} | {
        "backend", "tracked", "owner"}
    assert row["owner"] == "ann" and row["tracked"] is True and row["node"] == "c1"


@pytest.mark.parametrize("kwargs, expected", [
    ({}, {"remove": [], "remove_all": False, "stop_all": False}),
    ({"remove": ("c0ffee", "17")}, {"remove": ["c0ffee", "17"], "remove_all": False, "stop_all": False}),
    ({"remove_all": True}, {"remove": [], "remove_all": True, "stop_all": False}),
    ({"stop_all": True}, {"remove": [], "remove_all": False, "stop_all": True}),
])
def test_the_hub_side_reads_the_command_the_cli_side_builds(kwargs, expected):
    argv = protocol.argv(**kwargs)
    assert argv[:3] == ["python3", "-m", hub_orphans.__name__]
    assert vars(hub_orphans.parser().parse_args(argv[3:])) == expected


@pytest.mark.parametrize("user, server", [("ann", ""), ("ann", "gpu"), ("has@", "a/b")])
def test_owner_round_trip(user, server):
    assert protocol.split_owner(protocol.owner(user, server)) == (user, server)
