"""Stack secrets: generated once, stored owner-only, reused on every ``up``.

Secrets live in ``.hubdeploy/secrets/`` (0700, files 0600) beside the site file. Only their
*paths* ever leave this module: compose mounts them at ``/run/secrets/NAME``; the hub,
proxy and services read the files themselves, so no value appears in compose.yaml, argv,
``docker inspect``, logs or ``--json``.
"""

from __future__ import annotations

import os
import secrets as _random
from pathlib import Path

from hubdeploy.contract.layout import COOKIE_SECRET, DB_PASSWORD, MUNGE_KEY, PROXY_TOKEN, SSH_CA_KEY, SSH_KEY, service_token
from hubdeploy.contract.services import builtin_services
from hubdeploy.errors import OperationError


def secret_names(site) -> list[str]:
    """Every secret a site's stack needs, in a stable order."""
    names = [COOKIE_SECRET, PROXY_TOKEN]
    names += [s.secret for s in builtin_services(site.services.idle_culler.enabled, site.services.prometheus.enabled)]
    names += [service_token(s.name) for s in site.services.extra]
    if site.database.type == "postgresql":
        names.append(DB_PASSWORD)
    if site.slurm is not None and site.slurm.cluster is not None:
        # Shared by slurmctld and every slurmd (munge authenticates them to each other).
        names.append(MUNGE_KEY)
    if ssh_key_generated(site):
        names.append(SSH_KEY)
    if ssh_certificates(site):
        names.append(SSH_CA_KEY)
    return names


def ssh_key_generated(site) -> bool:
    """Whether the hub submits over SSH with a key hubdeploy generates (not the site's own)."""
    return site.submit_ssh is not None and site.submit_ssh.identity_file is None


def ssh_certificates(site) -> bool:
    """Whether the hub signs per-user SSH certificates for the site's login host."""
    return site.submit_ssh is not None and site.submit_ssh.certificates


def _ssh_key(comment: str = "hubdeploy-hub") -> tuple[bytes, bytes]:
    """A new ed25519 key: (private key in OpenSSH format, public key line)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return private, public + f" {comment}\n".encode()


def _new_value(name: str, path: Path) -> bytes:
    """A secret's first value; an SSH key also leaves its public half beside it (``.pub``)."""
    if name in (SSH_KEY, SSH_CA_KEY):
        private, public = _ssh_key("hubdeploy-hub" if name == SSH_KEY else "hubdeploy-ca")
        pub = path.with_name(name + ".pub")
        pub.write_bytes(public)
        os.chmod(pub, 0o644)
        return private
    return _random.token_hex(32).encode()


def ensure_secrets(secrets_dir: Path, names: list[str]) -> dict[str, Path]:
    """Create the missing secrets (32 random bytes, hex; an SSH key pair for
    ``slurm_ssh_key`` and ``slurm_ssh_ca``) and return name -> path.

    Existing files are reused as they are, so cookies and tokens survive every ``up``.
    A file is created with O_EXCL and mode 0600 from the start: there is no moment at
    which a secret is world-readable.
    """
    secrets_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(secrets_dir, 0o700)
    paths = {}
    for name in names:
        path = secrets_dir / name
        if not path.exists():
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:  # raced with another `up`: theirs wins
                pass
            else:
                with os.fdopen(fd, "wb") as f:
                    f.write(_new_value(name, path))
                    f.flush()
                    os.fsync(f.fileno())
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            raise OperationError(
                f"secret file {path} is readable by others (mode {mode:o})",
                hint=f"chmod 600 {path}",
            )
        paths[name] = path
    return paths


def read_secret(secrets_dir: Path, name: str) -> str:
    """The value of one secret (for the smoke test's service token)."""
    path = secrets_dir / name
    try:
        return path.read_text().strip()
    except OSError:
        raise OperationError(f"secret {name!r} is missing; run `hubdeploy up` first") from None
