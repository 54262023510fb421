"""Move built images to where the notebooks run: a registry (push) or a tarball (save).

Compute nodes at many facilities reach no registry at all; ``save`` writes ``docker save``
tarballs plus a manifest that says what is inside (ref, id, parent, spec hash, kernels,
installed Python and Debian packages), so an air-gapped node can ``docker load`` them and
an auditor can read the package list without loading anything.

Credentials: the password reaches the engine only inside the SDK's X-Registry-Auth
header. It is never in argv, a message or an exception of ours.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import docker.errors

from hubdeploy.contract.labels import IMAGE_PARENT, IMAGE_SPEC_HASH
from hubdeploy.errors import OperationError, SiteError
from hubdeploy.images import kernels as kern
from hubdeploy.images.build import ENGINE_ERRORS
from hubdeploy.images.plan import ImagePlan
from hubdeploy.site.swarm import REGISTRY_PATTERN

REGISTRY_RE = re.compile(REGISTRY_PATTERN)
MANIFEST_VERSION = 1
# One container lists what the image holds: every venv's pip freeze, then dpkg's list.
_INVENTORY = r"""
for v in /opt/venv /opt/kernels/*; do
  [ -x "$v/bin/python" ] || continue
  echo "@@venv $v"
  "$v/bin/python" -m pip freeze --all --disable-pip-version-check 2>/dev/null
done
echo "@@dpkg"
dpkg-query -W -f '${Package}=${Version}\n' 2>/dev/null
"""


@dataclass(frozen=True)
class Pushed:
    image: str
    ref: str
    remote: str
    digest: str | None


def remote_ref(plan: ImagePlan, registry: str) -> str:
    """``hubdeploy/demo-base:abc`` pushed to ``reg:5000`` is ``reg:5000/hubdeploy/demo-base:abc``."""
    if not REGISTRY_RE.fullmatch(registry):
        raise SiteError(f"--registry: expected HOST or HOST:PORT, got {registry!r}")
    return f"{registry}/{plan.ref}"


def _clean(text: str, secret: str | None) -> str:
    # The engine does not echo credentials, but a proxy or registry error page might.
    return text.replace(secret, "***") if secret else text


def push(client, plan: ImagePlan, registry: str, *, username: str | None = None,
         password: str | None = None, console=None) -> Pushed:
    """Tag the plan's image for ``registry`` and push it; raises OperationError on failure.

    A rejected login is reported as such ("unauthorized"), with a hint; the remote tag is
    removed again locally either way, so the engine keeps only the site's own tags.
    """
    remote = remote_ref(plan, registry)
    repo, tag = remote.rsplit(":", 1)
    auth = {"username": username, "password": password, "serveraddress": registry} if username else None
    try:
        client.api.tag(plan.ref, repo, tag)
    except docker.errors.ImageNotFound:
        raise OperationError(f"image {plan.name} ({plan.ref}) is not built",
                             hint="run `hubdeploy images build` first") from None
    except ENGINE_ERRORS as exc:
        raise OperationError(f"cannot tag {plan.ref}: {exc}") from None
    digest = None
    try:
        for chunk in client.api.push(repo, tag, auth_config=auth, stream=True, decode=True):
            if "error" in chunk:
                raise _push_error(plan, registry, _clean(str(chunk["error"]), password))
            aux = chunk.get("aux") or {}
            digest = aux.get("Digest", digest)
            if console and chunk.get("status") in ("Pushed", "Layer already exists"):
                console.print(f"[bold cyan]{plan.name}[/] {chunk['status']} {chunk.get('id', '')}")
    except ENGINE_ERRORS as exc:
        raise _push_error(plan, registry, _clean(f"{type(exc).__name__}: {exc}", password)) from None
    finally:
        try:
            client.api.remove_image(remote, noprune=True)
        except ENGINE_ERRORS:
            pass
    return Pushed(plan.name, plan.ref, remote, digest)


def _push_error(plan: ImagePlan, registry: str, reason: str) -> OperationError:
    low = reason.lower()
    hint = None
    if "unauthorized" in low or "authentication required" in low or "no basic auth" in low:
        reason = f"the registry refused the credentials ({reason.strip()})"
        hint = "check --username and the password given on stdin (--password-stdin)"
    elif "connection refused" in low or "no such host" in low or "timeout" in low:
        hint = f"is a registry listening at {registry}?"
    elif "server gave http response to https client" in low:
        hint = f"add {registry} to the engine's insecure-registries, or serve the registry over TLS"
    return OperationError(f"pushing image {plan.name} ({plan.ref}) to {registry} failed: {reason.strip()}", hint=hint)


def inventory(client, ref: str) -> dict:
    """``{"pip": {venv: [name==version, ...]}, "dpkg": [name=version, ...]}`` of an image."""
    try:
        raw = client.containers.run(ref, ["sh", "-c", _INVENTORY], entrypoint=[], remove=True, user="0",
                                    network_mode="none", stdout=True, stderr=False)
    except ENGINE_ERRORS as exc:
        raise OperationError(f"cannot list the packages of {ref}: {exc}") from None
    pip: dict[str, list[str]] = {}
    dpkg: list[str] = []
    current: list[str] | None = None
    for line in raw.decode(errors="replace").splitlines():
        if line.startswith("@@venv "):
            current = pip.setdefault(line.split(" ", 1)[1], [])
        elif line == "@@dpkg":
            current = dpkg
        elif line.strip() and current is not None:
            current.append(line.strip())
    return {"pip": pip, "dpkg": dpkg}


def save(client, plan: ImagePlan, dest: Path, *, console=None) -> dict:
    """``docker save`` the image to ``dest/<name>-<tag>.tar`` and write its manifest beside it.

    Written to a temporary name and renamed, so a file with the final name is complete.
    Returns the manifest.
    """
    try:
        attrs = client.api.inspect_image(plan.ref)
    except docker.errors.ImageNotFound:
        raise OperationError(f"image {plan.name} ({plan.ref}) is not built",
                             hint="run `hubdeploy images build` first") from None
    except ENGINE_ERRORS as exc:
        raise OperationError(f"cannot inspect image {plan.ref}: {exc}") from None
    dest.mkdir(parents=True, exist_ok=True)
    stem = plan.ref.split("/", 1)[-1].replace(":", "-")
    tar_path, tmp = dest / f"{stem}.tar", dest / f".{stem}.tar.part"
    sha = hashlib.sha256()
    try:
        with open(tmp, "wb") as f:
            for chunk in client.api.get_image(plan.ref):
                sha.update(chunk)
                f.write(chunk)
        os.replace(tmp, tar_path)
    except ENGINE_ERRORS as exc:
        tmp.unlink(missing_ok=True)
        raise OperationError(f"saving image {plan.name} to {tar_path} failed: {exc}") from None
    labels = attrs["Config"].get("Labels") or {}
    manifest = {
        "version": MANIFEST_VERSION,
        "image": plan.name,
        "ref": plan.ref,
        "id": attrs["Id"],
        "repo_digests": attrs.get("RepoDigests") or [],
        "parent": labels.get(IMAGE_PARENT) or None,
        "spec_hash": labels.get(IMAGE_SPEC_HASH),
        "labels": labels,
        "kernels": kern.from_labels(labels),
        "size": attrs.get("Size"),
        "tarball": tar_path.name,
        "tarball_sha256": sha.hexdigest(),
        "packages": inventory(client, plan.ref),
    }
    man_path = dest / f"{stem}.manifest.json"
    tmp_man = dest / f".{stem}.manifest.json.part"
    tmp_man.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    os.replace(tmp_man, man_path)
    if console:
        console.print(f"[bold green]saved[/] {plan.name} -> {tar_path} ({tar_path.stat().st_size / 1e6:.0f} MB)")
    return manifest
