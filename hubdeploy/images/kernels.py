"""Kernels as data: the files, Dockerfile steps and label metadata an image's kernels need.

Every declared kernel becomes a kernelspec named ``<image>-<kernel>`` in
``/opt/venv/share/jupyter/kernels`` (on the Jupyter path of the server's venv, outside
$HOME, so a home volume can neither hide nor shadow it). Python and bash kernels get a
virtualenv of their own under ``/opt/kernels``, owned by root: a kernel's pinned packages
stay what the image was built with. R kernels run Debian's R with ``r-cran-irkernel``.

Each kernel is built in two parts, in separate layers: its *runtime* (R and IRkernel, or a
venv holding only what runs the kernel: ipykernel or bash_kernel) and its *packages*. The
runtimes are the slow part and depend only on which kernels exist and on a pin of the
runner, so the recipes build them before any package list: changing a kernel's packages
re-runs only the quick step that installs them into the venv that is already there.

What an image's kernels are is recorded in its ``hubdeploy.kernels`` label (JSON): the
image's own kernels plus its ancestors', so ``images test`` checks a child image for
everything it inherited too. Pure functions; nothing here touches a daemon.
"""

from __future__ import annotations

import json
import re

from hubdeploy.contract.labels import IMAGE_KERNELS
from hubdeploy.site.images import Kernel

KERNELS_ROOT = "/opt/kernels"
SPEC_ROOT = "/opt/venv/share/jupyter/kernels"
# The R interpreter for every R kernel; IRkernel comes from Debian, not CRAN.
R_BASE_PACKAGES = ("r-base-core", "r-cran-irkernel")
_DEB_R_PREFIX = re.compile(r"^r-(cran|bioc|other)-")
# What runs a venv kernel: the runtime layer installs only this.
RUNNERS = {"python": "ipykernel", "bash": "bash_kernel"}
# uv builds the kernel venvs: measured here 2-3x faster than pip for ipykernel into a
# fresh venv (and ~0.5 s instead of ~2 s to add a package), with the same index, the
# image's CA (SSL_CERT_FILE) and the proxy build args (HTTP(S)_PROXY). Pinned: the
# version is part of the rendered recipe, hence of the tag.
UV_VERSION = "0.13.9"
UV_PREFIX = "/opt/hubdeploy/uv"
UV = f"{UV_PREFIX}/bin/uv"
_DIST_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*")


def spec_name(image: str, kernel: Kernel) -> str:
    return f"{image}-{kernel.name}"


def venv_path(image: str, kernel: Kernel) -> str | None:
    return None if kernel.language == "r" else f"{KERNELS_ROOT}/{spec_name(image, kernel)}"


def kernelspec(image: str, kernel: Kernel) -> dict:
    """The kernel.json a kernel gets: argv, display name, language and env."""
    name = spec_name(image, kernel)
    venv = venv_path(image, kernel)
    env = dict(sorted(kernel.env.items()))
    if kernel.language == "python":
        argv = [f"{venv}/bin/python", "-m", "ipykernel_launcher", "-f", "{connection_file}"]
        language = "python"
    elif kernel.language == "bash":
        argv = [f"{venv}/bin/python", "-m", "bash_kernel", "-f", "{connection_file}"]
        language = "bash"
        # bash_kernel's own installer sets PS1 so that its prompt detection works.
        env = {"PS1": "$", **env}
    else:
        argv = ["/usr/bin/R", "--no-echo", "-e", "IRkernel::main()", "--args", "{connection_file}"]
        language = "R"
    spec = {"argv": argv, "display_name": kernel.display_name or name, "language": language}
    if env:
        spec["env"] = env
    if kernel.language == "python":
        spec["metadata"] = {"debugger": True}
    return spec


def dist_name(requirement: str) -> str:
    """The normalised project name a requirement line names (PEP 503):
    ``IPyKernel[x]>=6`` -> ``ipykernel``."""
    m = _DIST_NAME.match(requirement)
    return re.sub(r"[-_.]+", "-", m.group(0)).lower() if m else ""


def _split(kernel: Kernel) -> tuple[list[str], list[str]]:
    """(runner lines, other packages) of a venv kernel. The site's own lines naming the
    runner (``ipykernel==6.29.5``) pin it in the runtime layer; otherwise the bare name."""
    runner = RUNNERS[kernel.language]
    pinned = [p for p in kernel.packages if dist_name(p) == dist_name(runner)]
    others = [p for p in kernel.packages if dist_name(p) != dist_name(runner)]
    return pinned or [runner], others


def runner_requirements(kernel: Kernel) -> bytes:
    """What the runtime layer installs into a fresh venv: the runner only."""
    return ("\n".join(_split(kernel)[0]) + "\n").encode()


def requirements(kernel: Kernel) -> bytes:
    """What the packages layer installs: the runner lines again (so the resolver keeps
    the runner working while it adds the packages), then the kernel's packages."""
    runner, others = _split(kernel)
    return ("\n".join([*runner, *others]) + "\n").encode()


def has_packages(kernel: Kernel) -> bool:
    """Whether a venv kernel needs a packages layer beyond its runtime."""
    return kernel.language != "r" and bool(_split(kernel)[1])


def context_files(image: str, kernels: list[Kernel]) -> dict[str, bytes]:
    """Build-context files: ``kernelspecs/<spec>/kernel.json`` (one COPY installs them all),
    and per venv kernel ``kernels/<spec>/runner.txt`` and, when it has packages beyond the
    runner, ``kernels/<spec>/requirements.txt``. Separate files, because a COPY's layer
    changes with its file: the runtime layer must not see the package list."""
    files: dict[str, bytes] = {}
    for k in kernels:
        name = spec_name(image, k)
        files[f"kernelspecs/{name}/kernel.json"] = (
            json.dumps(kernelspec(image, k), indent=1, sort_keys=True) + "\n").encode()
        if k.language != "r":
            files[f"kernels/{name}/runner.txt"] = runner_requirements(k)
            if has_packages(k):
                files[f"kernels/{name}/requirements.txt"] = requirements(k)
    return files


def r_runtime(kernels: list[Kernel]) -> list[str]:
    """R and IRkernel when the image has an R kernel: the runtime layer."""
    return list(R_BASE_PACKAGES) if any(k.language == "r" for k in kernels) else []


def r_packages(kernels: list[Kernel]) -> list[str]:
    """The R kernels' own Debian packages beyond the runtime, in first-seen order."""
    out: list[str] = []
    for k in kernels:
        if k.language == "r":
            for p in k.packages:
                if p not in out and p not in R_BASE_PACKAGES:
                    out.append(p)
    return out


def r_library(debian_package: str) -> str | None:
    """The R library a Debian package provides (``r-cran-jsonlite`` -> ``jsonlite``), or None.

    Debian lower-cases names (``r-cran-irkernel`` is IRkernel); the check matches
    case-insensitively among the installed libraries.
    """
    m = _DEB_R_PREFIX.match(debian_package)
    return debian_package[m.end():] if m else None


def metadata(image: str, kernels: list[Kernel]) -> list[dict]:
    """What ``images test`` checks for each kernel, as recorded in the label."""
    out = []
    for k in kernels:
        entry = {
            "image": image,
            "name": spec_name(image, k),
            "language": k.language,
            "packages": list(k.packages),
            "env": dict(sorted(k.env.items())),
        }
        venv = venv_path(image, k)
        if venv:
            entry["prefix"] = venv
        if k.language == "r":
            entry["libraries"] = ["IRkernel", *(lib for p in k.packages if (lib := r_library(p)))]
        out.append(entry)
    return out


def label_value(entries: list[dict]) -> str:
    return json.dumps(entries, sort_keys=True, separators=(",", ":"))


def from_labels(labels: dict[str, str] | None) -> list[dict]:
    """The kernel metadata of an image, from its labels ([] when it declares none)."""
    raw = (labels or {}).get(IMAGE_KERNELS)
    if not raw:
        return []
    try:
        data = json.loads(raw)
    except ValueError:
        return []
    return data if isinstance(data, list) else []
