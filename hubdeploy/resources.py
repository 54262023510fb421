"""hubdeploy's own static files (the hub's static config, image recipes).

In a source checkout or editable install they are read from the repository's top-level
``config/`` and ``images/``; a wheel carries the same files under ``hubdeploy/data/``.
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
