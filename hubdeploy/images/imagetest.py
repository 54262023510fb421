"""``images test``: start every kernel of a notebook image the way a user's server would.

The image runs as the notebook user (uid 1000) with a fresh, empty home volume and no
network, and :mod:`hubdeploy.images.kernelcheck` runs inside it with the image's own
``/opt/venv/bin/python``. What to expect comes from the image's ``hubdeploy.kernels``
label, which lists the image's kernels and its ancestors', so a child image re-runs its
ancestors' checks. The container and the volume are removed whatever happens.
"""

from __future__ import annotations

import io
import json
import secrets
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import docker.errors

from hubdeploy.contract.labels import IMAGETEST
from hubdeploy.errors import OperationError
from hubdeploy.images import kernelcheck
from hubdeploy.images import kernels as kern
from hubdeploy.images.build import ENGINE_ERRORS

CHECK_DIR = "/tmp/hubdeploy-check"
# Every kernel starts (R takes a few seconds) and runs its check; bounded in total.
TIMEOUT = 600


@dataclass
class ImageTestResult:
    """The outcome for one image: a row per kernelspec, or an error that stopped the run."""

    image: str
    ref: str
    kernels: list[dict] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.kernels) and all(k["ok"] for k in self.kernels)

    def to_json(self) -> dict:
        return {"image": self.image, "ref": self.ref, "ok": self.ok, "error": self.error,
                "seconds": round(self.seconds, 1), "kernels": self.kernels}


def _archive(expected: list[dict]) -> bytes:
    files = {
        "check.py": Path(kernelcheck.__file__).read_bytes(),
        "expect.json": json.dumps(expected, sort_keys=True).encode(),
    }
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("hubdeploy-check")
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(info)
        for name, data in files.items():
            info = tarfile.TarInfo(f"hubdeploy-check/{name}")
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def check_image(client, image: str, ref: str, *, name_prefix: str, timeout: int = TIMEOUT) -> ImageTestResult:
    """Run the kernel checks in ``ref``; never raises for a failing kernel, only reports it.

    ``name_prefix`` names the container and the volume (e.g. ``hubdeploy-<site>``), so a
    sweep by prefix finds anything a crash left behind. Raises OperationError when the
    image is missing or the engine cannot be reached.
    """
    result = ImageTestResult(image, ref)
    t0 = time.monotonic()
    expected = kern.from_labels(_labels(client, image, ref))
    name = f"{name_prefix}-imagetest-{image}-{secrets.token_hex(4)}"
    made: list = []
    try:
        container = _create(client, ref, name, made)
        # put_archive, not a bind mount: it works with a remote engine too.
        container.put_archive("/tmp", _archive(expected))
        container.start()
        try:
            status = container.wait(timeout=timeout)
        except ENGINE_ERRORS:
            result.error = f"the kernel checks did not finish in {timeout} s"
            return result
        _read_result(result, status, container.logs(stdout=True, stderr=True).decode(errors="replace"))
        return result
    except ENGINE_ERRORS as exc:
        result.error = f"{type(exc).__name__}: {exc}"
        return result
    finally:
        result.seconds = time.monotonic() - t0
        for obj in reversed(made):
            try:
                obj.remove(force=True)
            except ENGINE_ERRORS:
                pass


def _labels(client, image: str, ref: str) -> dict[str, str]:
    try:
        return client.api.inspect_image(ref)["Config"].get("Labels") or {}
    except docker.errors.ImageNotFound:
        raise OperationError(f"image {image} ({ref}) is not built", hint="run `hubdeploy images build` first") from None
    except ENGINE_ERRORS as exc:
        raise OperationError(f"cannot inspect image {ref}: {exc}") from None


def _create(client, ref: str, name: str, made: list):
    """A fresh home volume and the container that runs the check as the notebook user;
    each is appended to ``made`` as soon as it exists, so the caller removes it."""
    made.append(client.volumes.create(name=name, labels={IMAGETEST: "1"}))
    container = client.containers.create(
        ref,
        ["/opt/venv/bin/python", f"{CHECK_DIR}/check.py", f"{CHECK_DIR}/expect.json"],
        name=name,
        user="1000:100",
        working_dir="/home/jovyan",
        environment={"HOME": "/home/jovyan"},
        volumes={name: {"bind": "/home/jovyan", "mode": "rw"}},
        # Kernels talk over loopback only; an image must not need the network to start one.
        network_mode="none",
        labels={IMAGETEST: "1"},
    )
    made.append(container)
    return container


def _read_result(result: ImageTestResult, status: dict, logs: str) -> None:
    """The check's ``HUBDEPLOY-RESULT`` line into ``result`` (or why there is none)."""
    line = next((ln for ln in reversed(logs.splitlines()) if ln.startswith("HUBDEPLOY-RESULT ")), None)
    if line is None:
        tail = "\n  ".join(logs.splitlines()[-15:])
        result.error = f"the check exited {status.get('StatusCode')} without a result; last output:\n  {tail}"
        return
    data = json.loads(line.split(" ", 1)[1])
    result.error = data.get("error")
    result.kernels = data.get("kernels", [])
    if not result.kernels and result.error is None:
        result.error = "the image lists no kernelspec"
