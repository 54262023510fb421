"""Short-lived SSH user certificates from the hub's certificate authority.

A site's login host trusts the hub's CA key (sshd ``TrustedUserCAKeys``), so the hub logs
in as each user with a fresh ed25519 key and a certificate whose only principal is the
user's account name, valid for a few minutes (NERSC's sshproxy model). Nothing lasting is
handed out: a stolen key and certificate are worthless minutes later, and the hub holds
no long-lived credential of any user.

Each account's key and certificate live in a private directory of the hub's container
(``<root>/<name>/``, mode 0700; files 0600). A certificate is reused until it is close to
expiry; every renewal writes a new pair under new names, so an ssh that is reading the
previous pair never sees a key and a certificate that do not match.
"""

from __future__ import annotations

import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    SSHCertificate,
    SSHCertificateBuilder,
    SSHCertificateType,
)

from hubdeploy.contract.identity import POSIX_NAME_PATTERN

_POSIX_NAME = re.compile(POSIX_NAME_PATTERN)

# The login host's clock may be behind the hub's: a certificate is valid from a little
# before it is signed.
CLOCK_SKEW = 60


class CertificateError(Exception):
    """The CA key cannot be read, or a certificate cannot be made for this name."""


@dataclass(frozen=True)
class Credentials:
    """One account's key and certificate (paths for ssh ``-i`` and ``CertificateFile``)."""

    name: str
    directory: str
    key: str
    cert: str
    valid_before: int


def load_ca(path: str) -> Ed25519PrivateKey:
    """The CA's private key (OpenSSH format, ed25519)."""
    try:
        key = serialization.load_ssh_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise CertificateError(f"cannot read the SSH CA key {path}: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise CertificateError(f"the SSH CA key {path} is not an ed25519 key")
    return key


def sign(ca: Ed25519PrivateKey, public_key, name: str, valid_after: int, valid_before: int,
         key_id: str) -> SSHCertificate:
    """A user certificate for ``public_key`` with the one principal ``name``.

    No extensions: the hub runs commands without a terminal, agent or forwarding, so the
    certificate allows none of them.
    """
    return (
        SSHCertificateBuilder()
        .public_key(public_key)
        .serial(secrets.randbits(64))
        .type(SSHCertificateType.USER)
        .key_id(key_id.encode())
        .valid_principals([name.encode()])
        .valid_after(valid_after)
        .valid_before(valid_before)
        .sign(ca)
    )


def _write_private(path: Path, data: bytes) -> None:
    """Create ``path`` with mode 0600 from the start (never readable by others)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


class CertificateAuthority:
    """Makes and reuses each account's key and certificate (see the module's text)."""

    def __init__(self, ca_key: str, root: str, minutes: float = 5, key_id: str = "hubdeploy",
                 clock=time.time):
        self.ca_key, self.root, self.key_id, self.clock = ca_key, Path(root), key_id, clock
        self.lifetime = int(minutes * 60)
        if self.lifetime < 60:
            raise ValueError("SSH certificates must be valid for at least a minute")
        # Renew this long before expiry: a command started with the old pair still logs in.
        self.margin = min(60, self.lifetime // 3)
        self._current: dict[str, Credentials] = {}
        self._ca: Ed25519PrivateKey | None = None

    def credentials(self, name: str) -> Credentials:
        """A valid key and certificate for account ``name``, made if needed."""
        if not _POSIX_NAME.match(name):
            raise CertificateError(f"{name!r} is not a POSIX account name")
        now = int(self.clock())
        cur = self._current.get(name)
        if cur is not None and cur.valid_before - now > self.margin and Path(cur.cert).is_file():
            return cur
        cred = self._issue(name, now)
        self._current[name] = cred
        self._prune(Path(cred.directory), keep={cred.key, *((cur.key,) if cur else ())})
        return cred

    def _ca_key(self) -> Ed25519PrivateKey:
        if self._ca is None:
            self._ca = load_ca(self.ca_key)
        return self._ca

    def _directory(self, name: str) -> Path:
        self.root.mkdir(mode=0o711, parents=True, exist_ok=True)
        path = self.root / name
        path.mkdir(mode=0o700, exist_ok=True)
        os.chmod(path, 0o700)  # an existing directory of another mode is made private
        return path

    def _issue(self, name: str, now: int) -> Credentials:
        directory = self._directory(name)
        key = Ed25519PrivateKey.generate()
        valid_before = now + self.lifetime
        cert = sign(self._ca_key(), key.public_key(), name, now - CLOCK_SKEW, valid_before,
                    f"{self.key_id}:{name}")
        base = directory / f"id_{now}_{secrets.token_hex(4)}"
        key_path, cert_path = base, base.with_name(base.name + "-cert.pub")
        _write_private(key_path, key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()))
        _write_private(cert_path, cert.public_bytes() + b"\n")
        return Credentials(name, str(directory), str(key_path), str(cert_path), valid_before)

    @staticmethod
    def _prune(directory: Path, keep: set[str]) -> None:
        """Remove the pairs older than the current and the previous one."""
        for path in directory.glob("id_*"):
            key = str(path)[: -len("-cert.pub")] if path.name.endswith("-cert.pub") else str(path)
            if key not in keep:
                path.unlink(missing_ok=True)
