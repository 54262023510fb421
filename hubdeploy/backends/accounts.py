"""A user's account inside a container: passwd and group entries beside the image's own.

A server that runs as a uid the image does not know has no name (``id -un`` fails, git
and ssh refuse to work, shells say "I have no name!"). The docker backend writes the
image's ``/etc/passwd`` and ``/etc/group`` back into the created container with the
user's lines added (one archive upload before start), so nothing in the image changes
and nothing runs as root in the container to do it.
"""

from __future__ import annotations

import io
import tarfile

from hubdeploy.contract.identity import Identity


def with_account(passwd: str, group: str, ident: Identity) -> tuple[str, str] | None:
    """The image's passwd and group texts with ``ident``'s lines; None when the image
    already has the account as it is (the shared ``jovyan``)."""
    users = [ln for ln in passwd.splitlines() if ln.strip()]
    groups = [ln for ln in group.splitlines() if ln.strip()]
    by_name = {ln.split(":", 1)[0]: ln for ln in users}
    if by_name.get(ident.name, "").split(":")[2:4] == [str(ident.uid), str(ident.gid)]:
        return None
    # The user's own lines replace any of the same name or number (an image's jovyan
    # never shadows a site account that happens to be uid 1000 too).
    users = [ln for ln in users if ln.split(":", 1)[0] != ident.name and _field(ln, 2) != str(ident.uid)]
    users.append(ident.passwd_line())
    mine = {ln.split(":", 1)[0]: ln for ln in ident.group_lines()}
    gids = {_field(ln, 2) for ln in mine.values()}
    groups = [ln for ln in groups if ln.split(":", 1)[0] not in mine and _field(ln, 2) not in gids]
    groups += list(mine.values())
    return "\n".join(users) + "\n", "\n".join(groups) + "\n"


def _field(line: str, i: int) -> str:
    parts = line.split(":")
    return parts[i] if len(parts) > i else ""


def read_archive_file(chunks, name: str) -> str:
    """The text of file ``name`` in a tar stream (Docker's get_archive answer)."""
    data = b"".join(chunks)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        member = tar.extractfile(name)
        return member.read().decode() if member is not None else ""
