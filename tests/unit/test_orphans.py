"""Which servers the hub tracks (hubdeploy.hub.orphans): the pure parts."""

from __future__ import annotations

import pytest

from hubdeploy.backends.base import BackendError, Found
from hubdeploy.backends.docker import DockerBackend, DockerConfig
from hubdeploy.backends.slurm import SlurmBackend, SlurmConfig
from hubdeploy.backends.slurm_parse import parse_job_list
from hubdeploy.contract.backends import STATE_KEY, saved_state
from hubdeploy.hub.orphans import BadRequest, Tracked, classify, pick, tracked_servers

BACKENDS = {
    "docker": DockerBackend(DockerConfig(network="n", prefix="hubdeploy-s", site="s")),
    "slurm": SlurmBackend(SlurmConfig(prefix="hubdeploy", site="s")),
}


def user(name, **servers):
    return {"name": name, "servers": servers}


def server(backend, **state):
    return {"state": {STATE_KEY: saved_state(backend, state)}}


def test_tracked_servers_reads_each_backends_ids():
    users = [
        user("ann", **{"": server("slurm", job_id="17", job_name="hubdeploy-s-nb-ann")}),
        user("bob", gpu=server("docker", container_id="c0ffee", container_name="hubdeploy-s-nb-bob--gpu")),
        # A start in flight: the name is known, the job id not yet.
        user("cid", **{"": server("slurm", job_name="hubdeploy-s-nb-cid", phase="submitting")}),
        # No hubdeploy state at all (a server of another spawner): the default backend, no id.
        user("dee", **{"": {"state": {}}}),
    ]
    got = tracked_servers(users, BACKENDS, "docker")
    assert got == [
        Tracked("ann", "slurm", "17", "hubdeploy-s-nb-ann"),
        Tracked("bob/gpu", "docker", "c0ffee", "hubdeploy-s-nb-bob--gpu"),
        Tracked("cid", "slurm", None, "hubdeploy-s-nb-cid"),
        Tracked("dee", "docker", None, None),
    ]


def test_classify_by_id_then_by_name_of_a_start_in_flight():
    found = {
        "slurm": [
            Found("17", "hubdeploy-s-nb-ann", "RUNNING"),
            Found("18", "hubdeploy-s-nb-ann", "PENDING"),  # same name, other job: lost
            Found("19", "hubdeploy-s-nb-cid", "PENDING"),  # the start in flight
        ],
        "docker": [Found("c0ffee", "hubdeploy-s-nb-bob--gpu", "running")],
    }
    tracked = [
        Tracked("ann", "slurm", "17", "hubdeploy-s-nb-ann"),
        Tracked("cid", "slurm", None, "hubdeploy-s-nb-cid"),
        # A docker server's id never vouches for a Slurm job of the same id.
        Tracked("eve", "docker", "18", None),
    ]
    rows = {(r["backend"], r["id"]): (r["tracked"], r["owner"]) for r in classify(found, tracked)}
    assert rows == {
        ("slurm", "17"): (True, "ann"),
        ("slurm", "18"): (False, None),
        ("slurm", "19"): (True, "cid"),
        ("docker", "c0ffee"): (False, None),
    }


ROWS = [
    {"backend": "slurm", "id": "17", "tracked": True, "owner": "ann"},
    {"backend": "slurm", "id": "18", "tracked": False, "owner": None},
    {"backend": "docker", "id": "abcdef0123456789", "tracked": False, "owner": None},
    {"backend": "docker", "id": "abcdef9999999999", "tracked": False, "owner": None},
]


def test_pick_exact_ids_and_unique_prefixes():
    assert [r["id"] for r in pick(ROWS, ["18", "abcdef01", "18"])] == ["18", "abcdef0123456789"]


@pytest.mark.parametrize(
    "wanted, says",
    [
        (["17"], "tracked by the hub as ann's server"),
        (["99"], "99: no such server"),
        (["abcdef"], "ambiguous"),
        (["abc"], "abc: no such server"),  # too short to be a prefix
        (["18", "17"], "17: tracked"),  # all or nothing
    ],
)
def test_pick_refuses_tracked_unknown_and_ambiguous(wanted, says):
    with pytest.raises(BadRequest, match=says) as err:
        pick(ROWS, wanted)
    assert str(err.value).startswith("nothing removed")


def test_parse_job_list_keeps_this_sites_notebook_jobs():
    out = (
        "17|RUNNING|c1|None|ann|20001|20001|hubdeploy-s-nb-ann\n"
        "18|PENDING||Resources|bob|20002|20002|hubdeploy-s-nb-bob--gpu\n"
        "19|RUNNING|c2|None|ann|20001|20001|my|analysis\n"  # a job of the same account that is not a notebook
        "20|RUNNING|c2|None|ann|20001|20001|hubdeploy-other-nb-ann\n"  # another site's
        "\n"
    )
    assert parse_job_list(out, "hubdeploy-s-nb-") == [
        Found("17", "hubdeploy-s-nb-ann", "RUNNING", node="c1"),
        Found("18", "hubdeploy-s-nb-bob--gpu", "PENDING", reason="Resources"),
    ]


def test_parse_job_list_refuses_what_it_cannot_read():
    with pytest.raises(BackendError, match="unexpected squeue line"):
        parse_job_list("slurm_load_jobs error: Unable to contact slurm controller\n", "hubdeploy-s-nb-")


class _Listing:
    """A backend that lists ``found`` (or raises), and removes all but ``stuck``."""

    def __init__(self, found, stuck=(), broken=False):
        self.found, self.stuck, self.broken, self.removed = found, set(stuck), broken, []

    async def list_servers(self):
        if self.broken:
            raise BackendError("squeue exited 1: Unable to contact slurm controller")
        return self.found

    def server_id(self, state):
        return state.get("job_id") or state.get("container_id")

    def server_name(self, state):
        return None

    async def remove(self, server_id):
        if server_id in self.stuck:
            raise BackendError(f"scancel {server_id} failed: nope")
        self.removed.append(server_id)

    async def close(self):
        pass


def _stop_all(monkeypatch, backends, users=None):
    import asyncio

    from hubdeploy.hub import orphans

    def hub_users(hub):
        if users is None:
            raise orphans.Failed("cannot reach the hub's API: ConnectionError")
        return users

    monkeypatch.setattr(orphans.hubjson, "load", lambda: {})
    monkeypatch.setattr(orphans, "_backends", lambda hub: (backends, "docker"))
    monkeypatch.setattr(orphans, "_active_users", hub_users)
    return asyncio.run(orphans.stop_all())


def test_stop_all_stops_tracked_and_untracked_and_names_each_failure(monkeypatch):
    slurm = _Listing([Found("17", "hubdeploy-s-nb-ann", "RUNNING", node="c1"), Found("18", "x", "PENDING")],
                     stuck={"18"})
    docker = _Listing([Found("c0ffee", "hubdeploy-s-nb-bob", "running")])
    report = _stop_all(monkeypatch, {"slurm": slurm, "docker": docker},
                       [user("ann", **{"": server("slurm", job_id="17")})])
    assert slurm.removed == ["17"] and docker.removed == ["c0ffee"]
    assert {(r["id"], r["owner"]) for r in report["stopped"]} == {("17", "ann"), ("c0ffee", None)}
    assert report["failed"] == [{"backend": "slurm", "id": "18", "name": "x", "error": "scancel 18 failed: nope"}]


def test_stop_all_without_the_hub_still_stops_and_a_backend_it_cannot_list_is_named(monkeypatch):
    slurm = _Listing([], broken=True)
    docker = _Listing([Found("c0ffee", "hubdeploy-s-nb-bob", "running")])
    report = _stop_all(monkeypatch, {"slurm": slurm, "docker": docker}, users=None)
    assert docker.removed == ["c0ffee"]
    assert [(f["backend"], f["id"]) for f in report["failed"]] == [("slurm", None)]
    assert "cannot list" in report["failed"][0]["error"]
