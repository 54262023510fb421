"""`smoke --throwaway` on a TLS site: up, test through HTTPS, down with the volumes.

What a collaboration's CI runs. The key is root-only on the host (as a real one is): the
proxy, which drops root, must still serve with it.
"""

from __future__ import annotations

import json
import os
import subprocess

import docker
import pytest

from stackfixture import free_port, run_cli, tear_down_site

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
