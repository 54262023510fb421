"""What the stack's nodes get for Charliecloud (issue #20): the seccomp profile rendered
from one definition, its mount on the slurmd services, the images volume read-only, the
profiles' volumes, and ch-run in the node recipe. A site without a charliecloud profile
renders as before."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from hubdeploy import render, resources
from hubdeploy.images.plan import image_refs, plan_images
from hubdeploy.render import seccomp
from hubdeploy.site.loader import load_site, load_site_text
from test_charliecloud import REFS, SITE

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "config" / "example" / "site-compute-images.yaml"
# Debian's golang-github-docker-docker-dev 20.10.24+dfsg1-1+deb12u1,
# profiles/seccomp/default.json (scripts/seccomp-default.sh fetches and checks it).
BASE_SHA256 = "e5e91f884647e7332b3f89280777752f563df4f1372a186f14ddb7bf2f55cf61"


def files(text=SITE, refs=REFS):
    return render.render(load_site_text(text, "site.yaml"), Path("."), refs)


def compose(text=SITE) -> dict:
    return YAML(typ="safe").load(files(text)["compose.yaml"])


# -- the seccomp profile ----------------------------------------------------------------


def test_the_base_is_the_engines_own_default_unchanged():
    base = resources.read_bytes(seccomp.BASE_FILE)
    assert hashlib.sha256(base).hexdigest() == BASE_SHA256


def test_node_profile_is_the_base_plus_exactly_four_rules():
    base = json.loads(resources.read_bytes(seccomp.BASE_FILE))
    node = json.loads(files()[seccomp.NODE_PROFILE_FILE])
    assert {k: v for k, v in node.items() if k != "syscalls"} == {k: v for k, v in base.items() if k != "syscalls"}
    assert node["syscalls"][: len(base["syscalls"])] == base["syscalls"]
    added = node["syscalls"][len(base["syscalls"]):]
    assert [r["names"] for r in added] == [["unshare"], ["mount"], ["mount"], ["chroot", "pivot_root", "umount2"]]
    assert all(r["action"] == "SCMP_ACT_ALLOW" for r in added)


def test_the_rules_filter_arguments_as_the_spike_measured():
    unshare, bind, move, enter = seccomp.RULES
    # unshare(CLONE_NEWUSER|CLONE_NEWNS) exactly: 0x10020000.
    assert unshare["args"] == [{"index": 0, "value": 268566528, "op": "SCMP_CMP_EQ"}]
    # mount(2)'s flags (argument 3) must hold MS_BIND (0x1000), or MS_MOVE (0x2000).
    assert bind["args"] == [{"index": 3, "value": 4096, "valueTwo": 4096, "op": "SCMP_CMP_MASKED_EQ"}]
    assert move["args"] == [{"index": 3, "value": 8192, "valueTwo": 8192, "op": "SCMP_CMP_MASKED_EQ"}]
    assert enter["args"] == []


def test_nothing_else_of_the_base_allows_these_calls_unconditionally():
    # In Docker's default they are allowed only with CAP_SYS_ADMIN/CAP_SYS_CHROOT, which
    # the nodes do not have: the four rules are the whole grant.
    base = json.loads(resources.read_bytes(seccomp.BASE_FILE))
    for rule in base["syscalls"]:
        if {"unshare", "mount", "chroot", "umount2", "pivot_root"} & set(rule["names"]):
            assert rule["includes"].get("caps"), rule["names"]


def test_profile_is_deterministic_and_refuses_a_base_that_allows_by_default():
    base = resources.read_bytes(seccomp.BASE_FILE)
    assert seccomp.node_profile(base) == seccomp.node_profile(base)
    with pytest.raises(ValueError):
        seccomp.node_profile(json.dumps({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": []}).encode())


# -- compose ------------------------------------------------------------------------------


def test_nodes_get_the_profile_the_images_read_only_and_the_volumes():
    doc = compose()
    for node in ("slurm-c1", "slurm-c2"):
        svc = doc["services"][node]
        assert svc["security_opt"] == ["no-new-privileges:true", "seccomp=./slurm/node-seccomp.json"]
        assert "compute-images:/var/lib/hubdeploy/images:ro" in svc["volumes"]
        assert "/srv/data:/data:ro" in svc["volumes"] and "scratch:/scratch" in svc["volumes"]
        # Nothing beyond today's: no device, no capability, no privilege.
        assert "devices" not in svc and "privileged" not in svc
        assert svc["cap_add"] == ["CHOWN", "DAC_OVERRIDE", "FOWNER", "KILL", "NET_BIND_SERVICE", "SETGID",
                                  "SETUID", "SYS_PTRACE"]
    # The controller runs no job: no grant.
    assert doc["services"]["slurmctld"]["security_opt"] == ["no-new-privileges:true"]
    assert doc["volumes"]["compute-images"] == {"name": "hubdeploy-cc-compute-images", "external": True}
    assert doc["volumes"]["scratch"] == {"name": "scratch", "external": True}


def test_a_changed_profile_recreates_the_nodes():
    a, b = compose()["services"]["slurm-c1"], compose(SITE.replace("memory: 2G}", "memory: 2G}\n"))
    assert a["labels"] == b["services"]["slurm-c1"]["labels"]
    base = resources.read_bytes(seccomp.BASE_FILE)
    other = json.loads(base)
    other["syscalls"] = other["syscalls"][1:]
    inputs = render.read_inputs(load_site_text(SITE, "site.yaml"), Path("."))
    changed = render.render_files(load_site_text(SITE, "site.yaml"), REFS,
                                  type(inputs)(**{**inputs.__dict__, "seccomp_base": json.dumps(other).encode()}))
    doc = YAML(typ="safe").load(changed["compose.yaml"])
    assert doc["services"]["slurm-c1"]["labels"] != a["labels"]
    assert doc["services"]["slurmctld"]["labels"] == compose()["services"]["slurmctld"]["labels"]


def test_a_site_without_charliecloud_gets_no_grant_and_no_file():
    text = SITE.split("  - name: astro-compute")[0]
    out = files(text)
    assert seccomp.NODE_PROFILE_FILE not in out
    doc = YAML(typ="safe").load(out["compose.yaml"])
    assert doc["services"]["slurm-c1"]["security_opt"] == ["no-new-privileges:true"]
    assert "compute-images" not in doc["volumes"]


# -- the node image -----------------------------------------------------------------------


def test_node_recipe_gets_ch_run_and_loses_every_setuid_bit_only_when_needed(tmp_path):
    with_cc = plan_images(load_site_text(SITE, "site.yaml"), tmp_path)["slurm"]
    dockerfile = with_cc.files["Dockerfile"].decode()
    assert "apt-get install -y --no-install-recommends charliecloud-runtime" in dockerfile
    assert "find / -xdev -type f -perm /6000 -exec chmod ug-s {} +" in dockerfile
    installs = [line for line in dockerfile.splitlines() if "apt-get install" in line]
    assert installs[-1].strip() == "&& apt-get install -y --no-install-recommends charliecloud-runtime \\"
    assert dockerfile.index("charliecloud-runtime") < dockerfile.index("\nLABEL ")
    without = plan_images(load_site_text(SITE.split("  - name: astro-compute")[0], "site.yaml"), tmp_path)["slurm"]
    assert b"charliecloud" not in without.files["Dockerfile"] and without.ref != with_cc.ref


def test_the_default_example_keeps_its_node_image(tmp_path):
    example = load_site(ROOT / "config" / "example" / "site.yaml")
    plan = plan_images(example, ROOT / "config" / "example")["slurm"]
    assert b"charliecloud" not in plan.files["Dockerfile"]


def test_the_compute_images_example_renders_and_stages_astro_and_its_child():
    site = load_site(EXAMPLE)
    refs = image_refs(plan_images(site, EXAMPLE.parent))
    out = render.render(site, EXAMPLE.parent, refs)
    hub = json.loads(out["hub/hub.json"])
    compute = {p["name"]: p for p in hub["spawner"]["profiles"] if p["node"] == "compute"}
    assert {p["image"] for p in compute.values()} == {"astro", "astro-r"}
    assert all(p["slurm"]["runtime"] == "charliecloud" for p in compute.values())
    assert site.slurm.cluster.image == "base"
