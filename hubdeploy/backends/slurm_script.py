"""The Slurm job script of a notebook server: validated options in, fixed text out.

Pure functions, no Slurm needed. :func:`job_options` turns a compute profile (one of
hub.json's ``spawner.profiles``, :class:`~hubdeploy.contract.hubjson.Profile`, with the
spawner's effective ``cpu`` and ``mem_limit``) into :class:`JobOptions`, refusing anything
that is malformed or over the profile's ``slurm.limits``. :func:`render` turns those options into the script.

What the script contains and what it does not:

- ``#SBATCH`` lines and the runtime wrapper are built only from :class:`JobOptions`, whose
  every field matched a strict pattern (names, paths, numbers) and is shell-quoted anyway;
  the one unquoted word (:class:`Shell`) is this module's fixed text for the job's tmp
  under Charliecloud, which expands ``$SLURM_JOB_ID`` and nothing else.
- No user data and no secret: the notebook command arrives as the script's arguments
  (``sbatch ... /dev/stdin ARG...``, so ``"$@"``) and the API token and the hub's other
  variables through ``sbatch --export=NAME,...`` from the submitting process's
  environment. The script file Slurm stores (``scontrol write batch_script``) is the
  same for every user of a profile.

On the node the script gets a port and reports it, then execs the runtime:

1. On the stack's own cluster (``node_agent``), the node's root agent hands the job a
   port below 1024, which no user's process can bind, and relays it to the unix socket
   the server listens on in the job's private directory (images/slurm/node-agent.py):
   nobody else can answer for the server, before, during or after the job. Elsewhere
   ``python3`` binds port 0, connects to itself and closes the accepted side first, so
   the port sits in TIME_WAIT: the kernel hands it to no other ``bind(0)`` or outgoing
   connection for a minute, while a server that sets SO_REUSEADDR (tornado, hence
   jupyter_server) binds it at once. That closes the pick-then-bind race of "find a free
   port, close it, hope", but not against a user who binds the port on purpose; a site's
   own cluster keeps users' jobs apart with its own means (README: Compute-node limits).
2. ``scontrol update JobId=$SLURM_JOB_ID Comment=hubdeploy:port=N``: the backend reads the
   port from ``squeue %k`` and the host from Slurm's own BatchHost, never from the job.
3. ``HUBDEPLOY_PORT=N`` and ``JUPYTERHUB_SERVICE_URL`` rewritten to that port (which
   jupyterhub-singleuser listens on, or, with the agent, the socket), then ``exec`` the
   runtime and ``"$@"``; with the agent under a launcher that is a subreaper, so what the
   server daemonizes (``setsid -f``, a double fork) stays in the job: counted against its
   memory and ended with it.
"""

from __future__ import annotations

import math
import re
import shlex
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hubdeploy.contract.hubjson import Profile, ProfileSlurm, Runtime
from hubdeploy.contract.layout import NODE_AGENT_SOCKET, NODE_JOBS_DIR, NODE_SERVER_SOCKET
from hubdeploy.contract.values import ENV_NAME, SLURM_NAME_PATTERN, OptionError, check_limits, parse_time

__all__ = ["ENV_NAME", "JobOptions", "OptionError", "job_options", "parse_port_comment", "parse_time", "render"]

RUNTIMES = typing.get_args(Runtime)

_NAME = re.compile(SLURM_NAME_PATTERN)
_PATH = re.compile(r"^/[A-Za-z0-9_./+-]{0,1023}$")
_IMAGE = re.compile(r"^[A-Za-z0-9_/][A-Za-z0-9_./:@+-]{0,511}$")
_PROGRAM = re.compile(r"^[A-Za-z0-9_./+-]{1,1024}$")

PORT_COMMENT_PREFIX = "hubdeploy:port="


@dataclass(frozen=True)
class Bind:
    source: str
    target: str
    read_only: bool = True


@dataclass(frozen=True)
class JobOptions:
    """What a job asks Slurm for and how it runs the server. Every field is validated."""

    cpus: int = 1
    mem_mib: int | None = None
    time_minutes: int | None = None
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    gpus: int = 0
    runtime: str = "native"
    image: str | None = None
    binds: tuple[Bind, ...] = ()
    home_dir: str | None = None  # bound at its own path (charliecloud)
    path_prepend: tuple[str, ...] = ()
    export: tuple[str, ...] = ()  # names of the variables sbatch exports (podman-hpc passes them on)
    python: str = "python3"
    scontrol: str = "scontrol"
    # The stack's own cluster: ports from the node's agent, servers on a unix socket.
    node_agent: bool = False


def _name(value: str | None, key: str, pattern: re.Pattern = _NAME) -> str | None:
    if value is None or value == "":
        return None
    if not pattern.match(value):
        raise OptionError(f"slurm.{key} {value!r} is not a valid Slurm value")
    return value


def job_options(profile: Profile, export: Sequence[str] = (), node_agent: bool = False,
                **node: str) -> JobOptions:
    """Validate a compute profile and return its :class:`JobOptions`; :class:`OptionError` if not.

    ``profile.slurm`` holds partition, account, qos, time, gpus, runtime, image,
    path_prepend and ``limits``; ``cpu`` (cores) and ``mem_limit`` (bytes) are the
    profile's own, as the spawner made them effective. ``export`` names the variables to
    export; ``node`` may set ``python`` and ``scontrol`` (programs on the compute nodes).
    The types are hub.json's, checked when it was read; the values are checked here
    against Slurm's own patterns, since a user's choices are written into them.
    """
    s = profile.slurm
    if s is None:
        raise OptionError("the profile has no slurm section: it runs on a login node")
    resources = _resources(profile, s)
    check_limits(profile.name, s.limits, **resources)
    runtime, image, binds = _runtime(profile, s)
    _check_words(s, export, node)
    mem = resources["mem_bytes"]
    return JobOptions(
        cpus=resources["cpus"],
        mem_mib=None if mem is None else max(1, math.ceil(mem / 2**20)),
        time_minutes=resources["time_minutes"],
        partition=_name(s.partition, "partition"),
        account=_name(s.account, "account"),
        qos=_name(s.qos, "qos"),
        gpus=resources["gpus"],
        runtime=runtime,
        image=image,
        binds=binds,
        home_dir=_name(s.home_dir, "home_dir", _PATH),
        path_prepend=s.path_prepend,
        export=tuple(export),
        node_agent=node_agent,
        **node,
    )


def _resources(profile: Profile, s: ProfileSlurm) -> dict[str, Any]:
    """Cores, memory (bytes), time (minutes) and GPUs the job asks for, well-formed."""
    if profile.cpu is not None and profile.cpu < 0:
        raise OptionError(f"cpu {profile.cpu!r} must be a non-negative number of cores")
    if profile.mem_limit is not None and profile.mem_limit < 0:
        raise OptionError(f"mem_limit {profile.mem_limit!r} must be a non-negative number")
    if s.gpus < 0:
        raise OptionError(f"slurm.gpus {s.gpus!r} must be a non-negative number")
    return {
        # Slurm allocates whole cores: 0.5 CPU becomes 1.
        "cpus": max(1, math.ceil((profile.cpu or 0) - 1e-9)),
        "mem_bytes": profile.mem_limit or None,
        "time_minutes": None if s.time in (None, "") else parse_time(s.time),
        "gpus": s.gpus,
    }


def _runtime(profile: Profile, s: ProfileSlurm) -> tuple[str, str | None, tuple[Bind, ...]]:
    """The runtime, and for a container runtime its image and bind mounts."""
    if s.runtime == "native":
        return s.runtime, None, ()
    image = s.image or profile.image_ref
    if not _IMAGE.match(image):
        raise OptionError(f"runtime {s.runtime} needs an image (slurm.image or image_ref), got {image!r}")
    if s.runtime == "charliecloud" and not (s.image and _PATH.match(s.image)):
        raise OptionError(f"runtime charliecloud needs slurm.image, the image's path on the nodes, got {s.image!r}")
    binds = []
    for vol in profile.volumes:
        if not (_PATH.match(vol.source) and _PATH.match(vol.target)):
            raise OptionError(f"volume {vol.source!r} -> {vol.target!r}: a batch job binds absolute host paths only")
        binds.append(Bind(vol.source, vol.target, vol.read_only))
    return s.runtime, image, tuple(binds)


def _check_words(s: ProfileSlurm, export: Sequence[str], node: Mapping[str, str]) -> None:
    """PATH entries, exported names and node programs: each a plain word or path."""
    for p in s.path_prepend:
        if not _PATH.match(p):
            raise OptionError(f"slurm.path_prepend entry {p!r} is not an absolute path")
    for n in export:
        if not ENV_NAME.match(n):
            raise OptionError(f"environment variable name {n!r} cannot be exported")
    for key, program in node.items():
        if not _PROGRAM.match(program):
            raise OptionError(f"{key} {program!r} is not a program name or path")


# -- rendering --------------------------------------------------------------------------

# Fixed text: reserve a port (see the module docstring) and print it.
_RESERVE_PORT = (
    "import socket\n"
    "s = socket.socket()\n"
    "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    's.bind(("", 0))\n'
    "s.listen(1)\n"
    "port = s.getsockname()[1]\n"
    'c = socket.create_connection(("127.0.0.1", port))\n'
    "a, _ = s.accept()\n"
    "a.close()\n"
    "c.close()\n"
    "s.close()\n"
    "print(port)\n"
)


def _sbatch_lines(o: JobOptions) -> list[str]:
    q = shlex.quote
    lines = [
        "#SBATCH --nodes=1",
        "#SBATCH --ntasks=1",
        f"#SBATCH --cpus-per-task={o.cpus}",
    ]
    if o.mem_mib:
        lines.append(f"#SBATCH --mem={o.mem_mib}M")
    if o.time_minutes:
        lines.append(f"#SBATCH --time={o.time_minutes}")
    for key in ("partition", "account", "qos"):
        value = getattr(o, key)
        if value:
            lines.append(f"#SBATCH --{key}={q(value)}")
    if o.gpus:
        lines.append(f"#SBATCH --gres=gpu:{o.gpus}")
    return lines


class Shell(str):
    """A word :func:`render` writes as it is, unquoted: fixed text of this module that
    expands a Slurm variable (``"$SLURM_JOB_ID"``), never a value from a profile."""


def runtime_argv(o: JobOptions) -> list[str]:
    """The words before ``"$@"`` that run the server in the profile's runtime."""
    if o.runtime == "native":
        return []
    if o.runtime == "charliecloud":
        return charliecloud_argv(o)
    if o.runtime == "apptainer":
        # --cleanenv: none of the node's environment (its modules' PYTHONPATH, LD_*)
        # leaks into the image; the server's own variables cross as APPTAINERENV_*
        # (render exports them), never as values in an argv.
        argv = ["apptainer", "exec", "--cleanenv"]
        if o.gpus:
            argv.append("--nv")
        for b in o.binds:
            argv += [
                "--bind",
                f"{b.source}:{b.target}" + (":ro" if b.read_only else ""),
            ]
        return [*argv, o.image]
    if o.runtime == "podman-hpc":
        # A separate process tree: the server's variables must be named to cross over.
        argv = ["podman-hpc", "run", "--rm", "--net=host"]
        if o.gpus:
            argv.append("--gpu")
        for b in o.binds:
            argv += ["-v", f"{b.source}:{b.target}" + (":ro" if b.read_only else "")]
        for n in passed_names(o):
            argv += ["-e", n]
        return [*argv, o.image]
    if o.runtime == "shifter":
        image = o.image if o.image.startswith(("docker:", "/")) else f"docker:{o.image}"
        argv = ["shifter", f"--image={image}"]
        if o.gpus:
            argv.append("--module=gpu")
        for b in o.binds:
            argv.append(f"--volume={b.source}:{b.target}" + (":ro" if b.read_only else ""))
        return argv
    raise OptionError(f"unknown runtime {o.runtime!r}")  # hub.json's reader refuses it first


def passed_names(o: JobOptions) -> list[str]:
    """The variables a runtime with an environment of its own must be told to pass on:
    those sbatch exports and the two the script sets."""
    return sorted({*o.export, "HUBDEPLOY_PORT", "JUPYTERHUB_SERVICE_URL"})


def _apptainer_env(o: JobOptions) -> list[str]:
    # Set ones only (set -u): an unset name stays unset inside.
    return [f'[ -z "${{{n}+x}}" ] || export APPTAINERENV_{n}="${n}"' for n in passed_names(o)]


def charliecloud_argv(o: JobOptions) -> list[str]:
    """``ch-run`` (Charliecloud) on a flattened image directory or SquashFS file.

    The job's whole environment passes through (JUPYTERHUB_*, HUBDEPLOY_PORT, SLURM_*);
    ``--set-env`` puts the image's own ENV (its PATH, VIRTUAL_ENV) on top, from the
    image's ``/ch/environment``. ``-b`` binds a path at another path, read-write as far
    as the node's own mount allows: ch-run 0.31 has no read-only bind, so a read-only
    volume is one the node mounts read-only (render.slurmservices does, on the stack's
    cluster). With the node agent, the jobs' directory is bound at its own path (the
    server's socket keeps its name on the node, where the agent relays to it) and the
    job's private tmp at /tmp: ch-run unsets TMPDIR. No GPU flag: ch-run binds the
    node's /dev whole, and the driver's libraries are a site's matter (docs/runtime-plan.md).
    """
    argv = ["ch-run", "--set-env"]
    if o.home_dir:
        argv += ["-b", f"{o.home_dir}:{o.home_dir}"]
    for b in o.binds:
        argv += ["-b", f"{b.source}:{b.target}"]
    if o.node_agent:
        argv += ["-b", f"{NODE_JOBS_DIR}:{NODE_JOBS_DIR}", "-b", Shell(f'"{NODE_JOBS_DIR}/$SLURM_JOB_ID/tmp:/tmp"')]
    return [*argv, o.image, "--"]


# Fixed text: ask the node's agent for this job's port (it checks the caller owns the job).
_AGENT_PORT = (
    "import socket, sys\n"
    "s = socket.socket(socket.AF_UNIX)\n"
    "s.connect(sys.argv[1])\n"
    's.sendall(f"serve {sys.argv[2]}\\n".encode())\n'
    "answer = s.makefile().readline().strip()\n"
    "if not answer.isdigit():\n"
    '    sys.exit(f"hubdeploy: the node agent gives no port: {answer}")\n'
    "print(answer)\n"
)
# Fixed text: run the server as a child of a subreaper that reaps whatever the server
# orphans, so a double fork or setsid stays in the job's process tree, and exit with the
# server's status.
_LAUNCH = (
    "import ctypes, os, signal, subprocess, sys\n"
    "ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER\n"
    "child = subprocess.Popen(sys.argv[1:])\n"
    "for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):\n"
    "    signal.signal(sig, lambda n, _: child.send_signal(n))\n"
    "while True:\n"
    "    try:\n"
    "        pid, status = os.wait()\n"
    "    except ChildProcessError:\n"
    "        sys.exit(1)\n"
    "    if pid == child.pid:\n"
    "        sys.exit(os.waitstatus_to_exitcode(status) % 256)\n"
)


def render(o: JobOptions) -> str:
    """The job script for ``o`` (deterministic: the same options give the same bytes)."""
    q = shlex.quote
    lines = [
        "#!/bin/bash",
        "# hubdeploy notebook server job (generated; no user data, no secrets)",
    ]
    lines += _sbatch_lines(o)
    lines += ["set -euo pipefail", ""]
    lines += _agent_port(o) if o.node_agent else _reserved_port(o)
    if o.path_prepend:
        lines.append(f'export PATH={q(":".join(o.path_prepend))}"${{PATH:+:$PATH}}"')
    if o.runtime == "apptainer":
        lines += _apptainer_env(o)
    argv = runtime_argv(o)
    words = " ".join(w if isinstance(w, Shell) else q(w) for w in argv)
    run = f'{words + " " if argv else ""}"$@"'
    if o.node_agent:
        sock = f"{NODE_JOBS_DIR}/$SLURM_JOB_ID/{NODE_SERVER_SOCKET}"
        lines.append(f'exec {q(o.python)} -c {q(_LAUNCH)} {run} --ServerApp.sock="{sock}"')
    else:
        lines.append(f"exec {run}")
    return "\n".join(lines) + "\n"


def _report_port(o: JobOptions) -> list[str]:
    return [
        "# The backend reads the port back from the job's comment (squeue %k).",
        f'{shlex.quote(o.scontrol)} update JobId="$SLURM_JOB_ID" Comment="{PORT_COMMENT_PREFIX}$HUBDEPLOY_PORT"',
    ]


def _reserved_port(o: JobOptions) -> list[str]:
    return [
        "# A port of this node that nobody else is handed for a minute (TIME_WAIT).",
        f"HUBDEPLOY_PORT=$({shlex.quote(o.python)} -c {shlex.quote(_RESERVE_PORT)})",
        "export HUBDEPLOY_PORT",
        *_report_port(o),
        'if [ -n "${JUPYTERHUB_SERVICE_URL:-}" ]; then',
        '  export JUPYTERHUB_SERVICE_URL="${JUPYTERHUB_SERVICE_URL%%://*}://0.0.0.0:$HUBDEPLOY_PORT${JUPYTERHUB_SERVICE_PREFIX:-/}"',
        "fi",
    ]


def _agent_port(o: JobOptions) -> list[str]:
    q = shlex.quote
    return [
        "# A port only root can bind on this node, relayed by its agent to the server's socket",
        "# in this job's private directory: nobody else can ever answer on it.",
        f'HUBDEPLOY_PORT=$({q(o.python)} -c {q(_AGENT_PORT)} {q(NODE_AGENT_SOCKET)} "$SLURM_JOB_ID")',
        "export HUBDEPLOY_PORT",
        *_report_port(o),
        "# The server listens on the socket; jupyter_server takes --sock only with its default port.",
        'export JUPYTERHUB_SERVICE_URL="http://127.0.0.1:8888${JUPYTERHUB_SERVICE_PREFIX:-/}"',
    ]


def parse_port_comment(comment: str) -> int | None:
    """The port in a job comment ``hubdeploy:port=N``; None when absent or not a port."""
    comment = (comment or "").strip()
    if not comment.startswith(PORT_COMMENT_PREFIX):
        return None
    digits = comment[len(PORT_COMMENT_PREFIX) :]
    if not digits.isdigit() or len(digits) > 5:
        return None
    port = int(digits)
    # Below 1024 too: the stack's nodes hand notebooks ports only root can bind there.
    return port if 1 <= port <= 65535 else None
