"""Many users pressing Start at once, against the same number of plain `docker run`s.

Hub path: N scripted users, each logged in through the dummy authenticator's form with
its own token, POST their server (a named one, as the hub's UI does) at the same
instant; each is timed from its request to the first kernel result (`5*4` over the
kernel websocket, through the proxy). Failures are counted with the hub's reason.
Floor: N concurrent `docker run`s of the same image (`jupyter server`, the same users
network) until /api/status answers, then the same kernel round trip straight to the
container. At each level the floor and the hub run one after the other (interleaved,
floor first), so both see the same machine. While the hub storm runs, a sampler times
GET /hub/api/user every 0.25 s: the hub's responsiveness under the storm.

Reports failures, p50, p95, max and the hub/floor ratios per level, and writes JSON to
benchmarks/results/spawn_storm.json. Loads only the stack's own containers on loopback;
every loop is bounded in count and time; removes its users, their homes and its
containers. Needs a running site whose authenticator is the dummy one.

    python benchmarks/spawn_storm.py --site SITE.yaml [--levels 10,50,100]
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import docker
import requests

from benchhomes import remove_home
from spawn_latency import ADMIN, kernel_round_trip, pct, wait_http

from hubdeploy import stack
from hubdeploy.smoke.hubclient import HubClient

SERVER = "storm"
RESULTS = Path(__file__).parent / "results" / "spawn_storm.json"
SAMPLE_EVERY = 0.25


def floor_start(client, image: str, network: str, prefix: str, limit: float) -> tuple[float, float]:
    """(seconds to /api/status, seconds to the first kernel result) of one plain server."""
    token = secrets.token_hex(16)
    t0 = time.monotonic()
    c = client.containers.run(
        image, ["jupyter", "server", "--ip=0.0.0.0", "--port=8888", "--no-browser"],
        name=f"{prefix}-storm-floor-{secrets.token_hex(4)}", network=network, detach=True,
        environment={"JUPYTER_TOKEN": token},
    )
    try:
        c.reload()
        base = f"http://{c.attrs['NetworkSettings']['Networks'][network]['IPAddress']}:8888/"
        wait_http(base + "api/status", {"Authorization": f"token {token}"}, limit=limit)
        ready = time.monotonic() - t0
        return ready, ready + kernel_round_trip(base, token)
    finally:
        c.remove(force=True)


class StormUser:
    """One scripted user: its own login session and API token."""

    def __init__(self, url: str, name: str):
        self.name = name
        session = HubClient(url)
        session.login(name, "")
        self.token, _ = session.create_token(name, scopes=None, expires_in=3600, note="spawn storm")
        session.close()
        self.api = HubClient(url, token=self.token, request_timeout=120)

    def start(self, profile: str, limit: float) -> tuple[float, float]:
        """(seconds to ready, seconds to the first kernel result) from the spawn request."""
        t0 = time.monotonic()
        self.api.api("POST", f"users/{self.name}/servers/{SERVER}", json={"profile": profile}, ok=(201, 202))
        self.api.wait_ready(self.name, SERVER, t0 + limit)
        ready = time.monotonic() - t0
        return ready, ready + kernel_round_trip(self.api.server_url(self.name, SERVER), self.token)


def storm(fn, n: int, limit: float) -> tuple[list[float], list[float], list[str], float]:
    """Run ``fn(i)`` for i < n at once; (ready, first result, failures, wall seconds)."""
    barrier = threading.Barrier(n)

    def one(i):
        try:
            barrier.wait(timeout=60)
            return fn(i)
        except Exception as exc:  # noqa: BLE001 - a benchmark counts failures, it does not stop
            return exc

    t0 = time.monotonic()
    with ThreadPoolExecutor(n) as pool:
        results = list(pool.map(one, range(n), timeout=limit + 120))
    wall = time.monotonic() - t0
    ready = [r[0] for r in results if not isinstance(r, Exception)]
    total = [r[1] for r in results if not isinstance(r, Exception)]
    failures = [f"{type(r).__name__}: {str(r)[:300]}" for r in results if isinstance(r, Exception)]
    return ready, total, failures, wall


class Sampler(threading.Thread):
    """Times GET /hub/api/user every SAMPLE_EVERY s until stopped (at most ``limit`` s)."""

    def __init__(self, url: str, token: str, limit: float):
        super().__init__(daemon=True)
        self.url, self.token, self.limit = url.rstrip("/") + "/hub/api/user", token, limit
        self.latencies: list[float] = []
        self.errors = 0
        self.done = threading.Event()

    def run(self):
        deadline = time.monotonic() + self.limit
        headers = {"Authorization": f"token {self.token}"}
        with requests.Session() as http:
            while not self.done.is_set() and time.monotonic() < deadline:
                t0 = time.monotonic()
                try:
                    ok = http.get(self.url, headers=headers, timeout=30).status_code == 200
                except requests.RequestException:
                    ok = False
                if ok:
                    self.latencies.append(time.monotonic() - t0)
                else:
                    self.errors += 1
                self.done.wait(SAMPLE_EVERY)


def stats(values: list[float]) -> dict:
    return {"p50": round(pct(values, 0.5), 3), "p95": round(pct(values, 0.95), 3),
            "max": round(max(values), 3) if values else float("nan"), "n": len(values)}


def ratio(a: float, b: float) -> float:
    return round(a / b, 2) if b else float("nan")


def level_summary(n: int, hub, floor, api_latency: Sampler) -> dict:
    out = {"level": n, "hub_failures": hub[2], "floor_failures": floor[2],
           "hub_wall_s": round(hub[3], 2), "floor_wall_s": round(floor[3], 2),
           "hub_api_user_latency": {**stats(api_latency.latencies), "errors": api_latency.errors}}
    for i, what in enumerate(("ready", "first_result")):
        h, f = stats(hub[i]), stats(floor[i])
        out[what] = {"hub": h, "floor": f,
                     "ratio": {q: ratio(h[q], f[q]) for q in ("p50", "p95", "max")}}
    return out


def stop_all(users: list[StormUser], limit: float) -> None:
    def stop(u):
        try:
            u.api.stop_server(u.name, SERVER, time.monotonic() + limit)
        except Exception as exc:  # noqa: BLE001 - cleanup goes on; the user is deleted later
            print(f"stopping {u.name}'s server: {exc}", file=sys.stderr)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(stop, users, timeout=limit + 60))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--site", default="config/example/site.yaml")
    ap.add_argument("--levels", default="10,50,100", help="concurrency levels, comma-separated")
    ap.add_argument("--limit", type=float, default=900, help="seconds one start may take before it counts as failed")
    ap.add_argument("--json", dest="json_out", default=str(RESULTS))
    args = ap.parse_args()
    levels = [int(x) for x in args.levels.split(",") if x.strip()]
    if not levels or min(levels) < 1 or max(levels) > 500:
        print("--levels: whole numbers from 1 to 500", file=sys.stderr)
        return 2

    prep = stack.prepare(Path(args.site))
    if prep.site.hub.authenticator.class_ != "dummy":
        print("the benchmark logs users in through the dummy authenticator's form", file=sys.stderr)
        return 2
    profile = next((p for p in prep.site.profiles if p.default), prep.site.profiles[0])
    image = prep.plans[profile.image].ref
    network = f"{prep.project}-users"
    client = docker.from_env(timeout=300)

    admin = HubClient(prep.url)
    admin.login(ADMIN, str(prep.site.hub.authenticator.config.get("password", "")))
    admin_token, _ = admin.create_token(ADMIN, scopes=None, expires_in=7200, note="spawn storm")
    api = HubClient(prep.url, token=admin_token)
    names = [f"storm-{i}" for i in range(max(levels))]
    results = []
    try:
        for name in names:
            api.create_user(name)
            api.stop_server(name, SERVER, time.monotonic() + 120)  # left by an interrupted run
        with ThreadPoolExecutor(4) as pool:
            users = list(pool.map(lambda n: StormUser(prep.url, n), names, timeout=600))
        # Warm both paths once so the first storm does not pay for cold caches.
        floor_start(client, image, network, prep.project, args.limit)
        users[0].start(profile.name, args.limit)
        stop_all(users[:1], 120)
        for n in levels:
            floor = storm(lambda i: floor_start(client, image, network, prep.project, args.limit), n, args.limit)
            sampler = Sampler(prep.url, admin_token, args.limit + 300)
            sampler.start()
            try:
                hub = storm(lambda i: users[i].start(profile.name, args.limit), n, args.limit)
            finally:
                sampler.done.set()
                sampler.join(timeout=60)
            stop_all(users[:n], 300)
            results.append(level_summary(n, hub, floor, sampler))
            report(results[-1])
    finally:
        for name in names:
            try:
                api.delete_user(name)
            except Exception:  # noqa: BLE001 - best effort, and the next run retries
                pass
            remove_home(client, prep, name)
        for c in client.containers.list(all=True, filters={"name": f"{prep.project}-storm-floor"}):
            c.remove(force=True)

    out = Path(args.json_out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"site": prep.site.name, "profile": profile.name,
                               "concurrent_spawn_limit": prep.site.hub.concurrent_spawn_limit,
                               "levels": results}, indent=2))
    print(f"wrote {out}")
    return 0


def report(r: dict) -> None:
    n = r["level"]
    print(f"level {n}: hub failures {len(r['hub_failures'])}/{n}, floor failures {len(r['floor_failures'])}/{n}")
    for what in ("ready", "first_result"):
        h, f, x = r[what]["hub"], r[what]["floor"], r[what]["ratio"]
        print(f"  {what:>12}: hub p50 {h['p50']:.2f}s p95 {h['p95']:.2f}s max {h['max']:.2f}s | "
              f"floor p50 {f['p50']:.2f}s p95 {f['p95']:.2f}s max {f['max']:.2f}s | "
              f"ratio p50 {x['p50']:.2f}x p95 {x['p95']:.2f}x max {x['max']:.2f}x")
    lat = r["hub_api_user_latency"]
    print(f"  GET /hub/api/user during the storm: p50 {lat['p50'] * 1000:.0f} ms, "
          f"p95 {lat['p95'] * 1000:.0f} ms, max {lat['max'] * 1000:.0f} ms (n={lat['n']}, errors {lat['errors']})")
    for f in r["hub_failures"] + r["floor_failures"]:
        print(f"  failure: {f}")


if __name__ == "__main__":
    sys.exit(main())
