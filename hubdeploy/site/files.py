"""The files a site file names (TLS, CA bundles, ssh and LDAP settings): where they are,
and whether they can be read (and, for secrets, by nobody else).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

from hubdeploy.site import messages as msgs

# Paths in the site that name files, relative to the site file's directory.
FILE_KEYS: tuple[tuple[str, ...], ...] = (
    ("tls", "cert"),
    ("tls", "key"),
    ("build", "ca_bundle"),
    ("slurm", "submit", "ssh", "known_hosts"),
    ("slurm", "submit", "ssh", "identity_file"),
    ("identity", "file", "passwd"),
    ("identity", "file", "group"),
    ("identity", "ldap", "ca_file"),
    ("identity", "ldap", "bind_password_file"),
)
# Secrets: ssh refuses a key others may read, and a password must not be either.
PRIVATE_FILE_KEYS = {("slurm", "submit", "ssh", "identity_file"), ("identity", "ldap", "bind_password_file")}


def resolve_site_path(site_dir: Path, p: str | os.PathLike[str]) -> Path:
    """Where a path written in the site file points: absolute as is, else under ``site_dir``.

    No ``~`` expansion: the site is read by different users (and by CI), so a path
    must mean the same file for all of them.
    """
    return Path(site_dir) / Path(p)


def file_problems(data: Any, site_dir: Path) -> list[tuple[tuple[str, ...], str]]:
    """Each named file that is missing, unreadable or (a secret) readable by others:
    its key path and what is wrong. ``data`` is the site as plain data, before validation."""
    out: list[tuple[tuple[str, ...], str]] = []
    for loc in FILE_KEYS:
        value: Any = data
        for seg in loc:
            value = value.get(seg) if isinstance(value, dict) else None
        if not isinstance(value, str):
            continue  # absent, or a type error pydantic already reports
        path = resolve_site_path(site_dir, value)
        problem = _unreadable(path) or (_shared(path) if loc in PRIVATE_FILE_KEYS else None)
        if problem:
            rel = "" if Path(value).is_absolute() else " (relative paths start at the site file's directory)"
            shown = str(path) if str(path).isprintable() else msgs.quote(str(path))
            out.append((loc, f"{problem}: {shown}{rel}"))
    return out


def _shared(path: Path) -> str | None:
    mode = path.stat().st_mode & 0o777
    return f"private key is readable by others (mode {mode:o}; chmod 600)" if mode & 0o077 else None


def _unreadable(path: Path) -> str | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return "file not found"
    except OSError as e:
        return f"cannot access ({e.strerror or e})"
    if stat.S_ISDIR(st.st_mode):
        return "is a directory, expected a file"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    try:
        with open(path, "rb"):
            pass
    except OSError as e:
        return f"not readable ({e.strerror or e})"
    return None
