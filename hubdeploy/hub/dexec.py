"""Run one command in a compose service's container, like ``docker exec -i``, via the Docker API.

The Slurm backend's ``submit_prefix`` for the cluster hubdeploy runs in the stack::

    python3 -m hubdeploy.hub.dexec --project P --service slurmctld --user jovyan \
        --workdir /tmp [--env NAME]... -- sbatch ...

Why this and not the Slurm client in the hub image: the hub already talks to the Docker
API (login-node servers; in the stack through the engine proxy, DOCKER_HOST tcp://); the controller's container has the Slurm commands of exactly the
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
import http.client
import json
import os
import socket
import struct
import sys
import time
from urllib.parse import quote

from hubdeploy.contract.labels import compose_filter
from hubdeploy.contract.layout import DEXEC_UNREACHABLE as UNREACHABLE

DEFAULT_SOCKET = "/var/run/docker.sock"
# Engine API requests (list, create, inspect); the command's own stream has no timeout:
# the Slurm backend bounds the whole command and kills this process.
API_TIMEOUT = 60


class EngineError(Exception):
    """The engine could not be reached or refused a request."""


def _fail(message: str) -> int:
    print(f"hubdeploy.hub.dexec: {message}", file=sys.stderr)
    return UNREACHABLE


def engine_address() -> str | tuple[str, int] | None:
    """Where the engine is, from DOCKER_HOST (default /var/run/docker.sock): a unix
    socket's path, or (host, port) for plain tcp (the stack's engine proxy). None for any
    other kind of address (TLS, ssh), which docker-py handles."""
    host = os.environ.get("DOCKER_HOST") or f"unix://{DEFAULT_SOCKET}"
    if host.startswith("unix://"):
        return host[len("unix://"):]
    if host.startswith("tcp://") and not os.environ.get("DOCKER_TLS_VERIFY"):
        netloc = host[len("tcp://"):].split("/", 1)[0]
        name, _, port = netloc.rpartition(":")
        return (name, int(port)) if name and port.isdigit() else (netloc, 2375)
    return None


def _connect(address: str | tuple[str, int], timeout: float | None) -> socket.socket:
    if isinstance(address, str):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(address)
        return sock
    return socket.create_connection(address, timeout=timeout)


class _EngineConnection(http.client.HTTPConnection):
    def __init__(self, address: str | tuple[str, int], timeout: float | None):
        super().__init__("docker", timeout=timeout)
        self._address = address

    def connect(self):
        self.sock = _connect(self._address, self.timeout)


class Engine:
    """The four Engine API calls an exec needs, over the unix socket or plain tcp, with
    the standard library only.

    Why not docker-py here: this runs once per Slurm command (sbatch, every squeue poll,
    scancel), and importing docker-py (requests, urllib3) took 0.2 s of a 0.3 s command on
    an idle machine and over 0.5 s under load. docker-py stays the path for engines that are
    neither.
    """

    def __init__(self, address: str | tuple[str, int]):
        self.address = address

    def _request(self, method: str, url: str, body: dict | None = None) -> tuple[int, bytes]:
        conn = _EngineConnection(self.address, API_TIMEOUT)
        try:
            payload = None if body is None else json.dumps(body).encode()
            headers = {"Content-Type": "application/json"} if payload is not None else {}
            conn.request(method, url, body=payload, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def _json(self, method: str, url: str, body: dict | None = None, ok=(200, 201)):
        status, data = self._request(method, url, body)
        if status not in ok:
            raise EngineError(f"{method} {url.split('?')[0]}: {status} {data.decode(errors='replace').strip()[:300]}")
        return json.loads(data or b"null")

    def find(self, project: str, service: str) -> str | None:
        labels = compose_filter(project, service)
        found = self._json("GET", "/containers/json?filters=" + quote(json.dumps({"label": labels})))
        return found[0]["Id"] if found else None

    def exec_create(self, container: str, command: list[str], user: str, workdir: str | None,
                    env: dict[str, str]) -> str:
        body = {
            "AttachStdin": True, "AttachStdout": True, "AttachStderr": True, "Tty": False,
            "Cmd": command, "User": user, "Env": [f"{k}={v}" for k, v in env.items()],
        }
        if workdir:
            body["WorkingDir"] = workdir
        return self._json("POST", f"/containers/{quote(container)}/exec", body)["Id"]

    def exec_start(self, exec_id: str) -> tuple[socket.socket, bytes]:
        """Start the exec; the raw (hijacked) connection and the bytes already read past
        the response head (the first frames may arrive with it)."""
        sock = _connect(self.address, API_TIMEOUT)
        body = json.dumps({"Detach": False, "Tty": False}).encode()
        sock.sendall(
            (f"POST /exec/{quote(exec_id)}/start HTTP/1.1\r\nHost: docker\r\n"
             "Content-Type: application/json\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n"
             f"Content-Length: {len(body)}\r\n\r\n").encode() + body
        )
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                sock.close()
                raise EngineError("the engine closed the connection before answering the exec start")
            buf += chunk
        head, rest = buf.split(b"\r\n\r\n", 1)
        status = int(head.split(None, 2)[1])
        if status not in (101, 200):  # 101: upgraded; older engines answer 200 and stream
            sock.close()
            raise EngineError(f"exec start: {status} {rest.decode(errors='replace').strip()[:300]}")
        sock.settimeout(None)
        return sock, rest

    def exec_exit_code(self, exec_id: str) -> int | None:
        info = self._json("GET", f"/exec/{quote(exec_id)}/json")
        return None if info.get("Running") or info.get("ExitCode") is None else int(info["ExitCode"])


def _frames(sock: socket.socket, buf: bytes):
    """(stream, bytes) of the engine's multiplexed stream: an 8-byte header (stream 1 or
    2, three zero bytes, the big-endian length), then the payload."""
    while True:
        while len(buf) < 8:
            chunk = sock.recv(65536)
            if not chunk:
                return  # the command's output ended
            buf += chunk
        stream, size = buf[0], struct.unpack(">I", buf[4:8])[0]
        while len(buf) < 8 + size:
            chunk = sock.recv(65536)
            if not chunk:
                raise OSError("stream cut inside a frame")
            buf += chunk
        yield stream, buf[8:8 + size]
        buf = buf[8 + size:]


def _stdin_bytes() -> bytes:
    return b"" if sys.stdin is None or sys.stdin.isatty() else sys.stdin.buffer.read()


def _run_stdlib(address: str | tuple[str, int], args, env: dict[str, str]) -> int:
    engine = Engine(address)
    try:
        container = engine.find(args.project, args.service)
        if container is None:
            return _fail(f"service {args.service} of {args.project} is not running")
        exec_id = engine.exec_create(container, args.command, args.user, args.workdir, env)
        sock, rest = engine.exec_start(exec_id)
    except (EngineError, OSError, ValueError) as exc:
        return _fail(f"{type(exc).__name__}: {exc}")
    failed = _relay(sock, sock, _frames(sock, rest))
    if failed is not None:
        return failed
    try:
        return _exit_code(lambda: engine.exec_exit_code(exec_id))
    except (EngineError, OSError, ValueError) as exc:
        return _fail(f"{type(exc).__name__}: {exc}")


def _relay(raw, closing, frames) -> int | None:
    """Send our stdin to the command, then EOF, and copy its output frames to ours.
    None when done; the exit status for a lost connection."""
    try:
        data = _stdin_bytes()
        if data:
            raw.sendall(data)
        # EOF on the command's stdin (sbatch reads the script until then).
        raw.shutdown(socket.SHUT_WR)
        for stream, chunk in frames:
            out = sys.stdout.buffer if stream == 1 else sys.stderr.buffer
            out.write(chunk)
            out.flush()
    except OSError as exc:
        return _fail(f"connection to the engine lost: {exc}")
    finally:
        closing.close()
    return None


def _exit_code(ask) -> int:
    """The exit status is set a moment after the stream ends: ask at once, then every
    20 ms (``ask()`` answers None while the command still runs), for 5 s at most."""
    for _ in range(250):
        code = ask()
        if code is not None:
            return code
        time.sleep(0.02)
    return _fail("the command's exit status never arrived")


def _run_docker_py(args, env: dict[str, str]) -> int:
    """The same through docker-py, for engines that are neither a unix socket nor plain
    tcp (DOCKER_HOST tcp:// with TLS, ssh://)."""
    import docker
    import docker.errors
    from docker.utils.socket import frames_iter

    try:
        client = docker.from_env(timeout=API_TIMEOUT)
        found = client.containers.list(filters={"label": compose_filter(args.project, args.service)})
        if not found:
            return _fail(f"service {args.service} of {args.project} is not running")
        api = client.api
        exec_id = api.exec_create(
            found[0].id, args.command, stdin=True, stdout=True, stderr=True,
            user=args.user, workdir=args.workdir, environment=env,
        )["Id"]
        sock = api.exec_start(exec_id, socket=True)
    except (docker.errors.DockerException, OSError) as exc:
        return _fail(f"{type(exc).__name__}: {exc}")
    failed = _relay(getattr(sock, "_sock", sock), sock, frames_iter(sock, False))
    if failed is not None:
        return failed

    def ask() -> int | None:
        info = api.exec_inspect(exec_id)
        return None if info.get("Running") or info.get("ExitCode") is None else int(info["ExitCode"])

    try:
        return _exit_code(ask)
    except (docker.errors.DockerException, OSError) as exc:
        return _fail(f"{type(exc).__name__}: {exc}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m hubdeploy.hub.dexec")
    parser.add_argument("--project", required=True)
    parser.add_argument("--service", required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--env", action="append", default=[], metavar="NAME")
    parser.add_argument("command", nargs="+")
    args = parser.parse_args(argv)
    env = {n: os.environ[n] for n in args.env if n in os.environ}
    address = engine_address()
    return _run_stdlib(address, args, env) if address else _run_docker_py(args, env)


if __name__ == "__main__":
    sys.exit(main())
