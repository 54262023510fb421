"""``hubdeploy logs --user NAME``: a notebook server's own log, from whichever backend runs it.

The hub's backends list every server with its owner (``hubdeploy.hub.orphans``, run in
the hub's container as ``status`` does). A docker server's log is its container's log;
a swarm server's is its task's container's (found by swarm's service label), or, for a
task on another node, the service's log as the manager gathers it.
A Slurm job's log is its output file on the node that runs it; on the stack's own
cluster it is read *on that node, as the job's own uid*, so nothing is shown that its
user could not read (jobs of per-user accounts write into their own
``~/.hubdeploy/logs``, mode 0700). Jobs on a site's own Slurm log on the site's file
systems, which hubdeploy does not reach: the error names the job and where to look.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from hubdeploy.contract import orphans as protocol
from hubdeploy.contract.backends import DOCKER, SLURM, SWARM
from hubdeploy.contract.labels import SWARM_SERVICE_ID
from hubdeploy.contract.layout import SLURMCTLD_SERVICE, slurm_node_service
from hubdeploy.errors import OperationError, SiteError
from hubdeploy.ops import engine, servers

# scontrol show job -o: KEY=VALUE words; the values we read never contain a space.
_FIELD = re.compile(r"(?:^|\s)(StdOut|UserId|GroupId|BatchHost|JobState)=(\S*)")
_ID = re.compile(r"^\S+\((\d+)\)$")


def check_tail(tail: str) -> str:
    """``--tail``: a number of lines or ``all`` (SiteError otherwise)."""
    if tail != "all" and not tail.isdigit():
        raise SiteError(f"--tail takes a number of lines or 'all', not {tail!r}")
    return tail


def find_server(rows: list[protocol.Row], user: str, server: str) -> protocol.Row:
    """The backend row of ``user``'s server ``server`` ("" for the default one); pure.

    SiteError (exit 2) naming the user's running servers when there is no such server.
    """
    hits = [r for r in rows if r.get("owner") == protocol.owner(user, server)]
    if hits:
        return hits[0]
    theirs = sorted(protocol.split_owner(r["owner"])[1] for r in rows
                    if r.get("owner") and protocol.split_owner(r["owner"])[0] == user)
    what = f"server {server!r} of user {user!r}" if server else f"default server of user {user!r}"
    if theirs:
        named = ", ".join(f"--server {s}" if s else "the default server" for s in theirs)
        raise SiteError(f"no running {what}; theirs: {named}")
    raise SiteError(f"no running {what}: the user is unknown or has no running server",
                    hint="hubdeploy status lists every running server")


def job_output(scontrol_line: str) -> dict[str, str]:
    """What ``scontrol show job -o`` says of a job's output: path, uid, gid, node; pure."""
    fields = dict(_FIELD.findall(scontrol_line))
    uid, gid = _ID.match(fields.get("UserId", "")), _ID.match(fields.get("GroupId", ""))
    if not fields.get("StdOut") or not uid or not gid:
        raise OperationError("Slurm did not say where the job's output is: " + scontrol_line.strip()[:200])
    return {"path": fields["StdOut"], "uid": uid.group(1), "gid": gid.group(1),
            "node": fields.get("BatchHost", ""), "state": fields.get("JobState", "")}


def tail_argv(path: str, tail: str, follow: bool) -> list[str]:
    """The reader run on the node (argv, never a shell: the path is Slurm's)."""
    return ["tail", "-n", "+1" if tail == "all" else tail, *(["-F"] if follow else []), "--", path]


def _service(client, project: str, service: str):
    found = engine.service_containers(client, project, service)
    if not found:
        raise OperationError(f"the {service} container of {project} is not running", hint="hubdeploy status")
    return found[0]


def _copy(logs, write: Callable[[bytes], None]) -> int:
    """Write a log the SDK returned whole (bytes) or as a stream of chunks."""
    for chunk in [logs] if isinstance(logs, bytes) else logs:
        write(chunk)
    return 0


def _container_log(container, tail, follow: bool, write: Callable[[bytes], None]) -> int:
    return _copy(container.logs(tail=tail, stream=follow, follow=follow), write)


def _docker_log(client, row, tail, follow: bool, write: Callable[[bytes], None]) -> int:
    import docker

    try:
        container = client.containers.get(row["id"])
    except docker.errors.NotFound:
        raise OperationError(f"the server's container {row['name']} is gone") from None
    return _container_log(container, tail, follow, write)


def task_container(client, service_id: str):
    """The newest container of a swarm service's tasks on this engine (a running one
    first), found by the label swarm sets on it, or None."""
    found = client.containers.list(all=True, filters={"label": [f"{SWARM_SERVICE_ID}={service_id}"]})
    found.sort(key=lambda c: (c.status == "running", c.attrs.get("Created", "")), reverse=True)
    return found[0] if found else None


def _swarm_log(client, row, tail, follow: bool, write: Callable[[bytes], None]) -> int:
    """A swarm server's log: its task's container's, or, when the task runs on another
    node, the service's log, which the manager (this engine) gathers from there."""
    import docker

    container = task_container(client, row["id"])
    if container is not None:
        return _container_log(container, tail, follow, write)
    try:
        logs = client.api.service_logs(row["id"], stdout=True, stderr=True, tail=tail, follow=follow)
    except docker.errors.NotFound:
        raise OperationError(f"the server's service {row['name']} is gone") from None
    return _copy(logs, write)


def _slurm_log(client, prep, row, tail: str, follow: bool, write: Callable[[bytes], None]) -> int:
    if prep.site.slurm is None or prep.site.slurm.cluster is None:
        raise OperationError(f"job {row['id']} runs on the site's own Slurm, whose files hubdeploy does not read",
                             hint=f"its output: `scontrol show job {row['id']}` (StdOut) on the login host")
    ctl = _service(client, prep.project, SLURMCTLD_SERVICE)
    res = ctl.exec_run(["scontrol", "show", "job", "-o", row["id"]])
    if res.exit_code != 0:
        raise OperationError(f"scontrol cannot show job {row['id']}: {res.output.decode(errors='replace').strip()}")
    out = job_output(res.output.decode(errors="replace"))
    if not out["node"]:
        raise OperationError(f"job {row['id']} has not started on a node yet ({out['state'] or 'pending'})")
    node = _service(client, prep.project, slurm_node_service(out["node"]))
    # As the job's own uid: the log is shown only if its user could read it.
    user = f"{out['uid']}:{out['gid']}"
    if not follow:
        res = node.exec_run(tail_argv(out["path"], tail, False), user=user, demux=True)
        stdout, stderr = res.output
        if res.exit_code != 0:
            raise OperationError(f"cannot read {out['path']} on {out['node']}: "
                                 f"{(stderr or b'').decode(errors='replace').strip()}")
        write(stdout or b"")
        return 0
    res = node.exec_run(tail_argv(out["path"], tail, True), user=user, stream=True)
    for chunk in res.output:
        write(chunk)
    return 0


def user_logs(prep, user: str, server: str, *, follow: bool, tail: str, write: Callable[[bytes], None]) -> int:
    """Write the log of ``user``'s server ``server`` ("" the default) to ``write``."""
    check_tail(tail)
    client = engine.docker_client()
    row = find_server(servers.orphans(prep, client=client)["servers"], user, server)
    try:
        if row["backend"] == SLURM:
            return _slurm_log(client, prep, row, tail, follow, write)
        readers = {DOCKER: _docker_log, SWARM: _swarm_log}
        if row["backend"] not in readers:
            raise OperationError(f"logs --user does not know the {row['backend']} backend's logs")
        return readers[row["backend"]](client, row, int(tail) if tail.isdigit() else "all", follow, write)
    except KeyboardInterrupt:
        return 0
