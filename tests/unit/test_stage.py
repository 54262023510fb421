"""Staging compute profiles' images for Charliecloud: the plan (pure), the helper's fixed
programs run on a scratch directory, and the engine calls against a fake client."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import docker.errors
import pytest

from hubdeploy.contract.layout import NODE_IMAGES_DIR, staged_image_dir
from hubdeploy.errors import OperationError
from hubdeploy.images import stage
from hubdeploy.site.loader import load_site_text
from test_charliecloud import REFS, SITE


def site(text=SITE):
    return load_site_text(text, "site.yaml")


def name(image: str) -> str:
    return Path(staged_image_dir(REFS[image])).name


# -- the plan -------------------------------------------------------------------------


def test_each_staged_image_once_with_every_bind_target_it_needs():
    want = stage.wanted(site(), REFS)
    assert [w.image for w in want] == ["astro", "deep"]
    astro = want[0]
    assert astro.name == "hubdeploy+cc-astro+000000000002" and astro.ref == REFS["astro"]
    assert {"/home", "/run/hubdeploy/jobs", "/tmp", "/data", "/scratch", "/mnt/0", "/mnt/9"} <= set(astro.targets)
    assert list(astro.targets) == sorted(astro.targets)
    assert "/data" not in want[1].targets  # deep's profile has no volume


def test_two_profiles_on_one_image_share_it_with_both_targets():
    text = SITE.replace("{name: deep-compute, image: deep,", "{name: deep-compute, image: astro, "
                        "volumes: [{source: /other, target: /other}],")
    want = stage.wanted(site(text), REFS)
    assert [w.image for w in want] == ["astro"] and {"/data", "/other"} <= set(want[0].targets)


def test_plan_stages_what_is_missing_keeps_what_is_there_and_removes_the_rest():
    present = {n: "" for n in [name("astro"), "hubdeploy+cc-old+0123", ".tmp-hubdeploy+cc-deep+000000000003",
                               ".rm-x"]}
    plan = stage.plan_staging(site(), REFS, present)
    assert [i.image for i in plan.stage] == ["deep"]
    assert [i.image for i in plan.unchanged] == ["astro"]
    assert plan.remove == (".rm-x", ".tmp-hubdeploy+cc-deep+000000000003", "hubdeploy+cc-old+0123")


def test_an_unchanged_site_plans_nothing():
    ids = {REFS["astro"]: "sha256:a", REFS["deep"]: "sha256:d"}
    plan = stage.plan_staging(site(), REFS, {name("astro"): "sha256:a", name("deep"): "sha256:d"}, ids)
    assert plan.stage == () and plan.remove == () and len(plan.unchanged) == 2


def test_a_tag_rebuilt_is_staged_again():
    # images build --force (security updates) keeps the tag and changes the image.
    ids = {REFS["astro"]: "sha256:new", REFS["deep"]: "sha256:d"}
    plan = stage.plan_staging(site(), REFS, {name("astro"): "sha256:old", name("deep"): "sha256:d"}, ids)
    assert [i.image for i in plan.stage] == ["astro"] and plan.stage[0].image_id == "sha256:new"
    assert [i.image for i in plan.unchanged] == ["deep"]


def test_a_site_without_staged_profiles_removes_everything_staged():
    text = SITE.split("  - name: astro-compute")[0]
    assert stage.plan_staging(site(text), REFS, {name("astro"): ""}).remove == (name("astro"),)


def test_helper_argv_carries_data_as_arguments_only():
    item = stage.wanted(site(), REFS, {REFS["astro"]: "sha256:a"})[0]
    env = ["PATH=/opt/venv/bin:/usr/bin", "X=a b; rm -rf /"]
    argv = stage.finalize_argv(item, env)
    assert argv[:3] == ["python3", "-c", stage.FINALIZE]
    assert argv[3:9] == [NODE_IMAGES_DIR, ".tmp-" + item.name, item.name, "sha256:a", ".rm-", "2"]
    assert argv[9:11] == env and argv[11:] == list(item.targets)


# -- the helper's programs, on a scratch directory ---------------------------------------


def _tree(top: Path, tmp_name: str) -> Path:
    root = top / tmp_name
    (root / "usr/bin").mkdir(parents=True)
    (root / "dev/pts").mkdir(parents=True)
    (root / "dev/null").write_text("")
    su = root / "usr/bin/su"
    su.write_text("#!/bin/sh\n")
    su.chmod(0o4755)
    wall = root / "usr/bin/wall"
    wall.write_text("")
    wall.chmod(0o2755)
    (root / "var").mkdir()
    os.symlink("/outside", root / "var/run")  # a symlink on the way to a bind target
    (root / "data").write_text("a file where a target goes")
    return root


@pytest.mark.skipif(sys.platform != "linux", reason="the helper runs on Linux")
def test_finalize_makes_a_whole_image_and_renames_it_into_place(tmp_path):
    item = stage.StagedImage("astro", REFS["astro"], "img", ("/data", "/mnt/0", "/tmp", "/var/run/hubdeploy/jobs"))
    root = _tree(tmp_path, ".tmp-img")
    argv = stage.finalize_argv(item, ["PATH=/opt/venv/bin:/usr/bin", "LANG=C.UTF-8"])
    argv[3] = str(tmp_path)
    subprocess.run([sys.executable, *argv[1:]], check=True)
    final = tmp_path / "img"
    assert final.is_dir() and not root.exists()
    assert os.listdir(final / "dev") == []
    for prog in ("su", "wall"):
        assert not os.stat(final / "usr/bin" / prog).st_mode & (stat.S_ISUID | stat.S_ISGID)
    assert (final / "ch/environment").read_text() == "PATH=/opt/venv/bin:/usr/bin\nLANG=C.UTF-8\n"
    for target in item.targets:
        p = final / target.lstrip("/")
        assert p.is_dir() and not p.is_symlink(), target
    assert not (final / "var/run").is_symlink()
    assert stat.S_IMODE(os.stat(final).st_mode) == 0o755


def test_finalize_swaps_in_another_build_and_sets_the_old_one_aside(tmp_path):
    item = stage.StagedImage("astro", REFS["astro"], "img", ("/tmp",), "sha256:new")
    (tmp_path / "img" / "old-build").mkdir(parents=True)
    _tree(tmp_path, ".tmp-img")
    argv = stage.finalize_argv(item, [])
    argv[3] = str(tmp_path)
    subprocess.run([sys.executable, *argv[1:]], check=True)
    names = sorted(os.listdir(tmp_path))
    assert names[0] == ".rm-img-" + names[0].rsplit("-", 1)[1] and names[1:] == ["img"], names
    assert (tmp_path / names[0] / "old-build").is_dir() and (tmp_path / "img/usr/bin/su").is_file()
    assert (tmp_path / "img/ch/hubdeploy-image-id").read_text() == "sha256:new\n"


def test_list_reads_each_directorys_build(tmp_path):
    (tmp_path / "a" / "ch").mkdir(parents=True)
    (tmp_path / "a" / "ch" / "hubdeploy-image-id").write_text("sha256:x\n")
    (tmp_path / "b").mkdir()
    out = subprocess.run([sys.executable, "-c", stage.LIST, str(tmp_path)], capture_output=True, text=True,
                         check=True).stdout
    assert json.loads(out) == {"a": "sha256:x", "b": ""}


def test_remove_takes_names_away_and_skips_what_is_gone_or_not_a_name(tmp_path):
    for n in ("old", ".tmp-x"):
        (tmp_path / n / "sub").mkdir(parents=True)
    (tmp_path / "keep").mkdir()
    argv = stage.remove_argv(("old", ".tmp-x", "missing", "../keep", ".."))
    argv[3] = str(tmp_path)
    subprocess.run([sys.executable, *argv[1:]], check=True)
    assert os.listdir(tmp_path) == ["keep"]


# -- on the engine, against a fake client -------------------------------------------------


class FakeAPI:
    def __init__(self, present, exit_codes=None, volume_gone=True, nodes=(), busy=(), exec_code=0):
        self.volume_gone = volume_gone
        self.nodes, self.busy, self.exec_code = list(nodes), list(busy), exec_code
        self.calls: list[tuple] = []
        self.present = present if isinstance(present, dict) else {n: "" for n in present}
        self.exit_codes = exit_codes or {}
        self.commands: dict[str, list[str]] = {}

    def create_volume(self, name, labels=None):
        self.calls.append(("create_volume", name, labels))

    def inspect_volume(self, name):
        self.calls.append(("inspect_volume", name))
        if self.volume_gone:
            raise docker.errors.NotFound("no such volume")
        return {"Name": name}

    def create_host_config(self, **kw):
        return kw

    def create_container(self, image, command, **kw):
        cid = f"c{len(self.commands)}"
        self.commands[cid] = command
        self.calls.append(("create", image, command, kw))
        return {"Id": cid}

    def start(self, cid):
        self.calls.append(("start", cid))

    def wait(self, cid):
        return {"StatusCode": self.exit_codes.get(self.commands[cid][2], 0)}

    def logs(self, cid, stdout, stderr):
        if stderr:
            return b"boom"
        return json.dumps(self.present).encode() if self.commands[cid] == stage.LIST_ARGV else b""

    def remove_container(self, cid, force):
        self.calls.append(("remove", cid))

    def containers(self, filters):
        assert filters == {"label": ["com.docker.compose.project=hubdeploy-cc"]}
        return self.nodes

    def exec_create(self, cid, cmd, stdout, stderr, user):
        assert stdout and not stderr  # the answer is JSON on stdout alone
        self.calls.append(("exec", cid, cmd, user))
        return {"Id": "e-" + cid}

    def exec_start(self, exec_id):
        return json.dumps([n for n in self.busy]).encode()

    def exec_inspect(self, exec_id):
        return {"ExitCode": self.exec_code}

    def inspect_image(self, ref):
        return {"Id": "sha256:" + ref, "Config": {"Env": ["PATH=/opt/venv/bin:/usr/bin"]}}

    def export(self, cid):
        return iter([b"tar bytes"])

    def put_archive(self, cid, path, data):
        self.calls.append(("put_archive", cid, path, b"".join(data)))


class FakeClient:
    def __init__(self, api):
        self.api = api


def test_stage_images_runs_the_plan_with_confined_helpers():
    api = FakeAPI([name("astro"), "hubdeploy+cc-old+1"])
    plan = stage.stage_images(site(), REFS, FakeClient(api))
    assert [i.image for i in plan.stage] == ["deep"] and plan.remove == ("hubdeploy+cc-old+1",)
    assert api.calls[0] == ("create_volume", "hubdeploy-cc-compute-images", {"hubdeploy.site": "cc"})
    # The profile's named volume: external to compose, so made before the nodes start.
    assert api.calls[1] == ("create_volume", "scratch", None)
    helpers = [c for c in api.calls if c[0] == "create" and c[1] == REFS["slurm"]]
    for _, _, command, kw in helpers:
        assert isinstance(command, list) and kw["user"] == "0:0" and kw["network_disabled"] is True
        host = kw["host_config"]
        assert host["cap_drop"] == ["ALL"] and host["cap_add"] == ["CHOWN", "DAC_OVERRIDE", "FOWNER"]
        assert host["network_mode"] == "none" and host["binds"] == {
            "hubdeploy-cc-compute-images": {"bind": NODE_IMAGES_DIR, "mode": "rw"}}
    # List, make the directory, finalize, list again (a replaced build is set aside), remove.
    assert [c[2][2] for c in helpers] == [stage.LIST, stage.MKDIR, stage.FINALIZE, stage.LIST, stage.REMOVE]
    exported = [c for c in api.calls if c[0] == "create" and c[1] == REFS["deep"]]
    assert len(exported) == 1
    put = next(c for c in api.calls if c[0] == "put_archive")
    assert put[2] == f"{NODE_IMAGES_DIR}/.tmp-{name('deep')}" and put[3] == b"tar bytes"
    # Every container made is removed again.
    made = {c for c in api.commands}
    assert made == {c[1] for c in api.calls if c[0] == "remove"}


def test_a_failing_helper_is_an_operation_error_and_leaves_no_container():
    api = FakeAPI([], exit_codes={stage.FINALIZE: 1})
    with pytest.raises(OperationError, match="exited 1: boom"):
        stage.stage_images(site(), REFS, FakeClient(api))
    assert set(api.commands) == {c[1] for c in api.calls if c[0] == "remove"}


def test_no_staged_profile_touches_no_engine():
    api = FakeAPI([])
    stage.stage_images(site("name: x\nprofiles: [{name: a, image: base}]\n"), REFS, FakeClient(api))
    assert api.calls == []


def test_a_cluster_that_stages_nothing_any_more_removes_what_it_staged():
    text = SITE.split("  - name: astro-compute")[0]
    api = FakeAPI([name("astro")], volume_gone=False)
    plan = stage.stage_images(site(text), REFS, FakeClient(api))
    assert plan.remove == (name("astro"),) and plan.stage == ()
    api = FakeAPI([], volume_gone=True)
    assert stage.stage_images(site(text), REFS, FakeClient(api)) == stage.StagePlan((), (), ())
    assert api.calls == [("inspect_volume", "hubdeploy-cc-compute-images")]


# -- the command ------------------------------------------------------------------------


def _cli(tmp_path, monkeypatch, text, api):
    from click.testing import CliRunner

    from hubdeploy.cli.main import cli
    from hubdeploy.images import build
    from hubdeploy.ops import engine

    built: list = []
    monkeypatch.setattr(engine, "docker_client", lambda: FakeClient(api))
    monkeypatch.setattr(build, "build_images", lambda plans, **kw: built.append(kw["names"]) or [])
    (tmp_path / "site.yaml").write_text(text)
    res = CliRunner().invoke(cli, ["--site", str(tmp_path / "site.yaml"), "images", "stage", "--json"])
    return res, built


def test_images_stage_builds_what_it_needs_then_stages(tmp_path, monkeypatch):
    api = FakeAPI([])
    res, built = _cli(tmp_path, monkeypatch, SITE, api)
    assert res.exit_code == 0, res.output
    assert json.loads(res.output) == {"staged": ["astro", "deep"], "unchanged": [], "removed": [], "kept": []}
    assert built == [["astro", "deep", "slurm"]]


def test_images_stage_without_staged_profiles_does_nothing(tmp_path, monkeypatch):
    api = FakeAPI([])
    res, built = _cli(tmp_path, monkeypatch, "name: x\nprofiles: [{name: a, image: base}]\n", api)
    assert res.exit_code == 0, res.output
    assert json.loads(res.output) == {"staged": [], "unchanged": [], "removed": [], "kept": []}
    assert built == [] and api.calls == []


# -- not pulling an image from under a running job ----------------------------------------


def _node(service, state="running"):
    return {"Id": service, "State": state, "Labels": {"com.docker.compose.service": service}}


NODES = [_node("slurm-c1"), _node("slurm-c2", "exited"), _node("slurmctld"), _node("hub")]


def test_split_removal():
    assert stage.split_removal(("a", "b"), {"b"}) == (("a",), ("b",))
    assert stage.split_removal(("a", "b"), set()) == (("a", "b"), ())
    assert stage.split_removal(("a", "b"), None) == ((), ("a", "b"))


def test_a_directory_a_job_still_runs_on_is_kept():
    old = "hubdeploy+cc-old+1"
    api = FakeAPI([name("astro"), name("deep"), old, "hubdeploy+cc-older+2"], nodes=NODES, busy=[old])
    plan = stage.stage_images(site(), REFS, FakeClient(api))
    assert plan.remove == ("hubdeploy+cc-older+2",) and plan.kept == (old,)
    asked = [c for c in api.calls if c[0] == "exec"]
    # Only running compute nodes are asked, as root, with the names as arguments.
    assert [(c[1], c[3]) for c in asked] == [("slurm-c1", "0:0")]
    assert asked[0][2] == ["python3", "-c", stage.IN_USE, "hubdeploy+cc-old+1", "hubdeploy+cc-older+2"]


def test_when_a_node_cannot_be_asked_nothing_is_removed():
    api = FakeAPI([name("astro"), name("deep"), "hubdeploy+cc-old+1"], nodes=NODES, exec_code=1)
    plan = stage.stage_images(site(), REFS, FakeClient(api))
    assert plan.remove == () and plan.kept == ("hubdeploy+cc-old+1",)
    assert not any(c[0] == "create" and c[2][2] == stage.REMOVE for c in api.calls)


def test_in_use_program_finds_a_mounted_name_and_nothing_else():
    out = subprocess.run([sys.executable, "-c", stage.IN_USE, "proc", "sys", "not-mounted-anywhere-x1"],
                         capture_output=True, text=True, check=True).stdout
    assert set(json.loads(out)) <= {"proc", "sys"} and "proc" in json.loads(out)
