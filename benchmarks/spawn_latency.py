"""Login-node spawn latency against its floor, measured in the same run.

Hub path: POST /hub/api/users/U/server (profile) -> server ready, and -> first kernel
result (`5*4` over the kernel websocket, through the proxy).
Floor: a plain `docker run` of the same image (`jupyter server`, same network) until its
/api answers, and then the same kernel round trip, straight to the container.

Reports p50 and p95 at concurrency 1 and 10 and the ratio hub/floor. Needs a running
site whose authenticator is the dummy one (``make up`` brings up the example site).

    python benchmarks/spawn_latency.py [--site config/example/site.yaml] [--repeat 8] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import docker
import requests

from benchhomes import remove_home

from hubdeploy import stack
from hubdeploy.smoke.hubclient import HubClient
from hubdeploy.smoke.kernel import ServerClient

ADMIN = "admin"

# jupyterhub-singleuser (jupyter server plus JupyterHub's extension, which imports much of
# JupyterHub), the floor plain jupyter server. Measured beside the runs, so the report can
# say how much of the difference is that program's own start and not hubdeploy's path.
IMPORT_PROBE = "import sys, time; t = time.perf_counter(); __import__(sys.argv[1]); print(time.perf_counter() - t)"
SINGLEUSER, SERVER_APP = "jupyterhub.singleuser", "jupyter_server.serverapp"


def extra_import(import_seconds, repeat: int = 5) -> float:
    """p50 of (import SINGLEUSER - import SERVER_APP), each pair timed back to back."""
    return pct([import_seconds(SINGLEUSER) - import_seconds(SERVER_APP) for _ in range(repeat)], 0.5)


def image_import_seconds(client, image: str, module: str) -> float:
    """How long the image's notebook Python takes to import ``module`` (timed inside)."""
    out = client.containers.run(image, ["python3", "-c", IMPORT_PROBE, module], remove=True, user="1000")
    return float(out.decode().split()[-1])


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    if not values:
        return float("nan")
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def kernel_round_trip(server_url: str, token: str) -> float:
    t0 = time.monotonic()
    client = ServerClient(server_url, token)
    kid = client.start_kernel("python3")
    out, err = client.execute(kid, "print(5 * 4)", timeout=60)
    elapsed = time.monotonic() - t0
    client.delete_kernel(kid)
    if err or out.strip() != "20":
        raise RuntimeError(f"kernel check failed: {out!r} {err!r}")
    return elapsed


def wait_http(url: str, headers: dict, limit: float = 120) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            if requests.get(url, headers=headers, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.05)
    raise TimeoutError(url)


def floor_once(client, image: str, network: str, prefix: str) -> tuple[float, float]:
    token = secrets.token_hex(16)
    name = f"{prefix}-bench-floor-{secrets.token_hex(4)}"
    t0 = time.monotonic()
    c = client.containers.run(
        image,
        ["jupyter", "server", "--ip=0.0.0.0", "--port=8888", "--no-browser"],
        name=name, network=network, detach=True, remove=False,
        environment={"JUPYTER_TOKEN": token},
    )
    try:
        c.reload()
        ip = c.attrs["NetworkSettings"]["Networks"][network]["IPAddress"]
        base = f"http://{ip}:8888/"
        wait_http(base + "api/status", {"Authorization": f"token {token}"})
        ready = time.monotonic() - t0
        return ready, ready + kernel_round_trip(base, token)
    finally:
        c.remove(force=True)


def hub_once(admin: HubClient, base_url: str, user: str, profile: str) -> tuple[float, float]:
    token, _ = admin.create_token(user, scopes=None, expires_in=600, note="benchmark")
    t0 = time.monotonic()
    # A named server: its progress stream is what the hub's own UI follows.
    admin.start_server(user, "bench", profile)
    admin.wait_ready(user, "bench", time.monotonic() + 300)
    ready = time.monotonic() - t0
    total = ready + kernel_round_trip(admin.server_url(user, "bench"), token)
    admin.stop_server(user, "bench", time.monotonic() + 120)
    return ready, total


def run_rounds(fn, concurrency: int, repeat: int) -> tuple[list[float], list[float], list[str]]:
    """Samples of (ready, first result); a failed spawn is counted, never a sample."""
    ready, total, failures = [], [], []

    def attempt(i):
        try:
            return fn(i)
        except Exception as exc:  # noqa: BLE001 - a benchmark reports failures, it does not stop
            return exc

    with ThreadPoolExecutor(concurrency) as pool:
        for _ in range(repeat):
            for result in pool.map(attempt, range(concurrency)):
                if isinstance(result, Exception):
                    failures.append(f"{type(result).__name__}: {str(result)[:200]}")
                else:
                    ready.append(result[0])
                    total.append(result[1])
    return ready, total, failures


def summary(label: str, hub: tuple, floor: tuple) -> dict:
    out = {"case": label, "hub_failures": hub[2], "floor_failures": floor[2]}
    for i, what in enumerate(("ready", "first_result")):
        h50, h95 = pct(hub[i], 0.5), pct(hub[i], 0.95)
        f50, f95 = pct(floor[i], 0.5), pct(floor[i], 0.95)
        out[what] = {
            "hub_p50": round(h50, 3), "hub_p95": round(h95, 3),
            "floor_p50": round(f50, 3), "floor_p95": round(f95, 3),
            "ratio_p50": round(h50 / f50, 2), "ratio_p95": round(h95 / f95, 2), "n": len(hub[i]),
        }
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--site", default="config/example/site.yaml")
    ap.add_argument("--repeat", type=int, default=8, help="spawns at concurrency 1")
    ap.add_argument("--rounds10", type=int, default=2, help="rounds of 10 concurrent spawns")
    ap.add_argument("--json", dest="json_out")
    args = ap.parse_args()

    prep = stack.prepare(Path(args.site))
    if prep.site.hub.authenticator.class_ != "dummy":
        print("the benchmark logs users in through the dummy authenticator's form", file=sys.stderr)
        return 2
    profile = next((p for p in prep.site.profiles if p.default), prep.site.profiles[0])
    image = prep.plans[profile.image].ref
    network = f"{prep.project}-users"
    client = docker.from_env()

    admin = HubClient(prep.url)
    admin.login(ADMIN, str(prep.site.hub.authenticator.config.get("password", "")))
    admin_token, _ = admin.create_token(ADMIN, scopes=None, expires_in=3600, note="benchmark")
    api = HubClient(prep.url, token=admin_token)
    users = [f"bench-{i}" for i in range(10)]
    for u in users:
        api.create_user(u)
        # A server left by an interrupted earlier run would refuse the first start.
        api.stop_server(u, "bench", time.monotonic() + 120)

    results = []
    try:
        # Warm both paths once so the first sample is not an outlier from cold caches.
        floor_once(client, image, network, prep.project)
        hub_once(api, prep.url, users[0], profile.name)
        for conc, repeat in ((1, args.repeat), (10, args.rounds10)):
            floor = run_rounds(lambda i: floor_once(client, image, network, prep.project), conc, repeat)
            hub = run_rounds(lambda i: hub_once(api, prep.url, users[i], profile.name), conc, repeat)
            results.append(summary(f"concurrency {conc}", hub, floor))
        extra = extra_import(lambda m: image_import_seconds(client, image, m))
    finally:
        for u in users:
            try:
                api.delete_user(u)
            except Exception:
                pass
            remove_home(client, prep, u)
        for c in client.containers.list(all=True, filters={"name": f"{prep.project}-bench-floor"}):
            c.remove(force=True)

    for r in results:
        for what in ("ready", "first_result"):
            m = r[what]
            print(
                f"{r['case']:>15} {what:>12}: hub p50 {m['hub_p50']:.2f}s p95 {m['hub_p95']:.2f}s | "
                f"floor p50 {m['floor_p50']:.2f}s p95 {m['floor_p95']:.2f}s | "
                f"ratio p50 {m['ratio_p50']:.2f}x p95 {m['ratio_p95']:.2f}x (n={m['n']})"
            )
        for f in r["hub_failures"] + r["floor_failures"]:
            print(f"{r['case']:>15} failure: {f}")
    ready = results[0]["ready"]
    print(f"jupyterhub-singleuser's extra import over jupyter server (same image): p50 {extra:.2f}s "
          f"of the {ready['hub_p50'] - ready['floor_p50']:+.2f}s between hub and floor at p50")
    results.append({"case": "singleuser_extra_import", "p50": round(extra, 3),
                    "note": f"import {SINGLEUSER} minus import {SERVER_APP} in the profile's image"})
    target = results[0]["ready"]["ratio_p50"]
    print(f"target: p50 within 1.3x of the floor at concurrency 1 -> {target:.2f}x "
          f"({'met' if target <= 1.3 else 'not met'})")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
