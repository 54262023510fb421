"""What the engine proxy adds to the hub's engine calls, against its floor in the same run.

Hub path: the docker SDK and ``hubdeploy.hub.dexec`` through a real engine proxy
(``python -m hubdeploy.engineproxy`` on loopback). Floor: the same calls straight to the
engine's unix socket. Runs interleaved (floor first); reports p50 per call and the ratio.

- inspect: ``containers.get`` of a site container (one GET; the proxy also inspects it);
- exec: one ``dexec`` of ``true`` in a site container (find, exec create, hijacked start,
  exit code), the unit of every Slurm command the hub runs.

    python benchmarks/engine_proxy.py [--repeat 30] [--port 8629] [--image IMAGE] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import time
import urllib.request

import docker

SITE = "hdtebench"


def p50(xs: list[float]) -> float:
    return statistics.median(xs)


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--port", type=int, default=8629)
    parser.add_argument("--image", default="hubdeploy-test/debian-python3:bookworm")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    engine = docker.from_env(timeout=60)
    proxy_proc = subprocess.Popen([sys.executable, "-m", "hubdeploy.engineproxy", "--site", SITE,
                                   "--listen", f"127.0.0.1:{args.port}"], stderr=subprocess.DEVNULL)
    project = f"hubdeploy-{SITE}"
    ctl = None
    try:
        for _ in range(100):  # 10 s at most
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{args.port}/_ping", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        ctl = engine.containers.run(args.image, ["sleep", "3600"], detach=True,
                                    name=f"{project}-bench-{secrets.token_hex(3)}",
                                    labels={"hubdeploy.site": SITE, "com.docker.compose.project": project,
                                            "com.docker.compose.service": "slurmctld"})
        via = docker.DockerClient(base_url=f"tcp://127.0.0.1:{args.port}", timeout=60)
        hosts = {"floor": "unix:///var/run/docker.sock", "proxy": f"tcp://127.0.0.1:{args.port}"}
        clients = {"floor": engine, "proxy": via}
        dexec = [sys.executable, "-m", "hubdeploy.hub.dexec", "--project", project, "--service", "slurmctld",
                 "--user", "nobody", "--", "true"]
        res: dict[str, dict[str, list[float]]] = {k: {"floor": [], "proxy": []} for k in ("inspect", "exec")}
        for _ in range(args.repeat):
            for side in ("floor", "proxy"):
                res["inspect"][side].append(timed(lambda: clients[side].containers.get(ctl.id)))
                env = {**os.environ, "DOCKER_HOST": hosts[side]}
                res["exec"][side].append(timed(lambda: subprocess.run(dexec, env=env, check=True)))
        report = {
            k: {"floor_p50_ms": round(p50(v["floor"]) * 1000, 1), "proxy_p50_ms": round(p50(v["proxy"]) * 1000, 1),
                "ratio": round(p50(v["proxy"]) / p50(v["floor"]), 2), "n": args.repeat}
            for k, v in res.items()
        }
        print(json.dumps(report, indent=2))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(report, f, indent=2)
    finally:
        if ctl is not None:
            ctl.remove(force=True)
        proxy_proc.terminate()
        proxy_proc.wait(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
