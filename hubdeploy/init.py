"""``hubdeploy init``: write the commented demo site file.

The template ships inside the package (``hubdeploy/data/site.yaml``) because an
installed hubdeploy has no repository around it; ``config/example/site.yaml`` in the
repository is a copy for people browsing the source, and a unit test keeps the two
byte-identical.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

from .errors import SiteError

SITE_FILE = "site.yaml"


def demo_site_text() -> str:
    """The demo site file, exactly as ``init`` writes it."""
    return resources.files("hubdeploy").joinpath("data", SITE_FILE).read_text(encoding="utf-8")


def write_demo_site(directory: Path) -> Path:
    """Write the demo ``site.yaml`` into ``directory`` (created if needed); return its path.

    Never overwrites: an existing site.yaml (or anything else by that name, even a
    dangling symlink) is a :class:`SiteError`, since it may be a facility's real site.
    """
    directory = Path(directory)
    path = directory / SITE_FILE
    text = demo_site_text()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        # O_EXCL makes "does it exist" and "create it" one step; O_NOFOLLOW refuses
        # to write through a symlink someone left in the directory.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    except FileExistsError:
        raise SiteError(f"{path}: already exists; not overwriting it", hint="choose another directory") from None
    except OSError as e:
        raise SiteError(f"{path}: cannot create: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
    except OSError as e:
        # Leave no half-written site behind (a disk full, say): the next init retries.
        path.unlink(missing_ok=True)
        raise SiteError(f"{path}: cannot write: {e.strerror or e}") from None
    return path
