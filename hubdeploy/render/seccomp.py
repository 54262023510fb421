"""The compute nodes' seccomp profile when they run Charliecloud: the engine's default
profile plus the four rules ``ch-run`` needs, and nothing else (compose/README.md,
"Least privilege"; the ablation on branch runtime-spike, spike/FINDINGS.md, shows
each is needed).

Docker's default refuses ``unshare``, ``mount``, ``umount2`` and ``chroot`` to a process
without CAP_SYS_ADMIN/CAP_SYS_CHROOT and has no ``pivot_root`` at all. The rules below
let any process on a node make a user and a mount namespace, bind and move mounts it
can already see, and enter an image; argument filters keep out every other namespace
type (no network namespace: nf_tables stays out of reach) and every new file system.

The base is the engine's own ``profiles/seccomp/default.json`` (the engine does not hand
it out): ``compose/seccomp/docker-20.10.24-default.json``, Debian's copy of Docker
20.10.24's (scripts/seccomp-default.sh fetches it again and checks its hash).
"""

from __future__ import annotations

import json
from typing import Any

# The base profile (a static file of hubdeploy's) and where the nodes' profile is rendered.
BASE_FILE = "compose/seccomp/docker-20.10.24-default.json"
NODE_PROFILE_FILE = "slurm/node-seccomp.json"

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
MS_BIND = 0x1000
MS_MOVE = 0x2000


def _allow(names: list[str], comment: str, args: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"names": names, "action": "SCMP_ACT_ALLOW", "args": args or [], "comment": comment,
            "includes": {}, "excludes": {}}


def _has_bits(index: int, bits: int) -> dict[str, Any]:
    # (arg & bits) == bits. Docker's format: "value" is the mask, "valueTwo" the datum.
    return {"index": index, "value": bits, "valueTwo": bits, "op": "SCMP_CMP_MASKED_EQ"}


RULES: tuple[dict[str, Any], ...] = (
    # ch-run's unshare(CLONE_NEWNS|CLONE_NEWUSER), exactly: clone() with namespace flags
    # stays refused by the default profile, clone3 ENOSYS, setns refused.
    _allow(["unshare"], "hubdeploy: a user+mount namespace and nothing else",
           [{"index": 0, "value": CLONE_NEWNS | CLONE_NEWUSER, "op": "SCMP_CMP_EQ"}]),
    # ch-run's binds (the image, /dev, /proc, /sys, /etc files, -b) and their read-only
    # remounts (MS_REMOUNT|MS_BIND|MS_RDONLY): never a new tmpfs, overlay or fuse mount,
    # whose mount(2) has no MS_BIND.
    _allow(["mount"], "hubdeploy: bind mounts and their remounts only", [_has_bits(3, MS_BIND)]),
    # ch-run moves the image's parent onto / before pivot_root.
    _allow(["mount"], "hubdeploy: moving a mount (MS_MOVE)", [_has_bits(3, MS_MOVE)]),
    # ch-run enters the image, then detaches the old root; each acts only on mounts of the
    # caller's own namespace.
    _allow(["chroot", "pivot_root", "umount2"], "hubdeploy: enter the image's root"),
)


def node_profile(base: bytes) -> bytes:
    """The nodes' profile: ``base`` (the engine's default, JSON) with :data:`RULES`
    appended and nothing of it changed. Deterministic: the same base, the same bytes."""
    profile = json.loads(base)
    if profile.get("defaultAction") != "SCMP_ACT_ERRNO" or not isinstance(profile.get("syscalls"), list):
        raise ValueError("the base seccomp profile is not a default-deny profile with a syscalls list")
    profile["syscalls"] = [*profile["syscalls"], *RULES]
    return (json.dumps(profile, indent=1) + "\n").encode()
