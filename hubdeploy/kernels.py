"""Kernels as data: the files, Dockerfile steps and label metadata an image's kernels need.

Every declared kernel becomes a kernelspec named ``<image>-<kernel>`` in
``/opt/venv/share/jupyter/kernels`` (on the Jupyter path of the server's venv, outside
$HOME, so a home volume can neither hide nor shadow it). Python and bash kernels get a
virtualenv of their own under ``/opt/kernels``, owned by root: a kernel's pinned packages
stay what the image was built with. R kernels run Debian's R with ``r-cran-irkernel``.

What an image's kernels are is recorded in its ``hubdeploy.kernels`` label (JSON): the
image's own kernels plus its ancestors', so ``images test`` checks a child image for
everything it inherited too. Pure functions; nothing here touches a daemon.
"""

from __future__ import annotations

import json
import re

from hubdeploy.schema import Kernel

LABEL = "hubdeploy.kernels"
KERNELS_ROOT = "/opt/kernels"
SPEC_ROOT = "/opt/venv/share/jupyter/kernels"
# The R interpreter for every R kernel; IRkernel comes from Debian, not CRAN.
R_BASE_PACKAGES = ("r-base-core", "r-cran-irkernel")
_DEB_R_PREFIX = re.compile(r"^r-(cran|bioc|other)-")


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


def requirements(kernel: Kernel) -> bytes:
    """pip requirements of a venv kernel: its packages plus what runs the kernel."""
    runner = "ipykernel" if kernel.language == "python" else "bash_kernel"
    lines = [runner, *(p for p in kernel.packages if p != runner)]
    return ("\n".join(lines) + "\n").encode()


def context_files(image: str, kernels: list[Kernel]) -> dict[str, bytes]:
    """Build-context files: ``kernels/<spec>/kernel.json`` and venv requirements."""
    files: dict[str, bytes] = {}
    for k in kernels:
        name = spec_name(image, k)
        files[f"kernels/{name}/kernel.json"] = (json.dumps(kernelspec(image, k), indent=1, sort_keys=True) + "\n").encode()
        if k.language != "r":
            files[f"kernels/{name}/requirements.txt"] = requirements(k)
    return files


def r_packages(kernels: list[Kernel]) -> list[str]:
    """Debian packages every R kernel of the image needs, in first-seen order."""
    out: list[str] = []
    for k in kernels:
        if k.language == "r":
            for p in (*R_BASE_PACKAGES, *k.packages):
                if p not in out:
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
    raw = (labels or {}).get(LABEL)
    if not raw:
        return []
    try:
        data = json.loads(raw)
    except ValueError:
        return []
    return data if isinstance(data, list) else []
