"""Users' POSIX accounts: the name rule, the auto and file sources, what the hub
publishes (homes, the cluster's nss files), accounts inside containers, and how the
renderer, the spawner and the Slurm backend carry an account."""

from __future__ import annotations

import asyncio
import json
import os
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from ruamel.yaml import YAML

from hubdeploy import render
from hubdeploy.backends import accounts
from hubdeploy.backends.base import ServerSpec, parse_config
from hubdeploy.backends.slurm import SlurmBackend, SlurmConfig
from hubdeploy.contract.identity import (
    RESERVED_NAMES,
    Group,
    Identity,
    IdentityConfig,
    IdentityError,
    account_name,
    etc_archive,
    reserved_id,
)
from hubdeploy.errors import SiteError
from hubdeploy.hub.identity import AutoSource, SharedSource, ensure_home, get_source, write_nss
from hubdeploy.site.loader import load_site_text
from hubdeploy.contract import strict
from hubdeploy.backends.docker import DockerConfig
from hubsections import profile


def run(coro):
    return asyncio.run(coro)


# -- names ------------------------------------------------------------------------------


@pytest.mark.parametrize("user, uid, name", [
    ("carol", 20001, "carol"), ("has@", 20002, "u20002"), ("秀樹", 20003, "u20003"),
    ("Ann", 20004, "u20004"), ("u123", 20005, "u20005"), ("a" * 33, 20006, "u20006"), ("_x-1", 20007, "_x-1"),
    ("root", 20008, "u20008"), ("slurm", 20009, "u20009"), ("jovyan", 20010, "u20010"), ("users", 20011, "u20011"),
])
def test_account_names(user, uid, name):
    assert account_name(user, uid) == name


@pytest.mark.parametrize("name", sorted(RESERVED_NAMES))
def test_every_reserved_name_is_mapped(name):
    """A hub user named like an account or group of the images (root, slurm, munge,
    daemon, users...) gets u<uid>: never the image's account, never refused."""
    assert account_name(name, 20001) == "u20001"


def test_the_images_system_accounts_are_reserved():
    assert {"root", "slurm", "munge", "daemon", "bin", "sys", "nobody", "jovyan", "users", "nogroup"} <= RESERVED_NAMES
    assert all(reserved_id(n) for n in (0, 42, 100, 999, 1000, 60000, 64030, 65534, 65535))
    assert not any(reserved_id(n) for n in (1001, 20000, 59999, 65536))


@given(st.text(min_size=1, max_size=40), st.text(min_size=1, max_size=40),
       st.integers(1000, 10**6), st.integers(1000, 10**6))
def test_account_names_are_injective(a, b, uid_a, uid_b):
    # Distinct users hold distinct uids (a source never hands one out twice).
    if a != b and uid_a != uid_b:
        assert account_name(a, uid_a) != account_name(b, uid_b)


# -- sources ----------------------------------------------------------------------------


def test_auto_allocates_once_persists_and_never_reuses(tmp_path):
    state = tmp_path / "ids.json"
    cfg = {"source": "auto", "uid_min": 30000, "uid_max": 30002, "state_file": str(state)}
    src = AutoSource(cfg)
    carol = run(src.lookup("carol"))
    assert (carol.name, carol.uid, carol.gid, carol.home) == ("carol", 30000, 30000, "/home/carol")
    assert run(src.lookup("has@")).name == "u30001"
    assert run(AutoSource(cfg).lookup("carol")).uid == 30000  # a restarted hub: the same uid
    assert stat.S_IMODE(state.stat().st_mode) == 0o600
    # A removed user's uid is not handed to the next one.
    data = json.loads(state.read_text())
    del data["users"]["has@"]
    state.write_text(json.dumps(data))
    assert run(src.lookup("dave")).uid == 30002
    with pytest.raises(IdentityError, match="auto.*no uid left.*30000-30002"):
        run(src.lookup("erin"))


def test_auto_gives_system_account_names_their_own_uid_name(tmp_path):
    """Red team: hub user 'slurm' got account 'slurm' (uid 20003), and squeue showed jobs
    of slurm(20003) beside the image's real slurm. Now it is u<uid>, as is root."""
    src = AutoSource({"source": "auto", "uid_min": 20003, "state_file": str(tmp_path / "ids.json")})
    slurm, root = run(src.lookup("slurm")), run(src.lookup("root"))
    assert (slurm.name, slurm.uid, slurm.home) == ("u20003", 20003, "/home/u20003")
    assert (root.name, root.uid, root.primary_group.name) == ("u20004", 20004, "u20004")


def test_concurrent_first_spawns_get_distinct_uids(tmp_path):
    src = AutoSource({"source": "auto", "uid_min": 40000, "state_file": str(tmp_path / "ids.json")})

    async def many():
        return await asyncio.gather(*(src.lookup(f"user{i}") for i in range(20)))

    assert len({i.uid for i in run(many())}) == 20


PASSWD = """\
# the site's accounts
carol:x:31001:31001:Carol:/home/carol:/bin/bash
dave:x:31002:100::/home/dave:/bin/zsh
broken line
root:x:0:0:root:/root:/bin/bash
"""
GROUP = "carol:x:31001:\nastro:x:41001:carol,dave\nusers:x:100:\n"


def test_file_source_reads_accounts_and_groups_and_sees_edits(tmp_path):
    (tmp_path / "passwd").write_text(PASSWD)
    (tmp_path / "group").write_text(GROUP)
    src = get_source({"source": "file", "passwd_file": str(tmp_path / "passwd"),
                      "group_file": str(tmp_path / "group")})
    carol = run(src.lookup("carol"))
    assert (carol.uid, carol.gid, carol.groups) == (31001, 31001, (Group("astro", 41001),))
    dave = run(src.lookup("dave"))
    assert dave.primary_group == Group("users", 100) and dave.shell == "/bin/zsh"
    with pytest.raises(IdentityError, match=r"'erin' has no account in identity source file \(passwd\)"):
        run(src.lookup("erin"))
    with pytest.raises(IdentityError, match="uid 0 is reserved"):
        run(src.lookup("root"))  # never a server as root
    # An edit by rename, as editors and config management do: seen without a restart.
    tmp = tmp_path / "passwd.new"
    tmp.write_text(PASSWD + "erin:x:31003:31003::/home/erin:/bin/bash\n")
    os.replace(tmp, tmp_path / "passwd")
    assert run(src.lookup("erin")).uid == 31003


@pytest.mark.parametrize("line, words", [
    # Red team: an account of uid 1000 could rewrite /opt/venv (jovyan's then); 1000 owns
    # /home/jovyan still, so no source may hand it out.
    ("erin:x:1000:31003::/home/erin:/bin/bash", "uid 1000 is reserved (the notebook user jovyan"),
    ("erin:x:64030:31003::/home/erin:/bin/bash", "uid 64030 is reserved"),
    ("erin:x:65534:31003::/home/erin:/bin/bash", "uid 65534 is reserved"),
    ("erin:x:31003:0::/home/erin:/bin/bash", "gid 0 is reserved (system accounts)"),
    ("erin:x:31003:65534::/home/erin:/bin/bash", "gid 65534 is reserved"),
])
def test_file_source_refuses_reserved_ids(tmp_path, line, words):
    (tmp_path / "passwd").write_text(line + "\n")
    src = get_source({"source": "file", "passwd_file": str(tmp_path / "passwd")})
    with pytest.raises(IdentityError) as err:
        run(src.lookup("erin"))
    assert words in str(err.value) and "identity source 'file (passwd)'" in str(err.value)


def test_file_source_refuses_the_name_of_an_images_account(tmp_path):
    """A site passwd line 'slurm' with another uid is a site error: the nodes would take
    its jobs for the Slurm daemon's account."""
    (tmp_path / "passwd").write_text("slurm:x:31005:31005::/home/slurm:/bin/bash\n")
    src = get_source({"source": "file", "passwd_file": str(tmp_path / "passwd")})
    with pytest.raises(IdentityError, match=r"account name 'slurm' is an account or group of the images") as err:
        run(src.lookup("slurm"))
    assert "identity source 'file (passwd)'" in str(err.value)


def test_group_users_stays_allowed_and_a_reserved_supplementary_group_is_refused(tmp_path):
    (tmp_path / "passwd").write_text("dave:x:31002:100::/home/dave:/bin/bash\n")
    (tmp_path / "group").write_text("users:x:100:dave\nshadow:x:42:\n")
    cfg = {"source": "file", "passwd_file": str(tmp_path / "passwd"), "group_file": str(tmp_path / "group")}
    assert run(get_source(cfg).lookup("dave")).primary_group == Group("users", 100)
    # Membership is access: gid 42 reads /etc/shadow in the images.
    (tmp_path / "group").write_text("users:x:100:dave\nshadow:x:42:dave\n")
    with pytest.raises(IdentityError, match=r"group 'shadow' has reserved gid 42 \(system accounts\)"):
        run(get_source(cfg).lookup("dave"))


@pytest.mark.parametrize("auto, key, words", [
    ("{uid_min: 1000, uid_max: 5000}", "uid_min", "overlap the reserved id 1000 (the notebook user jovyan"),
    ("{uid_min: 500, uid_max: 5000}", "uid_min", "overlap the reserved ids 0-999 (system accounts)"),
    ("{uid_min: 20000, uid_max: 70000}", "uid_max", "overlap the reserved ids 60000-65535"),
    ("{uid_min: 64000, uid_max: 64100}", "uid_min", "overlap the reserved ids 60000-65535"),
])
def test_auto_range_cannot_overlap_reserved_ids(auto, key, words):
    text = f"name: x\nidentity:\n  auto: {auto}\nprofiles: [{{name: p, image: base}}]\n"
    with pytest.raises(SiteError) as err:
        load_site_text(text, "site.yaml")
    assert err.value.exit_code == 2
    assert "site.yaml:3:" in str(err.value) and f"identity.auto.{key}: " in str(err.value)
    assert words in str(err.value)
    assert load_site_text(text.replace(auto, "{uid_min: 1001, uid_max: 59999}"), "site.yaml")
    assert load_site_text(text.replace(auto, "{uid_min: 65536, uid_max: 99999}"), "site.yaml")


def test_shared_is_the_images_one_account():
    ident = run(SharedSource({"source": "shared"}).lookup("has@"))
    assert (ident.name, ident.uid, ident.gid, ident.home) == ("jovyan", 1000, 100, "/home/jovyan")


# -- what the hub publishes ---------------------------------------------------------------


def test_nss_files_are_the_union_of_resolved_accounts(tmp_path):
    carol = Identity("carol", "carol", 31001, 31001, "/home/carol", groups=(Group("astro", 41001),))
    dave = Identity("dave", "dave", 31002, 31002, "/home/dave", groups=(Group("astro", 41001),))
    write_nss(tmp_path, [carol])
    write_nss(tmp_path, [dave])
    assert (tmp_path / "passwd").read_text().splitlines() == [carol.passwd_line(), dave.passwd_line()]
    assert "astro:x:41001:carol,dave" in (tmp_path / "group").read_text().splitlines()


def test_home_is_created_owned_and_private(tmp_path):
    ident = Identity("carol", "carol", 31001, 31001, "/home/carol")
    ensure_home(tmp_path, ident)
    home = tmp_path / "carol"
    st_ = home.stat()
    assert (st_.st_uid, st_.st_gid, stat.S_IMODE(st_.st_mode)) == (31001, 31001, 0o700)
    assert (home / ".hubdeploy" / "logs").is_dir() and (home / ".hubdeploy" / "logs").stat().st_uid == 31001
    (home / "notes.txt").write_text("kept")
    ensure_home(tmp_path, ident)
    assert (home / "notes.txt").read_text() == "kept"


# -- accounts inside a container ------------------------------------------------------------

IMAGE_PASSWD = "root:x:0:0:root:/root:/bin/bash\njovyan:x:1000:100::/home/jovyan:/bin/bash\n"
IMAGE_GROUP = "root:x:0:\nusers:x:100:\n"


def test_a_container_gets_the_users_lines_and_keeps_the_images():
    carol = Identity("carol", "carol", 31001, 31001, "/home/carol", groups=(Group("astro", 41001),))
    passwd, group = accounts.with_account(IMAGE_PASSWD, IMAGE_GROUP, carol)
    assert passwd.splitlines() == [*IMAGE_PASSWD.splitlines(), carol.passwd_line()]
    assert group.splitlines() == ["root:x:0:", "users:x:100:", "carol:x:31001:", "astro:x:41001:carol"]
    # An account with the image user's uid replaces it rather than sharing the number.
    other = Identity("x", "site1000", 1000, 1000, "/home/site1000")
    assert "jovyan" not in accounts.with_account(IMAGE_PASSWD, IMAGE_GROUP, other)[0]
    # The shared account is the image's own: nothing to write.
    jovyan = run(SharedSource({}).lookup("anyone"))
    assert accounts.with_account(IMAGE_PASSWD, IMAGE_GROUP, jovyan) is None
    tar = etc_archive(passwd, group)
    assert accounts.read_archive_file([tar], "etc/passwd") == passwd


# -- the renderer ------------------------------------------------------------------------------

SITE = """\
name: idt
slurm:
  cluster: {nodes: 2, cpus: 1, memory: 1G, max_time: "4:00:00"}
profiles:
  - {name: login, image: base, default: true}
  - {name: compute, image: base, node: compute, slurm: {time: "60", limits: {max_time: "2:00:00"}}}
"""
REFS = {n: f"hubdeploy/idt-{n}:0" for n in ("base", "hub", "proxy", "slurm", "slurmdbd", "debian")}


def test_render_auto_identity_for_login_and_the_stacks_cluster():
    site = load_site_text(SITE, "site.yaml")
    data = strict.plain(render.hub_data(site, REFS))
    assert data["identity"] == {"source": "auto", "home_template": "/home/{name}", "uid_min": 20000,
                                "uid_max": 59999, "state_file": "/srv/jupyterhub/data/hubdeploy-identities.json",
                                "homes_dir": "/srv/hubdeploy/homes", "nss_dir": "/srv/hubdeploy/nss",
                                "passwd_file": None, "group_file": None, "ldap": None}
    docker = data["spawner"]["backend_config"]
    assert (docker["homes"], docker["homes_target"]) == ("hubdeploy-idt-homes", "/home")
    slurm = data["spawner"]["backends"]["slurm"]
    assert "{uid}:{gid}" in slurm["submit_prefix"] and slurm["output_in_home"] is True
    compose = YAML(typ="safe").load(render.render(site, Path("."), REFS)["compose.yaml"])
    svcs = compose["services"]
    assert "homes:/srv/hubdeploy/homes" in svcs["hub"]["volumes"] and "nss:/srv/hubdeploy/nss" in svcs["hub"]["volumes"]
    assert "nss:/var/lib/extrausers:ro" in svcs["slurmctld"]["volumes"]
    assert {"nss:/var/lib/extrausers:ro", "homes:/home"} <= set(svcs["slurm-c1"]["volumes"])
    conf = render.render(site, Path("."), REFS)["slurm/slurm.conf"].decode()
    # Every partition's limit is the longest the form offers (2:00:00), not max_time.
    assert "PrivateData=jobs" in conf and "MaxTime=120 " in conf


def test_shared_identity_renders_the_one_account_layout():
    site = load_site_text(SITE + "identity: {source: shared, allow_shared_compute_account: true}\n", "site.yaml")
    data = strict.plain(render.hub_data(site, REFS))
    assert data["identity"] == {"source": "shared", "home_template": "/home/{name}", "homes_dir": None,
                                "nss_dir": None, "uid_min": None, "uid_max": None, "state_file": None,
                                "passwd_file": None, "group_file": None, "ldap": None}
    assert "homes" not in data["spawner"]["backend_config"]
    assert "jovyan" in data["spawner"]["backends"]["slurm"]["submit_prefix"]
    assert any("every user's server as the one account jovyan" in w for w in site.warnings())


def test_shared_compute_account_is_refused_unless_allowed():
    with pytest.raises(SiteError, match="would run every user's jobs as one account.*identity.source is shared"):
        load_site_text(SITE + "identity: {source: shared}\n", "site.yaml")


def test_profile_time_must_fit_the_clusters_max_time():
    with pytest.raises(SiteError, match=r"max_time 6:00:00 is longer than slurm.cluster.max_time \(4:00:00\)"):
        load_site_text(SITE.replace('max_time: "2:00:00"', 'max_time: "6:00:00"'), "site.yaml")


# -- the Slurm backend submits as the user, watches as root ----------------------------------


class Recording(SlurmBackend):
    def __init__(self, outcomes, **config):
        super().__init__(parse_config(SlurmConfig, config, "slurm"))
        self.outcomes, self.argvs = list(outcomes), []

    async def run(self, argv, *, stdin=None, env=None, who=None, account=None):
        self.argvs.append((self._argv(argv, sorted(env or ()), who, account), dict(env or {})))
        return self.outcomes.pop(0)


def test_slurm_submits_polls_and_cancels_as_the_user_in_their_home():
    b = Recording([(0, "7\n", ""), (0, "7|RUNNING|None|N/A|c1|hubdeploy:port=40000\n", "")],
                  submit_prefix=["dexec", "--user", "{uid}:{gid}", "--"], submit_env_option="--env",
                  output_in_home=True, poll_interval=0.01)
    carol = Identity("carol", "carol", 31001, 31001, "/home/carol")
    spec = ServerSpec(user="carol", server_name="", profile=profile(name="c", slurm={}),
                      env={"JUPYTERHUB_API_TOKEN": "t"}, identity=carol)
    assert run(b.start(spec, {})) == ("c1", 40000)
    (sbatch, env), (squeue, _) = b.argvs
    assert sbatch[:3] == ["dexec", "--user", "31001:31001"]
    assert "--chdir=/home/carol" in sbatch and "--output=/home/carol/.hubdeploy/logs/slurm-%j.log" in sbatch
    assert env["HOME"] == "/home/carol" and env["USER"] == "carol"
    # The job's own commands run as its owner: root in the controller reads the munge key.
    assert squeue[:3] == ["dexec", "--user", "31001:31001"]


# -- the spawner -----------------------------------------------------------------------------


def test_a_user_without_an_account_is_refused_naming_the_source(tmp_path):
    pytest.importorskip("jupyterhub")
    from types import SimpleNamespace

    from jupyterhub.objects import Hub
    from jupyterhub.spawner import SpawnException

    from hubdeploy.hub import spawner as spawner_mod

    (tmp_path / "passwd").write_text(PASSWD)
    s = spawner_mod.HubdeploySpawner(
        user=SimpleNamespace(name="mallory", url="/user/mallory/", escaped_name="mallory"), hub=Hub(),
        orm_spawner=SimpleNamespace(name="", server=None),
        profiles=[profile(name="p", image_ref="x:1", default=True)],
        backend="docker", backend_configs={"docker": DockerConfig(network="n", prefix="hubdeploy-t", site="t")},
        concurrent_spawn_limit=8,
        identity=IdentityConfig(source="file", home_template="/home/{name}", homes_dir=str(tmp_path / "homes"),
                                nss_dir=None, uid_min=None, uid_max=None, state_file=None,
                                passwd_file=str(tmp_path / "passwd"), group_file=None, ldap=None),
    )
    with pytest.raises(SpawnException) as exc:
        run(s.start())
    assert exc.value.status_code == 403
    assert "'mallory' has no account in identity source file (passwd)" in exc.value.jupyterhub_message
    assert not (tmp_path / "homes").exists()  # nothing was made for them


def test_a_damaged_allocation_file_refuses_rather_than_starting_over(tmp_path):
    state = tmp_path / "ids.json"
    state.write_text("{not json")
    with pytest.raises(IdentityError, match="cannot read its allocations"):
        run(AutoSource({"source": "auto", "state_file": str(state)}).lookup("carol"))
    assert state.read_text() == "{not json"


def test_validate_warns_about_the_shared_account(tmp_path):
    import subprocess
    import sys

    site = tmp_path / "site.yaml"
    site.write_text("name: x\nidentity: {source: shared}\nprofiles: [{name: p, image: base}]\n")
    proc = subprocess.run([sys.executable, "-m", "hubdeploy", "--site", str(site), "validate"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "warning: identity.source: shared runs every user's server as the one account jovyan" in proc.stderr


def test_homes_on_a_host_file_system_are_bind_mounted_everywhere():
    site = load_site_text(SITE + "identity: {homes_host: /global/homes, home: \"/global/homes/{name}\"}\n", "site.yaml")
    data = strict.plain(render.hub_data(site, REFS))
    assert data["spawner"]["backend_config"]["homes"] == "/global/homes"
    assert data["spawner"]["backend_config"]["homes_target"] == "/global/homes"
    assert data["identity"]["home_template"] == "/global/homes/{name}"
    compose = YAML(typ="safe").load(render.render(site, Path("."), REFS)["compose.yaml"])
    assert "homes" not in compose["volumes"]  # no stack volume: the site's file system
    assert "/global/homes:/srv/hubdeploy/homes" in compose["services"]["hub"]["volumes"]
    assert "/global/homes:/global/homes" in compose["services"]["slurm-c1"]["volumes"]


def test_publishing_a_known_account_again_rewrites_nothing(tmp_path):
    carol = Identity("carol", "carol", 31001, 31001, "/home/carol")
    write_nss(tmp_path, [carol])
    before = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    write_nss(tmp_path, [carol])
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == before
