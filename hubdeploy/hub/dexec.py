"""Run one command in a compose service's container, like ``docker exec -i``, via the Docker API.

The Slurm backend's ``submit_prefix`` for the cluster hubdeploy runs in the stack::

    python3 -m hubdeploy.hub.dexec --project P --service slurmctld --user jovyan \
        --workdir /tmp [--env NAME]... -- sbatch ...

Why this and not the Slurm client in the hub image: the hub already talks to the Docker
API (login-node servers); the controller's container has the Slurm commands of exactly the
cluster's version, munged with the cluster's key, and the notebook user's account. The hub
image then needs no munge key, no munged to supervise and no user accounts, and a
restarted controller is found again by its compose labels (not by a container id).

``--env NAME`` passes the variable's value from this process's environment (never argv).
Stdin is forwarded and closed; stdout and stderr are the command's; the exit status is the
command's, or 125 when the container cannot be reached (not running, no engine). The
Slurm backend reads that as "unknown", never as "stopped".
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time

UNREACHABLE = 125


def _fail(message: str) -> int:
    print(f"hubdeploy.hub.dexec: {message}", file=sys.stderr)
    return UNREACHABLE


def _container(client, project: str, service: str):
    found = client.containers.list(
        filters={"label": [f"com.docker.compose.project={project}", f"com.docker.compose.service={service}"]}
    )
    return found[0] if found else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m hubdeploy.hub.dexec")
    parser.add_argument("--project", required=True)
    parser.add_argument("--service", required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--env", action="append", default=[], metavar="NAME")
    parser.add_argument("command", nargs="+")
    args = parser.parse_args(argv)

    import docker
    import docker.errors
    from docker.utils.socket import frames_iter

    try:
        client = docker.from_env(timeout=60)
        container = _container(client, args.project, args.service)
        if container is None:
            return _fail(f"service {args.service} of {args.project} is not running")
        env = {n: os.environ[n] for n in args.env if n in os.environ}
        api = client.api
        exec_id = api.exec_create(
            container.id, args.command, stdin=True, stdout=True, stderr=True,
            user=args.user, workdir=args.workdir, environment=env,
        )["Id"]
        sock = api.exec_start(exec_id, socket=True)
    except (docker.errors.DockerException, OSError) as exc:
        return _fail(f"{type(exc).__name__}: {exc}")
    raw = getattr(sock, "_sock", sock)
    try:
        data = b"" if sys.stdin is None or sys.stdin.isatty() else sys.stdin.buffer.read()
        if data:
            raw.sendall(data)
        # EOF on the command's stdin (sbatch reads the script until then).
        raw.shutdown(socket.SHUT_WR)
        for stream, chunk in frames_iter(sock, False):
            out = sys.stdout.buffer if stream == 1 else sys.stderr.buffer
            out.write(chunk)
            out.flush()
    except OSError as exc:
        return _fail(f"connection to the engine lost: {exc}")
    finally:
        sock.close()
    # The exit code is set a moment after the stream ends.
    for _ in range(50):
        info = api.exec_inspect(exec_id)
        if not info.get("Running") and info.get("ExitCode") is not None:
            return int(info["ExitCode"])
        time.sleep(0.1)
    return _fail("the command's exit status never arrived")


if __name__ == "__main__":
    sys.exit(main())
