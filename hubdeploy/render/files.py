"""Bytes of rendered files, and writing them into the state directory atomically."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from hubdeploy.contract.atomic import write_atomic

HEADER = "# Rendered by hubdeploy from the site description; edit the site file, not this.\n"


def sha(*parts: bytes) -> str:
    """A short hash over several byte strings (a config hash label)."""
    h = hashlib.sha256()
    for p in parts:
        h.update(hashlib.sha256(p).digest())
    return h.hexdigest()[:16]


def dump_yaml(data: Any) -> bytes:
    yaml = YAML()
    yaml.default_flow_style = False
    yaml.width = 4096  # never fold long health-check commands
    buf = io.StringIO()
    buf.write(HEADER)
    yaml.dump(data, buf)
    return buf.getvalue().encode()


def write_files(root: Path, files: dict[str, bytes]) -> list[str]:
    """Write ``files`` under ``root``, each atomically (temp file + rename), only if changed.

    Unchanged files keep their mtime, so an unchanged site touches nothing. Files of an
    earlier render that are no longer produced are removed. Returns the paths written.
    """
    written = []
    root.mkdir(parents=True, exist_ok=True)
    for rel, data in sorted(files.items()):
        path = root / rel
        if path.is_file() and path.read_bytes() == data:
            continue
        write_atomic(path, data, 0o755 if rel.endswith(".sh") else 0o644)
        written.append(rel)
    for path in sorted(root.rglob("*")):
        if path.is_file() and str(path.relative_to(root)) not in files:
            path.unlink()
    return written
