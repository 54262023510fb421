"""Any site image on the stack's own cluster, through Charliecloud (issue #20): the site
file's checks, what hub.json says, and the job script's ch-run words (pure, no Slurm)."""

from __future__ import annotations

import subprocess

import pytest

from hubdeploy import render
from hubdeploy.backends.slurm_script import OptionError, job_options
from hubdeploy.backends.slurm_script import render as render_script
from hubdeploy.backends.slurm_script import runtime_argv
from hubdeploy.contract import strict
from hubdeploy.contract.layout import NODE_IMAGES_DIR, staged_image_dir
from hubdeploy.errors import SiteError
from hubdeploy.site.loader import load_site_text
from hubsections import profile

SITE = """\
name: cc
images: {collaborations: {astro: {parent: base}, deep: {parent: astro}}}
slurm:
  cluster: {nodes: 2, cpus: 2, memory: 2G}
profiles:
  - {name: login, image: base, default: true}
  - name: astro-compute
    image: astro
    node: compute
    volumes: [{source: /srv/data, target: /data}, {source: scratch, target: /scratch, read_only: false}]
    slurm: {runtime: charliecloud}
  - {name: deep-compute, image: deep, node: compute, slurm: {runtime: charliecloud}}
"""
REFS = {"base": "hubdeploy/cc-base:000000000001", "astro": "hubdeploy/cc-astro:000000000002",
        "deep": "hubdeploy/cc-deep:000000000003", "hub": "hubdeploy/cc-hub:4", "proxy": "hubdeploy/cc-proxy:5",
        "slurm": "hubdeploy/cc-slurm:6", "slurmdbd": "hubdeploy/cc-slurmdbd:7"}


def site(text=SITE):
    return load_site_text(text, "site.yaml")


def error(text: str) -> str:
    with pytest.raises(SiteError) as exc:
        site(text)
    return str(exc.value)


# -- where a staged image is -----------------------------------------------------------


def test_staged_dir_is_one_plain_word_per_tag_and_not_directly_under_root():
    d = staged_image_dir("hubdeploy/demo-astro:0123456789ab")
    assert d == f"{NODE_IMAGES_DIR}/hubdeploy+demo-astro+0123456789ab"
    # ch-run moves the image's parent onto /: the parent must not be / itself.
    assert d.count("/") >= 3 and ":" not in d
    assert staged_image_dir("a/b:c") != staged_image_dir("a:b")


@pytest.mark.parametrize("ref", ["no-tag", "x@sha256:abc", "../x:1", "X/Upper:1", "a:b/c", "a:", ":b", "a+b:1"])
def test_staged_dir_refuses_what_is_not_repo_colon_tag(ref):
    with pytest.raises(ValueError):
        staged_image_dir(ref)


# -- the site file ----------------------------------------------------------------------


def test_any_site_image_may_run_on_the_stacks_cluster_through_charliecloud():
    s = site()
    assert [p.slurm.runtime for p in s.profiles[1:]] == ["charliecloud", "charliecloud"]


def test_native_refusal_names_the_way_out():
    text = SITE.replace("slurm: {runtime: charliecloud}}", "slurm: {runtime: native}}")
    assert "run image 'base', not 'deep'; slurm.runtime: charliecloud runs any site image there" in error(text)


@pytest.mark.parametrize("runtime", ["apptainer", "podman-hpc", "shifter"])
def test_other_runtimes_are_not_on_the_stacks_nodes(runtime):
    text = SITE.replace("slurm: {runtime: charliecloud}}", f"slurm: {{runtime: {runtime}}}}}")
    msg = error(text)
    assert "profiles[2].slurm.runtime" in msg.replace("profiles.2", "profiles[2]") or "runtime" in msg
    assert f"runtime {runtime!r} is not on the stack's compute nodes" in msg


def test_stack_cluster_takes_no_slurm_image():
    text = SITE.replace("slurm: {runtime: charliecloud}}", "slurm: {runtime: charliecloud, image: /x/y}}")
    assert "leave slurm.image unset" in error(text)


def test_charliecloud_image_is_a_path():
    text = SITE.replace("slurm: {runtime: charliecloud}}", "slurm: {runtime: charliecloud, image: some/tag:1}}")
    assert "given as an absolute path" in error(text)


def test_a_sites_own_cluster_needs_the_images_path():
    text = SITE.replace("  cluster: {nodes: 2, cpus: 2, memory: 2G}", "  submit: {prefix: [env]}")
    text += "identity: {allow_shared_compute_account: true}\n"
    assert "set slurm.image to the image's flattened directory" in error(text)
    ok = text.replace("slurm: {runtime: charliecloud}}", "slurm: {runtime: charliecloud, image: /sw/img/deep}}")
    ok = ok.replace("    slurm: {runtime: charliecloud}\n", "    slurm: {runtime: charliecloud, image: /sw/img/a}\n")
    assert site(ok).profiles[2].slurm.image == "/sw/img/deep"


def test_two_profiles_may_not_mount_different_volumes_at_one_target():
    text = SITE.replace("{name: deep-compute, image: deep, node: compute,",
                        "{name: deep-compute, image: deep, node: compute, volumes: [{source: /other, target: /data}],")
    assert "/data is also profile 'astro-compute''s, from /srv/data" in error(text)


# -- hub.json ---------------------------------------------------------------------------


def test_hub_json_names_the_staged_directory_and_the_homes():
    data = strict.plain(render.hub_data(site(), REFS))
    _, astro, deep = data["spawner"]["profiles"]
    s = astro["slurm"]
    assert s["runtime"] == "charliecloud" and s["image"] == staged_image_dir(REFS["astro"])
    assert s["home_dir"] == "/home" and s["path_prepend"] == []  # the image's own PATH (--set-env)
    # The nodes mount each volume at its target; the job binds it from there.
    assert [(v["source"], v["target"]) for v in astro["volumes"]] == [("/data", "/data"), ("/scratch", "/scratch")]
    assert deep["slurm"]["image"] == staged_image_dir(REFS["deep"]) and deep["image_ref"] == REFS["deep"]


def test_native_profiles_keep_their_hub_json():
    text = SITE.replace("images: {collaborations: {astro: {parent: base}, deep: {parent: astro}}}\n", "")
    text = text.split("  - name: astro-compute")[0]
    text += "  - {name: c, image: base, node: compute, volumes: [{source: /srv/data, target: /data}]}\n"
    data = strict.plain(render.hub_data(site(text), REFS))
    s = data["spawner"]["profiles"][1]["slurm"]
    assert s["image"] is None and s["home_dir"] is None and s["path_prepend"] == ["/opt/venv/bin"]
    assert data["spawner"]["profiles"][1]["volumes"][0]["source"] == "/srv/data"


# -- the job script ---------------------------------------------------------------------


def _options(node_agent=True, **slurm):
    data = strict.plain(render.hub_data(site(), REFS))
    astro = data["spawner"]["profiles"][1]
    p = profile(**{**astro, "slurm": {**astro["slurm"], **slurm}})
    return job_options(p, export=["JUPYTERHUB_API_TOKEN"], node_agent=node_agent)


def test_ch_run_argv_on_the_stacks_cluster():
    assert runtime_argv(_options()) == [
        "ch-run", "--set-env",
        "-b", "/home:/home",
        "-b", "/data:/data", "-b", "/scratch:/scratch",
        "-b", "/run/hubdeploy/jobs:/run/hubdeploy/jobs",
        "-b", '"/run/hubdeploy/jobs/$SLURM_JOB_ID/tmp:/tmp"',
        staged_image_dir(REFS["astro"]), "--",
    ]


def test_job_script_runs_ch_run_under_the_launcher_with_the_socket():
    script = render_script(_options())
    assert "\nexec python3 -c 'import ctypes" in script
    last = script.rstrip("\n").rsplit("'", 1)[1]  # after the launcher's text
    # The one unquoted expansion is Slurm's job id; the image path is quoted as any word.
    assert (' ch-run --set-env -b /home:/home -b /data:/data -b /scratch:/scratch -b '
            '/run/hubdeploy/jobs:/run/hubdeploy/jobs -b "/run/hubdeploy/jobs/$SLURM_JOB_ID/tmp:/tmp" '
            f'{staged_image_dir(REFS["astro"])} -- "$@" '
            '--ServerApp.sock="/run/hubdeploy/jobs/$SLURM_JOB_ID/server.sock"') in last
    assert render_script(_options()) == script
    subprocess.run(["bash", "-n"], input=script.encode(), check=True)


def test_the_tmp_bind_expands_to_the_jobs_own_directory():
    script = render_script(_options())
    words = script.rstrip("\n").rsplit("'", 1)[1]
    # Run the words after the launcher's text through bash with a fake ch-run: printf.
    run = words.split("ch-run", 1)[1].split(' "$@"')[0]
    out = subprocess.run(["bash", "-c", f'printf "%s\\n" {run}'], env={"SLURM_JOB_ID": "42"},
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert "/run/hubdeploy/jobs/42/tmp:/tmp" in out and out[-1] == "--"


def test_without_the_agent_no_job_directory_is_bound():
    argv = runtime_argv(_options(node_agent=False))
    assert "/run/hubdeploy/jobs:/run/hubdeploy/jobs" not in argv and not any("$" in w for w in argv)


def test_charliecloud_needs_an_image_path():
    with pytest.raises(OptionError, match="the image's path on the nodes"):
        _options(image=None)
    with pytest.raises(OptionError, match="the image's path on the nodes"):
        _options(image="hubdeploy/cc-astro:1")


def test_a_bad_home_dir_is_refused():
    with pytest.raises(OptionError):
        _options(home_dir="relative")


def test_a_sites_own_cluster_is_warned_that_read_only_is_its_mounts():
    text = SITE.replace("  cluster: {nodes: 2, cpus: 2, memory: 2G}", "  submit: {prefix: [env]}")
    text += "identity: {allow_shared_compute_account: true}\n"
    text = text.replace("slurm: {runtime: charliecloud}}", "slurm: {runtime: charliecloud, image: /sw/img/deep}}")
    text = text.replace("    slurm: {runtime: charliecloud}\n", "    slurm: {runtime: charliecloud, image: /sw/img/a}\n")
    warned = [w for w in site(text).warnings() if "charliecloud binds it" in w]
    assert len(warned) == 1 and "profile astro-compute: volume /data is read_only" in warned[0]
    assert not [w for w in site().warnings() if "charliecloud binds it" in w]  # the stack's nodes mount it :ro


@pytest.mark.parametrize("target", ["/tmp", "/tmp/x", "/run/hubdeploy/jobs", "/home/shared", "/proc/x", "/ch", "/"])
def test_volume_targets_ch_run_already_binds_are_refused(target):
    text = SITE.replace("{source: /srv/data, target: /data}", f"{{source: /srv/data, target: {target}}}")
    assert "charliecloud binds" in error(text)


@pytest.mark.parametrize("target", ["/etc/munge", "/usr/local/sbin", "/var/lib/hubdeploy/images/x", "/opt/venv",
                                    "/run/munge", "/var/spool/slurmd", "/lib64", "/root"])
def test_volume_targets_over_the_nodes_own_files_are_refused(target):
    # A writable volume there would put users' files where the node's root reads programs.
    text = SITE.replace("{source: scratch, target: /scratch, read_only: false}",
                        f"{{source: scratch, target: {target}, read_only: false}}")
    msg = error(text)
    assert f"{target}: every compute node of the stack mounts" in msg and "volumes" in msg


@pytest.mark.parametrize("target", ["/data2", "/srv/shared", "/opt/software", "/scratch", "/varx"])
def test_volume_targets_of_the_sites_own_are_accepted(target):
    text = SITE.replace("{source: scratch, target: /scratch, read_only: false}",
                        f"{{source: scratch, target: {target}, read_only: false}}")
    assert site(text).staged_profiles
