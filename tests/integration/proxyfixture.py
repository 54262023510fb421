"""A real engine proxy on loopback and the objects its tests need, for
test_engine_proxy.py and test_engine_proxy_differential.py."""

from __future__ import annotations

import contextlib
import io
import socket
import subprocess
import sys
import tarfile
import time
import urllib.request

import docker
import docker.errors
import pytest

from hubdeploy.contract import slurmcmd

# The stand-in controller's Slurm commands: with HDTE_SCRIPT (a user's exec passes it) they
# run it; without (root's listings may pass no environment) they print who ran them with what.
FAKE_SLURM = b"""#!/bin/sh
if [ -n "${HDTE_SCRIPT:-}" ]; then exec sh -c "$HDTE_SCRIPT"; fi
echo "$(basename "$0") as $(id -u): $*"
"""


@contextlib.contextmanager
def running_proxy(site: str, port: int, log_path, *args: str):
    """``python -m hubdeploy.engineproxy --site SITE ARGS...`` on 127.0.0.1:PORT until the block ends."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "hubdeploy.engineproxy", "--site", site,
                                 "--listen", f"127.0.0.1:{port}", *args], stdout=log, stderr=log)
        try:
            for _ in range(100):  # 10 s at most
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/_ping", timeout=1)
                    break
                except OSError:
                    assert proc.poll() is None, open(log_path).read()
                    time.sleep(0.1)
            else:
                pytest.fail("the engine proxy did not answer")
            yield proc
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def controller(engine, image: str, name: str, site: str):
    """A container compose would have labelled as SITE's slurmctld, whose Slurm user
    commands are FAKE_SLURM (made on the engine directly, as compose makes the real one)."""
    ctl = engine.containers.create(image, ["sleep", "600"], name=name, labels={
        "hubdeploy.site": site, "com.docker.compose.project": f"hubdeploy-{site}",
        "com.docker.compose.service": "slurmctld"})
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for prog in sorted(slurmcmd.USER_COMMANDS):
            info = tarfile.TarInfo(f"usr/local/bin/{prog}")
            info.size, info.mode = len(FAKE_SLURM), 0o755
            tar.addfile(info, io.BytesIO(FAKE_SLURM))
    ctl.put_archive("/", buf.getvalue())
    ctl.start()
    return ctl


def remove_all(objects) -> None:
    """Containers, networks and volumes made by a test, newest first; gone ones are fine."""
    for obj in reversed(list(objects)):
        try:
            obj.remove(force=True) if hasattr(obj, "status") else obj.remove()
        except docker.errors.NotFound:
            pass


def send(port: int, data: bytes, wait: float = 10) -> bytes:
    """``data`` as they are on one connection to the proxy, then EOF; all it answers."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        out = b""
        try:
            while chunk := sock.recv(65536):
                out += chunk
        except TimeoutError:
            pass
        return out
