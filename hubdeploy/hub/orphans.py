"""Servers the hub no longer tracks: list them, and remove them when an operator says so.

Runs inside the hub's container (``hubdeploy status`` and ``hubdeploy orphans`` exec it
there)::

    python3 -m hubdeploy.hub.orphans                   # JSON report on stdout
    python3 -m hubdeploy.hub.orphans --remove ID ...   # remove these untracked servers
    python3 -m hubdeploy.hub.orphans --remove-all      # remove every untracked server
    python3 -m hubdeploy.hub.orphans --stop-all        # stop every server (``hubdeploy down``)

Why in the hub's container: it has the hub's backends configured exactly as the hub uses
them (for Slurm, the same submit prefix and submit account: ``squeue --me`` there sees
the hub's jobs), and it reaches the hub's REST API on its own loopback without a route
through the proxy.

How "tracked" is decided: the hub's API, with a token of the ``hubdeploy-cli`` service
whose only write-capable scope is ``admin:server_state`` (read here), lists every active
server with its spawner state; each backend's :meth:`~hubdeploy.backends.base.Backend.server_id`
of that state names the job or container the hub tracks. A start in flight may not have
an id yet; its recorded job or container name counts as tracked. Everything else a
backend lists is untracked: left by a lost database, a crash between submit and commit,
or an edit of the hub's state. Nothing is ever removed without ``--remove``, and a
removal re-lists first and refuses (exit 2) anything tracked or unknown, removing nothing.

``--stop-all`` is ``hubdeploy down``'s: every server of every backend, tracked or not,
is stopped (a Slurm job cancelled without waiting, a container removed). It goes on past
a failure and reports each server it could not stop, and each backend it could not list,
under ``failed`` (exit 1), so that down can name them; owners come from the hub when it
answers, and a hub that does not answer stops nothing less.

Exit status: 0, 1 when the hub or a backend cannot be asked (never guess "untracked"),
or a server could not be stopped; 2 for a bad ``--remove`` request.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hubdeploy.contract import hubjson
from hubdeploy.contract import orphans as protocol
from hubdeploy.contract.backends import read_saved_state
from hubdeploy.contract.services import CLI

PAGE = 200


class Failed(Exception):
    """The hub or a backend could not be asked; exit status 1."""


class BadRequest(Exception):
    """A --remove naming a server that is not an untracked one; exit status 2."""


@dataclass(frozen=True)
class Tracked:
    """One active server of the hub, as its backend identifies it."""

    owner: str  # protocol.owner: "user" or "user/server"
    backend: str
    id: str | None
    name: str | None


def tracked_servers(users: Iterable[Mapping[str, Any]], backends: Mapping[str, Any], default: str) -> list[Tracked]:
    """The hub's active servers (API user models with ``state``) -> :class:`Tracked`."""
    out = []
    for user in users:
        for server_name, server in (user.get("servers") or {}).items():
            saved = read_saved_state(server.get("state"))
            name = (saved and saved["backend"]) or default
            backend = backends.get(name)
            if backend is None:
                continue
            state = saved["state"] if saved else {}
            owner = protocol.owner(user["name"], server_name)
            out.append(Tracked(owner, name, backend.server_id(state), backend.server_name(state)))
    return out


def classify(found: Mapping[str, list], tracked: list[Tracked]) -> list[protocol.Row]:
    """Every listed server with ``tracked`` and ``owner``; pure (unit-tested).

    A server is tracked when its id is a tracked server's id, or when its name is that of
    a tracked server whose start has not recorded an id yet.
    """
    rows = []
    for backend, items in sorted(found.items()):
        by_id = {t.id: t.owner for t in tracked if t.backend == backend and t.id}
        by_name = {t.name: t.owner for t in tracked if t.backend == backend and not t.id and t.name}
        for f in items:
            owner = by_id.get(f.id) or by_name.get(f.name)
            rows.append(protocol.row(backend, **asdict(f), tracked=owner is not None, owner=owner))
    return rows


def pick(rows: list[protocol.Row], wanted: list[str]) -> list[protocol.Row]:
    """The untracked rows ``wanted`` names (an id, or a unique id prefix of 6+ characters).

    All-or-nothing: any name that is tracked, unknown or ambiguous raises BadRequest.
    """
    chosen, problems = [], []
    for w in wanted:
        hits = [r for r in rows if r["id"] == w] or ([r for r in rows if r["id"].startswith(w)] if len(w) >= 6 else [])
        if not hits:
            problems.append(f"{w}: no such server (see `hubdeploy orphans list`)")
        elif len(hits) > 1:
            problems.append(f"{w}: ambiguous, matches {', '.join(r['id'][:12] for r in hits)}")
        elif hits[0]["tracked"]:
            problems.append(f"{w}: tracked by the hub as {hits[0]['owner']}'s server; stop it through the hub")
        elif hits[0] not in chosen:
            chosen.append(hits[0])
    if problems:
        raise BadRequest("nothing removed:\n  " + "\n  ".join(problems))
    return chosen


# -- the hub side -------------------------------------------------------------------


def _backends(hub: hubjson.HubJson) -> tuple[dict[str, Any], str]:
    from hubdeploy.backends import backend_configs, get_backend

    configs = backend_configs(hub.spawner)
    return {name: get_backend(name)(config) for name, config in configs.items()}, hub.spawner.backend


def _cli_token(hub: hubjson.HubJson) -> str:
    service = next((s for s in hub.services if s.name == CLI.name), None)
    if service is None:
        raise Failed(f"hub.json has no {CLI.name} service; run `hubdeploy up` with this version")
    return Path(service.token_file).read_text(encoding="utf-8").strip()


def _hub_api(hub: hubjson.HubJson) -> str:
    return os.environ.get("HUBDEPLOY_HUB_API", f"http://127.0.0.1:{hub.hub.port}/hub/api")


def _spawn_metrics(hub: hubjson.HubJson) -> dict[str, Any] | None:
    """The hub's spawn counts and starts in flight (hub.metrics.summary); None when its
    metrics cannot be read (an older token without read:metrics, a hub restarting)."""
    import requests

    from hubdeploy.hub import metrics

    try:
        r = requests.get(_hub_api(hub).removesuffix("/api") + "/metrics",
                         headers={"Authorization": f"token {_cli_token(hub)}"}, timeout=30)
    except requests.RequestException:
        return None
    return metrics.summary(r.text) if r.status_code == 200 else None


def _active_users(hub: hubjson.HubJson) -> list[dict[str, Any]]:
    import requests

    token = _cli_token(hub)
    api = _hub_api(hub)
    users, offset = [], 0
    while True:
        try:
            r = requests.get(
                f"{api}/users",
                params={"state": "active", "offset": offset, "limit": PAGE},
                headers={"Authorization": f"token {token}", "Accept": "application/jupyterhub-pagination+json"},
                timeout=30,
            )
        except requests.RequestException as exc:
            raise Failed(f"cannot reach the hub's API: {type(exc).__name__}") from None
        if r.status_code != 200:
            raise Failed(f"the hub's API answered {r.status_code} to GET /users")
        page = r.json()
        users += page["items"]
        nxt = (page.get("_pagination") or {}).get("next")
        if not nxt:
            return users
        offset = nxt["offset"]


async def _list(backends: Mapping[str, Any]) -> dict[str, list]:
    from hubdeploy.backends.base import BackendError

    found = {}
    for name, backend in backends.items():
        try:
            items = await backend.list_servers()
        except BackendError as exc:
            raise Failed(f"backend {name}: {exc}") from None
        if items is not None:
            found[name] = items
    return found


async def run(remove: list[str], remove_all: bool) -> protocol.Report:
    from hubdeploy.backends.base import BackendError

    hub = hubjson.load()
    backends, default = _backends(hub)
    try:
        # Ask the backends first, then the hub: a server started in between is then
        # tracked by the time the hub answers, never mistaken for an orphan.
        found = await _list(backends)
        tracked = tracked_servers(_active_users(hub), backends, default)
        rows = classify(found, tracked)
        removed = []
        targets = [r for r in rows if not r["tracked"]] if remove_all else pick(rows, remove) if remove else []
        for row in targets:
            try:
                await backends[row["backend"]].remove(row["id"])
            except BackendError as exc:
                done = f" (removed before it: {', '.join(removed)})" if removed else ""
                raise Failed(f"cannot remove {row['id']}: {exc}{done}") from None
            removed.append(row["id"])
        return {"backends": sorted(found), "servers": rows, "removed": removed,
                "metrics": _spawn_metrics(hub) if not targets else None}
    finally:
        for b in backends.values():
            await b.close()


async def stop_all() -> protocol.StopReport:
    """Stop every server every backend lists; ``failed`` names what could not be stopped."""
    from hubdeploy.backends.base import BackendError

    hub = hubjson.load()
    backends, default = _backends(hub)
    found: dict[str, list] = {}
    failed: list[protocol.Failure] = []
    try:
        for name, backend in backends.items():
            try:
                items = await backend.list_servers()
            except BackendError as exc:
                failed.append(protocol.failure(name, None, None, f"cannot list: {exc}"))
                continue
            if items is not None:
                found[name] = items
        try:
            tracked = tracked_servers(_active_users(hub), backends, default)
        except Failed:
            tracked = []  # owners unknown; every server is stopped all the same
        rows = classify(found, tracked)
        stopped = []
        for row in rows:
            try:
                await backends[row["backend"]].remove(row["id"])
            except BackendError as exc:
                failed.append(protocol.failure(row["backend"], row["id"], row["name"], str(exc)))
            else:
                stopped.append(row)
        return {"backends": sorted(found), "servers": rows, "stopped": stopped, "failed": failed}
    finally:
        for b in backends.values():
            await b.close()


def parser() -> argparse.ArgumentParser:
    """The command line :func:`hubdeploy.contract.orphans.argv` builds."""
    out = argparse.ArgumentParser(prog=f"python3 -m {protocol.MODULE}")
    group = out.add_mutually_exclusive_group()
    group.add_argument(protocol.REMOVE, dest="remove", nargs="+", default=[], metavar="ID")
    group.add_argument(protocol.REMOVE_ALL, dest="remove_all", action="store_true")
    group.add_argument(protocol.STOP_ALL, dest="stop_all", action="store_true")
    return out


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from hubdeploy.backends.base import BackendError

    try:
        if args.stop_all:
            report = asyncio.run(stop_all())
            print(json.dumps(report))
            return protocol.FAILED if report["failed"] else protocol.OK
        report = asyncio.run(run(args.remove, args.remove_all))
    except BadRequest as exc:
        print(json.dumps(protocol.ErrorReport(error=str(exc), status=protocol.BAD_REQUEST)))
        return protocol.BAD_REQUEST
    except (Failed, BackendError, OSError, KeyError, ValueError) as exc:
        error = str(exc) if isinstance(exc, Failed) else f"{type(exc).__name__}: {exc}"
        print(json.dumps(protocol.ErrorReport(error=error, status=protocol.FAILED)))
        return protocol.FAILED
    print(json.dumps(report))
    return protocol.OK


if __name__ == "__main__":
    sys.exit(main())
