"""hub.json read where the hub reads it: render's real output round-trips through
``hubjson.load``, and a missing, unknown or mistyped key is refused, named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hubdeploy import render
from hubdeploy.contract import hubjson
from hubdeploy.contract.strict import ShapeError, plain
from hubdeploy.site.loader import load_site

REPO = Path(__file__).resolve().parents[2]

SITES = {
    # The stack's own Slurm cluster, auto identities, a self-signed certificate.
    "example": (REPO / "config" / "example" / "site.yaml").read_text(),
    "swarm": (REPO / "config" / "example" / "site-swarm.yaml").read_text(),
    # Compute profiles on collaboration images through Charliecloud (staged images).
    "compute-images": (REPO / "config" / "example" / "site-compute-images.yaml").read_text(),
    # A site's own Slurm over ssh with certificates, accounts from files, PostgreSQL.
    "own-slurm": """\
name: hdtjson
database: {type: postgresql}
slurm:
  submit:
    ssh: {host: login1.example.org, user: jupyter, known_hosts: known_hosts, certificates: true}
identity: {source: file, file: {passwd: passwd}}
profiles:
  - {name: login, image: base, default: true, volumes: [{source: /srv/data, target: /data}]}
  - {name: gpu, image: base, node: compute, cpu: 2, memory: 4G,
     slurm: {partitions: [gpu, debug], gpus: 1, runtime: apptainer, limits: {max_cpu: 4, max_time: "2:00:00"}}}
""",
    "ldap": """\
name: hdtjson
hub: {config: {JupyterHub: {shutdown_on_logout: true}}}
identity:
  source: ldap
  ldap: {url: "ldaps://ldap.example.org", user_base: "ou=people,dc=x", bind_dn: "cn=hub,dc=x",
         bind_password_file: pw}
profiles:
  - {name: base, image: base, environment: {A: "1"}}
""",
}


def render_site(tmp_path: Path, text: str) -> tuple[hubjson.HubJson, Path]:
    """(what render built, the hub.json file it wrote) for the site ``text``."""
    for name, body in {"known_hosts": "login1.example.org ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE\n",
                       "passwd": "ann:x:30000:30000::/home/ann:/bin/bash\n", "pw": "secret\n"}.items():
        (tmp_path / name).write_text(body)
    (tmp_path / "pw").chmod(0o600)
    (tmp_path / "site.yaml").write_text(text)
    site = load_site(tmp_path / "site.yaml")
    refs = {n: f"hubdeploy/{site.name}-{n}:000000000000"
            for n in [*site.images.names(), "debian", "hub", "proxy", "db", "slurm", "slurmdbd", "prometheus"]}
    files = render.render(site, tmp_path, refs)
    path = tmp_path / "hub.json"
    path.write_bytes(files["hub/hub.json"])
    return render.hub_data(site, refs), path


@pytest.fixture(params=sorted(SITES))
def rendered(request, tmp_path):
    return render_site(tmp_path, SITES[request.param])


def test_renders_real_hub_json_round_trips_through_the_hubs_reader(rendered):
    built, path = rendered
    loaded = hubjson.load(path)
    assert loaded == built
    assert hubjson.dumps(loaded) == path.read_bytes()


def test_every_key_is_written_so_the_hub_needs_no_default(rendered):
    """No key of the shape is left out, whatever the site: optional parts are null."""
    _, path = rendered
    data = json.loads(path.read_text())
    assert set(data) == {f for f in hubjson.HubJson.__dataclass_fields__}
    for p in data["spawner"]["profiles"]:
        assert set(p) == set(hubjson.Profile.__dataclass_fields__)
    assert set(data["identity"]) == set(hubjson.IdentityConfig.__dataclass_fields__)


def _fault(path: Path, change) -> str:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    with pytest.raises(ShapeError) as exc:
        hubjson.load(path)
    return str(exc.value)


@pytest.mark.parametrize("change, message", [
    (lambda d: d["spawner"].pop("concurrent_spawn_limit"), "hub.json lacks spawner.concurrent_spawn_limit"),
    (lambda d: d["proxy"].pop("route_check_interval"), "hub.json lacks proxy.route_check_interval"),
    (lambda d: d.pop("named_server_limit_per_user"), "hub.json lacks named_server_limit_per_user"),
    (lambda d: d["spawner"]["profiles"][0].pop("pids_limit"), "hub.json lacks spawner.profiles[0].pids_limit"),
    (lambda d: d["identity"].pop("source"), "hub.json lacks identity.source"),
    (lambda d: d["spawner"].update(concurent_spawn_limit=8),
     "hub.json: unknown key spawner.concurent_spawn_limit (did you mean concurrent_spawn_limit?); known: backend,"),
    (lambda d: d["spawner"]["profiles"][0].update(mem=1),
     "hub.json: unknown key spawner.profiles[0].mem; known: cpu, default,"),
    (lambda d: d["spawner"].update(concurrent_spawn_limit="8"),
     "hub.json: spawner.concurrent_spawn_limit must be an integer, not '8'"),
    (lambda d: d["spawner"]["profiles"][0].update(cpu="1"),
     "hub.json: spawner.profiles[0].cpu must be a number or null, not '1'"),
    (lambda d: d["spawner"]["profiles"][0].update(node="gpu"),
     "hub.json: spawner.profiles[0].node must be one of 'login', 'compute', not 'gpu'"),
    (lambda d: d.update(tls="yes"), "hub.json: tls must be true or false, not 'yes'"),
    (lambda d: d["identity"].update(source="nis"),
     "hub.json: identity.source must be one of 'auto', 'file', 'ldap', 'shared', not 'nis'"),
    (lambda d: d["authenticator"].pop("class"), "hub.json lacks authenticator.class"),
])
def test_a_missing_unknown_or_mistyped_key_is_a_clear_error(tmp_path, change, message):
    _, path = render_site(tmp_path, SITES["own-slurm"])
    got = _fault(path, change)
    assert got.startswith(f"{path.parent}/{message}"), got


def test_not_json_or_a_repeated_key_is_refused(tmp_path):
    path = tmp_path / "hub.json"
    path.write_text("{")
    with pytest.raises(ShapeError, match=r"hub.json is not valid JSON: Expecting property name"):
        hubjson.load(path)
    # json would keep the last of the two: which one was meant is not known.
    path.write_text('{"site": "a", "site": "b"}')
    with pytest.raises(ShapeError, match="hub.json is not valid JSON: key site is repeated"):
        hubjson.load(path)


def test_the_file_is_found_where_the_hub_mounts_it_or_the_environment_says(tmp_path, monkeypatch, rendered):
    built, path = rendered
    monkeypatch.setenv("HUBDEPLOY_HUB_JSON", str(path))
    assert hubjson.path() == path and hubjson.load() == built
    monkeypatch.delenv("HUBDEPLOY_HUB_JSON")
    assert str(hubjson.path()) == "/etc/hubdeploy/hub.json"


def test_plain_is_what_dumps_writes(rendered):
    built, path = rendered
    assert json.loads(path.read_text()) == plain(built)
