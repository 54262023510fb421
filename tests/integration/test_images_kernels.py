"""Kernels baked into a small image graph, checked by ``images test``; push, pull and save.

One module-scoped graph (base, alpha with R and two Python kernels, beta a child of alpha
with bash and Python kernels) serves every test; the registry is Debian's docker-registry
on loopback with htpasswd auth. Images are removed by the site's prefix afterwards
(``HUBDEPLOY_TEST_KEEP_IMAGES=1`` keeps them; the Debian rootfs is cached in
``HUBDEPLOY_TEST_STATE``).
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from registryfixture import build_registry_image, running_registry
from stackfixture import Recorder

from hubdeploy.images import buildsteps, imagetest, kernels
from hubdeploy.images.build import build_images
from hubdeploy.images.plan import plan_images
from hubdeploy.site.model import Site

pytestmark = pytest.mark.integration

SITE = "hdtkern"
PREFIX = f"hubdeploy/{SITE}-"
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
STATE = Path(os.environ.get("HUBDEPLOY_TEST_STATE", "/var/tmp/hubdeploy-test/state"))
CLI = [sys.executable, "-m", "hubdeploy"]


def make_site(beta_packages: tuple[str, ...] = ("packaging",)) -> Site:
    """base + alpha (R, two Python kernels) + beta (child of alpha: bash and Python)."""
    return Site.model_validate({
        "name": SITE,
        "build": {"ca_bundle": "ca.pem"},
        "images": {"collaborations": {
            "alpha": {"kernels": [
                {"name": "r", "language": "r", "display_name": "R (alpha)", "env": {"ALPHA_R": "yes"}},
                {"name": "py1", "packages": ["six"], "env": {"ALPHA_MODE": "one"}},
                {"name": "py2", "packages": ["idna", "packaging"]},
            ]},
            "beta": {"parent": "alpha", "kernels": [
                {"name": "sh", "language": "bash", "env": {"BETA_SH": "b"}},
                {"name": "py", "packages": list(beta_packages)},
            ]},
        }},
        "profiles": [{"name": "default", "image": "base"}],
    })


# -- fixtures -----------------------------------------------------------------------------




def _remove_test_images(client) -> None:
    tags = sorted({t for img in client.images.list() for t in img.tags if t.startswith(PREFIX) or f"/{PREFIX}" in t})
    for tag in reversed(tags):
        try:
            client.images.remove(tag, force=True)
        except Exception as exc:  # noqa: BLE001 - cleanup must go on
            print(f"cleanup: {tag}: {exc}")


def write_site(site_dir: Path, site: Site) -> Path:
    path = site_dir / "site.yaml"
    # JSON is YAML: no second YAML library for the tests.
    path.write_text(json.dumps(site.model_dump(mode="json", by_alias=True, exclude_defaults=True), indent=1))
    return path


@pytest.fixture(scope="module")
def graph(client, tmp_path_factory):
    site_dir = tmp_path_factory.mktemp("kernsite")
    (site_dir / "ca.pem").write_bytes(HOST_CA.read_bytes())
    site = make_site()
    plans = {n: p for n, p in plan_images(site, site_dir).items() if n in ("debian", "base", "alpha", "beta")}
    rec = Recorder()
    t0 = time.monotonic()
    try:
        built = build_images(plans, client=client, state_dir=STATE, console=rec)
        print(f"built {built} in {time.monotonic() - t0:.0f} s", flush=True)
        yield {"plans": plans, "site_dir": site_dir, "site_file": write_site(site_dir, site), "built": built}
    finally:
        if not os.environ.get("HUBDEPLOY_TEST_KEEP_IMAGES"):
            _remove_test_images(client)


def cli(site_file: Path, *args: str, stdin: str | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, "--site", str(site_file), *args], input=stdin, capture_output=True, text=True,
                          timeout=timeout)


def _by_kernel(result: imagetest.ImageTestResult) -> dict[str, dict]:
    return {k["kernel"]: k for k in result.kernels}


# -- kernels --------------------------------------------------------------------------------


def test_every_kernel_of_a_child_image_starts_and_passes(client, graph):
    ref = graph["plans"]["beta"].ref
    result = imagetest.check_image(client, "beta", ref, name_prefix=f"hubdeploy-{SITE}")
    rows = _by_kernel(result)
    assert result.error is None, result.error
    # The child runs its ancestors' checks too, and the base's undeclared python3 kernel.
    assert set(rows) == {"python3", "alpha-r", "alpha-py1", "alpha-py2", "beta-sh", "beta-py"}, rows
    failed = {k: r["problems"] for k, r in rows.items() if not r["ok"]}
    assert not failed, failed
    assert result.ok
    assert rows["alpha-r"]["declared"] and not rows["python3"]["declared"]
    for name, row in rows.items():
        assert row["resource_dir"].startswith("/opt/venv/share/jupyter/kernels/"), (name, row)
    labels = client.images.get(ref).labels
    assert [k["name"] for k in kernels.from_labels(labels)] == ["alpha-r", "alpha-py1", "alpha-py2", "beta-sh",
                                                                "beta-py"]
    # Nothing left behind.
    assert not [c for c in client.containers.list(all=True) if c.name.startswith(f"hubdeploy-{SITE}-imagetest")]
    assert not [v for v in client.volumes.list() if v.name.startswith(f"hubdeploy-{SITE}-imagetest")]


def test_kernel_environments_are_separate(client, graph):
    ref = graph["plans"]["alpha"].ref
    script = ("for k in alpha-py1 alpha-py2; do /opt/kernels/$k/bin/python -c "
              "'import sys, importlib.util as u; print(sys.prefix, bool(u.find_spec(\"six\")), "
              "bool(u.find_spec(\"idna\")))'; done")
    out = client.containers.run(ref, ["sh", "-c", script], remove=True, user="1000").decode().split("\n")
    assert out[0] == "/opt/kernels/alpha-py1 True False" and out[1] == "/opt/kernels/alpha-py2 False True", out


def test_kernels_leave_the_home_empty_and_belong_to_root(client, graph):
    """The version check (which empties the home) now runs before the kernels' package
    layers: those run as root and must leave /home/jovyan as the check left it."""
    ref = graph["plans"]["beta"].ref
    script = ("ls -A /home/jovyan; stat -c '%U %a %n' /opt/kernels/beta-py /opt/kernels/alpha-py2/bin/python "
              f"{kernels.SPEC_ROOT}/beta-py {kernels.SPEC_ROOT}/beta-py/kernel.json; "
              "/opt/kernels/beta-py/bin/python -m pip --version >/dev/null && echo pip")
    out = client.containers.run(ref, ["sh", "-c", script], remove=True, user="1000").decode().splitlines()
    assert out == ["root 755 /opt/kernels/beta-py", "root 777 /opt/kernels/alpha-py2/bin/python",
                   f"root 755 {kernels.SPEC_ROOT}/beta-py", f"root 644 {kernels.SPEC_ROOT}/beta-py/kernel.json",
                   "pip"], out


def test_cli_images_test_reports_every_kernel(graph):
    proc = cli(graph["site_file"], "images", "test", "alpha")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name in ("alpha-r", "alpha-py1", "alpha-py2", "python3"):
        assert name in proc.stdout
    assert "all kernels pass" in proc.stdout


def test_a_broken_kernel_fails_the_check_and_the_cli(client, graph):
    """A package removed behind the label's back: that kernel fails, the others still pass."""
    beta = graph["plans"]["beta"]
    broken = f"{PREFIX}beta:broken"
    dockerfile = f"FROM {beta.ref}\nUSER root\nRUN /opt/kernels/alpha-py1/bin/pip uninstall -y six\nUSER jovyan\n"
    client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=broken, rm=True, pull=False)
    result = imagetest.check_image(client, "beta", broken, name_prefix=f"hubdeploy-{SITE}")
    rows = _by_kernel(result)
    assert not result.ok
    assert not rows["alpha-py1"]["ok"]
    assert any("six" in p for p in rows["alpha-py1"]["problems"]), rows["alpha-py1"]
    assert all(r["ok"] for k, r in rows.items() if k != "alpha-py1"), rows
    # The CLI on the site's own tag (pointed at the broken image for a moment): exit 1, --json.
    repo, tag = beta.ref.rsplit(":", 1)
    good_id = client.images.get(beta.ref).id
    client.api.tag(broken, repo, tag, force=True)
    try:
        proc = cli(graph["site_file"], "images", "test", "beta", "--json")
    finally:
        client.api.tag(good_id, repo, tag, force=True)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    data = json.loads(proc.stdout)
    assert data["ok"] is False
    bad = [k["kernel"] for img in data["images"] for k in img["kernels"] if not k["ok"]]
    assert bad == ["alpha-py1"]


# -- incremental builds -----------------------------------------------------------------------


def test_unchanged_graph_builds_nothing(client, graph):
    steps: list[buildsteps.BuildStep] = []
    assert build_images(graph["plans"], client=client, state_dir=STATE, steps=steps) == []
    assert steps == []  # not one build step ran, cached or not


def test_changing_one_collaborations_packages_rebuilds_only_it(client, graph):
    site = make_site(beta_packages=("packaging", "six"))
    plans = {n: p for n, p in plan_images(site, graph["site_dir"]).items()
             if n in ("debian", "base", "alpha", "beta")}
    assert [n for n in plans if plans[n].ref != graph["plans"][n].ref] == ["beta"]
    t0 = time.monotonic()
    steps: list[buildsteps.BuildStep] = []
    assert build_images(plans, client=client, state_dir=STATE, steps=steps) == ["beta"]
    print(f"beta rebuilt in {time.monotonic() - t0:.1f} s", flush=True)
    # Only the changed kernel's package layer and what follows it (the kernelspecs, the
    # setuid strip) ran: the runtimes (venvs with ipykernel / bash_kernel) and the version
    # check came from the layer cache.
    work = [i for i in buildsteps.ran(steps, "beta") if i.split()[0] in ("RUN", "COPY")]
    assert work == [
        "COPY kernels/beta-py/requirements.txt /tmp/hubdeploy/kernels/beta-py/",
        f"RUN {kernels.UV} pip install --no-cache --compile-bytecode --python /opt/kernels/beta-py/bin/python "
        "-r /tmp/hubdeploy/kernels/beta-py/requirements.txt && rm -rf /tmp/hubdeploy",
        f"COPY kernelspecs/ {kernels.SPEC_ROOT}/",
        "RUN find / -xdev -type f -perm /6000 -exec chmod ug-s {} +",
    ], work
    runtimes = [s for s in steps if s.image == "beta" and " venv " in s.instruction]
    assert len(runtimes) == 2 and all(s.cached for s in runtimes), runtimes
    assert all(s.cached for s in steps if s.image == "beta" and "jupyterhub-singleuser" in s.instruction)
    # OCI created/revision: build-time labels, outside the hashed Dockerfile.
    labels = client.images.get(plans["beta"].ref).labels
    assert labels["org.opencontainers.image.created"].endswith("Z")
    assert labels["hubdeploy.spec-hash"].startswith(plans["beta"].ref.rsplit(":", 1)[1])
    result = imagetest.check_image(client, "beta", plans["beta"].ref, name_prefix=f"hubdeploy-{SITE}")
    assert result.ok, result.to_json()


# -- push / pull through a real registry, save ---------------------------------------------

REG_USER = "hdtpusher"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def registry(client, graph):
    """Debian's docker-registry (2.8) on loopback with htpasswd (bcrypt) auth."""
    image = build_registry_image(client, graph["plans"]["debian"].ref, f"{PREFIX}registry:test")
    password = "pw-" + os.urandom(12).hex()
    with running_registry(client, image, f"hubdeploy-{SITE}-registry-{os.getpid()}", _free_port(),
                          user=REG_USER, password=password) as host:
        yield {"host": host, "password": password}


def test_push_and_pull_round_trip_with_credentials(client, graph, registry):
    plan = graph["plans"]["debian"]
    local_id = client.images.get(plan.ref).id
    proc = cli(graph["site_file"], "images", "push", "debian", "--registry", registry["host"],
               "--username", REG_USER, "--password-stdin", stdin=registry["password"] + "\n")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert registry["password"] not in proc.stdout + proc.stderr
    remote = f"{registry['host']}/{plan.ref}"
    assert f"pushed debian -> {remote}" in proc.stdout
    assert "sha256:" in proc.stdout
    # Only the site's own tag stays; then drop that too and pull the image back.
    assert remote not in {t for img in client.images.list() for t in img.tags}
    repo, tag = plan.ref.rsplit(":", 1)
    client.api.remove_image(plan.ref, noprune=True)
    try:
        auth = {"username": REG_USER, "password": registry["password"]}
        pulled = client.images.pull(remote.rsplit(":", 1)[0], tag=tag, auth_config=auth)
        assert pulled.id == local_id
    finally:
        client.api.tag(local_id, repo, tag, force=True)
        try:
            client.api.remove_image(remote, noprune=True)
        except Exception:  # noqa: BLE001 - the pull may have failed
            pass


def test_push_with_wrong_credentials_fails_clearly(graph, registry):
    wrong = "not-the-password-" + os.urandom(4).hex()
    proc = cli(graph["site_file"], "images", "push", "debian", "--registry", registry["host"],
               "--username", REG_USER, "--password-stdin", stdin=wrong + "\n")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "refused the credentials" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert wrong not in proc.stdout + proc.stderr
    # A password on the command line is not even offered.
    bad = cli(graph["site_file"], "images", "push", "debian", "--registry", registry["host"], "--username", REG_USER)
    assert bad.returncode == 2 and "--password-stdin" in bad.stderr


def test_save_writes_tarball_and_manifest(client, graph, tmp_path):
    proc = cli(graph["site_file"], "images", "save", "alpha", "-o", str(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    plan = graph["plans"]["alpha"]
    stem = plan.ref.split("/", 1)[1].replace(":", "-")
    manifest = json.loads((tmp_path / f"{stem}.manifest.json").read_text())
    assert manifest["ref"] == plan.ref and manifest["id"] == client.images.get(plan.ref).id
    assert manifest["parent"] == graph["plans"]["base"].ref
    assert manifest["spec_hash"].startswith(plan.ref.rsplit(":", 1)[1])
    assert [k["name"] for k in manifest["kernels"]] == ["alpha-r", "alpha-py1", "alpha-py2"]
    pip = manifest["packages"]["pip"]
    assert any(p.startswith("six==") for p in pip["/opt/kernels/alpha-py1"])
    assert not any(p.startswith("six==") for p in pip["/opt/kernels/alpha-py2"])
    assert any(p.startswith("jupyterhub==6.1.1") for p in pip["/opt/venv"])
    assert any(p.startswith("r-cran-irkernel=") for p in manifest["packages"]["dpkg"])
    import tarfile

    with tarfile.open(tmp_path / manifest["tarball"]) as tar:
        assert "manifest.json" in tar.getnames()
    assert not list(tmp_path.glob(".*.part"))
