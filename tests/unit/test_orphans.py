"""Which servers the hub tracks (hubdeploy.hub.orphans): the pure parts."""

from __future__ import annotations

import pytest

from hubdeploy.backends.base import BackendError, Found
from hubdeploy.backends.docker import DockerBackend
from hubdeploy.backends.slurm import SlurmBackend, parse_job_list
from hubdeploy.hub.orphans import BadRequest, Tracked, classify, pick, tracked_servers

BACKENDS = {
    "docker": DockerBackend({"network": "n", "prefix": "hubdeploy-s", "site": "s"}),
    "slurm": SlurmBackend({"prefix": "hubdeploy", "site": "s"}),
}


def user(name, **servers):
    return {"name": name, "servers": servers}


def server(backend, **state):
    return {"state": {"hubdeploy": {"backend": backend, "state": state}}}


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
        "17|RUNNING|c1|None|hubdeploy-s-nb-ann\n"
        "18|PENDING||Resources|hubdeploy-s-nb-bob--gpu\n"
        "19|RUNNING|c2|None|my|analysis\n"  # a job of the same account that is not a notebook
        "20|RUNNING|c2|None|hubdeploy-other-nb-ann\n"  # another site's
        "\n"
    )
    assert parse_job_list(out, "hubdeploy-s-nb-") == [
        Found("17", "hubdeploy-s-nb-ann", "RUNNING", node="c1"),
        Found("18", "hubdeploy-s-nb-bob--gpu", "PENDING", reason="Resources"),
    ]


def test_parse_job_list_refuses_what_it_cannot_read():
    with pytest.raises(BackendError, match="unexpected squeue line"):
        parse_job_list("slurm_load_jobs error: Unable to contact slurm controller\n", "hubdeploy-s-nb-")
