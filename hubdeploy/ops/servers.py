"""The notebook servers of a site's stack, as the hub's backends list them.

The hub's container runs :mod:`hubdeploy.hub.orphans`, where the backends are configured
as the hub uses them; this side only reads its report (:mod:`hubdeploy.contract.orphans`).
When the hub cannot be asked, the containers the engine shows by label are what is known.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from hubdeploy.contract import orphans as protocol
from hubdeploy.contract.backends import DOCKER, SLURM
from hubdeploy.contract.layout import HUB_SERVICE, LABEL_PROFILE, LABEL_SERVER, LABEL_SITE, LABEL_USER
from hubdeploy.contract.names import server_prefix
from hubdeploy.errors import OperationError, SiteError
from hubdeploy.ops import engine
from hubdeploy.site.model import Site

if TYPE_CHECKING:
    from hubdeploy.ops.prepared import Prepared


def notebook_containers(client, site: Site) -> list:
    """Containers the backends started for this site (login-node notebooks)."""
    return client.containers.list(
        all=True, filters={"label": [f"{LABEL_SITE}={site.name}", LABEL_USER]}
    )


def container_row(c) -> protocol.Row:
    """A notebook container found by its labels, in the hub's row shape (owner unknown)."""
    labels = c.labels
    user, server = labels.get(LABEL_USER), labels.get(LABEL_SERVER, "")
    detail = (f"user {user}" + (f", server {server}" if server else "")
              + (f", profile {labels[LABEL_PROFILE]}" if labels.get(LABEL_PROFILE) else ""))
    return protocol.row(DOCKER, id=c.id, name=c.name, state=c.status, detail=detail, tracked=None, owner=None)


def orphans(prep: Prepared, *, remove: tuple[str, ...] = (), remove_all: bool = False,
            client=None) -> protocol.Report:
    """The backends' servers, each marked tracked or not by the hub; optionally remove
    untracked ones. Runs :mod:`hubdeploy.hub.orphans` in the hub's container, where the
    backends are configured as the hub uses them (see that module for why)."""
    client = client or engine.docker_client()
    hubs = engine.service_containers(client, prep.project, HUB_SERVICE)
    if not hubs:
        raise OperationError(f"the hub of site {prep.site.name} is not running", hint="hubdeploy up")
    code, (out, err) = hubs[0].exec_run(protocol.argv(remove=remove, remove_all=remove_all), demux=True)
    try:
        report = json.loads((out or b"").decode())
    except ValueError:
        tail = (err or out or b"").decode(errors="replace").strip().splitlines()[-5:]
        raise OperationError("the hub could not list its servers:\n  " + "\n  ".join(tail)) from None
    if code == protocol.BAD_REQUEST:
        raise SiteError(report.get("error", "bad request"), hint="hubdeploy orphans list")
    if code != protocol.OK:
        raise OperationError(f"cannot tell which servers the hub tracks: {report.get('error', code)}")
    return report


def stop_servers(prep: Prepared, client) -> tuple[list[protocol.Row], list[protocol.Failure]]:
    """Stop every server of every backend through the hub's container (``--stop-all``):
    ``(stopped rows, failures)``, each failure naming what was not stopped and why."""
    hubs = engine.service_containers(client, prep.project, HUB_SERVICE)
    if not hubs:
        return [], _unlisted_without_hub(prep)
    code, (out, err) = hubs[0].exec_run(protocol.argv(stop_all=True), demux=True)
    try:
        report = json.loads((out or b"").decode())
        return report["stopped"], report["failed"]
    except (ValueError, KeyError, TypeError):
        # A hub that cannot answer is no worse than none: containers go by their labels
        # and the stack's own cluster with the stack; only a site's own Slurm is left.
        unlisted = _unlisted_without_hub(prep)
        if not unlisted:
            return [], []
        tail = (err or out or b"").decode(errors="replace").strip().splitlines()[-3:]
        return [], [{**unlisted[0], "error": f"the hub could not stop its servers (exit {code}: "
                     + " | ".join(tail) + "); " + unlisted[0]["error"]}]


def _unlisted_without_hub(prep: Prepared) -> list[protocol.Failure]:
    """What cannot be stopped when the hub is not running: jobs on a site's own Slurm
    (the stack's own cluster goes down with the stack, containers are found by label)."""
    slurm = prep.site.slurm
    if slurm is None or slurm.submit is None:
        return []
    where = prep.site.submit_ssh.host if prep.site.submit_ssh else "the site's Slurm"
    return [protocol.failure(SLURM, None, None, f"the hub is not running, so its jobs at {where} were not listed "
                             f"or cancelled; look for jobs named {server_prefix(prep.project)}* there")]


def remove_notebook_containers(client, site: Site) -> list[str]:
    """Remove every notebook container of the site; their names."""
    removed = []
    for c in notebook_containers(client, site):
        c.remove(force=True)
        removed.append(c.name)
    return removed
