"""Building the planned images on the Docker engine: only what is missing, parents first.

An image another site on this engine already built with the same content is relabelled
rather than built again (:func:`donor_tags`); the Debian image is imported from a
bootstrapped rootfs (:mod:`hubdeploy.images.rootfs`); every other image is a classic-builder
build of its rendered context, its output streamed to the console step by step.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import tarfile
import time
from collections import deque
from pathlib import Path
from typing import Any

import docker.errors
import requests.exceptions

from hubdeploy.contract.labels import IMAGE_CONTENT_KEY, IMAGE_NAME, IMAGE_PARENT, IMAGE_SPEC_HASH
from hubdeploy.contract.layout import DEBIAN_IMAGE, LABEL_SITE
from hubdeploy.errors import OperationError, SiteError
from hubdeploy.images import rootfs
from hubdeploy.images.buildsteps import BuildStep, StepLog
from hubdeploy.images.plan import ImagePlan, image_ref
from hubdeploy.images.source import build_time_labels

# Every context file gets the same metadata, so the same files give the same tar.
_MTIME = 0
# What the engine, the SDK and the socket raise when a daemon call goes wrong.
ENGINE_ERRORS = (docker.errors.DockerException, requests.exceptions.RequestException, OSError)
# The classic builder colours stderr and narrates its own bookkeeping; neither helps
# someone reading the last lines of a failed build.
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_NOISE = re.compile(r"^\s*(---> |Removing intermediate container|Successfully (built|tagged) )")


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


def _require_parent(plan: ImagePlan, client) -> None:
    # A classic build would try to pull a missing FROM image, and fail obscurely.
    parent_ref = plan.labels.get(IMAGE_PARENT, "")
    if parent_ref and not _exists(client, parent_ref):
        raise OperationError(
            f"image {plan.name}: its parent image {parent_ref} is not on this engine",
            hint="build or `docker load` it first (images.base.from names a local image)",
        )


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
