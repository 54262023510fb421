"""Compute profiles and the Slurm cluster in the stack: schema, render, images, spawner choices."""

from __future__ import annotations

import asyncio
import copy
from pathlib import Path
from types import SimpleNamespace

import pytest
from ruamel.yaml import YAML

from hubdeploy import render
from hubdeploy.errors import SiteError
from hubdeploy.images.plan import plan_images
from hubdeploy.site.loader import load_site_text
from hubdeploy.state.secrets import secret_names

SITE = """\
name: slurmy
slurm:
  cluster: {nodes: 3, cpus: 2, memory: 2G, partitions: [compute, debug]}
profiles:
  - {name: login, image: base, default: true}
  - name: compute
    image: base
    node: compute
    cpu: 1
    slurm:
      partitions: [compute, debug]
      time: "60"
      limits: {max_cpu: 2, max_memory: 1G, max_time: "4:00:00"}
"""
REFS = {"base": "hubdeploy/slurmy-base:1", "hub": "hubdeploy/slurmy-hub:2", "proxy": "hubdeploy/slurmy-proxy:3",
        "slurm": "hubdeploy/slurmy-slurm:4", "slurmdbd": "hubdeploy/slurmy-slurmdbd:5"}


def site(text=SITE):
    return load_site_text(text, "site.yaml")


def error(text: str) -> str:
    with pytest.raises(SiteError) as exc:
        site(text)
    return str(exc.value)


# -- schema ---------------------------------------------------------------------------


def test_valid_site_and_defaults():
    s = site()
    assert s.slurm.cluster.nodes == 3 and s.profiles[1].node == "compute"
    assert s.profiles[0].node == "login" and s.profiles[0].slurm is None


@pytest.mark.parametrize(
    "text, words",
    [
        ("name: a\nprofiles: [{name: c, image: base, node: compute}]\n", "declares no 'slurm' section"),
        ("name: a\nslurm: {cluster: {}}\nprofiles: [{name: c, image: base, slurm: {time: '5'}}]\n",
         "only applies to a profile with node: compute"),
        ("name: a\nslurm: {cluster: {}, submit: {}}\nprofiles: [{name: c, image: base}]\n", "exactly one of"),
        ("name: a\nslurm: {}\nprofiles: [{name: c, image: base}]\n", "exactly one of"),
        ("name: a\nslurm: {cluster: {partitions: [x]}}\n"
         + "profiles: [{name: c, image: base, node: compute, slurm: {partition: y}}]\n", "'y' is not in slurm.cluster"),
        ("name: a\nslurm: {cluster: {image: nope}}\nprofiles: [{name: c, image: base}]\n", "'nope' is not declared"),
        ("name: a\nslurm: {cluster: {}}\nprofiles: [{name: c, image: base, node: compute,"
         + " slurm: {runtime: docker}}]\n", "runtime"),
        ("name: a\nslurm: {cluster: {}}\nprofiles: [{name: c, image: base, node: compute,"
         + " slurm: {partition: 'a;b'}}]\n", "partition"),
        ("name: a\nslurm: {cluster: {nodes: 0}}\nprofiles: [{name: c, image: base}]\n", "nodes"),
        ("name: a\nslurm: {cluster: {nodez: 2}}\nprofiles: [{name: c, image: base}]\n", "unknown key"),
        ("name: a\nimages: {collaborations: {slurm: {}}}\nprofiles: [{name: c, image: base}]\n", "reserved"),
    ],
)
def test_bad_slurm_sites(text, words):
    assert words in error(text)


def test_native_profile_must_run_the_nodes_image():
    text = SITE.replace("images:", "") + "images: {collaborations: {astro: {}}}\n"
    text = text.replace("  - name: compute\n    image: base", "  - name: compute\n    image: astro")
    assert "run image 'base', not 'astro'" in error(text)


# -- render ---------------------------------------------------------------------------


def test_compose_keeps_slurm_off_the_users_network():
    files = render.render(site(), Path("."), REFS)
    doc = YAML(typ="safe").load(files["compose.yaml"])
    svcs = doc["services"]
    assert {"slurmctld", "slurm-c1", "slurm-c2", "slurm-c3"} <= set(svcs)
    assert svcs["slurmctld"]["networks"] == {"slurm": {"aliases": ["slurmctld"]}}
    for name, host in [("slurmctld", "slurmctld"), ("slurm-c1", "c1"), ("slurm-c3", "c3")]:
        svc = svcs[name]
        assert svc["hostname"] == host and "users" not in svc["networks"]
        if name != "slurmctld":
            # The proxy and the hub reach notebooks on a node by its NodeName.
            assert svc["networks"] == {"slurm": {"aliases": [host], "priority": 10}, "compute": {"aliases": [host]}}
        assert svc["image"] == REFS["slurm"] and svc["secrets"] == ["munge_key"]
        assert "ports" not in svc
    assert svcs["slurmctld"]["command"] == ["slurmctld"] and svcs["slurm-c2"]["command"] == ["slurmd"]
    assert doc["secrets"]["munge_key"] == {"file": "../secrets/munge_key"}
    assert b"&id" not in files["compose.yaml"]  # no YAML anchors
    # Login notebooks (users) share no network with a Slurm daemon; the hub and the proxy
    # reach compute nodes, and slurm has no route out.
    for name in ("proxy", "hub"):
        assert "compute" in svcs[name]["networks"] and "slurm" not in svcs[name]["networks"], name
    assert doc["networks"]["slurm"]["internal"] is True
    conf = files["slurm/slurm.conf"].decode()
    assert "NodeName=c3 CPUs=2 RealMemory=2048" in conf
    assert "PartitionName=compute Nodes=c1,c2,c3 Default=YES" in conf
    assert "PartitionName=debug Nodes=c1,c2,c3 Default=NO" in conf
    # Notebooks are interactive: a submitted job starts at the controller's next tick.
    assert "SchedulerParameters=batch_sched_delay=0" in conf.splitlines()
    assert "munge_key" in secret_names(site())


def test_hub_json_slurm_backend_and_profile_section():
    data = strict.plain(render.hub_data(site(), REFS))
    cfg = data["spawner"]["backends"]["slurm"]
    assert cfg["submit_prefix"][:3] == ["python3", "-m", "hubdeploy.hub.dexec"]
    assert cfg["submit_prefix"][-1] == "--" and cfg["submit_env_option"] == "--env"
    assert cfg["submit_unreachable_code"] == 125  # dexec: the controller's container is not there
    assert cfg["export_all"] is True
    login, compute = data["spawner"]["profiles"]
    assert login["slurm"] is None
    s = compute["slurm"]
    assert s["partition"] == "compute" and s["partitions"] == ["compute", "debug"]
    assert s["limits"] == {"max_cpu": 2, "max_mem": 2**30, "max_time": "4:00:00", "max_gpus": None}
    assert s["path_prepend"] == ["/opt/venv/bin"] and s["runtime"] == "native"


def test_compute_profiles_wait_for_a_queue_longer_than_jupyterhubs_default():
    login, compute = strict.plain(render.hub_data(site(), REFS))["spawner"]["profiles"]
    assert compute["spawner_config"] == {"start_timeout": COMPUTE_START_TIMEOUT}
    assert "start_timeout" not in login["spawner_config"]
    # The site's own choice wins, globally or per profile.
    text = SITE.replace("slurm:\n", "hub:\n  config: {Spawner: {start_timeout: 900}}\nslurm:\n", 1)
    assert strict.plain(render.hub_data(site(text), REFS))["spawner"]["profiles"][1]["spawner_config"] == {}
    text = SITE.replace("    cpu: 1\n", "    cpu: 1\n    spawner_config: {start_timeout: 30}\n", 1)
    assert strict.plain(render.hub_data(site(text), REFS))["spawner"]["profiles"][1]["spawner_config"] == {"start_timeout": 30}


def test_submit_site_passes_its_prefix_and_has_no_cluster():
    text = SITE.replace("  cluster: {nodes: 3, cpus: 2, memory: 2G, partitions: [compute, debug]}",
                        "  submit: {prefix: [ssh, login1], quote: true}\nidentity: {allow_shared_compute_account: true}")
    s = site(text)
    files = render.render(s, Path("."), REFS)
    assert "slurm/slurm.conf" not in files
    assert "slurmctld" not in YAML(typ="safe").load(files["compose.yaml"])["services"]
    cfg = strict.plain(render.hub_data(s, REFS))["spawner"]["backends"]["slurm"]
    assert cfg["submit_prefix"] == ["ssh", "login1"] and cfg["submit_quote"] is True
    assert "munge_key" not in secret_names(s)


def test_slurm_image_is_planned_from_the_nodes_image(tmp_path):
    plans = plan_images(site(), tmp_path)
    plan = plans["slurm"]
    assert plan.parent == "base" and plan.buildargs["BASE"] == plans["base"].ref
    assert b"slurmd" in plan.files["Dockerfile"] and b"LABEL" in plan.files["Dockerfile"]
    assert plan_images(site(), tmp_path)["slurm"].ref == plan.ref


def test_site_without_slurm_renders_as_before():
    text = "name: plain\nprofiles: [{name: a, image: base}]\n"
    data = strict.plain(render.hub_data(site(text), REFS))
    assert data["spawner"]["backends"] == {}
    assert "slurm" not in plan_images(site(text), Path("."))


# -- spawner: the user's choices --------------------------------------------------------

pytest.importorskip("jupyterhub")
from tornado import web

from hubdeploy.backends.slurm import SlurmConfig
from hubdeploy.contract.values import OptionError
from hubdeploy.render.hubdata import COMPUTE_START_TIMEOUT
from hubdeploy.hub import spawner as spawner_mod
from hubdeploy.hub.profiles import apply_slurm_choices
from hubdeploy.hub.spawner import HubdeploySpawner
from hubsections import SHARED
from hubdeploy.contract import strict


def profiles():
    return list(render.hub_data(site(), REFS).spawner.profiles)


def test_choices_within_limits_are_written_in():
    compute = profiles()[1]
    out = apply_slurm_choices(compute, {"partition": "debug", "time": "1:30:00", "cpu": "2", "memory": "512M"})
    assert out.slurm.partition == "debug" and out.slurm.time == "90"
    assert out.cpu == 2 and out.mem_limit == 512 * 2**20
    assert compute.slurm.partition == "compute"  # the site's profile is untouched
    assert apply_slurm_choices(compute, {"time": "", "profile": "compute"}) is compute


@pytest.mark.parametrize(
    "options, words",
    [
        ({"partition": "gpu"}, "not offered"),
        ({"partition": "compute;rm"}, "not offered"),
        ({"time": "5:00:00"}, "asks for 300 minutes; its limit is 4:00:00"),
        ({"time": "soon"}, "not minutes"),
        ({"cpu": "3"}, "asks for 3 cores; its limit is 2"),
        ({"cpu": "0"}, "at least 1"),
        ({"cpu": "1.5"}, "whole number"),
        ({"memory": "2G"}, "asks for 2048 MiB of memory; its limit is 1024 MiB"),
        ({"memory": "1 G; x"}, "not a size"),
    ],
)
def test_choices_outside_the_site_are_refused(options, words):
    with pytest.raises(OptionError) as exc:
        apply_slurm_choices(profiles()[1], options)
    assert words in str(exc.value)


def test_login_profile_takes_no_choices():
    with pytest.raises(OptionError, match="login node"):
        apply_slurm_choices(profiles()[0], {"cpu": "1"})


class Fake(spawner_mod.Backend):
    Config = SlurmConfig  # it stands in for the slurm backend, with the slurm backend's config
    async def start(self, spec, state):
        state["job"] = spec.profile.name
        Fake.last = spec
        return "c1", 4242

    async def stop(self, state):
        pass

    async def poll(self, state):
        return spawner_mod.Running()


def make(monkeypatch, **kw):
    from jupyterhub.objects import Hub

    got = []
    monkeypatch.setattr(spawner_mod, "get_backend", lambda name: got.append(name) or Fake)
    monkeypatch.setattr(spawner_mod, "_BACKENDS", {})
    user = SimpleNamespace(name="u", url="/user/u/", escaped_name="u")
    s = HubdeploySpawner(user=user, hub=Hub(), orm_spawner=SimpleNamespace(name="", server=None),
                         profiles=profiles(), backend="docker",
                         backend_configs={"docker": SlurmConfig(), "slurm": SlurmConfig(site="x")},
                         **{"http_timeout": 0, "concurrent_spawn_limit": 8, "identity": SHARED, **kw})
    return s, got


def test_form_offers_the_allowed_fields(monkeypatch):
    s, _ = make(monkeypatch)
    form = asyncio.run(s.get_options_form())
    assert 'name="compute.partition"' in form and '<option value="debug">' in form
    assert 'name="compute.time"' in form and 'max="2"' in form and 'name="compute.memory"' in form
    assert 'name="login.' not in form
    opts = s.run_options_from_form({"profile": ["compute"], "compute.time": ["30"], "compute.partition": ["debug"]})
    assert opts == {"profile": "compute", "time": "30", "partition": "debug"}
    with pytest.raises(web.HTTPError) as exc:
        s.run_options_from_form({"profile": ["compute"], "compute.time": ["99:00:00"]})
    assert exc.value.status_code == 400


def test_compute_profile_starts_on_the_slurm_backend_and_keeps_it(monkeypatch):
    s, got = make(monkeypatch, user_options={"profile": "compute", "partition": "debug", "cpu": "2"})
    assert asyncio.run(s.start()) == ("c1", 4242)
    assert got == ["slurm"]
    assert Fake.last.profile.slurm.partition == "debug" and Fake.last.profile.cpu == 2
    saved = s.get_state()
    assert saved["hubdeploy"]["backend"] == "slurm"
    # After a hub restart a fresh spawner polls the same backend from the saved state.
    t, got2 = make(monkeypatch)
    t.load_state(copy.deepcopy(saved))
    assert got2 == ["slurm"] and t._backend_state == {"job": "compute", "profile": "compute"}
    s2, got3 = make(monkeypatch, user_options={"profile": "login"})
    asyncio.run(s2.start())
    assert got3 == ["docker"] and s2.get_state()["hubdeploy"]["backend"] == "docker"


def test_refused_choice_is_a_400_before_start(monkeypatch):
    s, _ = make(monkeypatch)
    s.user_options = {"profile": "compute", "partition": "gpu"}
    with pytest.raises(web.HTTPError) as exc:
        s.run_pre_spawn_hook()
    assert exc.value.status_code == 400 and "not offered" in exc.value.log_message


# -- submit over ssh ----------------------------------------------------------------------

SSH_SITE = SITE.replace(
    "  cluster: {nodes: 3, cpus: 2, memory: 2G, partitions: [compute, debug]}",
    "  submit:\n    ssh: {host: login1.example.org, user: svc, port: 2222, known_hosts: kh}\nidentity: {allow_shared_compute_account: true}",
)


def ssh_site(tmp_path, text=SSH_SITE):
    (tmp_path / "kh").write_text("[login1.example.org]:2222 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample\n")
    (tmp_path / "site.yaml").write_text(text)
    from hubdeploy.site.loader import load_site

    return load_site(tmp_path / "site.yaml")


def test_ssh_submit_renders_a_strict_ssh_and_passes_variables_on_stdin(tmp_path):
    s = ssh_site(tmp_path)
    cfg = strict.plain(render.hub_data(s, REFS))["spawner"]["backends"]["slurm"]
    argv = cfg["submit_prefix"]
    assert argv[0] == "ssh" and argv[-2:] == ["--", "login1.example.org"]
    pairs = dict(zip(argv, argv[1:]))
    assert pairs["-p"] == "2222" and pairs["-l"] == "svc" and pairs["-i"] == "/run/secrets/slurm_ssh_key"
    options = {argv[i + 1] for i, w in enumerate(argv) if w == "-o"}
    assert {"BatchMode=yes", "StrictHostKeyChecking=yes", "UserKnownHostsFile=/etc/hubdeploy/ssh_known_hosts"} <= options
    assert cfg["submit_quote"] is True and cfg["submit_env_stdin"] is True and "submit_env_option" not in cfg
    assert cfg["submit_unreachable_code"] == 255

    files = render.render(s, tmp_path, REFS)
    assert files["hub/ssh_known_hosts"] == (tmp_path / "kh").read_bytes()
    compose = YAML(typ="safe").load(files["compose.yaml"])
    hub = compose["services"]["hub"]
    assert "slurm_ssh_key" in hub["secrets"]
    assert "./hub/ssh_known_hosts:/etc/hubdeploy/ssh_known_hosts:ro" in hub["volumes"]
    assert compose["secrets"]["slurm_ssh_key"] == {"file": "../secrets/slurm_ssh_key"}
    assert "slurm_ssh_key" in secret_names(s) and "munge_key" not in secret_names(s)

    # A new host key recreates the hub (its config hash covers the file).
    before = hub["labels"]["hubdeploy.config-hash"]
    (tmp_path / "kh").write_text("login1.example.org ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOther\n")
    after = YAML(typ="safe").load(render.render(s, tmp_path, REFS)["compose.yaml"])["services"]["hub"]
    assert after["labels"]["hubdeploy.config-hash"] != before


def test_ssh_submit_with_the_sites_own_key(tmp_path):
    key = tmp_path / "id_hub"
    key.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nnot a real key\n-----END OPENSSH PRIVATE KEY-----\n")
    key.chmod(0o600)
    s = ssh_site(tmp_path, SSH_SITE.replace("known_hosts: kh}", "known_hosts: kh, identity_file: id_hub}"))
    assert "slurm_ssh_key" not in secret_names(s)  # nothing to generate
    files = render.render(s, tmp_path, REFS)
    compose = YAML(typ="safe").load(files["compose.yaml"])
    assert compose["secrets"]["slurm_ssh_key"] == {"file": str(key.resolve())}
    assert b"not a real key" not in b"".join(files.values())


def test_ssh_key_readable_by_others_is_refused_with_its_line(tmp_path):
    key = tmp_path / "id_hub"
    key.write_text("key\n")
    key.chmod(0o644)
    with pytest.raises(SiteError) as exc:
        ssh_site(tmp_path, SSH_SITE.replace("known_hosts: kh}", "known_hosts: kh, identity_file: id_hub}"))
    assert "slurm.submit.ssh.identity_file: " in str(exc.value)
    assert "private key is readable by others (mode 644; chmod 600)" in str(exc.value)
    assert exc.value.exit_code == 2


def test_missing_known_hosts_is_a_site_error(tmp_path):
    (tmp_path / "site.yaml").write_text(SSH_SITE)
    from hubdeploy.site.loader import load_site

    with pytest.raises(SiteError) as exc:
        load_site(tmp_path / "site.yaml")
    assert "site.yaml:4:60: slurm.submit.ssh.known_hosts: file not found: " in str(exc.value)
    assert exc.value.exit_code == 2


def test_generated_ssh_key_is_owner_only_reused_and_valid(tmp_path):
    import shutil
    import stat
    import subprocess

    from hubdeploy.state.secrets import ensure_secrets

    paths = ensure_secrets(tmp_path / "secrets", ["slurm_ssh_key"])
    key, pub = paths["slurm_ssh_key"], tmp_path / "secrets" / "slurm_ssh_key.pub"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert key.read_bytes().startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
    assert pub.read_text().startswith("ssh-ed25519 ")
    first = key.read_bytes()
    ensure_secrets(tmp_path / "secrets", ["slurm_ssh_key"])
    assert key.read_bytes() == first  # generated once
    if shutil.which("ssh-keygen"):  # OpenSSH itself derives the same public key
        derived = subprocess.run(["ssh-keygen", "-y", "-f", str(key)], capture_output=True, text=True, check=True)
        assert derived.stdout.split()[:2] == pub.read_text().split()[:2]


def test_ssh_needs_the_submit_account(tmp_path):
    with pytest.raises(SiteError) as exc:
        ssh_site(tmp_path, SSH_SITE.replace("user: svc, ", ""))
    assert "slurm.submit.ssh.user: required key is missing" in str(exc.value)
    assert exc.value.exit_code == 2
