"""Removing a benchmark user's home: the hub keeps a deleted user's home (people's data),
but the benchmarks' throwaway users are theirs to clean up."""

from __future__ import annotations

import docker

from hubdeploy.contract.identity import account_name
from hubdeploy.contract.labels import compose_filter
from hubdeploy.contract.layout import HUB_HOMES_DIR, HUB_SERVICE
from hubdeploy.contract.names import home_volume


def remove_home(client, prep, user: str) -> None:
    """The user's home: a directory of the homes volume (their own account), or the
    per-user volume of the one-account layout. Best effort: never raises."""
    try:
        client.volumes.get(home_volume(prep.project, user)).remove(force=True)
    except docker.errors.DockerException:
        pass
    if prep.site.identity.source == "shared":
        return
    # Benchmark users have POSIX names, which are their account names (any uid will do).
    name = account_name(user, 0)
    hubs = client.containers.list(filters={"label": compose_filter(prep.project, HUB_SERVICE)})
    for hub in hubs:
        try:
            hub.exec_run(["rm", "-rf", "--one-file-system", f"{HUB_HOMES_DIR}/{name}"])
        except docker.errors.DockerException:
            pass
