"""tls: {self_signed: true}: the certificate made once, kept with the secrets, reused,
rendered without its key, and accepted by what `smoke --ca-bundle` does with it."""

from __future__ import annotations

import datetime
import http.server
import ssl
import threading
from pathlib import Path

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from ruamel.yaml import YAML

from hubdeploy.ops import smoke_cmd, stack
from hubdeploy.state import selfsigned

SITE = """\
name: demo
public: {{host: "{host}", port: 8443}}
tls: {{self_signed: true}}
profiles: [{{name: login, image: base}}]
"""


def _sans(cert_path: Path) -> tuple[set[str], set[str]]:
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return set(san.get_values_for_type(x509.DNSName)), {str(a) for a in san.get_values_for_type(x509.IPAddress)}


@pytest.mark.parametrize(
    ("host", "dns", "ips"),
    [
        ("127.0.0.1", set(), {"127.0.0.1"}),
        ("10.1.2.3", set(), {"10.1.2.3"}),
        ("fd00::5", set(), {"fd00::5"}),
        ("hub.example.org", {"hub.example.org"}, set()),
        # The printed URL of a wildcard bind says localhost (stack.Prepared.url).
        ("0.0.0.0", {"localhost"}, {"127.0.0.1", "::1"}),
        ("::", {"localhost"}, {"127.0.0.1", "::1"}),
    ],
)
def test_alt_names_ip_or_dns(tmp_path, host, dns, ips):
    cert, _ = selfsigned.ensure_certificate(tmp_path, host, "demo")
    assert _sans(cert) == (dns, ips)
    assert selfsigned.covers(cert, host)


def test_pair_is_parsable_and_matches(tmp_path):
    cert_path, created = selfsigned.ensure_certificate(tmp_path / "secrets", "127.0.0.1", "demo")
    assert created
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    key = serialization.load_pem_private_key((tmp_path / "secrets" / selfsigned.KEY).read_bytes(), password=None)
    assert cert.public_key() == key.public_key()
    assert cert.issuer == cert.subject
    # An end entity (browsers refuse a CA certificate as a server's), for servers.
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert x509.oid.ExtendedKeyUsageOID.SERVER_AUTH in eku
    life = cert.not_valid_after_utc - datetime.datetime.now(datetime.timezone.utc)
    assert datetime.timedelta(days=824) < life <= datetime.timedelta(days=selfsigned.DAYS)


def test_modes(tmp_path):
    secrets = tmp_path / "secrets"
    cert, _ = selfsigned.ensure_certificate(secrets, "127.0.0.1", "demo")
    assert (secrets / selfsigned.KEY).stat().st_mode & 0o777 == 0o600
    assert cert.stat().st_mode & 0o777 == 0o644
    assert secrets.stat().st_mode & 0o777 == 0o700
    assert sorted(p.name for p in secrets.iterdir()) == [selfsigned.CERT, selfsigned.KEY]  # no temp files left


def test_reused_not_regenerated(tmp_path):
    cert, _ = selfsigned.ensure_certificate(tmp_path, "127.0.0.1", "demo")
    key = tmp_path / selfsigned.KEY
    before = (cert.read_bytes(), key.read_bytes(), cert.stat().st_mtime_ns, key.stat().st_mtime_ns)
    for host in ("127.0.0.1", "10.9.9.9"):  # even a changed host keeps the pair (up warns instead)
        again, created = selfsigned.ensure_certificate(tmp_path, host, "demo")
        assert again == cert and not created
        assert (cert.read_bytes(), key.read_bytes(), cert.stat().st_mtime_ns, key.stat().st_mtime_ns) == before
    assert not selfsigned.covers(cert, "10.9.9.9")


@pytest.mark.parametrize("lost", [selfsigned.CERT, selfsigned.KEY])
def test_half_a_pair_makes_a_new_pair(tmp_path, lost):
    cert, _ = selfsigned.ensure_certificate(tmp_path, "127.0.0.1", "demo")
    old_cert, old_key = cert.read_bytes(), (tmp_path / selfsigned.KEY).read_bytes()
    (tmp_path / lost).unlink()
    _, created = selfsigned.ensure_certificate(tmp_path, "127.0.0.1", "demo")
    assert created
    assert cert.read_bytes() != old_cert and (tmp_path / selfsigned.KEY).read_bytes() != old_key


def test_shared_key_refused(tmp_path):
    from hubdeploy.errors import OperationError

    selfsigned.ensure_certificate(tmp_path, "127.0.0.1", "demo")
    key = tmp_path / selfsigned.KEY
    key.chmod(0o644)
    with pytest.raises(OperationError) as info:
        selfsigned.ensure_certificate(tmp_path, "127.0.0.1", "demo")
    assert "readable by others" in info.value.message
    assert key.read_text() not in str(info.value)


@pytest.mark.parametrize(("host", "connect_as"), [("127.0.0.1", "127.0.0.1"), ("0.0.0.0", "localhost")])
def test_the_certificate_is_its_own_ca_bundle(tmp_path, host, connect_as):
    """What `smoke --ca-bundle CERT` does (requests with verify=CERT), against a server with
    the pair, also under OpenSSL's strict checks (Python 3.13's default)."""
    cert, _ = selfsigned.ensure_certificate(tmp_path, host, "demo")
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, tmp_path / selfsigned.KEY)

    class Hello(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"hello")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    server.socket = server_ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"https://{connect_as}:{server.server_address[1]}/"
        assert requests.get(url, verify=str(cert), timeout=10).text == "hello"
        strict = ssl.create_default_context(cafile=str(cert))
        strict.verify_flags |= ssl.VERIFY_X509_STRICT
        import urllib.request

        with urllib.request.urlopen(url, context=strict, timeout=10) as resp:
            assert resp.read() == b"hello"
        with pytest.raises(requests.exceptions.SSLError):  # not trusted by the system's CAs
            requests.get(url, timeout=10)
    finally:
        server.shutdown()
        server.server_close()


def _site(tmp_path: Path, host: str = "127.0.0.1") -> Path:
    site = tmp_path / "site.yaml"
    site.write_text(SITE.format(host=host))
    return site


def _proxy(files: dict[str, bytes]) -> dict:
    return YAML(typ="safe").load(files["compose.yaml"])["services"]["proxy"]


def test_render_mounts_the_generated_pair_never_its_key(tmp_path):
    prep = stack.prepare(_site(tmp_path))
    secrets = (tmp_path / ".hubdeploy" / "secrets").resolve()
    assert _proxy(prep.files)["volumes"][1:] == [
        f"{secrets / selfsigned.CERT}:/etc/hubdeploy/tls/cert.pem:ro",
        f"{secrets / selfsigned.KEY}:/etc/hubdeploy/tls/key.pem:ro",
    ]
    assert not secrets.exists()  # prepare writes nothing
    stack.write(prep)
    key_pem = (secrets / selfsigned.KEY).read_bytes()
    body = b"".join(key_pem.splitlines()[1:-1])  # the base64, whatever the line breaks
    for path in (tmp_path / ".hubdeploy" / "rendered").rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert key_pem not in data and body not in data.replace(b"\n", b""), path
    assert "require('https')" in _proxy(prep.files)["healthcheck"]["test"][-1]


def test_render_is_stable_and_follows_a_new_certificate(tmp_path):
    site = _site(tmp_path)
    first = stack.prepare(site)
    before_cert = dict(first.files)
    stack.write(first)
    # Written: the hash of the certificate the proxy mounts, not of the absent one.
    assert _proxy(first.files)["labels"] != _proxy(before_cert)["labels"]
    cert = first.self_signed_cert
    assert cert is not None and cert.is_file()
    # An unchanged site renders byte-identical files and writes nothing.
    again = stack.prepare(site)
    assert again.files == first.files
    assert stack.write(again) == []
    # A lost certificate is made anew, and the proxy's config hash changes with it.
    cert.unlink()
    renewed = stack.prepare(site)
    assert stack.write(renewed) == ["compose.yaml"]
    label = "hubdeploy.config-hash"
    assert _proxy(renewed.files)["labels"][label] != _proxy(first.files)["labels"][label]
    assert stack.prepare(site).files == renewed.files


def test_site_with_files_renders_as_before(tmp_path):
    """The {cert, key} form is untouched: the hash covers the cert and the key's path."""
    from hubdeploy import render

    (tmp_path / "c.pem").write_bytes(b"CERT")
    (tmp_path / "k.pem").write_bytes(b"KEY")
    (tmp_path / "site.yaml").write_text(
        "name: demo\ntls: {cert: c.pem, key: k.pem}\nprofiles: [{name: login, image: base}]\n"
    )
    prep = stack.prepare(tmp_path / "site.yaml")
    tls, hashed = render.tls_files(prep.site, tmp_path.resolve())
    assert tls == {"cert": str(tmp_path.resolve() / "c.pem"), "key": str(tmp_path.resolve() / "k.pem")}
    assert hashed == b"CERT"  # the key is hashed by its path, in render_files


def test_smoke_trusts_the_generated_certificate_by_default(tmp_path, monkeypatch):
    import hubdeploy.smoke.run as run

    seen = {}
    monkeypatch.setattr(run, "run_smoke", lambda url, **kw: seen.update(url=url, verify=kw["verify"]))
    site = _site(tmp_path)
    stack.write(stack.prepare(site))
    smoke_cmd.smoke(site)
    assert seen == {"url": "https://127.0.0.1:8443/", "verify": str(stack.prepare(site).self_signed_cert)}
    smoke_cmd.smoke(site, verify="/some/bundle.pem")  # an explicit --ca-bundle wins
    assert seen["verify"] == "/some/bundle.pem"
