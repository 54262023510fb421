"""Docker object names for users' notebook servers and home volumes.

Usernames come from the authenticator and can be anything (``has@``, ``秀樹``, an email
address), while Docker names must match ``[a-zA-Z0-9][a-zA-Z0-9_.-]+``. The escaping keeps
``[a-z0-9]`` and turns every other byte of the UTF-8 encoding into ``-xx``. Because ``-``
itself is escaped, every ``-`` in an escaped name starts an escape, which makes the
escaping injective and ``--`` (which it can never produce) a safe separator before the
server name. Upper-case letters are escaped too: Docker names are case-sensitive but
hostnames are not, so ``Ann`` and ``ann`` must not map to names that DNS would merge.
"""

from __future__ import annotations

import hashlib
import re

# Docker accepts longer names, but the name also ends up in paths, logs and labels;
# 200 leaves room under the 255-byte file-name limit of the volume directory.
MAX_NAME = 200
# A DNS label is at most 63 bytes; longer container names cannot be resolved.
MAX_DNS_LABEL = 63
# 128 bits: a collision between two capped names is not a practical concern.
_HASH_CHARS = 32
_SAFE = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789")
DOCKER_NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]+$")
# Our own prefixes: no '_', which capped names use as their marker.
_PREFIX_RE = re.compile(r"^[a-z0-9][a-z0-9-]*$")


def escape(name: str) -> str:
    """Injective escape of ``name`` into ``[a-z0-9-]``: ``has@`` -> ``has-40``."""
    return "".join(chr(b) if b in _SAFE else f"-{b:02x}" for b in name.encode("utf-8"))


def unescape(escaped: str) -> str:
    """Inverse of :func:`escape` (for tools that list containers). ValueError if malformed."""
    out = bytearray()
    i = 0
    while i < len(escaped):
        ch = escaped[i]
        if ch == "-":
            hexpart = escaped[i + 1 : i + 3]
            if not re.fullmatch(r"[0-9a-f]{2}", hexpart):
                raise ValueError(f"malformed escape at {i} in {escaped!r}")
            out.append(int(hexpart, 16))
            i += 3
        elif ord(ch) in _SAFE:
            out.append(ord(ch))
            i += 1
        else:
            raise ValueError(f"character {ch!r} cannot occur in an escaped name")
    return out.decode("utf-8")


def _cap(name: str) -> str:
    # '_' never occurs in an uncapped name (prefix and escapes are [a-z0-9-]), so a capped
    # name can only equal another capped name, and then only if the sha256 prefixes match.
    if len(name) <= MAX_NAME:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:_HASH_CHARS]
    return f"{name[: MAX_NAME - _HASH_CHARS - 1]}_{digest}"


def _check_prefix(prefix: str) -> None:
    if not _PREFIX_RE.match(prefix):
        raise ValueError(f"name prefix {prefix!r} must match {_PREFIX_RE.pattern}")


def server_prefix(prefix: str) -> str:
    """``{prefix}-nb-``: how every server's container or job name starts."""
    _check_prefix(prefix)
    return f"{prefix}-nb-"


def container_name(prefix: str, user: str, server: str = "") -> str:
    """``{prefix}-nb-{esc(user)}``, plus ``--{esc(server)}`` for a named server.

    At most :data:`MAX_NAME` characters: longer names keep their head and end in ``_`` and
    a sha256 prefix of the full name.
    """
    name = server_prefix(prefix) + escape(user)
    if server:
        name += f"--{escape(server)}"
    return _cap(name)


def home_volume(prefix: str, user: str) -> str:
    """``{prefix}-home-{esc(user)}``: one home volume per user, shared by their servers."""
    _check_prefix(prefix)
    return _cap(f"{prefix}-home-{escape(user)}")


def dns_name(container: str, instance: str) -> str:
    """The network alias the hub and the proxy reach one container *instance* by.

    Unique to the instance (``instance``: a few random hex digits per start), not just to
    the server: a server restarted within seconds gets a new address under its old name,
    and the hub's HTTP client caches name lookups (aiohttp: 10 s), so a reused name sent
    the hub's readiness check to the old, gone address. The container name's head keeps
    it readable in logs and, for a name short enough to fit whole, unique; a cut head
    leaves the random tag (48 bits) to tell instances apart. The whole fits a DNS label.
    """
    _check_instance(instance)
    head = container[: MAX_DNS_LABEL - len(instance) - 1].rstrip("-_")
    return f"{head}-{instance}"


def _check_instance(instance: str) -> None:
    if not re.fullmatch(r"[0-9a-f]{4,16}", instance):
        raise ValueError(f"instance tag {instance!r} must be 4 to 16 lowercase hex digits")
