"""Writing a file so that readers see the old bytes or the new ones, never half.

Both sides write files others read while they run: the renderer's compose and hub
files, the hub's identity allocations and the accounts it publishes to the cluster's
nodes, generated keys. The data goes to a temporary file in the same directory (created
0600 by mkstemp, so a secret is never readable by others, not even briefly), is synced,
gets its final mode and is renamed over the old file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` (mode ``mode``) in one rename; parents are created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
