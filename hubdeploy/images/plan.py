"""Planning the site's images (pure): every image's build context and content-hashed tag.

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
import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import jinja2

import hubdeploy
from hubdeploy.contract.labels import (IMAGE_CONTENT_KEY, IMAGE_JUPYTERHUB_VERSION, IMAGE_KERNELS, IMAGE_NAME,
                                       IMAGE_PARENT, IMAGE_SPEC_HASH)
from hubdeploy.contract.layout import (DB_IMAGE, DEBIAN_IMAGE, HUB_IMAGE, LABEL_SITE, PROMETHEUS_IMAGE, PROXY_IMAGE,
                                       SLURM_IMAGE, SLURMDBD_IMAGE)
from hubdeploy.errors import SiteError
from hubdeploy.images import kernels as kern
from hubdeploy.images.source import hub_source, pyproject, source_root
from hubdeploy.site.model import Site

CA_FILE = "hubdeploy-ca.crt"
# Docker's predefined proxy args: usable in RUN without an ARG line, never in history.
PROXY_ARGS = ("http_proxy", "https_proxy", "no_proxy")
# Bump when a build step changes outside the rendered files (e.g. how rootfs is made).
RECIPE_VERSION = "1"


@dataclass(frozen=True)
class ImagePlan:
    """One image to build: its context, its tag and the plan it is built FROM."""

    name: str
    ref: str
    parent: str | None
    files: dict[str, bytes]
    buildargs: dict[str, str]
    labels: dict[str, str] = field(default_factory=dict)


def _images_dir() -> Path:
    # The recipes live in the source tree's images/ (hubdeploy runs from a checkout).
    return source_root() / "images"


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
        planner.slurm(site.slurm.cluster.image, charliecloud=bool(site.staged_profiles))
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
        self.source_url = (pyproject().get("project", {}).get("urls") or {}).get("Source")
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
                 {"requirements.txt": _requirements(reqs), **hub_source()})

    def service_image(self, name: str, files: tuple[str, ...] = ()) -> None:
        """A stack service's image: its recipe ``images/<name>/`` (Dockerfile.j2 and
        ``files``) on the Debian image."""
        self.add(name, f"{name}/Dockerfile.j2", DEBIAN_IMAGE, self.plans[DEBIAN_IMAGE].ref,
                 {f: (_images_dir() / name / f).read_bytes() for f in files})

    def slurm(self, node_image: str, charliecloud: bool = False) -> None:
        """The compute nodes: the image the profiles run, plus Slurm and munge. The recipe
        is the one the Slurm tests build (FROM a build arg), so it stays a plain Dockerfile;
        with ``charliecloud`` its ch-run step is appended (a site without it keeps its tag)."""
        parent_ref = self.plans[node_image].ref
        recipe = _images_dir() / SLURM_IMAGE
        files = {name: (recipe / name).read_bytes() for name in ("Dockerfile", "entrypoint.sh", "node-agent.py")}
        if charliecloud:
            files["Dockerfile"] += b"\n" + (recipe / "charliecloud.Dockerfile").read_bytes()
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


def image_ref(site: str, name: str, digest: str) -> str:
    """The tag hubdeploy gives a site's image: named by site and image, tagged by its spec hash."""
    return f"hubdeploy/{site}-{name}:{digest[:12]}"
