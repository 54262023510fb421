"""A real registry for push and pull tests: Debian's docker-registry (2.8) in a container
built FROM a test's own Debian image, on a loopback port (which Docker trusts as an
insecure registry by default), optionally with htpasswd (bcrypt) auth."""

from __future__ import annotations

import io
import time
from contextlib import contextmanager

import pytest

PACKAGES = "docker-registry apache2-utils"


def build_registry_image(client, debian_ref: str, ref: str) -> str:
    """``ref``: docker-registry installed on ``debian_ref`` (name it with the test's own prefix)."""
    dockerfile = (
        f"FROM {debian_ref}\n"
        f"RUN apt-get update && apt-get install -y --no-install-recommends {PACKAGES}"
        " && rm -rf /var/lib/apt/lists/*\n"
    )
    client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=ref, rm=True, pull=False)
    return ref


@contextmanager
def running_registry(client, image: str, name: str, port: int, *, user: str | None = None,
                     password: str | None = None):
    """The registry serving on 127.0.0.1:``port`` until the block ends; yields ``HOST:PORT``.
    With ``user``, pushes and pulls need ``user``/``password`` (never in argv)."""
    import requests

    env = {"REGISTRY_HTTP_ADDR": "0.0.0.0:5000", "REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY": "/tmp/registry"}
    if user:
        start = ('htpasswd -Bbn "$REG_USER" "$REG_PASS" > /tmp/htpasswd && unset REG_PASS '
                 "&& exec docker-registry serve /etc/docker/registry/config.yml")
        env.update({"REG_USER": user, "REG_PASS": password or "", "REGISTRY_AUTH": "htpasswd",
                    "REGISTRY_AUTH_HTPASSWD_REALM": "hdt", "REGISTRY_AUTH_HTPASSWD_PATH": "/tmp/htpasswd"})
    else:
        # Debian's config asks for htpasswd auth; an environment variable cannot remove it.
        start = ("sed '/^auth:/,/^ *path:/d' /etc/docker/registry/config.yml > /tmp/config.yml "
                 "&& exec docker-registry serve /tmp/config.yml")
    container = client.containers.run(image, ["sh", "-c", start], detach=True, name=name,
                                      ports={"5000/tcp": ("127.0.0.1", port)}, environment=env)
    try:
        ready = 401 if user else 200
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if requests.get(f"http://127.0.0.1:{port}/v2/", timeout=2).status_code == ready:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.3)
        else:
            pytest.fail("registry not up in 30 s:\n" + container.logs().decode())
        yield f"127.0.0.1:{port}"
    finally:
        container.remove(force=True)
