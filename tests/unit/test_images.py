"""Image plans: deterministic contexts, tags that follow the build graph, trust and proxies."""

from __future__ import annotations

import io
import re
import tarfile
from pathlib import Path

import pytest

from hubdeploy.contract.labels import IMAGE_CONTENT_KEY, IMAGE_SPEC_HASH
from hubdeploy.contract.layout import STACK_IMAGES
from hubdeploy.errors import SiteError
from hubdeploy.images.build import build_images, context_tar, donor_tags, missing_images
from hubdeploy.images.plan import CA_FILE, ImagePlan, image_refs, plan_images
from hubdeploy.site.model import Site

CA = b"-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n"
PROXY = "http://alice:s3cret-pw@proxy.example.org:3128"


def make_site(**overrides) -> Site:
    data = {
        "name": "demo",
        "build": {"ca_bundle": "ca.pem", "http_proxy": PROXY, "https_proxy": PROXY, "no_proxy": "localhost"},
        "images": {
            "base": {"apt": ["git"], "pip": ["numpy<2"]},
            "collaborations": {
                "astro": {"pip": ["astropy"], "apt": ["jq"]},
                "radio": {"parent": "astro", "pip": ["casa-formats-io"]},
                "bio": {"pip": ["biopython"]},
            },
        },
        "database": {"type": "postgresql"},
        "profiles": [{"name": "default", "image": "base"}],
    }
    for key, value in overrides.items():
        section, _, sub = key.partition("__")
        if sub:
            data[section] = {**data.get(section, {}), sub: value}
        else:
            data[section] = value
    return Site.model_validate(data)


@pytest.fixture
def site_dir(tmp_path: Path) -> Path:
    (tmp_path / "ca.pem").write_bytes(CA)
    return tmp_path


def plan(site_dir: Path, **overrides) -> dict[str, ImagePlan]:
    return plan_images(make_site(**overrides), site_dir)


def test_the_reserved_image_names_are_the_images_the_stack_plans(site_dir):
    # The schema refuses a collaboration named like one of STACK_IMAGES: that list must be
    # every image the stack itself may plan, beside the site's notebook images.
    site = make_site(slurm={"cluster": {"nodes": 1, "cpus": 1, "memory": "1G"}},
                     services={"prometheus": {"enabled": True}})
    stack_own = set(plan_images(site, site_dir)) - set(site.images.names())
    assert stack_own == set(STACK_IMAGES)


def test_plan_order_parents_and_refs(site_dir):
    plans = plan(site_dir)
    assert list(plans) == ["debian", "base", "astro", "bio", "radio", "hub", "proxy", "db"]
    order = list(plans)
    for name, p in plans.items():
        if p.parent:
            assert order.index(p.parent) < order.index(name)
        assert p.ref.startswith(f"hubdeploy/demo-{name}:")
        tag = p.ref.rsplit(":", 1)[1]
        # The tag is the spec hash's head (the labels say the whole).
        assert re.fullmatch(r"[0-9a-f]{12}", tag) and p.labels[IMAGE_SPEC_HASH].startswith(tag), (tag, p.labels)
    assert plans["radio"].parent == "astro" and plans["base"].parent == "debian"
    assert plans["debian"].parent is None
    assert plans["radio"].files["Dockerfile"].startswith(b"# hubdeploy collaboration") 
    assert f"FROM {plans['astro'].ref}\n".encode() in plans["radio"].files["Dockerfile"]
    assert image_refs(plans)["hub"] == plans["hub"].ref


def test_no_db_plan_for_sqlite(site_dir):
    assert "db" not in plan(site_dir, database={"type": "sqlite"})


def test_plans_are_deterministic(site_dir):
    a, b = plan(site_dir), plan(site_dir)
    assert image_refs(a) == image_refs(b)
    for name in a:
        assert a[name].files == b[name].files
        assert context_tar(a[name].files) == context_tar(b[name].files)


def test_labels_are_last_and_carry_the_spec_hash(site_dir):
    for name, p in plan(site_dir).items():
        if name == "debian":
            continue
        text = p.files["Dockerfile"].decode()
        last = text[text.rindex("\nLABEL ") :]
        assert "\nRUN " not in last and "\nCOPY " not in last
        for key in ("org.opencontainers.image.title", "org.opencontainers.image.version", "hubdeploy.site",
                    "hubdeploy.image", "hubdeploy.spec-hash", "hubdeploy.parent"):
            assert f'"{key}"=' in last
        assert p.labels["hubdeploy.spec-hash"][:12] == p.ref.rsplit(":", 1)[1]
        assert "created" not in text


def test_base_change_retags_every_descendant_only(site_dir):
    before = image_refs(plan(site_dir))
    after = image_refs(plan(site_dir, images={
        "base": {"apt": ["git", "vim"], "pip": ["numpy<2"]},
        "collaborations": {
            "astro": {"pip": ["astropy"], "apt": ["jq"]},
            "radio": {"parent": "astro", "pip": ["casa-formats-io"]},
            "bio": {"pip": ["biopython"]},
        },
    }))
    changed = {n for n in before if before[n] != after[n]}
    assert changed == {"base", "astro", "radio", "bio"}


def test_one_collaboration_change_retags_it_and_its_children(site_dir):
    before = image_refs(plan(site_dir))
    after = image_refs(plan(site_dir, images={
        "base": {"apt": ["git"], "pip": ["numpy<2"]},
        "collaborations": {
            "astro": {"pip": ["astropy"], "apt": ["jq"]},
            "radio": {"parent": "astro", "pip": ["casa-formats-io"]},
            "bio": {"pip": ["biopython", "pandas"]},
        },
    }))
    assert {n for n in before if before[n] != after[n]} == {"bio"}


def test_jupyterhub_version_reaches_hub_and_notebooks(site_dir):
    before = image_refs(plan(site_dir))
    plans = plan(site_dir, hub={"jupyterhub_version": "5.5.4"})
    after = image_refs(plans)
    assert {n for n in before if before[n] != after[n]} == {"base", "astro", "radio", "bio", "hub"}
    assert b'"jupyterhub==5.5.4"' in plans["base"].files["Dockerfile"]
    assert b"jupyterhub==5.5.4\n" in plans["hub"].files["requirements.txt"]
    assert b"jupyterhub==5.5.4\n" in plans["astro"].files["constraints.txt"]


def test_debian_suite_changes_everything_but_from_base(site_dir):
    before = image_refs(plan(site_dir))
    after = image_refs(plan(site_dir, build__debian={"suite": "trixie"}))
    assert all(before[n] != after[n] for n in before)


def test_base_from_local_image(site_dir):
    plans = plan(site_dir, images={"base": {"from": "example/notebook:1.0"}})
    assert plans["base"].parent is None
    assert plans["base"].files["Dockerfile"].count(b"FROM example/notebook:1.0\n") == 1
    # hub, proxy and db still need Debian.
    assert "debian" in plans and plans["hub"].parent == "debian"


def test_ca_bundle_in_every_context_and_used(site_dir):
    plans = plan(site_dir)
    for name, p in plans.items():
        if name == "debian":
            continue
        assert p.files[CA_FILE] == CA, name
    for name in ("base", "hub", "proxy", "db"):
        text = plans[name].files["Dockerfile"].decode()
        assert "COPY hubdeploy-ca.crt" in text
        assert "Acquire::https::CAInfo" in text
        for var in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "PIP_CERT", "NODE_EXTRA_CA_CERTS", "GIT_SSL_CAINFO"):
            assert var in text, (name, var)


def test_site_copies_of_debians_certificates_are_dropped_before_the_store_is_made(site_dir):
    """With a site bundle, every image removes the site's copies of certificates Debian
    ships after ca-certificates is installed and before update-ca-certificates makes the
    store; without one, nothing is removed."""
    for name in ("base", "hub", "proxy", "db"):
        lines = plan(site_dir)[name].files["Dockerfile"].decode().splitlines()
        install = next(i for i, line in enumerate(lines) if "apt-get install" in line and "ca-certificates" in line)
        drop = next(i for i, line in enumerate(lines) if "/usr/share/ca-certificates/mozilla/*.crt" in line)
        update = lines.index(" && update-ca-certificates \\")
        assert install < drop < update, name
        assert "| xargs -r rm -f" in lines[drop + 1], name
    assert b"mozilla/*.crt" not in plan(site_dir, build={})["base"].files["Dockerfile"]


def test_ca_bundle_change_retags_all_but_debian(site_dir):
    before = image_refs(plan(site_dir))
    (site_dir / "ca.pem").write_bytes(CA + CA.replace(b"fake", b"other"))
    after = image_refs(plan(site_dir))
    assert {n for n in before if before[n] != after[n]} == set(before) - {"debian"}


def test_missing_or_bad_ca_bundle_is_a_site_error(site_dir):
    with pytest.raises(SiteError, match="ca_bundle"):
        plan(site_dir, build={"ca_bundle": "nope.pem"})
    (site_dir / "bad.pem").write_text("not a certificate")
    with pytest.raises(SiteError, match="no PEM"):
        plan(site_dir, build={"ca_bundle": "bad.pem"})


def test_no_ca_bundle_no_ca_file(site_dir):
    plans = plan(site_dir, build={})
    assert all(CA_FILE not in p.files for p in plans.values())
    assert b"hubdeploy-ca.crt" not in plans["base"].files["Dockerfile"]


def test_proxies_are_build_args_only(site_dir):
    plans = plan(site_dir)
    for name, p in plans.items():
        assert p.buildargs["http_proxy"] == PROXY and p.buildargs["HTTPS_PROXY"] == PROXY
        assert p.buildargs["no_proxy"] == "localhost"
        for path, data in p.files.items():
            assert b"s3cret" not in data, (name, path)
            assert b"proxy.example.org" not in data, (name, path)
        assert not any("s3cret" in v for v in p.labels.values())
        # Docker keeps its predefined proxy args out of history unless an ARG names them.
        assert b"ARG http_proxy" not in p.files.get("Dockerfile", b"").lower().replace(b"https", b"http")


def test_rotating_the_proxy_password_keeps_every_tag(site_dir):
    before = image_refs(plan(site_dir))
    after = image_refs(plan(site_dir, build={"ca_bundle": "ca.pem", "http_proxy": "http://bob:other@p:1"}))
    assert before == after


def test_pip_requirements_are_files_not_shell(site_dir):
    plans = plan(site_dir)
    base = plans["base"]
    assert base.files["requirements.txt"] == b"numpy<2\n"
    assert b"numpy<2" not in base.files["Dockerfile"]  # '<' would be a shell redirection
    assert b"-c /tmp/hubdeploy/constraints.txt" in base.files["Dockerfile"]


def test_apt_packages_are_quoted(site_dir):
    plans = plan(site_dir, images={"base": {"apt": ["python3-numpy=1.24*"]}})
    assert b"'python3-numpy=1.24*'" in plans["base"].files["Dockerfile"]


def test_base_image_contract(site_dir):
    text = plan(site_dir)["base"].files["Dockerfile"].decode()
    for needle in ("--uid 1000 --gid 100", "/opt/venv", "JUPYTER_PREFER_ENV_PATH=1", "ipykernel install --sys-prefix",
                   "USER jovyan", "WORKDIR /home/jovyan", "EXPOSE 8888", 'CMD ["jupyterhub-singleuser"]',
                   "jupyterhub-singleuser --version"):
        assert needle in text, needle
    # USER jovyan is the last USER line.
    users = [line for line in text.splitlines() if line.startswith("USER ")]
    assert users[-1] == "USER jovyan"


def _runs_by_user(dockerfile: str) -> list[tuple[str, str]]:
    """(USER in effect, the RUN's first line) for every RUN of ``dockerfile``."""
    user, out = "root", []
    for line in dockerfile.splitlines():
        if line.startswith("USER "):
            user = line.split()[1]
        elif line.startswith("RUN "):
            out.append((user, line))
    return out


def test_the_notebook_environment_is_installed_as_root(site_dir):
    """Every step that writes /opt/venv (creating it, pip lists, the kernelspec) runs as
    root, in the base and in collaborations, with kernels too: the environment every
    server and job runs is the image's. jovyan is given only its home."""
    plans = plan(site_dir, images={"base": {"apt": ["git"], "pip": ["numpy<2"], "kernels": [{"name": "sh", "language": "bash"}]},
                                   "collaborations": {"astro": {"pip": ["astropy"], "apt": ["jq"],
                                                                "kernels": [{"name": "py", "packages": ["six"]}]}}})
    for name in ("base", "astro"):
        text = plans[name].files["Dockerfile"].decode()
        writes = [(u, r) for u, r in _runs_by_user(text)
                  if "venv /opt/venv" in r or r.startswith("RUN pip ") or "/opt/venv/bin/python -m pip" in r]
        assert writes and {u for u, _ in writes} == {"root"}, (name, writes)
        assert [line for line in text.splitlines() if line.startswith("USER ")][-1] == "USER jovyan", name
    base = plans["base"].files["Dockerfile"].decode()
    assert "install -d -o 1000 -g 100 -m 0755 /home/jovyan\n" in base
    assert "/opt/venv" not in base.split("useradd", 1)[1].split("ENV VIRTUAL_ENV", 1)[0]
    # The version check runs the server as jovyan, from the root-owned environment.
    assert [u for u, r in _runs_by_user(base) if "jupyterhub-singleuser --version" in r] == ["jovyan"]


def test_notebook_images_strip_setuid_after_their_last_install(site_dir):
    """Every notebook image (base and each collaboration) removes setuid and setgid bits
    after everything it installs as root: no program in it can raise privileges."""
    plans = plan(site_dir, images={"base": {"apt": ["sudo"]},
                                   "collaborations": {"radio": {"apt": ["sudo"], "pip": ["casa-formats-io"]}}})
    for name in ("base", "radio"):
        lines = plans[name].files["Dockerfile"].decode().splitlines()
        strip = lines.index("RUN find / -xdev -type f -perm /6000 -exec chmod ug-s {} +")
        installs = [i for i, line in enumerate(lines) if "apt-get install" in line or line.startswith("RUN pip")]
        assert installs and max(installs) < strip, name
        assert [line for line in lines[strip:] if line.startswith("USER ")] == ["USER jovyan"], name
        assert not any(line.startswith("RUN") for line in lines[strip + 1:]), name


def test_hub_context_installs_dependencies_before_source(site_dir):
    site = make_site(hub={"authenticator": {"class": "ldapauthenticator", "packages": ["jupyterhub-ldapauthenticator"]}})
    hub = plan_images(site, site_dir)["hub"]
    reqs = hub.files["requirements.txt"].decode().splitlines()
    for req in ("jupyterhub==6.1.1", "jupyterhub-idle-culler", "jupyterhub-ldapauthenticator",
                "psycopg2-binary", "docker>=7.0", "ldap3"):
        assert req in reqs
    assert "hubdeploy-src/pyproject.toml" in hub.files
    # Only the hub-side code: a CLI or renderer change must not rebuild every hub.
    assert "hubdeploy-src/hubdeploy/hub/spawner.py" in hub.files
    assert "hubdeploy-src/hubdeploy/backends/docker.py" in hub.files
    # The contract the hub side reads hub.json with, and its package declared.
    assert "hubdeploy-src/hubdeploy/contract/hubjson.py" in hub.files
    assert b'"hubdeploy.contract"' in hub.files["hubdeploy-src/pyproject.toml"]
    assert "dockerspawner" not in reqs  # never imported by the hub
    assert "hubdeploy-src/hubdeploy/images/plan.py" not in hub.files
    assert "hubdeploy-src/README.md" not in hub.files
    assert not any("__pycache__" in p or p.endswith(".pyc") for p in hub.files)
    text = hub.files["Dockerfile"].decode()
    assert text.index("COPY requirements.txt") < text.index("COPY hubdeploy-src/")
    assert "WORKDIR /srv/jupyterhub" in text
    assert 'CMD ["jupyterhub", "-f", "/etc/jupyterhub/jupyterhub_config.py"]' in text
    assert "node-configurable-http-proxy" not in text


def test_db_context_has_the_entrypoint(site_dir):
    db = plan(site_dir)["db"]
    assert db.files["entrypoint.sh"].startswith(b"#!/bin/sh")
    assert b"/run/secrets/db_password" in db.files["entrypoint.sh"]
    with tarfile.open(fileobj=io.BytesIO(context_tar(db.files))) as tar:
        assert tar.getmember("entrypoint.sh").mode == 0o755
        assert tar.getmember("Dockerfile").mode == 0o644
        assert {m.mtime for m in tar.getmembers()} == {0}


def test_reserved_and_invalid_collaboration_names(site_dir):
    # The schema refuses them, before any planning: names that clash with the stack's own
    # images, and names Docker rejects as repository names.
    with pytest.raises(ValueError, match="reserved"):
        plan(site_dir, images={"collaborations": {"hub": {}}})
    with pytest.raises(ValueError, match="collaborations.astro-"):
        plan(site_dir, images={"collaborations": {"astro-": {}}})


def test_debian_plan_is_a_rootfs_recipe(site_dir):
    deb = plan(site_dir)["debian"]
    assert b'"mirror": "http://deb.debian.org/debian"' in deb.files["recipe.json"]
    assert "rootfs/usr/sbin/policy-rc.d" in deb.files
    other = plan_images(make_site(name="other"), site_dir)["debian"]
    # The rootfs does not depend on the site: a second site reuses it.
    assert other.labels["hubdeploy.spec-hash"] == deb.labels["hubdeploy.spec-hash"]


class FakeAPI:
    def __init__(self, present, labelled=None):
        self.present = set(present)
        self.built = []
        self.dockerfiles = {}
        # content key -> entries of the engine's image list holding that content
        self.labelled = labelled or {}

    def images(self, filters):
        (label,) = filters["label"]
        key = label.split("=", 1)[1]
        return [entry for k, entries in self.labelled.items() if k == key for entry in entries]

    def inspect_image(self, ref):
        import docker.errors

        if ref not in self.present:
            raise docker.errors.ImageNotFound(ref)
        return {"Id": "sha256:" + "0" * 64}

    def build(self, *, tag, fileobj, **kwargs):
        import tarfile

        self.built.append(tag)
        with tarfile.open(fileobj=fileobj) as tar:
            self.dockerfiles[tag] = tar.extractfile("Dockerfile").read().decode()
        if "fail" in tag:
            yield {"stream": "Step 1/3 : FROM x\n"}
            yield {"stream": "Step 2/3 : RUN false\n"}
            yield {"stream": "boom\n"}
            yield {"error": "The command '/bin/sh -c false' returned a non-zero code: 1"}
            return
        self.present.add(tag)
        yield {"stream": "Step 1/1 : FROM x\n"}


class FakeClient:
    def __init__(self, present=(), labelled=None):
        self.api = FakeAPI(present, labelled)


def test_content_key_is_the_sites_recipe_not_its_name(site_dir):
    one, other = plan(site_dir), plan_images(make_site(name="other"), site_dir)
    key = IMAGE_CONTENT_KEY
    for name in one:
        assert one[name].labels[key] == other[name].labels[key], name
        if name != "debian":  # the tag hashes the parent's tag, which names the site
            assert one[name].ref.split(":")[1] != other[name].ref.split(":")[1]
    changed = plan(site_dir, images={**make_site().images.model_dump(by_alias=True),
                                     "collaborations": {"astro": {"pip": ["astropy", "six"], "apt": ["jq"]},
                                                        "radio": {"parent": "astro", "pip": ["casa-formats-io"]},
                                                        "bio": {"pip": ["biopython"]}}})
    moved = {n for n in one if one[n].labels[key] != changed[n].labels[key]}
    assert moved == {"astro", "radio"}  # the changed image and its child, nothing else


def listed(tag: str, image: str, spec_hash: str, site: str = "other") -> dict:
    """An entry of the engine's image list: a tag, and the labels hubdeploy sets."""
    return {"RepoTags": [tag], "Labels": {"hubdeploy.site": site, "hubdeploy.image": image,
                                          "hubdeploy.spec-hash": spec_hash}}


def test_only_another_sites_own_build_of_the_image_is_a_donor():
    """An image built FROM a site's base inherits its labels, content key included, but
    not hubdeploy's tag for it: a compute-node or hand-made image is never the base."""
    spec = "0123456789ab" + "c" * 52
    own = listed("hubdeploy/other-base:0123456789ab", "base", spec)
    assert donor_tags(own, "base") == ["hubdeploy/other-base:0123456789ab"]
    assert donor_tags(own, "astro") == []
    child = listed("hubdeploy-test/slurm:99aa00bb11cc", "base", spec)  # FROM base, labels inherited
    assert donor_tags(child, "base") == []
    retagged = {**own, "RepoTags": ["hubdeploy/other-base:0123456789ab", "registry:5000/x/base:1"]}
    assert donor_tags(retagged, "base") == ["hubdeploy/other-base:0123456789ab"]
    assert donor_tags({"RepoTags": ["hubdeploy/other-base:0123456789ab"]}, "base") == []


def test_an_image_another_site_built_is_relabelled_not_rebuilt(site_dir, tmp_path):
    plans = plan(site_dir)
    donor = "hubdeploy/other-astro:0123456789ab"
    entries = [listed("hubdeploy-test/slurm:000000000000", "astro", "0123456789ab" + "0" * 52),
               listed(donor, "astro", "0123456789ab" + "0" * 52)]
    client = FakeClient({p.ref for n, p in plans.items() if n != "astro"},
                        {plans["astro"].labels[IMAGE_CONTENT_KEY]: entries})
    assert build_images(plans, client=client, state_dir=tmp_path) == ["astro"]
    dockerfile = client.api.dockerfiles[plans["astro"].ref]
    first, labels = dockerfile.splitlines()
    assert first == f"FROM {donor}"
    assert '"hubdeploy.site"="demo"' in labels and f'"hubdeploy.parent"="{plans["base"].ref}"' in labels
    # --force builds from the recipe, whatever other sites hold.
    forced = FakeClient({p.ref for p in plans.values()}, {plans["astro"].labels[IMAGE_CONTENT_KEY]: entries})
    build_images(plans, client=forced, state_dir=tmp_path, names=["astro"], force=True)
    assert "RUN " in forced.api.dockerfiles[plans["astro"].ref]


def test_build_only_missing_parents_first(site_dir, tmp_path):
    plans = plan(site_dir)
    present = {p.ref for n, p in plans.items() if n not in ("astro", "radio")}
    client = FakeClient(present)
    assert missing_images(plans, client) == ["astro", "radio"]
    built = build_images(plans, client=client, state_dir=tmp_path / "state")
    assert built == ["astro", "radio"]
    assert (tmp_path / "state" / "build" / "astro" / "Dockerfile").is_file()
    assert build_images(plans, client=client, state_dir=tmp_path / "state") == []
    forced = build_images(plans, client=client, state_dir=tmp_path / "state", names=["radio"], force=True)
    assert forced == ["radio"]


def test_build_failure_names_image_step_and_output(site_dir, tmp_path):
    from hubdeploy.errors import OperationError

    plans = plan(site_dir)
    bad = ImagePlan("bio", "hubdeploy/demo-fail:000000000000", "base", plans["bio"].files, {})
    plans = {**plans, "bio": bad}
    client = FakeClient({p.ref for p in plans.values() if p.name != "bio"})
    with pytest.raises(OperationError) as info:
        build_images(plans, client=client, state_dir=tmp_path)
    msg = str(info.value)
    assert "bio" in msg and "Step 2/3 : RUN false" in msg and "boom" in msg and "non-zero code" in msg
    assert "Traceback" not in msg


def test_unknown_name_is_a_site_error(site_dir, tmp_path):
    with pytest.raises(SiteError, match="unknown image"):
        build_images(plan(site_dir), client=FakeClient(), state_dir=tmp_path, names=["nope"])


def test_missing_local_from_image_is_named(site_dir, tmp_path):
    from hubdeploy.errors import OperationError

    plans = plan(site_dir, images={"base": {"from": "example/notebook:1.0"}})
    client = FakeClient({p.ref for n, p in plans.items() if n != "base"})
    with pytest.raises(OperationError, match="example/notebook:1.0 is not on this engine"):
        build_images(plans, client=client, state_dir=tmp_path, names=["base"])
    assert client.api.built == []
