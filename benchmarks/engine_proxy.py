"""What the engine proxy adds to the hub's engine calls, against its floor in the same run.

Hub path: the docker SDK and ``hubdeploy.hub.dexec`` through a real engine proxy
(``python -m hubdeploy.engineproxy`` on loopback). Floor: the same calls straight to the
engine's unix socket. Runs interleaved (floor first); reports p50 per call and the ratio.

- inspect: ``containers.get`` of a notebook container (one GET; the proxy also inspects it);
- create: the create and remove of a notebook container as the docker backend makes it
  (a body the proxy parses, checks against its shape and serialises again);
- exec: one ``dexec`` of ``squeue`` as a user in the controller (find, exec create,
  hijacked start, exit code), the unit of every Slurm command the hub runs.

``--proxy-src DIR`` runs the proxy from another checkout of hubdeploy (an earlier
commit, for a before/after in the same run): the floor is measured beside each.

    python benchmarks/engine_proxy.py [--repeat 30] [--port 8629] [--image IMAGE]
                                      [--proxy-src DIR] [--json OUT]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import secrets
import statistics
import subprocess
import sys
import tarfile
import time
import urllib.request

import docker

from hubdeploy.contract.labels import COMPOSE_PROJECT, COMPOSE_SERVICE
from hubdeploy.contract.layout import LABEL_SITE, LABEL_USER, SLURMCTLD_SERVICE, USERS_NETWORK, project_name, stack_name
from hubdeploy.contract.names import server_prefix

SITE = "hdtebench"


def p50(xs: list[float]) -> float:
    return statistics.median(xs)


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


FAKE_SQUEUE = b"#!/bin/sh\nexit 0\n"
USER = "20001:20001"


def controller(engine, image: str, project: str):
    """A stand-in for the stack's slurmctld: compose's labels, and a squeue that exits 0."""
    ctl = engine.containers.create(image, ["sleep", "3600"], name=f"{project}-bench-{secrets.token_hex(3)}",
                                   labels={LABEL_SITE: SITE, COMPOSE_PROJECT: project,
                                           COMPOSE_SERVICE: SLURMCTLD_SERVICE})
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("usr/local/bin/squeue")
        info.size, info.mode = len(FAKE_SQUEUE), 0o755
        tar.addfile(info, io.BytesIO(FAKE_SQUEUE))
    ctl.put_archive("/", buf.getvalue())
    ctl.start()
    return ctl


def create_and_remove(client, image: str, project: str) -> None:
    api = client.api
    host = api.create_host_config(network_mode=stack_name(project, USERS_NETWORK), cap_drop=["ALL"],
                                  security_opt=["no-new-privileges:true"], pids_limit=64, init=True, mem_limit=2**28)
    made = api.create_container(image, ["sleep", "1"], name=f"{server_prefix(project)}bench-{secrets.token_hex(3)}",
                                labels={LABEL_SITE: SITE, LABEL_USER: "bench"}, user=USER,
                                environment={"JUPYTERHUB_API_TOKEN": "x" * 32}, host_config=host)
    api.remove_container(made["Id"], force=True)


def start_proxy(port: int, image: str, src: str | None) -> subprocess.Popen:
    env = {**os.environ, **({"PYTHONPATH": src} if src else {})}
    argv = [sys.executable, "-m", "hubdeploy.engineproxy", "--site", SITE, "--listen", f"127.0.0.1:{port}"]
    helptext = subprocess.run([*argv[:3], "--help"], env=env, capture_output=True, text=True).stdout
    if "--image" in helptext:  # checkouts from before the proxy knew the site's images
        argv += ["--image", image]
    return subprocess.Popen(argv, env=env, stderr=subprocess.DEVNULL)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--port", type=int, default=8629)
    parser.add_argument("--image", default="hubdeploy-test/debian-python3:bookworm")
    parser.add_argument("--proxy-src", default=None, help="a hubdeploy checkout to run the proxy from")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    engine = docker.from_env(timeout=60)
    proxy_proc = start_proxy(args.port, args.image, args.proxy_src)
    project = project_name(SITE)
    ctl = nb = net = None
    try:
        for _ in range(100):  # 10 s at most
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{args.port}/_ping", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        net = engine.networks.create(stack_name(project, USERS_NETWORK), labels={COMPOSE_PROJECT: project})
        ctl = controller(engine, args.image, project)
        nb = engine.containers.create(args.image, ["sleep", "3600"], name=f"{server_prefix(project)}bench",
                                      labels={LABEL_SITE: SITE, LABEL_USER: "bench"})
        via = docker.DockerClient(base_url=f"tcp://127.0.0.1:{args.port}", timeout=60)
        hosts = {"floor": "unix:///var/run/docker.sock", "proxy": f"tcp://127.0.0.1:{args.port}"}
        clients = {"floor": engine, "proxy": via}
        dexec = [sys.executable, "-m", "hubdeploy.hub.dexec", "--project", project, "--service", "slurmctld",
                 "--user", USER, "--", "squeue"]
        kinds = ("inspect", "create", "exec")
        res: dict[str, dict[str, list[float]]] = {k: {"floor": [], "proxy": []} for k in kinds}
        for _ in range(args.repeat):
            for side in ("floor", "proxy"):
                res["inspect"][side].append(timed(lambda: clients[side].containers.get(nb.id)))
                res["create"][side].append(timed(lambda: create_and_remove(clients[side], args.image, project)))
                env = {**os.environ, "DOCKER_HOST": hosts[side]}
                res["exec"][side].append(timed(lambda: subprocess.run(dexec, env=env, check=True)))
        report = {
            k: {"floor_p50_ms": round(p50(v["floor"]) * 1000, 1), "proxy_p50_ms": round(p50(v["proxy"]) * 1000, 1),
                "added_ms": round((p50(v["proxy"]) - p50(v["floor"])) * 1000, 1),
                "ratio": round(p50(v["proxy"]) / p50(v["floor"]), 2), "n": args.repeat}
            for k, v in res.items()
        }
        report["proxy_src"] = args.proxy_src or "this checkout"
        print(json.dumps(report, indent=2))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(report, f, indent=2)
    finally:
        for c in (ctl, nb):
            if c is not None:
                c.remove(force=True)
        if net is not None:
            net.remove()
        proxy_proc.terminate()
        proxy_proc.wait(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
