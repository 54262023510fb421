"""Parts of hub.json as the hub reads them, for tests that hand one to the spawner or a
backend: profiles, and the identity section of the one-account layout.

Built through the hub's own reader (:func:`hubdeploy.contract.strict.read`), so a test
profile is checked as a rendered one is.
"""

from __future__ import annotations

from typing import Any

from hubdeploy.contract.hubjson import IdentityConfig, Profile
from hubdeploy.contract.strict import read

LOGIN: dict[str, Any] = {
    "name": "login", "display_name": "login", "description": "", "image": "base",
    "image_ref": "hubdeploy/test-base:000000000000", "node": "login", "cpu": None, "mem_limit": None,
    "pids_limit": 512, "home": True, "volumes": [], "environment": {}, "default": False, "spawner_config": {},
    "slurm": None, "placement": None, "reserve": None,
}
SLURM: dict[str, Any] = {
    "partition": None, "partitions": [], "account": None, "qos": None, "time": None, "gpus": 0,
    "runtime": "native", "image": None, "home_dir": None, "path_prepend": [],
    "limits": {"max_cpu": None, "max_mem": None, "max_time": None, "max_gpus": None},
}


def profile(**fields: Any) -> Profile:
    """A login profile with ``fields`` changed; with ``slurm`` (the keys to change, its
    ``limits`` among them) a compute profile. Values are hub.json's (lists, objects)."""
    data = {**LOGIN, **fields}
    if fields.get("slurm") is not None:
        slurm = fields["slurm"]
        data["slurm"] = {**SLURM, **slurm, "limits": {**SLURM["limits"], **slurm.get("limits", {})}}
        data["node"] = fields.get("node", "compute")
    return read(Profile, data, "test profile")


# Every server as the image's jovyan, as render writes it for identity: {source: shared}.
SHARED = IdentityConfig(source="shared", home_template="/home/{name}", homes_dir=None, nss_dir=None, uid_min=None,
                        uid_max=None, state_file=None, passwd_file=None, group_file=None, ldap=None)
