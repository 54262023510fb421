"""``hubdeploy restore``: a backup (:mod:`hubdeploy.ops.backup`) back into a site directory
and the hub's data volume, on this machine or a fresh one; ``hubdeploy up`` then starts
the same hub: users, groups, API tokens, named servers, cookie secret.

Everything is checked before anything is written: the archive (format, version,
checksums), the site file in it (validated like any site file), and that nothing would
be overwritten (a site file that differs, secrets, the hub's data volume, a running
stack) unless ``force``. Servers recorded as running are restored as stopped: the
containers and jobs they were are not part of a backup.
"""

from __future__ import annotations

import io
import os
import shutil
import sqlite3
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from hubdeploy import render
from hubdeploy.contract.atomic import write_atomic
from hubdeploy.contract.labels import COMPOSE_PROJECT, COMPOSE_VOLUME
from hubdeploy.contract.layout import HUB_DATA_DIR, HUB_DATA_VOLUME, LABEL_SITE, project_name, stack_name
from hubdeploy.errors import OperationError
from hubdeploy.images.build import build_images
from hubdeploy.site.loader import load_site_text
from hubdeploy.ops import engine
from hubdeploy.ops.backup import DATABASE, DB_FILE, VOLUME_DIR, Backup, Member, read_archive


def volume_name(site: str) -> str:
    return stack_name(project_name(site), HUB_DATA_VOLUME)


def conflicts(site_file: Path, backup: Backup, *, volume_exists: bool, running: bool) -> list[str]:
    """What a restore into ``site_file``'s directory would overwrite (pure but for
    reading the directory)."""
    out = []
    if running:
        out.append(f"the stack {project_name(backup.manifest['site'])} is running")
    if site_file.exists() and site_file.read_bytes() != backup.site_text:
        out.append(f"{site_file} exists and differs from the archive's site file")
    secrets = render.state_dir(site_file) / "secrets"
    if secrets.is_dir() and any(secrets.iterdir()):
        out.append(f"{secrets} holds secrets")
    if volume_exists:
        out.append(f"the volume {volume_name(backup.manifest['site'])} exists")
    return out


def stopped_database(data: bytes) -> bytes:
    """The database with every server marked stopped (their containers and jobs are not
    restored): no server row, no spawner pointing at one, no backend state."""
    fd, tmp = tempfile.mkstemp(suffix=".sqlite")
    os.close(fd)
    try:
        Path(tmp).write_bytes(data)
        con = sqlite3.connect(tmp)
        with con:
            con.execute("UPDATE spawners SET server_id = NULL, state = '{}'")
            con.execute("DELETE FROM servers")
        con.close()
        return Path(tmp).read_bytes()
    except sqlite3.Error as exc:
        raise OperationError(f"the archive's database cannot be opened: {exc}") from None
    finally:
        os.unlink(tmp)


def _volume_tar(files: dict[str, Member]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:") as tar:
        for rel, m in sorted(files.items()):
            info = tarfile.TarInfo(rel)
            info.size, info.mode, info.uid, info.gid = len(m.data), m.mode, m.uid, m.gid
            tar.addfile(info, io.BytesIO(m.data))
    return buf.getvalue()


def _fill_volume(client, prep, files: dict[str, Member], console) -> None:
    """Create the hub's data volume (labelled as compose would) and put ``files`` in it
    through a container of the hub's image, which is built first when missing."""
    build_images(prep.plans, client=client, state_dir=prep.state, names=["hub"], console=console)
    project = prep.project
    labels = {LABEL_SITE: prep.site.name}
    client.volumes.create(volume_name(prep.site.name), labels={
        COMPOSE_PROJECT: project, COMPOSE_VOLUME: HUB_DATA_VOLUME, **labels})
    engine.put_into_volume(client, prep.plans["hub"].ref, volume_name(prep.site.name), HUB_DATA_DIR,
                           _volume_tar(files), name=f"{project}-restore", labels=labels)


def _write_state(site_file: Path, backup: Backup, stack):
    """The site file, the secrets, a new site id and the rendered files."""
    write_atomic(site_file, backup.site_text, 0o644)
    secrets = render.state_dir(site_file) / "secrets"
    secrets.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(secrets, 0o700)
    for child in secrets.iterdir():
        child.unlink()
    for name, m in sorted(backup.under("secrets").items()):
        write_atomic(secrets / name, m.data, 0o644 if name.endswith(".pub") else 0o600)
    prep = stack.prepare(site_file)
    stack.write(prep)
    return prep


def restore(site_file: Path, archive: Path, *, force: bool = False, console=None) -> dict[str, Any]:
    """Restore ``archive`` into ``site_file`` (and its state directory) and the hub's
    data volume; the site directory gets a new site id (it owns the stack from now)."""
    from hubdeploy.ops import stack

    backup = read_archive(archive)
    site = load_site_text(backup.site_text.decode(), str(site_file), site_dir=site_file.resolve().parent)
    if site.name != backup.manifest["site"]:
        raise OperationError(f"{archive}: the manifest names site {backup.manifest['site']!r}, "
                             f"its site file {site.name!r}; a damaged archive")
    client = engine.docker_client()
    project = project_name(site.name)
    running = bool(engine.project_containers(client, project))
    volume_exists = bool(client.volumes.list(filters={"name": f"^{volume_name(site.name)}$"}))
    found = conflicts(site_file, backup, volume_exists=volume_exists, running=running)
    if running:  # never under a live stack, even with --force
        raise OperationError(found[0], hint="hubdeploy --site PATH down (from its directory), then restore")
    if found and not force:
        raise OperationError("restore would overwrite: " + "; ".join(found),
                             hint="pass --force to replace them with the archive's")
    volume = dict(backup.under(VOLUME_DIR))
    if DATABASE in backup.members:
        db = backup.members[DATABASE]
        volume[DB_FILE] = Member(stopped_database(db.data), db.mode, db.uid, db.gid)
    if volume_exists:
        client.volumes.get(volume_name(site.name)).remove(force=True)
    fresh = [p for p in (site_file, render.state_dir(site_file)) if not p.exists()]
    try:
        prep = _write_state(site_file, backup, stack)
        _fill_volume(client, prep, volume, console)
    except BaseException:
        # Nothing half-done: what this restore created goes (a forced one's replaced
        # files are gone either way: the archive still has them).
        for p in fresh:
            if p.is_dir():
                shutil.rmtree(p)
            else:
                p.unlink(missing_ok=True)
        for v in client.volumes.list(filters={"name": f"^{volume_name(site.name)}$"}):
            v.remove(force=True)
        raise
    return {"site": site.name, "site_file": str(site_file), "archive": str(archive),
            "created": backup.manifest.get("created"), "secrets": sorted(backup.under("secrets")),
            "volume_files": sorted(volume)}
