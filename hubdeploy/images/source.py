"""hubdeploy's own source tree, as the images see it: what the hub image installs of
hubdeploy, and the revision and source labels every build gets.

hubdeploy runs from a source checkout (``pip install -e .``): the hub image is given the
hub side of that tree (:data:`HUB_SOURCES`) and a minimal pyproject that installs it.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import hubdeploy
from hubdeploy.errors import OperationError


def source_root() -> Path:
    """The checkout hubdeploy runs from (the directory that holds ``hubdeploy/``)."""
    return Path(hubdeploy.__file__).resolve().parent.parent


# What of hubdeploy runs inside the hub: the spawner, the backends, the proxy class and the
# secret wrapper. Only these files enter the hub image (and its tag), so a change to the
# CLI, the renderer or the docs does not rebuild and restart every site's hub.
# The engine proxy runs from the hub image too: one image to build, and it has python.
HUB_SOURCES = ("hubdeploy/__init__.py", "hubdeploy/errors.py", "hubdeploy/contract", "hubdeploy/hub",
               "hubdeploy/backends", "hubdeploy/engineproxy")
HUB_PACKAGES = ("hubdeploy", "hubdeploy.contract", "hubdeploy.hub", "hubdeploy.backends", "hubdeploy.engineproxy")
HUB_ENTRY_POINT_GROUPS = ("hubdeploy.backends", "jupyterhub.spawners")


def hub_source() -> dict[str, bytes]:
    """The hub-side part of hubdeploy and a minimal pyproject that installs it."""
    root = source_root()
    if not (root / "pyproject.toml").is_file():
        raise OperationError(
            f"hubdeploy's source tree was not found beside {root / 'hubdeploy'}",
            hint="the hub image installs hubdeploy from a source checkout (pip install -e .)",
        )
    project = pyproject()["project"]
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


def pyproject() -> dict:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    return tomllib.loads((source_root() / "pyproject.toml").read_text())


def build_time_labels() -> dict[str, str]:
    """OCI ``created`` and ``revision``: given to the engine as build labels, outside the
    rendered Dockerfile, so they never enter the spec hash (the tag). The engine appends
    them as a last LABEL step: every cached layer is reused, and an image already tagged
    is not rebuilt just because time passed or hubdeploy was committed again."""
    out = {"org.opencontainers.image.created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    rev = _git(source_root(), "rev-parse", "HEAD")
    if rev and re.fullmatch(r"[0-9a-f]{40}", rev):
        out["org.opencontainers.image.revision"] = rev
    # pyproject's [project.urls] Source is rendered (and preferred); a checkout's remote
    # is the fallback, as long as it carries no credentials.
    if not (pyproject().get("project", {}).get("urls") or {}).get("Source"):
        url = _git(source_root(), "remote", "get-url", "origin")
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
