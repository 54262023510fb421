"""`smoke --throwaway` on a TLS site: up, test through HTTPS, down with the volumes.

What a collaboration's CI runs. The key is root-only on the host (as a real one is): the
proxy, which drops root, must still serve with it. A second site has no certificate files
(`tls: {self_signed: true}`): `up` makes one, keeps it, and `smoke --ca-bundle` trusts it.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import docker
import pytest

from stackfixture import free_port, run_cli, tear_down_site

from hubdeploy.state import selfsigned

pytestmark = pytest.mark.integration

SITE = """\
name: hdttls
public: {{host: 127.0.0.1, port: {port}}}
tls: {{cert: tls/cert.pem, key: tls/key.pem}}
services: {{idle_culler: {{enabled: false}}}}
build: {{ca_bundle: /etc/ssl/certs/ca-certificates.crt}}
profiles: [{{name: only, image: base}}]
"""


@pytest.fixture
def tls_site(tmp_path):
    (tmp_path / "tls").mkdir()
    cert, key = tmp_path / "tls" / "cert.pem", tmp_path / "tls" / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    os.chmod(key, 0o600)
    site = tmp_path / "site.yaml"
    site.write_text(SITE.format(port=free_port()))
    yield site
    tear_down_site(site, "hdttls")


def test_throwaway_smoke_over_tls_leaves_nothing(tls_site):
    cert = tls_site.parent / "tls" / "cert.pem"
    proc = run_cli(tls_site, "smoke", "--throwaway", "--ca-bundle", str(cert), "--json", timeout=1500)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert report["ok"] and report["hub_url"].startswith("https://")
    client = docker.from_env()
    assert client.containers.list(all=True, filters={"name": "hubdeploy-hdttls"}) == []
    assert [v.name for v in client.volumes.list() if v.name.startswith("hubdeploy-hdttls")] == []


SELF_SIGNED_SITE = """\
name: hdtssl
public: {{host: 127.0.0.1, port: {port}}}
tls: {{self_signed: true}}
services: {{idle_culler: {{enabled: false}}}}
build: {{ca_bundle: /etc/ssl/certs/ca-certificates.crt}}
profiles: [{{name: only, image: base}}]
"""


@pytest.fixture
def self_signed_site(tmp_path):
    site = tmp_path / "site.yaml"
    site.write_text(SELF_SIGNED_SITE.format(port=free_port()))
    yield site
    tear_down_site(site, "hdtssl")


def _proxy_id(client) -> str:
    (proxy,) = client.containers.list(
        filters={"label": ["com.docker.compose.project=hubdeploy-hdtssl", "com.docker.compose.service=proxy"]}
    )
    return proxy.id


def test_self_signed_certificate_kept_and_trusted_by_smoke(self_signed_site):
    first = run_cli(self_signed_site, "up", "--json", timeout=1500)
    assert first.returncode == 0, first.stdout + first.stderr
    secrets = self_signed_site.parent / ".hubdeploy" / "secrets"
    cert = Path(json.loads(first.stdout)["tls_certificate"])
    assert cert == secrets / selfsigned.CERT
    cert_bytes = cert.read_bytes()
    client = docker.from_env()
    proxy = _proxy_id(client)

    # A second `up` keeps the certificate, renders the same files, leaves the proxy alone,
    # and says where the certificate is.
    second = run_cli(self_signed_site, "up", timeout=600)
    assert second.returncode == 0, second.stdout + second.stderr
    assert cert.read_bytes() == cert_bytes
    assert str(cert) in second.stdout
    assert _proxy_id(client) == proxy

    smoke = run_cli(self_signed_site, "smoke", "--ca-bundle", str(cert), "--json", timeout=900)
    assert smoke.returncode == 0, smoke.stdout + smoke.stderr
    report = json.loads(smoke.stdout)
    assert report["ok"] and report["hub_url"].startswith("https://")

    key = (secrets / selfsigned.KEY).read_text()
    body = "".join(key.splitlines()[1:-1])
    for proc in (first, second, smoke):
        assert body not in (proc.stdout + proc.stderr).replace("\n", "")
    rendered = "".join(p.read_text() for p in (secrets.parent / "rendered").rglob("*") if p.is_file())
    assert body not in rendered.replace("\n", "")
