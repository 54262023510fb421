"""hubdeploy's own static files (the hub's static config, the proxy's entrypoint).

hubdeploy runs from a source checkout (``pip install -e .``, what ``make`` does): these
files are read from the repository's top-level ``config/`` and ``compose/``, as the image
recipes are from ``images/`` and the hub image's copy of hubdeploy from the source tree.
``hubdeploy/data/`` holds only the demo site ``hubdeploy init`` writes; a file looked up
there too is found wherever the package is.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent


def path(rel: str) -> Path:
    """Absolute path of a static file, e.g. ``path("config/jupyterhub_config.py")``."""
    for candidate in (REPO_ROOT / rel, PACKAGE_DIR / "data" / rel):
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"hubdeploy resource {rel} is missing from this installation")


def read_bytes(rel: str) -> bytes:
    return path(rel).read_bytes()
