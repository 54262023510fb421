"""``hubdeploy backup``: one archive that brings the same hub back (``hubdeploy restore``).

The archive (tar.gz, mode 0600: it holds every secret of the stack)::

    manifest.json            format, version, site, database, sha256 of every member
    site/<site file>         the site file as it was
    secrets/<name>           .hubdeploy/secrets: cookie secret, tokens, keys
    database/jupyterhub.sqlite  a consistent snapshot (sqlite's online backup API, run
                             by the hub's own Python inside its container)
    hub-data/<path>          the rest of the hub's data volume (identity allocations),
                             with owners and modes as they are in the volume

The database is copied with sqlite's backup API, not as a file: the hub may be writing
it, and a file copy of a database mid-transaction is not a database. Values never pass
through argv or a log: they are read from the container's stdout and the state
directory, and written straight into the archive.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hubdeploy import __version__
from hubdeploy.contract.atomic import write_atomic
from hubdeploy.contract.layout import HUB_DATA_DIR
from hubdeploy.errors import OperationError, SiteError
from hubdeploy.ops import engine

FORMAT = "hubdeploy-backup"
VERSION = 1
MANIFEST = "manifest.json"
DATABASE = "database/jupyterhub.sqlite"
DB_FILE = "jupyterhub.sqlite"
# The archive's directory of the hub's data volume (a name of the archive's format, kept
# whatever the volume is called).
VOLUME_DIR = "hub-data"
# sqlite's side files: the snapshot replaces them all.
_DB_FILES = {DB_FILE, f"{DB_FILE}-journal", f"{DB_FILE}-wal", f"{DB_FILE}-shm"}

# Run by the hub's python3 (the path in argv, the bytes on stdout): a snapshot of a live
# database, consistent even while the hub writes it.
_SNAPSHOT = """\
import os, sqlite3, sys, tempfile
fd, tmp = tempfile.mkstemp(suffix=".sqlite")
os.close(fd)
try:
    src = sqlite3.connect("file:" + sys.argv[1] + "?mode=ro", uri=True)
    dst = sqlite3.connect(tmp)
    src.backup(dst)
    dst.close(); src.close()
    with open(tmp, "rb") as f:
        sys.stdout.buffer.write(f.read())
finally:
    os.unlink(tmp)
"""


@dataclass
class Member:
    """One file of the archive: its bytes and, for volume files, owner and mode."""

    data: bytes
    mode: int = 0o600
    uid: int = 0
    gid: int = 0


@dataclass
class Backup:
    """An archive's contents, read and checked by :func:`read_archive`."""

    manifest: dict[str, Any]
    members: dict[str, Member] = field(default_factory=dict)

    @property
    def site_text(self) -> bytes:
        return self.members[f"site/{self.manifest['site_file']}"].data

    def under(self, prefix: str) -> dict[str, Member]:
        """Members below ``prefix/``, by their path relative to it."""
        return {k[len(prefix) + 1:]: m for k, m in self.members.items() if k.startswith(prefix + "/")}


def manifest(site: str, site_file: str, database: str, members: dict[str, Member], created: float) -> dict[str, Any]:
    """The manifest of an archive of ``members`` (pure)."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "hubdeploy": __version__,
        "site": site,
        "site_file": site_file,
        "database": database,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(created)),
        "members": {k: hashlib.sha256(m.data).hexdigest() for k, m in sorted(members.items())},
    }


def archive_bytes(man: dict[str, Any], members: dict[str, Member]) -> bytes:
    """The tar.gz of the manifest and ``members``; deterministic for the same input."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        for name, m in [(MANIFEST, Member(json.dumps(man, indent=1, sort_keys=True).encode() + b"\n")),
                        *sorted(members.items())]:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.uid, info.gid = len(m.data), m.mode, m.uid, m.gid
            info.mtime = 0
            tar.addfile(info, io.BytesIO(m.data))
    return buf.getvalue()


def read_archive(path: Path) -> Backup:
    """Read and check an archive: format, version, and every member's checksum.

    SiteError (exit 2) naming the file for anything that is not a whole archive of a
    version this hubdeploy reads.
    """
    try:
        with tarfile.open(path, mode="r:gz") as tar:
            files = {}
            for info in tar.getmembers():
                if not info.isfile() or info.name.startswith("/") or ".." in info.name.split("/"):
                    raise SiteError(f"{path}: unexpected member {info.name!r}; not a hubdeploy backup")
                files[info.name] = Member(tar.extractfile(info).read(), info.mode, info.uid, info.gid)
    except (OSError, tarfile.TarError, EOFError) as exc:
        raise SiteError(f"{path}: cannot read the archive: {exc}") from None
    try:
        man = json.loads(files.pop(MANIFEST).data)
    except (KeyError, ValueError):
        raise SiteError(f"{path}: no readable {MANIFEST}; not a hubdeploy backup") from None
    if not isinstance(man, dict) or man.get("format") != FORMAT:
        raise SiteError(f"{path}: {MANIFEST} does not say format {FORMAT!r}; not a hubdeploy backup")
    if not isinstance(man.get("version"), int) or man["version"] > VERSION:
        raise SiteError(f"{path}: archive version {man.get('version')!r}; this hubdeploy reads up to {VERSION}",
                        hint="restore with the hubdeploy version that wrote it (manifest: hubdeploy)")
    listed = man.get("members") or {}
    bad = sorted(set(listed) ^ set(files)) + sorted(
        k for k in set(listed) & set(files) if hashlib.sha256(files[k].data).hexdigest() != listed[k])
    if bad:
        raise SiteError(f"{path}: damaged archive (missing, extra or changed: {', '.join(bad[:5])})")
    backup = Backup(man, files)
    if f"site/{man.get('site_file')}" not in files:
        raise SiteError(f"{path}: the archive has no site file")
    return backup


def snapshot_database(hub) -> bytes:
    """A consistent copy of the running hub's sqlite database (WAL included), taken by
    the hub's own python with sqlite's online backup API while the hub keeps writing."""
    res = hub.exec_run(["python3", "-c", _SNAPSHOT, f"{HUB_DATA_DIR}/{DB_FILE}"], demux=True)
    snapshot, err = res.output
    if res.exit_code != 0 or not snapshot:
        tail = (err or b"").decode(errors="replace").strip().splitlines()[-3:]
        raise OperationError("the hub's database could not be snapshot: " + " | ".join(tail))
    return snapshot


def _hub(client, project: str):
    hub = engine.hub_container(client, project)
    if hub is None or hub.status != "running":
        raise OperationError(f"the hub of {project} is not running: a backup snapshots its live database",
                             hint="hubdeploy up")
    return hub


def _volume_files(hub) -> tuple[dict[str, Member], Member | None]:
    """The hub's data volume as members (``hub-data/...``), and the database file's
    owner and mode (a Member without data) when there is one."""
    stream, _ = hub.get_archive(HUB_DATA_DIR)
    top = Path(HUB_DATA_DIR).name
    out, db = {}, None
    with tarfile.open(fileobj=io.BytesIO(b"".join(stream)), mode="r:") as tar:
        for info in tar.getmembers():
            rel = info.name[len(top) + 1:] if info.name.startswith(top + "/") else None
            if not rel or not info.isfile():
                continue
            if rel == DB_FILE:
                db = Member(b"", info.mode, info.uid, info.gid)
            if rel in _DB_FILES:
                continue
            out[f"{VOLUME_DIR}/{rel}"] = Member(tar.extractfile(info).read(), info.mode, info.uid, info.gid)
    return out, db


def backup(prep, output: Path | None) -> dict[str, Any]:
    """Write the archive of ``prep``'s site to ``output`` (default: beside the current
    directory, named by site and time); returns what went in (names, never values)."""
    now = time.time()
    output = output or Path(f"{prep.site.name}-backup-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(now))}.tar.gz")
    if output.exists():
        raise SiteError(f"{output} exists; a backup never overwrites a file", hint="hubdeploy backup -o NEW_FILE")
    if prep.site.database.type != "sqlite":
        raise OperationError(f"backup of a {prep.site.database.type} database is not supported yet",
                             hint="pg_dump the db service's database yourself")
    secrets_dir = prep.state / "secrets"
    if not secrets_dir.is_dir():
        raise OperationError(f"no secrets in {secrets_dir}: this directory has not run the stack",
                             hint="run backup from the site directory that ran `hubdeploy up`")
    hub = _hub(engine.docker_client(), prep.project)
    members = {f"site/{prep.site_file.name}": Member(prep.site_file.read_bytes(), 0o644)}
    for p in sorted(secrets_dir.iterdir()):
        if p.is_file():
            members[f"secrets/{p.name}"] = Member(p.read_bytes(), 0o644 if p.name.endswith(".pub") else 0o600)
    volume, db = _volume_files(hub)
    members.update(volume)
    snapshot = snapshot_database(hub)
    db = db or Member(b"", 0o644)
    members[DATABASE] = Member(snapshot, db.mode, db.uid, db.gid)
    man = manifest(prep.site.name, prep.site_file.name, "sqlite", members, now)
    write_atomic(output, archive_bytes(man, members), 0o600)
    return {"archive": str(output), "site": prep.site.name, "version": VERSION,
            "members": sorted(members), "bytes": output.stat().st_size}
