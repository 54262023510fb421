"""Staging compute profiles' images for Charliecloud on the stack's own cluster: each
image a flattened directory on the volume every node mounts read-only at
NODE_IMAGES_DIR, named by its tag (:func:`~hubdeploy.contract.layout.staged_image_dir`;
hubdeploy's tags are content hashes, so a changed image is a new directory).

:func:`plan_staging` is pure: the site, the tags and what the volume holds in, the
steps out. :func:`stage_images` carries them out on the engine, with argv lists only:

1. the image's file system, ``docker export`` of a created container, streamed into the
   engine's own archive extraction (``PUT /containers/{id}/archive``) under a temporary
   name ``.tmp-<name>`` on the volume, owners and modes as in the image;
2. a helper container (the slurm image, no network, only CHOWN, DAC_OVERRIDE and FOWNER)
   runs :data:`FINALIZE`: it empties ``/dev`` (the node's is bound at run time), removes
   every setuid/setgid bit, writes the image's ENV to ``/ch/environment`` (what ch-run
   ``--set-env`` reads) and the image's id to ``/ch/hubdeploy-image-id``, makes each
   bind target a real directory (ch-run creates none in a read-only image, and would
   follow a symlink on the node's side), then ``rename()``s the directory into place: a
   node sees no image or the whole image. Another build under the same tag (``images
   build --force``) is swapped in with one ``renameat2(RENAME_EXCHANGE)``;
3. directories no staged profile names any more, replaced builds and leftovers of an
   interrupted run are renamed away, then removed, unless a job on a running node still
   has one mounted (then it is kept until a later run).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import PurePosixPath

import docker.errors

from hubdeploy.contract.labels import COMPOSE_SERVICE, compose_filter
from hubdeploy.contract.layout import (
    COMPUTE_IMAGES_VOLUME,
    LABEL_SITE,
    NODE_IMAGES_DIR,
    NODE_JOBS_DIR,
    SLURM_IMAGE,
    project_name,
    slurm_node_service,
    stack_name,
    staged_image_dir,
)
from hubdeploy.errors import OperationError
from hubdeploy.site.model import Site

# The compose services of the stack's compute nodes (slurm-c1, ...), not the controller's.
NODE_SERVICE_PREFIX = slurm_node_service("")
TMP_PREFIX = ".tmp-"
GONE_PREFIX = ".rm-"
# ch-run's default bind targets for -b without a destination, and where a site binds
# a GPU driver's libraries (docs/runtime-plan.md); /tmp takes the job's private tmp.
FIXED_TARGETS = ("/tmp", *(f"/mnt/{i}" for i in range(10)))
# What the helper may do: give back owners and modes of files it does not own.
HELPER_CAPS = ("CHOWN", "DAC_OVERRIDE", "FOWNER")


@dataclass(frozen=True)
class StagedImage:
    """One image to have on the volume: its site name, tag and directory name."""

    image: str
    ref: str
    name: str  # the directory's name under NODE_IMAGES_DIR
    targets: tuple[str, ...]  # bind targets ch-run needs in it, absolute
    image_id: str = ""  # the engine's id of the tag now: a rebuild under one tag restages


@dataclass(frozen=True)
class StagePlan:
    stage: tuple[StagedImage, ...]  # missing, or another build of the tag: export and finalize
    unchanged: tuple[StagedImage, ...]  # present, of the same build: nothing to do
    remove: tuple[str, ...]  # directory names no staged profile uses, and leftovers
    kept: tuple[str, ...] = ()  # of those, what a running job still has mounted


def split_removal(remove: tuple[str, ...], busy: set[str] | None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(removable, kept) of ``remove``: a directory a job on a node still has mounted is
    kept (removing it would pull the files from under that user's server); when the
    nodes could not be asked (``busy`` None), every one is kept."""
    if busy is None:
        return (), remove
    return tuple(n for n in remove if n not in busy), tuple(n for n in remove if n in busy)


def wanted(site: Site, refs: dict[str, str], ids: dict[str, str] | None = None) -> list[StagedImage]:
    """Every image a staged profile runs, once, in the site file's order, with the bind
    targets of all the profiles that run it; ``ids``: tag -> the engine's image id."""
    out: dict[str, StagedImage] = {}
    for p in site.staged_profiles:
        targets = set(FIXED_TARGETS) | {NODE_JOBS_DIR} | {v.target for v in p.volumes}
        if p.home and site.identity.source != "shared":
            targets.add(site.identity.homes_dir)
        if p.image in out:
            targets |= set(out[p.image].targets)
        ref = refs[p.image]
        name = PurePosixPath(staged_image_dir(ref)).name
        out[p.image] = StagedImage(p.image, ref, name, tuple(sorted(targets)), (ids or {}).get(ref, ""))
    return list(out.values())


def plan_staging(site: Site, refs: dict[str, str], present: dict[str, str],
                 ids: dict[str, str] | None = None) -> StagePlan:
    """What to stage, keep and remove, given ``present`` on the volume (name -> the image
    id it was staged from, "" when unknown) and ``ids`` (tag -> the image id now). A tag
    rebuilt (``images build --force``: security updates) is staged again."""
    want = wanted(site, refs, ids)

    def same(w: StagedImage) -> bool:
        return w.name in present and (not w.image_id or not present[w.name] or present[w.name] == w.image_id)

    return StagePlan(
        stage=tuple(w for w in want if not same(w)),
        unchanged=tuple(w for w in want if same(w)),
        remove=unused(list(present), want),
    )


def unused(present: list[str], want: list[StagedImage]) -> tuple[str, ...]:
    """Names on the volume that no wanted image has: old tags, replaced builds, leftovers."""
    names = {w.name for w in want}
    return tuple(sorted(n for n in present if n not in names))


def finalize_argv(item: StagedImage, env: list[str]) -> list[str]:
    """The helper's command for one exported image: data as arguments, never as code."""
    return ["python3", "-c", FINALIZE, NODE_IMAGES_DIR, TMP_PREFIX + item.name, item.name, item.image_id,
            GONE_PREFIX, str(len(env)), *env, *item.targets]


def remove_argv(names: tuple[str, ...]) -> list[str]:
    return ["python3", "-c", REMOVE, NODE_IMAGES_DIR, GONE_PREFIX, *names]


# Fixed text: the temporary directory an export is extracted into, fresh.
MKDIR = "import os, shutil, sys; shutil.rmtree(sys.argv[1], ignore_errors=True); os.mkdir(sys.argv[1], 0o700)"
# Fixed text: name -> the image id each directory was staged from ("" when unknown).
LIST = r"""
import json, os, sys
top, out = sys.argv[1], {}
for name in sorted(os.listdir(top)):
    try:
        with open(os.path.join(top, name, "ch", "hubdeploy-image-id")) as f:
            out[name] = f.read().strip()
    except OSError:
        out[name] = ""
print(json.dumps(out))
"""
LIST_ARGV = ["python3", "-c", LIST, NODE_IMAGES_DIR]

# Fixed text, run by the helper as root on the volume. argv: top, temporary name, final
# name, N, N lines of the image's ENV, then the bind targets.
FINALIZE = r"""
import ctypes, os, shutil, stat, sys
top, tmp_name, final_name, image_id, gone, n = sys.argv[1:7]
env, targets = sys.argv[7:7 + int(n)], sys.argv[7 + int(n):]
tmp, final = os.path.join(top, tmp_name), os.path.join(top, final_name)
dev = os.path.join(tmp, "dev")
if os.path.isdir(dev) and not os.path.islink(dev):
    for entry in os.listdir(dev):
        p = os.path.join(dev, entry)
        shutil.rmtree(p) if os.path.isdir(p) and not os.path.islink(p) else os.unlink(p)
for root, dirs, files in os.walk(tmp):
    for name in files:
        p = os.path.join(root, name)
        st = os.lstat(p)
        if stat.S_ISREG(st.st_mode) and st.st_mode & 0o6000:
            os.chmod(p, stat.S_IMODE(st.st_mode) & ~0o6000)
ch = os.path.join(tmp, "ch")
if os.path.islink(ch) or (os.path.exists(ch) and not os.path.isdir(ch)):
    os.unlink(ch)
os.makedirs(ch, 0o755, exist_ok=True)
with open(os.path.join(ch, "environment"), "w") as f:
    f.write("".join(line + "\n" for line in env))
with open(os.path.join(ch, "hubdeploy-image-id"), "w") as f:
    f.write(image_id + "\n")
for target in targets:
    path = tmp
    for part in target.strip("/").split("/"):
        path = os.path.join(path, part)
        if os.path.islink(path) or (os.path.exists(path) and not os.path.isdir(path)):
            os.unlink(path)
        if not os.path.exists(path):
            os.mkdir(path, 0o755)
os.chmod(tmp, 0o755)
if not os.path.isdir(final):
    os.rename(tmp, final)  # atomic: a node sees no image or the whole image
    sys.exit(0)
# Another build of the tag is there: swap the two at once (renameat2 RENAME_EXCHANGE), so
# a job starting now gets one or the other; the old one waits under `gone` for removal.
libc = ctypes.CDLL(None, use_errno=True)
if libc.renameat2(-100, tmp.encode(), -100, final.encode(), 2) != 0:
    os.rename(final, tmp + ".old")  # no exchange on this file system: a moment without it
    os.rename(tmp, final)
    os.rename(tmp + ".old", tmp)
os.rename(tmp, os.path.join(top, f"{gone}{final_name}-{os.getpid()}"))
"""

# Fixed text, run as root on a node: which of the names (argv) a process there has
# mounted, i.e. a job inside ch-run (its root is a bind of NODE_IMAGES_DIR/NAME).
IN_USE = r"""
import glob, json, re, sys
names, found = sys.argv[1:], set()
for path in glob.glob("/proc/[0-9]*/mountinfo"):
    try:
        text = open(path).read()
    except OSError:
        continue
    found.update(n for n in names if re.search("/" + re.escape(n) + r"(?=[\s/])", text))
print(json.dumps(sorted(found)))
"""

# Fixed text: rename each away (it vanishes from the nodes at once), then remove it.
REMOVE = r"""
import os, shutil, sys
top, gone = sys.argv[1:3]
for name in sys.argv[3:]:
    if "/" in name or name in (".", "..") or not os.path.lexists(os.path.join(top, name)):
        continue
    away = os.path.join(top, name if name.startswith(gone) else gone + name)
    if away != os.path.join(top, name):
        os.rename(os.path.join(top, name), away)
    shutil.rmtree(away)
"""


# -- on the engine ----------------------------------------------------------------------


def volume_name(site: Site) -> str:
    return stack_name(project_name(site.name), COMPUTE_IMAGES_VOLUME)


def node_named_volumes(site: Site) -> list[str]:
    """The staged profiles' volumes that are Docker volumes (not host paths), by name."""
    return [source for source, _, _ in site.staged_volumes if not source.startswith("/")]


def stage_images(site: Site, refs: dict[str, str], client, console=None) -> StagePlan:
    """Stage what :func:`plan_staging` says on the engine ``client`` (docker-py), helper
    containers from the site's slurm image. Returns the plan it carried out."""
    volume = volume_name(site)
    if not site.staged_profiles and not _volume_exists(client, volume, site):
        return StagePlan((), (), ())  # nothing staged, nothing to remove
    client.api.create_volume(volume, labels={LABEL_SITE: site.name})  # as it is when it exists
    for name in node_named_volumes(site):
        # The profiles' named volumes are external to compose: the nodes cannot start
        # without them. Made as a login server's mount would make them (no label).
        client.api.create_volume(name)
    helper = _Helper(client, refs[SLURM_IMAGE], volume, site.name)
    ids = {w.ref: client.api.inspect_image(w.ref)["Id"] for w in wanted(site, refs)}
    plan = plan_staging(site, refs, json.loads(helper.run(LIST_ARGV)), ids)
    for item in plan.unchanged:
        _say(console, f"[bold]unchanged[/] {item.image} ({item.ref})")
    for item in plan.stage:
        t0 = time.monotonic()
        _say(console, f"[bold]staging[/] {item.image} ({item.ref}) for Charliecloud")
        _stage_one(client, helper, item)
        _say(console, f"[bold green]staged[/] {item.image} in {time.monotonic() - t0:.0f} s")
    # Listed again: a replaced build now waits under its GONE_PREFIX name.
    remove = unused(list(json.loads(helper.run(LIST_ARGV))), wanted(site, refs)) if plan.stage else plan.remove
    removable, kept = split_removal(remove, _in_use(client, site, remove) if remove else set())
    if removable:
        helper.run(remove_argv(removable))
        _say(console, f"[bold]removed[/] {', '.join(removable)} (no compute profile runs them)")
    if kept:
        _say(console, f"[bold yellow]kept[/] {', '.join(kept)}: a job may still run on it; the next staging "
             "removes it once none does")
    return StagePlan(plan.stage, plan.unchanged, removable, kept)


def _in_use(client, site: Site, names: tuple[str, ...]) -> set[str] | None:
    """The names a process on a running node of the site has mounted; None when a running
    node cannot be asked. A node that is not running runs no job."""
    found: set[str] = set()
    for c in client.api.containers(filters={"label": compose_filter(project_name(site.name))}):
        service = (c.get("Labels") or {}).get(COMPOSE_SERVICE, "")
        if not service.startswith(NODE_SERVICE_PREFIX) or c.get("State") != "running":
            continue
        try:
            exec_id = client.api.exec_create(c["Id"], ["python3", "-c", IN_USE, *names], stdout=True, stderr=False,
                                             user="0:0")["Id"]
            output = client.api.exec_start(exec_id)
            if client.api.exec_inspect(exec_id).get("ExitCode") != 0:
                return None
            found.update(json.loads(output))
        except (docker.errors.DockerException, ValueError):
            return None
    return found


def _volume_exists(client, volume: str, site: Site) -> bool:
    """Whether a site that stages nothing has images left from when it did (only the
    stack's cluster has the helper's image to remove them with)."""
    if site.slurm is None or site.slurm.cluster is None:
        return False
    try:
        client.api.inspect_volume(volume)
    except docker.errors.NotFound:
        return False
    return True


def _stage_one(client, helper: "_Helper", item: StagedImage) -> None:
    env = client.api.inspect_image(item.ref)["Config"].get("Env") or []
    source = client.api.create_container(item.ref, command=["/bin/true"], network_disabled=True,
                                         labels={LABEL_SITE: helper.site})["Id"]
    tmp = f"{NODE_IMAGES_DIR}/{TMP_PREFIX}{item.name}"
    target = helper.create(["python3", "-c", MKDIR, tmp])
    try:
        # The archive goes into the exited helper: the engine mounts its volume for it.
        helper.start_and_wait(target)
        client.api.put_archive(target, tmp, client.api.export(source))
    finally:
        client.api.remove_container(source, force=True)
        client.api.remove_container(target, force=True)
    helper.run(finalize_argv(item, env))


def _say(console, text: str) -> None:
    if console:
        console.print(text)


class _Helper:
    """Short-lived containers of the slurm image with the images volume at
    NODE_IMAGES_DIR: no network, root with only :data:`HELPER_CAPS`."""

    def __init__(self, client, image: str, volume: str, site: str):
        self.client, self.image, self.volume, self.site = client, image, volume, site

    def create(self, argv: list[str]) -> str:
        host = self.client.api.create_host_config(
            binds={self.volume: {"bind": NODE_IMAGES_DIR, "mode": "rw"}}, network_mode="none",
            cap_drop=["ALL"], cap_add=list(HELPER_CAPS), security_opt=["no-new-privileges:true"])
        return self.client.api.create_container(
            self.image, command=argv, entrypoint=[], user="0:0", host_config=host, network_disabled=True,
            labels={LABEL_SITE: self.site})["Id"]

    def start_and_wait(self, cid: str) -> bytes:
        self.client.api.start(cid)
        status = self.client.api.wait(cid).get("StatusCode", 1)
        logs = self.client.api.logs(cid, stdout=True, stderr=False)
        if status != 0:
            err = self.client.api.logs(cid, stdout=False, stderr=True).decode(errors="replace")[-2000:]
            raise OperationError(f"staging images: the helper container exited {status}: {err.strip()}")
        return logs

    def run(self, argv: list[str]) -> bytes:
        cid = self.create(argv)
        try:
            return self.start_and_wait(cid)
        finally:
            self.client.api.remove_container(cid, force=True)
