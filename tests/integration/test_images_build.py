"""Build the whole image graph of a tiny site on the real engine, then use the images.

The rootfs tarball is cached in a fixed state directory (``HUBDEPLOY_TEST_STATE``,
default /var/tmp/hubdeploy-test/state) so reruns skip debootstrap; the images are
removed afterwards by the test site's prefix (``HUBDEPLOY_TEST_KEEP_IMAGES=1`` keeps them;
``HUBDEPLOY_TEST_IMAGES_SITE`` names the site, default ``hdtest``, so two sessions on one
engine keep apart).
"""

from __future__ import annotations

import io
import json
import os
import re
import time
from dataclasses import replace
from pathlib import Path

import pytest

from stackfixture import Recorder

from hubdeploy.contract.labels import IMAGE_CONTENT_KEY
from hubdeploy.contract.identity import NOTEBOOK_UID, RESERVED_NAMES, USERS_GID, reserved_id
from hubdeploy.images import buildsteps
from hubdeploy.images.build import build_images, missing_images
from hubdeploy.images.plan import image_refs, plan_images
from hubdeploy.site.model import Site

pytestmark = pytest.mark.integration

SITE = os.environ.get("HUBDEPLOY_TEST_IMAGES_SITE", "hdtest")
PREFIX = f"hubdeploy/{SITE}-"
VERSION = "6.1.1"
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
STATE = Path(os.environ.get("HUBDEPLOY_TEST_STATE", "/var/tmp/hubdeploy-test/state"))




def _remove_test_images(client) -> None:
    tags = sorted({t for img in client.images.list() for t in img.tags if t.startswith(PREFIX)})
    # Children before parents: the build order reversed is close enough, and force
    # untags even when a child still references the layer.
    for tag in reversed(tags):
        try:
            client.images.remove(tag, force=True)
        except Exception as exc:  # noqa: BLE001 - cleanup must go on
            print(f"cleanup: {tag}: {exc}")


def make_site(c1_pip: tuple[str, ...] = ("six",)) -> Site:
    return Site.model_validate({
        "name": SITE,
        # Without this bundle pip cannot reach PyPI here (TLS is re-signed locally).
        "build": {"ca_bundle": "ca.pem"},
        "database": {"type": "postgresql"},
        "images": {"collaborations": {"c1": {"apt": ["jq"], "pip": list(c1_pip)}}},
        "profiles": [{"name": "default", "image": "base"}],
    })


@pytest.fixture(scope="module")
def built(client, tmp_path_factory):
    site_dir = tmp_path_factory.mktemp("site")
    (site_dir / "ca.pem").write_bytes(HOST_CA.read_bytes())
    plans = plan_images(make_site(), site_dir)
    rec = Recorder()
    t0 = time.monotonic()
    try:
        names = build_images(plans, client=client, state_dir=STATE, console=rec)
        elapsed = time.monotonic() - t0
        print(f"built {names} in {elapsed:.0f} s", flush=True)
        yield {"plans": plans, "refs": image_refs(plans), "built": names, "seconds": elapsed,
               "lines": rec.lines, "site_dir": site_dir}
    finally:
        if not os.environ.get("HUBDEPLOY_TEST_KEEP_IMAGES"):
            _remove_test_images(client)


def run(client, ref: str, cmd: list[str], **kwargs) -> str:
    out = client.containers.run(ref, cmd, remove=True, stdout=True, stderr=False, **kwargs)
    return out.decode().strip()


def test_every_image_is_tagged_and_labelled(client, built):
    assert set(missing_images(built["plans"], client)) == set()
    for name, plan in built["plans"].items():
        labels = client.images.get(plan.ref).labels
        assert labels["hubdeploy.site"] == SITE
        assert labels["hubdeploy.image"] == name
        assert labels["hubdeploy.spec-hash"].startswith(plan.ref.rsplit(":", 1)[1])


def test_base_runs_singleuser_of_the_hub_version_as_jovyan(client, built):
    ref = built["refs"]["base"]
    assert run(client, ref, ["id", "-u"]) == "1000"
    assert run(client, ref, ["id", "-g"]) == "100"
    assert run(client, ref, ["jupyterhub-singleuser", "--version"], user="1000").splitlines()[-1] == VERSION
    config = client.images.get(ref).attrs["Config"]
    assert config["Cmd"] == ["jupyterhub-singleuser"]
    assert config["WorkingDir"] == "/home/jovyan"
    assert "8888/tcp" in config["ExposedPorts"]
    assert "JUPYTER_PREFER_ENV_PATH=1" in config["Env"]


def test_singleuser_does_not_compile_the_iri_grammar_at_import(client, built):
    # rfc3987_syntax compiles an Earley parser at import (~0.9 s of every server start);
    # with rfc3987 installed jsonschema never imports it.
    probe = "import sys, jupyterhub.singleuser; print('rfc3987_syntax' in sys.modules, 'rfc3987' in sys.modules)"
    assert run(client, built["refs"]["base"], ["python3", "-c", probe], user="1000") == "False True"


def test_kernelspec_lives_outside_home(client, built):
    specs = json.loads(run(client, built["refs"]["base"], ["jupyter", "kernelspec", "list", "--json"]))
    python3 = specs["kernelspecs"]["python3"]["resource_dir"]
    assert python3.startswith("/opt/venv/"), python3
    assert not python3.startswith("/home/")


def test_home_is_empty_and_owned_by_jovyan(client, built):
    ref = built["refs"]["base"]
    assert run(client, ref, ["stat", "-c", "%u:%g", "/home/jovyan"]) == "1000:100"
    assert run(client, ref, ["ls", "-A", "/home/jovyan"]) == ""


@pytest.mark.parametrize("image", ["base", "c1"])
def test_no_account_can_own_a_file_of_a_notebook_image(client, built, image):
    """Every owner of a file in the image is an id no identity source hands out
    (contract.identity.RESERVED_IDS), every account and group name of the image is one
    hub users never get as their account (RESERVED_NAMES), and the notebook user owns
    nothing but its empty home. Before, /opt/venv belonged to uid 1000, which a site's
    passwd file or directory could give an account: that account could rewrite the
    environment every server and job runs."""
    ref = built["refs"][image]

    def root_sh(script: str) -> list[str]:
        return run(client, ref, ["sh", "-c", script], user="0").splitlines()

    owners = [line.split() for line in root_sh("find / -xdev -printf '%U %G\\n' | sort -u")]
    assert owners and all(len(o) == 2 for o in owners), owners
    assert [u for u, _ in owners if not reserved_id(int(u))] == []
    assert [g for _, g in owners if not reserved_id(int(g))] == []
    # The ids accounts may still touch: jovyan's and group users own only the empty home.
    assert root_sh(f"find / -xdev -uid {NOTEBOOK_UID}") == ["/home/jovyan"]
    assert root_sh(f"find / -xdev -gid {USERS_GID}") == ["/home/jovyan"]
    names = root_sh("cut -d: -f1 /etc/passwd /etc/group | sort -u")
    assert "jovyan" in names and set(names) - RESERVED_NAMES == set()


@pytest.mark.parametrize("image", ["base", "c1"])
def test_the_notebook_environment_is_roots(client, built, image):
    """/opt/venv and everything in it: root's, writable by root only. Its own users
    (jovyan included) install into environments of their own."""
    ref = built["refs"][image]
    script = ("find /opt/venv | wc -l; "
              "find /opt/venv \\( ! -user root -o ! -group root \\) -print; "
              "find /opt/venv ! -type l -perm /022 -print")
    count, *wrong = run(client, ref, ["sh", "-c", script], user="0").splitlines()
    assert int(count) > 1000 and wrong == []
    planted = "touch /opt/venv/lib/python3*/site-packages/planted.py 2>/dev/null && echo wrote || echo refused"
    assert run(client, ref, ["sh", "-c", planted], user=f"{NOTEBOOK_UID}:{USERS_GID}") == "refused"
    # The server still runs from it as jovyan, the image's own user.
    assert run(client, ref, ["jupyterhub-singleuser", "--version"]).splitlines()[-1] == VERSION


def test_site_ca_is_what_lets_tls_through(client, built):
    """The image trusts PyPI through the site CA; with Debian's Mozilla set alone it would not."""
    ref = built["refs"]["base"]
    probe = (
        "import glob, ssl, sys, urllib.request\n"
        "ctx = None\n"
        "if sys.argv[1] == 'mozilla':\n"
        "    with open('/tmp/mozilla.pem', 'w') as f:\n"
        "        f.writelines(open(p).read() for p in glob.glob('/usr/share/ca-certificates/mozilla/*.crt'))\n"
        "    ctx = ssl.create_default_context(cafile='/tmp/mozilla.pem')\n"
        "try:\n"
        "    urllib.request.urlopen('https://pypi.org/simple/six/', context=ctx, timeout=20)\n"
        "    print('ok')\n"
        "except Exception as exc:\n"
        "    print('fail', exc)\n"
    )
    assert run(client, ref, ["python", "-c", probe, "system"]) == "ok"
    without = run(client, ref, ["python", "-c", probe, "mozilla"])
    if without == "ok":
        pytest.skip("this network does not re-sign TLS: nothing to prove about the CA bundle")
    assert "CERTIFICATE_VERIFY_FAILED" in without


def test_the_trust_store_holds_each_certificate_once_and_all_of_the_sites(client, built):
    """The site bundle here is the host's whole store plus the proxy's CA: Debian's copies
    and the site's must not both be in the image's store."""
    probe = (
        "import re, ssl, sys\n"
        "def ders(path):\n"
        "    text = open(path).read()\n"
        "    return [ssl.PEM_cert_to_DER_cert(m) for m in\n"
        "            re.findall('-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----', text, re.S)]\n"
        "store = ders('/etc/ssl/certs/ca-certificates.crt')\n"
        "site = ders('/usr/local/share/hubdeploy/site-ca.crt')\n"
        "print(len(store), len(set(store)), len(site), len(set(site) - set(store)))\n"
    )
    for name in ("base", "hub"):
        total, unique, site, missing = map(int, run(client, built["refs"][name], ["python3", "-c", probe]).split())
        assert site == len(re.findall(rb"-----BEGIN CERTIFICATE-----", HOST_CA.read_bytes())), name
        assert (total, missing) == (unique, 0), (name, total, unique, missing)


def test_without_the_ca_bundle_pip_fails_with_a_clear_error(client, built, tmp_path):
    """The same base without build.ca_bundle: pip cannot reach PyPI, and the error says where."""
    from hubdeploy.errors import OperationError

    site = Site.model_validate({"name": f"{SITE}-noca", "profiles": [{"name": "d", "image": "base"}]})
    plans = plan_images(site, tmp_path)
    with pytest.raises(OperationError) as info:
        build_images(plans, client=client, state_dir=tmp_path / "state", names=["base"])
    msg = str(info.value)
    if "CERTIFICATE_VERIFY_FAILED" not in msg and "certificate verify failed" not in msg:
        pytest.fail(f"expected a TLS failure, got:\n{msg}")
    assert msg.startswith(f"building image base ({plans['base'].ref}) failed at Step ")
    assert "pip install" in msg.splitlines()[0]
    assert "Traceback" not in msg.splitlines()[0]


def test_collaboration_adds_packages_and_keeps_the_version(client, built):
    ref = built["refs"]["c1"]
    assert run(client, ref, ["sh", "-c", "command -v jq && python -c 'import six; print(six.__name__)'"]) \
        .splitlines() == ["/usr/bin/jq", "six"]
    assert run(client, ref, ["jupyterhub-singleuser", "--version"]).splitlines()[-1] == VERSION
    assert run(client, ref, ["id", "-un"]) == "jovyan"


def test_hub_image(client, built):
    ref = built["refs"]["hub"]
    assert run(client, ref, ["jupyterhub", "--version"]).splitlines()[-1] == VERSION
    # The hub side of hubdeploy with its contract, the culler, the postgres driver, and
    # the identity sources' and ssh certificates' libraries.
    run(client, ref, ["python3", "-c", "import hubdeploy.contract.hubjson, hubdeploy.hub.spawner, "
                      "hubdeploy.hub.identity_ldap, hubdeploy.backends.sshcert, jupyterhub_idle_culler, psycopg2"])
    config = client.images.get(ref).attrs["Config"]
    assert config["Cmd"] == ["jupyterhub", "-f", "/etc/jupyterhub/jupyterhub_config.py"]
    assert config["WorkingDir"] == "/srv/jupyterhub"
    assert config["User"] in ("", "root")


def test_hub_code_change_rebuilds_only_the_last_layers(client, built):
    hub = built["plans"]["hub"]
    files = {**hub.files, "hubdeploy-src/hubdeploy/_test_probe.txt": b"changed\n"}
    # Other files, so not the hub's content key: nothing to relabel, a build.
    labels = {k: v for k, v in hub.labels.items() if k != IMAGE_CONTENT_KEY}
    changed = replace(hub, ref=f"{PREFIX}hub:probe{int(time.time())}", files=files, labels=labels)
    plans = {**built["plans"], "hub": changed}
    assert build_images(plans, client=client, state_dir=STATE / "probe", names=["hub"]) == ["hub"]
    old = client.images.get(hub.ref).attrs["RootFS"]["Layers"]
    new = client.images.get(changed.ref).attrs["RootFS"]["Layers"]
    # COPY source, pip install source, mkdir: everything before them is reused.
    assert new[: len(old) - 3] == old[: len(old) - 3]


def test_proxy_image(client, built):
    ref = built["refs"]["proxy"]
    assert run(client, ref, ["configurable-http-proxy", "--version"]).startswith("4.")
    assert run(client, ref, ["sh", "-c", "command -v setpriv; command -v node"]).splitlines() == [
        "/usr/bin/setpriv", "/usr/bin/node"]


def test_db_initialises_and_accepts_the_password_over_tcp(client, built, tmp_path):
    password = "pa'ss-" + os.urandom(8).hex()
    secret = tmp_path / "db_password"
    secret.write_text(password)
    secret.chmod(0o600)
    container = client.containers.run(
        built["refs"]["db"], detach=True, name=f"hubdeploy-{SITE}-db-{os.getpid()}",
        volumes={str(secret): {"bind": "/run/secrets/db_password", "mode": "ro"}},
    )
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            container.reload()
            assert container.status in ("created", "running"), container.logs().decode()
            if container.exec_run(["pg_isready", "-h", "127.0.0.1", "-U", "jupyterhub"]).exit_code == 0:
                break
            time.sleep(1)
        else:
            pytest.fail("postgres not ready in 90 s:\n" + container.logs().decode())
        query = ["psql", "-h", "127.0.0.1", "-U", "jupyterhub", "-d", "jupyterhub", "-tAc", "select current_user"]
        ok = container.exec_run(query, environment={"PGPASSWORD": password}, user="nobody")
        assert ok.exit_code == 0 and ok.output.decode().strip() == "jupyterhub", ok.output
        bad = container.exec_run(query, environment={"PGPASSWORD": "wrong"}, user="nobody")
        assert bad.exit_code != 0
        logs = container.logs().decode()
        assert password not in logs and "pa'ss" not in logs
        assert password not in json.dumps(container.attrs)
        assert client.api.inspect_image(built["refs"]["db"])["Config"]["StopSignal"] == "SIGINT"
    finally:
        container.remove(force=True)


def test_changing_a_collaborations_pip_list_reruns_only_that_install(client, built):
    """Only c1 is retagged, and of its steps only the pip list's COPY and install, the
    version check after them, the setuid strip and the labels run: apt comes from the
    layer cache."""
    plans = plan_images(make_site(c1_pip=("six", "idna")), built["site_dir"])
    assert [n for n in plans if plans[n].ref != built["refs"][n]] == ["c1"]
    steps: list[buildsteps.BuildStep] = []
    assert build_images(plans, client=client, state_dir=STATE, steps=steps) == ["c1"]
    work = [i for i in buildsteps.ran(steps, "c1") if i.split()[0] in ("RUN", "COPY")]
    assert work[0] == "COPY requirements.txt constraints.txt /tmp/hubdeploy/", work
    assert [i.split()[0] for i in work] == ["COPY", "RUN", "RUN", "RUN"] and "pip install" in work[1], work
    assert "jupyterhub-singleuser --version" in work[2], work
    assert "-perm /6000 -exec chmod ug-s" in work[3], work
    assert [s.cached for s in steps if s.image == "c1" and "apt-get install" in s.instruction] == [True]
    assert run(client, plans["c1"].ref, ["python", "-c", "import idna, six; print('ok')"]) == "ok"


def test_unchanged_site_builds_nothing(client, built):
    steps: list[buildsteps.BuildStep] = []
    assert build_images(built["plans"], client=client, state_dir=STATE, steps=steps) == []
    assert steps == []  # not one build step ran, cached or not


def test_second_site_reuses_the_rootfs_without_bootstrapping(client, built, tmp_path):
    site = Site.model_validate({"name": f"{SITE}-b", "profiles": [{"name": "d", "image": "base"}]})
    plans = plan_images(site, tmp_path)
    if not missing_images({"debian": plans["debian"]}, client):
        client.images.remove(plans["debian"].ref, force=True)  # kept by an earlier run
    # An empty state dir: no cached tarball; the other site's debian image is relabelled.
    assert build_images(plans, client=client, state_dir=tmp_path / "state", names=["debian"]) == ["debian"]
    assert client.images.get(plans["debian"].ref).labels["hubdeploy.site"] == f"{SITE}-b"
    assert not (tmp_path / "state" / "rootfs").exists()


def test_a_second_site_with_the_same_recipe_relabels_every_image(client, built, tmp_path):
    """Another site of the same recipe builds nothing: each image is the first site's
    plus its own labels (one LABEL step), so the layers are shared on disk. An image
    built FROM the first site's base (as the Slurm tests build their nodes) carries the
    base's labels too, and sorts first, but is not the base and is never taken for it."""
    site = make_site().model_copy(update={"name": f"{SITE}-c"})
    plans = plan_images(site, built["site_dir"])
    assert all(plans[n].ref != built["refs"][n] for n in plans)  # its own tags
    child = f"hubdeploy-test/{SITE}-child:1"
    client.images.build(fileobj=io.BytesIO(f"FROM {built['refs']['base']}\nRUN touch /tmp/child\n".encode()),
                        tag=child, rm=True, forcerm=True)
    try:
        steps: list[buildsteps.BuildStep] = []
        assert build_images(plans, client=client, state_dir=tmp_path, steps=steps) == list(plans)
    finally:
        client.images.remove(child, force=True)
    assert {s.instruction.split()[0] for s in steps} == {"FROM", "LABEL"}, steps
    for name, plan in plans.items():
        attrs = client.api.inspect_image(plan.ref)
        first = client.api.inspect_image(built["refs"][name])
        assert attrs["RootFS"]["Layers"] == first["RootFS"]["Layers"], name
        labels = attrs["Config"]["Labels"]
        assert labels["hubdeploy.site"] == f"{SITE}-c" and labels["hubdeploy.parent"] == plan.labels["hubdeploy.parent"]
        assert labels[IMAGE_CONTENT_KEY] == first["Config"]["Labels"][IMAGE_CONTENT_KEY]
    assert run(client, plans["c1"].ref, ["sh", "-c", "command -v jq"]) == "/usr/bin/jq"


def test_proxy_credentials_stay_out_of_the_image(client, built):
    """Proxy settings are build args: same tags, and nothing in history, ENV or labels."""
    proxy = "http://hdtuser:hdt-proxy-pw@127.0.0.1:9"
    site = Site.model_validate({
        "name": SITE,
        # no_proxy=* keeps every tool off the (unreachable) proxy; only the args matter here.
        "build": {"ca_bundle": "ca.pem", "http_proxy": proxy, "https_proxy": proxy, "no_proxy": "*"},
        "database": {"type": "postgresql"},
        "images": {"collaborations": {"c1": {"apt": ["jq"], "pip": ["six"]}, "c2": {}}},
        "profiles": [{"name": "default", "image": "base"}],
    })
    plans = plan_images(site, built["site_dir"])
    assert plans["base"].ref == built["refs"]["base"]
    # force: a kept image from an earlier run would otherwise be reused, proving nothing.
    assert build_images(plans, client=client, state_dir=STATE, names=["c2"], force=True) == ["c2"]
    history = json.dumps(client.api.history(plans["c2"].ref))
    attrs = json.dumps(client.api.inspect_image(plans["c2"].ref))
    assert "hdt-proxy-pw" not in history and "hdt-proxy-pw" not in attrs


def test_cached_rootfs_tarball_imports(client, built, tmp_path):
    """A rootfs tarball imports as a working image. The cached tarball exists only when
    this run bootstrapped (another site's debian image is relabelled instead), so the
    tarball is the built debian image's own filesystem, exported."""
    from hubdeploy.images import rootfs

    tarball = tmp_path / "debian-rootfs.tar"
    box = client.containers.create(built["plans"]["debian"].ref, command=["true"], name=f"hubdeploy-{SITE}-export")
    try:
        with tarball.open("wb") as f:
            for chunk in box.export():
                f.write(chunk)
    finally:
        box.remove(force=True)
    ref = f"{PREFIX}import:probe"
    rootfs.import_tarball(client, tarball, ref, {"hubdeploy.image": "debian"})
    assert run(client, ref, ["sh", "-c", "cat /etc/debian_version; test -x /usr/sbin/policy-rc.d && echo ok"]) \
        .splitlines()[-1] == "ok"
