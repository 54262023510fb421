"""The certificate of ``tls: {self_signed: true}``: generated once, kept with the secrets.

A trial deployment gets HTTPS without certificate files. The pair lives in
``.hubdeploy/secrets/`` (the key 0600, the certificate 0644: it is public and is what a
user hands to ``smoke --ca-bundle`` or imports into a browser) and is reused on every
``up``; only a missing certificate or key makes a new pair. The key never leaves its file.
"""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

from hubdeploy.contract.atomic import write_atomic

CERT = "tls_cert.pem"
KEY = "tls_key.pem"
DAYS = 825  # Apple's platforms refuse a server certificate valid for longer
# A wildcard bind address is reached as localhost (see stack.Prepared.url).
WILDCARD = ("0.0.0.0", "::")


def paths(secrets_dir: Path) -> tuple[Path, Path]:
    """(certificate, key) of the self-signed pair in ``secrets_dir``."""
    return secrets_dir / CERT, secrets_dir / KEY


def alt_names(host: str) -> list:
    """The subjectAltNames that make ``host`` verify: an IP address SAN for an address,
    a DNS SAN for a name; a wildcard bind address gets localhost, 127.0.0.1 and ::1."""
    from cryptography import x509

    if host in WILDCARD:
        return [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                x509.IPAddress(ipaddress.ip_address("::1"))]
    try:
        return [x509.IPAddress(ipaddress.ip_address(host))]
    except ValueError:
        return [x509.DNSName(host)]


def new_pair(host: str, site_name: str) -> tuple[bytes, bytes]:
    """A new ECDSA P-256 key and its self-signed certificate for ``host``: (cert PEM, key PEM)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"hubdeploy {site_name} self-signed")])
    now = datetime.datetime.now(datetime.timezone.utc)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        # An hour back: a client whose clock is a little behind still accepts it.
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=DAYS))
        .add_extension(x509.SubjectAlternativeName(alt_names(host)), critical=False)
        # An end-entity certificate, not a CA: browsers refuse a CA certificate as a server's.
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def ensure_certificate(secrets_dir: Path, host: str, site_name: str) -> tuple[Path, bool]:
    """The certificate's path, and whether it was made now.

    An existing pair is reused as it is. The key is written before the certificate, so a
    certificate on disk always has its key beside it; when either is missing, both are
    made anew (a certificate without its key is useless).
    """
    from hubdeploy.errors import OperationError

    secrets_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    cert, key = paths(secrets_dir)
    created = not (cert.is_file() and key.is_file())
    if created:
        cert.unlink(missing_ok=True)
        cert_pem, key_pem = new_pair(host, site_name)
        write_atomic(key, key_pem, 0o600)
        write_atomic(cert, cert_pem, 0o644)
    mode = key.stat().st_mode & 0o777
    if mode & 0o077:
        raise OperationError(f"TLS key {key} is readable by others (mode {mode:o})", hint=f"chmod 600 {key}")
    return cert, created


def covers(cert_path: Path, host: str) -> bool:
    """Whether the certificate at ``cert_path`` names ``host`` (it may predate a change of
    public.host, and is never replaced while present)."""
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    try:
        have = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    return all(name in have for name in alt_names(host))
