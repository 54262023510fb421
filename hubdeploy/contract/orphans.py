"""How the CLI side asks the hub side which servers run, and whose they are.

``hubdeploy status``, ``orphans``, ``logs --user`` and ``down`` run :func:`argv` in the
hub's container (:mod:`hubdeploy.hub.orphans` answers there, with the hub's own
backends) and read one JSON document from its standard output: a :class:`Report`, or
with ``--stop-all`` a :class:`StopReport`; an :class:`ErrorReport` when the exit status
is :data:`FAILED` or :data:`BAD_REQUEST`.
"""

from __future__ import annotations

from typing import Any, TypedDict

MODULE = "hubdeploy.hub.orphans"
# List every server, untracked or not (no flag); remove the untracked servers named, or
# all of them; stop every server (``hubdeploy down``).
REMOVE = "--remove"
REMOVE_ALL = "--remove-all"
STOP_ALL = "--stop-all"

# Exit statuses: the hub or a backend could not be asked, or a server not be stopped;
# a --remove naming a server that is not an untracked one (nothing was removed).
OK = 0
FAILED = 1
BAD_REQUEST = 2


class Row(TypedDict):
    """One server a backend lists (the fields of hubdeploy.backends.base.Found, and whose)."""

    backend: str
    id: str
    name: str
    state: str
    detail: str
    node: str
    reason: str
    # Whether a hub server owns it; None when the hub was not asked.
    tracked: bool | None
    # Its owner as :func:`owner` spells it; None when untracked or not known.
    owner: str | None


class Failure(TypedDict):
    """A server, or a backend's whole list, that could not be stopped or listed."""

    backend: str | None
    id: str | None
    name: str | None
    error: str


class Report(TypedDict):
    """The answer to a listing or a removal."""

    backends: list[str]  # the backends that could list their servers
    servers: list[Row]
    removed: list[str]  # ids
    # The hub's spawn counts (hubdeploy.hub.metrics.summary); None when not read.
    metrics: dict[str, Any] | None


class StopReport(TypedDict):
    """The answer to ``--stop-all``."""

    backends: list[str]
    servers: list[Row]
    stopped: list[Row]
    failed: list[Failure]


class ErrorReport(TypedDict):
    error: str
    status: int


def argv(*, remove: tuple[str, ...] | list[str] = (), remove_all: bool = False, stop_all: bool = False) -> list[str]:
    """The command the CLI side runs in the hub's container (argv: ids pass as they are)."""
    out = ["python3", "-m", MODULE]
    if stop_all:
        return [*out, STOP_ALL]
    if remove_all:
        return [*out, REMOVE_ALL]
    return [*out, REMOVE, *remove] if remove else out


def owner(user: str, server: str = "") -> str:
    """A server's owner as rows name it: ``user`` for the default server, ``user/server``
    for a named one (a JupyterHub username has no ``/``)."""
    return f"{user}/{server}" if server else user


def split_owner(text: str) -> tuple[str, str]:
    """``(user, server)`` of an owner :func:`owner` spelt; server "" for the default one."""
    user, _, server = text.partition("/")
    return user, server


def row(backend: str, *, id: str, name: str, state: str, detail: str = "", node: str = "", reason: str = "",
        tracked: bool | None, owner: str | None) -> Row:
    """A :class:`Row`, with every key."""
    return {"backend": backend, "id": id, "name": name, "state": state, "detail": detail, "node": node,
            "reason": reason, "tracked": tracked, "owner": owner}


def failure(backend: str | None, id: str | None, name: str | None, error: str) -> Failure:
    return {"backend": backend, "id": id, "name": name, "error": error}
