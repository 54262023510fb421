"""The site's images: plan them (pure), then build what is missing (Docker engine).

Build graph (docs/design.md, "Names")::

    debian (debootstrap rootfs, docker import)
      +-- base (or base FROM images.base.from) -- collaborations, each FROM its parent
      +-- hub      +-- proxy      +-- db (postgresql only)      +-- prometheus (if enabled)

A plan is a build context (relative path -> bytes, Dockerfile included) rendered from
the Jinja2 templates in ``images/``. Its tag is the hash of that context, of the
non-proxy build args and of the parent's tag, so an unchanged site builds nothing, a
change to the base retags every descendant and a change to one collaboration retags
only it. Proxy settings are build args only: Docker keeps its predefined proxy args out
of the image history, and a rotated proxy password must not rebuild every image.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import shlex
import shutil
import tarfile
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker.errors
import jinja2
import requests.exceptions

import hubdeploy
from hubdeploy.images import kernels as kern
from hubdeploy.images import rootfs
from hubdeploy.images.buildsteps import BuildStep, StepLog
from hubdeploy.contract.labels import (IMAGE_CONTENT_KEY, IMAGE_JUPYTERHUB_VERSION, IMAGE_KERNELS, IMAGE_NAME,
                                       IMAGE_PARENT, IMAGE_SPEC_HASH)
from hubdeploy.contract.layout import (DB_IMAGE, DEBIAN_IMAGE, HUB_IMAGE, LABEL_SITE, PROMETHEUS_IMAGE, PROXY_IMAGE,
                                       SLURM_IMAGE, SLURMDBD_IMAGE)
from hubdeploy.errors import OperationError, SiteError
from hubdeploy.schema import Site

CA_FILE = "hubdeploy-ca.crt"
# Docker's predefined proxy args: usable in RUN without an ARG line, never in history.
PROXY_ARGS = ("http_proxy", "https_proxy", "no_proxy")
# Bump when a build step changes outside the rendered files (e.g. how rootfs is made).
RECIPE_VERSION = "1"
# Every context file gets the same metadata, so the same files give the same tar.
_MTIME = 0
# What the engine, the SDK and the socket raise when a daemon call goes wrong.
ENGINE_ERRORS = (docker.errors.DockerException, requests.exceptions.RequestException, OSError)
# The classic builder colours stderr and narrates its own bookkeeping; neither helps
# someone reading the last lines of a failed build.
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_NOISE = re.compile(r"^\s*(---> |Removing intermediate container|Successfully (built|tagged) )")


@dataclass(frozen=True)
class ImagePlan:
    """One image to build: its context, its tag and the plan it is built FROM."""

    name: str
    ref: str
    parent: str | None
    files: dict[str, bytes]
    buildargs: dict[str, str]
    labels: dict[str, str] = field(default_factory=dict)


def _source_root() -> Path:
    return Path(hubdeploy.__file__).resolve().parent.parent


def _images_dir() -> Path:
    # The recipes live in the source tree's images/ (hubdeploy runs from a checkout).
    return _source_root() / "images"


def _jinja() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(_images_dir())),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["dq"] = lambda v: json.dumps(str(v))
    return env


def spec_hash(files: dict[str, bytes], buildargs: dict[str, str], parent_ref: str | None) -> str:
    """sha256 over the parent's tag, the build args and the files, length-prefixed so
    that no two different inputs give the same byte stream."""
    h = hashlib.sha256(b"hubdeploy-image\0" + RECIPE_VERSION.encode() + b"\0")

    def put(data: bytes) -> None:
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)

    put((parent_ref or "").encode())
    for key in sorted(buildargs):
        put(key.encode())
        put(buildargs[key].encode())
    for path in sorted(files):
        put(path.encode())
        put(files[path])
    return h.hexdigest()


def _proxy_buildargs(site: Site) -> dict[str, str]:
    args = {}
    for key in PROXY_ARGS:
        value = getattr(site.build, key)
        if value:
            # Both spellings: curl reads only the lower-case one, some Go tools the upper.
            args[key] = value
            args[key.upper()] = value
    return dict(sorted(args.items()))


def _read_ca(site: Site, site_dir: Path) -> bytes | None:
    if not site.build.ca_bundle:
        return None
    path = (site_dir / site.build.ca_bundle).resolve()
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SiteError(f"build.ca_bundle: cannot read {path}: {exc.strerror}") from None
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise SiteError(f"build.ca_bundle: {path} holds no PEM certificate")
    return data


# What of hubdeploy runs inside the hub: the spawner, the backends, the proxy class and the
# secret wrapper. Only these files enter the hub image (and its tag), so a change to the
# CLI, the renderer or the docs does not rebuild and restart every site's hub.
# The engine proxy runs from the hub image too: one image to build, and it has python.
HUB_SOURCES = ("hubdeploy/__init__.py", "hubdeploy/errors.py", "hubdeploy/contract", "hubdeploy/hub",
               "hubdeploy/backends", "hubdeploy/engineproxy")
HUB_PACKAGES = ("hubdeploy", "hubdeploy.contract", "hubdeploy.hub", "hubdeploy.backends", "hubdeploy.engineproxy")
HUB_ENTRY_POINT_GROUPS = ("hubdeploy.backends", "jupyterhub.spawners")


def _hubdeploy_source() -> dict[str, bytes]:
    """The hub-side part of hubdeploy and a minimal pyproject that installs it."""
    root = _source_root()
    if not (root / "pyproject.toml").is_file():
        raise OperationError(
            f"hubdeploy's source tree was not found beside {root / 'hubdeploy'}",
            hint="the hub image installs hubdeploy from a source checkout (pip install -e .)",
        )
    project = _pyproject()["project"]
    lines = [
        "[build-system]", 'requires = ["setuptools>=68"]', 'build-backend = "setuptools.build_meta"', "",
        "[project]", 'name = "hubdeploy"', f'version = "{project["version"]}"', "",
        "[tool.setuptools]", f"packages = {json.dumps(list(HUB_PACKAGES))}", "",
    ]
    for group in HUB_ENTRY_POINT_GROUPS:
        lines.append(f'[project.entry-points."{group}"]')
        for name, target in sorted(project.get("entry-points", {}).get(group, {}).items()):
            lines.append(f'{name} = "{target}"')
        lines.append("")
    files = {"hubdeploy-src/pyproject.toml": "\n".join(lines).encode()}
    for source in HUB_SOURCES:
        base = root / source
        paths = [base] if base.is_file() else sorted(base.rglob("*.py"))
        for path in paths:
            rel = path.relative_to(root)
            if "__pycache__" in rel.parts or any(p.startswith(".") for p in rel.parts) or path.is_symlink():
                continue
            files[f"hubdeploy-src/{rel.as_posix()}"] = path.read_bytes()
    return files


def _pyproject() -> dict:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    return tomllib.loads((_source_root() / "pyproject.toml").read_text())


def _requirements(lines: list[str]) -> bytes:
    seen: list[str] = []
    for line in lines:
        if line not in seen:
            seen.append(line)
    return ("\n".join(seen) + "\n").encode()


def _collaboration_order(site: Site) -> list[str]:
    """Collaborations with every parent before its children (ties by name)."""
    order: list[str] = []
    pending = dict(sorted(site.images.collaborations.items()))
    while pending:
        ready = [n for n, img in pending.items() if img.parent == "base" or img.parent in order]
        order += ready
        for n in ready:
            del pending[n]
    return order


def plan_images(site: Site, site_dir: Path) -> dict[str, ImagePlan]:
    """Every image of the site, in build order (parents first).

    Pure apart from reading the site's CA bundle, the recipes in ``images/`` and
    hubdeploy's own source (the hub image installs it): the same site gives byte-identical
    contexts and the same tags. Raises SiteError on bad input.
    """
    planner = _Planner(site, _read_ca(site, site_dir))
    planner.debian()
    planner.notebook_images()
    planner.hub()
    planner.service_image(PROXY_IMAGE)
    if site.slurm is not None and site.slurm.cluster is not None:
        planner.slurm(site.slurm.cluster.image)
        planner.service_image(SLURMDBD_IMAGE, ("entrypoint.sh", "health.sh"))
    if site.services.prometheus.enabled:
        planner.service_image(PROMETHEUS_IMAGE)
    if site.database.type == "postgresql":
        planner.service_image(DB_IMAGE, ("entrypoint.sh",))
    return planner.plans


class _Planner:
    """Builds the plans of one site, one image at a time (parents first)."""

    def __init__(self, site: Site, ca: bytes | None):
        self.site = site
        self.ca = ca
        self.proxies = _proxy_buildargs(site)
        self.env = _jinja()
        self.version = site.hub.jupyterhub_version
        self.source_url = (_pyproject().get("project", {}).get("urls") or {}).get("Source")
        self.plans: dict[str, ImagePlan] = {}
        # Cumulative: a child's label lists its ancestors' kernels too (it inherits them).
        self.kernel_meta: dict[str, list[dict]] = {}

    def labels(self, name: str, digest: str, parent_ref: str | None, content: str) -> dict[str, str]:
        out = {
            "org.opencontainers.image.title": f"hubdeploy {self.site.name} {name}",
            "org.opencontainers.image.version": hubdeploy.__version__,
            LABEL_SITE: self.site.name,
            IMAGE_NAME: name,
            IMAGE_SPEC_HASH: digest,
            IMAGE_PARENT: parent_ref or "",
            # What the image holds, whatever site it belongs to: its context with the
            # parent's content key in place of the parent's (site-specific) tag. Two sites
            # on one engine with the same recipe share the build (_relabel_from_another_site).
            IMAGE_CONTENT_KEY: content,
        }
        if self.source_url:
            out["org.opencontainers.image.source"] = self.source_url
        if name == HUB_IMAGE:
            out[IMAGE_JUPYTERHUB_VERSION] = self.version
        return dict(sorted(out.items()))

    def ref(self, name: str, digest: str) -> str:
        return image_ref(self.site.name, name, digest)

    def parent_content(self, parent: str | None, parent_ref: str) -> str:
        """What stands for the parent in a content key: its own content key, or the
        reference itself for an image from outside the site (images.base.from)."""
        return self.plans[parent].labels[IMAGE_CONTENT_KEY] if parent in self.plans else parent_ref

    def add(self, name: str, template: str, parent: str | None, parent_ref: str, extra: dict[str, bytes],
            kernel_meta: list[dict] | None = None, **ctx) -> None:
        """Plan one image from a Dockerfile template."""
        files = dict(extra)
        if self.ca is not None:
            files[CA_FILE] = self.ca
        tpl = self.env.get_template(template)
        ctx.update(ca=self.ca is not None, parent_ref=parent_ref, jupyterhub_version=self.version)
        # The tag cannot hash a Dockerfile that contains the tag: hash the body, then
        # append the labels (which only restate what the hash already covers).
        body = tpl.render(labels=None, **ctx).encode()
        digest = spec_hash({**files, "Dockerfile": body}, {}, parent_ref)
        parent_content = self.parent_content(parent, parent_ref)
        keyed = tpl.render(labels=None, **{**ctx, "parent_ref": f"content:{parent_content}"}).encode()
        lab = self.labels(name, digest, parent_ref, spec_hash({**files, "Dockerfile": keyed}, {}, parent_content))
        if kernel_meta is not None:
            # Restates what the hash covers (kernel.json files, the parent's tag).
            lab = dict(sorted({**lab, IMAGE_KERNELS: kern.label_value(kernel_meta)}.items()))
        files["Dockerfile"] = tpl.render(labels=lab, **ctx).encode()
        self.plans[name] = ImagePlan(name, self.ref(name, digest), parent, dict(sorted(files.items())),
                                     dict(self.proxies), lab)

    def debian(self) -> None:
        """A rootfs recipe, not a Dockerfile; the overlay files go into the rootfs."""
        deb = self.site.build.debian
        overlay_dir = _images_dir() / DEBIAN_IMAGE / "rootfs"
        files = {
            f"rootfs/{p.relative_to(overlay_dir).as_posix()}": p.read_bytes()
            for p in sorted(overlay_dir.rglob("*"))
            if p.is_file()
        }
        recipe = {"suite": deb.suite, "mirror": deb.mirror, "variant": "minbase"}
        files["recipe.json"] = (json.dumps(recipe, sort_keys=True, indent=1) + "\n").encode()
        digest = spec_hash(files, {}, None)
        self.plans[DEBIAN_IMAGE] = ImagePlan(DEBIAN_IMAGE, self.ref(DEBIAN_IMAGE, digest), None,
                                             dict(sorted(files.items())), dict(self.proxies),
                                             self.labels(DEBIAN_IMAGE, digest, None, digest))

    def _packages(self, apt: list[str], pip: list[str]) -> tuple[list[str], dict[str, bytes]]:
        extra = {}
        if pip:
            extra["requirements.txt"] = _requirements(pip)
            extra["constraints.txt"] = f"jupyterhub=={self.version}\n".encode()
        return [shlex.quote(p) for p in apt], extra

    @staticmethod
    def _kernel_ctx(name: str, declared) -> tuple[dict[str, bytes], dict]:
        ctx = {
            "kernels": [{"spec": kern.spec_name(name, k), "venv": kern.venv_path(name, k),
                         "packages": kern.has_packages(k)} for k in declared],
            "r_runtime": [shlex.quote(p) for p in kern.r_runtime(declared)],
            "r_packages": [shlex.quote(p) for p in kern.r_packages(declared)],
            "spec_root": kern.SPEC_ROOT,
            "uv": kern.UV,
        }
        return kern.context_files(name, declared), ctx

    def notebook_images(self) -> None:
        """The base image, then each collaboration after its parent."""
        base = self.site.images.base
        apt, extra = self._packages(base.apt, base.pip)
        kfiles, kctx = self._kernel_ctx("base", base.kernels)
        self.kernel_meta["base"] = kern.metadata("base", base.kernels)
        self.add("base", "base/Dockerfile.j2", None if base.from_ else DEBIAN_IMAGE,
                 base.from_ or self.plans[DEBIAN_IMAGE].ref, {**extra, **kfiles}, self.kernel_meta["base"],
                 apt=apt, pip=bool(base.pip), uv_version=kern.UV_VERSION, uv_prefix=kern.UV_PREFIX, **kctx)
        for name in _collaboration_order(self.site):
            img = self.site.images.collaborations[name]
            apt, extra = self._packages(img.apt, img.pip)
            kfiles, kctx = self._kernel_ctx(name, img.kernels)
            self.kernel_meta[name] = self.kernel_meta[img.parent] + kern.metadata(name, img.kernels)
            self.add(name, "collaboration/Dockerfile.j2", img.parent, self.plans[img.parent].ref,
                     {**extra, **kfiles}, self.kernel_meta[name], apt=apt, pip=bool(img.pip), **kctx)

    def hub(self) -> None:
        reqs = ["setuptools>=68", "wheel", f"jupyterhub=={self.version}", "jupyterhub-idle-culler",
                *self.site.hub.authenticator.packages]
        if self.site.database.type == "postgresql":
            reqs.append("psycopg2-binary")
        # The hub-side code needs the docker SDK beyond JupyterHub itself, ldap3 for the
        # ldap identity source (small, pure Python: installed whatever the site's source),
        # and cryptography (SSHCertificateBuilder) for per-user SSH certificates.
        # h11 frames the engine proxy's HTTP (it runs from this image).
        reqs += ["docker>=7.0", "ldap3", "cryptography>=41", "h11>=0.14"]
        self.add(HUB_IMAGE, f"{HUB_IMAGE}/Dockerfile.j2", DEBIAN_IMAGE, self.plans[DEBIAN_IMAGE].ref,
                 {"requirements.txt": _requirements(reqs), **_hubdeploy_source()})

    def service_image(self, name: str, files: tuple[str, ...] = ()) -> None:
        """A stack service's image: its recipe ``images/<name>/`` (Dockerfile.j2 and
        ``files``) on the Debian image."""
        self.add(name, f"{name}/Dockerfile.j2", DEBIAN_IMAGE, self.plans[DEBIAN_IMAGE].ref,
                 {f: (_images_dir() / name / f).read_bytes() for f in files})

    def slurm(self, node_image: str) -> None:
        """The compute nodes: the image the profiles run, plus Slurm and munge. The recipe
        is the one the Slurm tests build (FROM a build arg), so it stays a plain Dockerfile."""
        parent_ref = self.plans[node_image].ref
        recipe = _images_dir() / SLURM_IMAGE
        files = {name: (recipe / name).read_bytes() for name in ("Dockerfile", "entrypoint.sh", "node-agent.py")}
        args = {"BASE": parent_ref}
        digest = spec_hash(files, args, parent_ref)
        content = self.parent_content(node_image, parent_ref)
        lab = self.labels(SLURM_IMAGE, digest, parent_ref, spec_hash(files, {"BASE": content}, content))
        files["Dockerfile"] += ("LABEL " + " ".join(f"{json.dumps(k)}={json.dumps(v)}" for k, v in lab.items())
                                + "\n").encode()
        self.plans[SLURM_IMAGE] = ImagePlan(SLURM_IMAGE, self.ref(SLURM_IMAGE, digest), node_image,
                                            dict(sorted(files.items())), {**self.proxies, **args}, lab)


def image_refs(plans: dict[str, ImagePlan]) -> dict[str, str]:
    """name -> image tag, for the renderer."""
    return {name: plan.ref for name, plan in plans.items()}


def context_tar(files: dict[str, bytes]) -> bytes:
    """The build context as an uncompressed tar, identical for identical files."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for path in sorted(files):
            data = files[path]
            info = tarfile.TarInfo(path)
            info.size = len(data)
            info.mtime = _MTIME
            info.mode = 0o755 if data.startswith(b"#!") else 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def missing_images(plans: dict[str, ImagePlan], client) -> list[str]:
    """Names of the plans whose tag is not on the engine, in build order."""
    return [name for name, plan in plans.items() if not _exists(client, plan.ref)]


def _exists(client, ref: str) -> bool:
    try:
        client.api.inspect_image(ref)
        return True
    except docker.errors.ImageNotFound:
        return False
    except ENGINE_ERRORS as exc:
        raise OperationError(f"cannot inspect image {ref}: {exc}") from None


def write_context(plan: ImagePlan, state_dir: Path) -> Path:
    """Write the context to ``<state>/build/<name>/`` so that people can read what was built."""
    dest = state_dir / "build" / plan.name
    if dest.exists():
        shutil.rmtree(dest)
    for rel, data in plan.files.items():
        path = dest / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return dest


def build_images(
    plans: dict[str, ImagePlan],
    *,
    client,
    state_dir: Path,
    names: list[str] | None = None,
    force: bool = False,
    console=None,
    steps: list[BuildStep] | None = None,
) -> list[str]:
    """Build the plans whose tag is missing, parents first; returns the names built.

    ``names`` limits the build to those images (plus any missing ancestor). ``force``
    rebuilds the selected images without Docker's layer cache (and bootstraps a fresh
    Debian rootfs), e.g. to pick up security updates. A failure raises OperationError
    naming the image, the failing step and the last 20 lines of output. ``steps``, when
    given, receives every Dockerfile step built, with its time and whether the layer
    cache served it.
    """
    selected = list(plans) if names is None else list(names)
    unknown = [n for n in selected if n not in plans]
    if unknown:
        raise SiteError(f"unknown image(s): {', '.join(unknown)}; images: {', '.join(plans)}")
    needed: set[str] = set()
    for name in selected:
        cur: str | None = name
        while cur is not None and cur not in needed:
            needed.add(cur)
            cur = plans[cur].parent
    forced = set(selected) if force else set()
    missing = set(missing_images(plans, client))
    built = []
    for name, plan in plans.items():
        if name not in needed or (name not in forced and name not in missing):
            continue
        t0 = time.monotonic()
        if console:
            console.print(f"[bold]building[/] {name} -> {plan.ref}")
        write_context(plan, state_dir)
        fresh = name in forced
        if fresh or not _relabel_from_another_site(plan, client, console=console, steps=steps):
            if name == DEBIAN_IMAGE:
                _build_debian(plan, client, state_dir, fresh=fresh, console=console, steps=steps)
            else:
                if plan.parent is None:
                    _require_parent(plan, client)
                _docker_build(client, plan, nocache=fresh, console=console, steps=steps)
        if console:
            console.print(f"[bold green]built[/] {name} in {time.monotonic() - t0:.0f} s")
        built.append(name)
    return built


def build_time_labels() -> dict[str, str]:
    """OCI ``created`` and ``revision``: given to the engine as build labels, outside the
    rendered Dockerfile, so they never enter the spec hash (the tag). The engine appends
    them as a last LABEL step: every cached layer is reused, and an image already tagged
    is not rebuilt just because time passed or hubdeploy was committed again."""
    out = {"org.opencontainers.image.created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    rev = _git(_source_root(), "rev-parse", "HEAD")
    if rev and re.fullmatch(r"[0-9a-f]{40}", rev):
        out["org.opencontainers.image.revision"] = rev
    # pyproject's [project.urls] Source is rendered (and preferred); a checkout's remote
    # is the fallback, as long as it carries no credentials.
    if not (_pyproject().get("project", {}).get("urls") or {}).get("Source"):
        url = _git(_source_root(), "remote", "get-url", "origin")
        if url and "@" not in url.split("://", 1)[-1].split("/", 1)[0]:
            out["org.opencontainers.image.source"] = url
    return out


def _git(root: Path, *args: str) -> str | None:
    import subprocess

    if not (root / ".git").exists():
        return None
    try:
        proc = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() if proc.returncode == 0 and proc.stdout.strip() else None


def _require_parent(plan: ImagePlan, client) -> None:
    # A classic build would try to pull a missing FROM image, and fail obscurely.
    parent_ref = plan.labels.get(IMAGE_PARENT, "")
    if parent_ref and not _exists(client, parent_ref):
        raise OperationError(
            f"image {plan.name}: its parent image {parent_ref} is not on this engine",
            hint="build or `docker load` it first (images.base.from names a local image)",
        )


def image_ref(site: str, name: str, digest: str) -> str:
    """The tag hubdeploy gives a site's image: named by site and image, tagged by its spec hash."""
    return f"hubdeploy/{site}-{name}:{digest[:12]}"


def donor_tags(image: dict[str, Any], name: str) -> list[str]:
    """The tags under which ``image`` (an entry of the engine's image list) is another
    site's own build of the image ``name``: its tag is the one hubdeploy gives it, from
    its own labels. Any image built FROM a site's image inherits that image's labels,
    content key included, but not the tag: a compute-node or a hand-made image on top of
    a base is never taken for the base."""
    labels = image.get("Labels") or {}
    if labels.get(IMAGE_NAME) != name or not labels.get(IMAGE_SPEC_HASH):
        return []
    own = image_ref(labels.get(LABEL_SITE, ""), name, labels[IMAGE_SPEC_HASH])
    return [t for t in image.get("RepoTags") or [] if t == own]


def _relabel_from_another_site(plan: ImagePlan, client, *, console, steps=None) -> bool:
    """Build ``plan`` as its own labels on top of an image of the same content that
    another site on this engine built (a one-step build, its layers shared on disk);
    False when there is none, or it went away meanwhile: then ``plan`` is built itself.

    The site's own tag, labels and history stay its own; what is shared is only what
    the content key proves equal: the same files, build args and parent content.
    """
    key = plan.labels.get(IMAGE_CONTENT_KEY)
    if not key:
        return False
    # The low-level list: the SDK's images.list() inspects every hit afterwards, and
    # fails if another build on this engine removes one in between.
    try:
        same = client.api.images(filters={"label": [f"{IMAGE_CONTENT_KEY}={key}"]})
    except ENGINE_ERRORS as exc:
        raise OperationError(f"cannot list images: {exc}") from None
    tagged = sorted(t for img in same for t in donor_tags(img, plan.name) if t != plan.ref)
    if not tagged:
        return False
    lines = [f"FROM {tagged[0]}", "LABEL " + " ".join(f"{json.dumps(k)}={json.dumps(v)}" for k, v in plan.labels.items())]
    relabel = ImagePlan(plan.name, plan.ref, None, {"Dockerfile": ("\n".join(lines) + "\n").encode()}, {})
    if console:
        console.print(f"[bold cyan]{plan.name}[/] the same content as {tagged[0]}: relabelled, not rebuilt")
    try:
        _docker_build(client, relabel, nocache=False, console=None, steps=steps)
    except OperationError:
        return False  # the other site's image was removed between the list and the build
    return True


def _build_debian(plan: ImagePlan, client, state_dir: Path, *, fresh: bool, console, steps=None) -> None:
    digest = plan.labels[IMAGE_SPEC_HASH]
    recipe = json.loads(plan.files["recipe.json"])
    tarball = rootfs.tarball_path(state_dir, recipe["suite"], digest)
    if fresh or not tarball.is_file():
        overlay = {k[len("rootfs/"):]: v for k, v in plan.files.items() if k.startswith("rootfs/")}
        rootfs.bootstrap(tarball, suite=recipe["suite"], mirror=recipe["mirror"], overlay=overlay,
                         proxies=plan.buildargs, console=console)
    elif console:
        console.print(f"[bold cyan]debian[/] importing the cached rootfs {tarball}")
    rootfs.import_tarball(client, tarball, plan.ref, plan.labels)


def _docker_build(client, plan: ImagePlan, *, nocache: bool, console, steps: list[BuildStep] | None = None) -> None:
    """Classic-builder build through the SDK, streaming the steps to the console."""
    from rich.markup import escape

    tail: deque[str] = deque(maxlen=20)
    step = "sending the build context"
    log = StepLog(plan.name)

    def fail(reason: str) -> OperationError:
        detail = "".join(f"\n  {line}" for line in tail)
        hint = None
        if "CERTIFICATE_VERIFY_FAILED" in detail or "certificate verify failed" in detail:
            hint = "TLS is intercepted here? set build.ca_bundle to the site's CA bundle (PEM)"
        return OperationError(
            f"building image {plan.name} ({plan.ref}) failed at {step[:200]}: {reason.strip()}"
            + (f"\n  last output:{detail}" if detail else ""),
            hint=hint,
        )

    try:
        stream = client.api.build(
            fileobj=io.BytesIO(context_tar(plan.files)),
            custom_context=True,
            tag=plan.ref,
            buildargs=plan.buildargs or None,
            labels=build_time_labels(),
            decode=True,
            rm=True,
            forcerm=True,
            nocache=nocache,
            pull=False,
            timeout=3600,
        )
        for chunk in stream:
            if "error" in chunk:
                raise fail(chunk["error"])
            for line in _ANSI.sub("", chunk.get("stream") or "").splitlines():
                line = line.rstrip()
                log.feed(line)
                if not line or _NOISE.match(line):
                    continue
                tail.append(line)
                if line.startswith("Step "):
                    step = line
                    if console:
                        console.print(f"[bold cyan]{plan.name}[/] {escape(' '.join(line.split())[:100])}")
    except ENGINE_ERRORS as exc:  # API error, connection reset, timeout: never a traceback
        raise fail(f"{type(exc).__name__}: {exc}") from None
    finally:
        if steps is not None:
            steps.extend(log.close())
    if not _exists(client, plan.ref):
        raise fail("the engine reported no error but the image is not tagged")
