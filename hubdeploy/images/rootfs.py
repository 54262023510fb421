"""The Debian base image, made without a registry: debootstrap, tar, ``docker import``.

No container registry answers on the machines hubdeploy targets, so every image
descends from a rootfs bootstrapped from the site's Debian mirror. Bootstrapping takes
about 30 s; the tarball is cached under ``<state>/rootfs/`` by the hash of its recipe
(suite, mirror, overlay files), so a rebuild imports it again in seconds.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections import deque
from pathlib import Path

import docker.errors
import requests.exceptions

from hubdeploy.errors import OperationError

# Debian's own docker images set the same environment; an imported tarball has none.
IMPORT_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def tarball_path(state_dir: Path, suite: str, spec_hash: str) -> Path:
    """Where the rootfs tarball of one recipe is cached."""
    return state_dir / "rootfs" / f"debian-{suite}-{spec_hash[:12]}.tar"


def _run(argv: list[str], step: str, env: dict[str, str] | None = None) -> None:
    """Run argv; on failure raise OperationError with the last 20 lines of its output."""
    tail: deque[str] = deque(maxlen=20)
    try:
        proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace", env=env
        )
    except OSError as exc:
        raise OperationError(f"image debian: {step}: cannot run {argv[0]}: {exc.strerror}") from None
    assert proc.stdout is not None
    for line in proc.stdout:
        tail.append(line.rstrip())
    if proc.wait() != 0:
        detail = "".join(f"\n  {line}" for line in tail)
        raise OperationError(f"image debian: {step} failed (exit {proc.returncode}){detail}")


def bootstrap(
    dest: Path,
    *,
    suite: str,
    mirror: str,
    overlay: dict[str, bytes],
    proxies: dict[str, str],
    console=None,
) -> Path:
    """debootstrap a minbase rootfs, apply ``overlay`` (rootfs path -> bytes) and write
    it as an uncompressed tarball at ``dest`` (atomically: tmp file + rename)."""
    if shutil.which("debootstrap") is None:
        raise OperationError(
            "image debian: debootstrap is not installed",
            hint="apt-get install debootstrap, or set images.base.from to a local image",
        )
    if os.geteuid() != 0:
        raise OperationError("image debian: debootstrap needs root (it creates device nodes and chroots)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    # The site's proxies reach the mirror from the host too; they are never written anywhere.
    env = {**os.environ, **proxies}
    with tempfile.TemporaryDirectory(prefix="hubdeploy-rootfs-", dir=dest.parent) as tmp:
        root = Path(tmp) / "root"
        if console:
            console.print(f"[bold cyan]debian[/] debootstrap {suite} from {mirror} (about 30 s)")
        _run(["debootstrap", "--variant=minbase", suite, str(root), mirror], "debootstrap", env)
        for rel, data in sorted(overlay.items()):
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            # Overlay scripts (policy-rc.d) must be executable; config files must not be.
            path.chmod(0o755 if data.startswith(b"#!") else 0o644)
        # Leftovers of the bootstrap that only make the image bigger or leak the host's
        # resolver (Docker mounts its own resolv.conf at run time).
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists", "var/log"):
            for child in (root / junk).glob("*"):
                if child.is_file() or child.is_symlink():
                    child.unlink()
        (root / "etc/resolv.conf").write_text("")
        (root / "etc/hostname").write_text("")
        part = Path(tmp) / "rootfs.tar"
        _run(["tar", "--numeric-owner", "--xattrs", "-C", str(root), "-cf", str(part), "."], "tar")
        os.replace(part, dest)
    return dest


def import_tarball(client, tarball: Path, ref: str, labels: dict[str, str]) -> str:
    """``docker import`` the tarball as ``ref`` with an environment and labels; returns the image id."""
    repo, tag = ref.rsplit(":", 1)
    changes = [f"ENV {IMPORT_ENV}", 'CMD ["bash"]'] + [f'LABEL "{k}"="{v}"' for k, v in sorted(labels.items())]
    try:
        client.api.import_image_from_file(str(tarball), repository=repo, tag=tag, changes=changes)
        return client.api.inspect_image(ref)["Id"]
    except (docker.errors.DockerException, requests.exceptions.RequestException, OSError) as exc:
        raise OperationError(f"image debian: docker import of {tarball} failed: {exc}") from None
