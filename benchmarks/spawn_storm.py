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

What each start costs, per level: the hub container's CPU seconds over the storm (cgroup
cpuacct) divided by N; the engine API calls of each start (the docker backend logs them
with every start); and each notebook container's CPU seconds by its first kernel result,
jupyterhub-singleuser's against plain jupyter server's (the floor's).

With the largest level's servers still running: `docker restart` of the proxy (seconds
until every server answers through it again) and of the hub (seconds until the hub
reports every server ready and every one answers through the proxy), both timed from
the moment `docker restart` returns.

Reports failures, p50, p95, max and the hub/floor ratios per level, and writes JSON to
benchmarks/results/spawn_storm.json. Loads only the stack's own containers on loopback;
every loop is bounded in count and time; removes its users, their homes and its
containers. Needs a running site whose authenticator is the dummy one.

    python benchmarks/spawn_storm.py --site SITE.yaml [--levels 10,50,100] [--no-restarts]
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import requests
from _common import (
    RESULTS,
    SERVER_APP,
    SINGLEUSER,
    Bench,
    cpu_seconds,
    extra_import,
    floor_start,
    hub_container,
    image_import_seconds,
    kernel_round_trip,
    open_site,
    proxy_container,
    ratio,
    remove_floor_containers,
    remove_users,
    site_args,
    stats,
)

from hubdeploy.contract import names
from hubdeploy.smoke.hubclient import HubClient

SERVER = "storm"
SAMPLE_EVERY = 0.25
IDLE_SAMPLE = 5.0  # seconds of the hub's idle CPU measured before each storm
# The docker backend's line for each start (hubdeploy/backends/docker.py).
ENGINE_CALLS = re.compile(r"started \S+ in (\d+) engine API calls")


class StormUser:
    """One scripted user: its own login session and API token."""

    def __init__(self, url: str, name: str):
        self.name = name
        session = HubClient(url)
        session.login(name, "")
        self.token, _ = session.create_token(name, scopes=None, expires_in=7200, note="spawn storm")
        session.close()
        self.api = HubClient(url, token=self.token, request_timeout=120)

    def start(self, bench: Bench, limit: float) -> dict:
        """Seconds from the spawn request to ready and to the first kernel result, and the
        server container's CPU seconds by then."""
        t0 = time.monotonic()
        self.api.api("POST", f"users/{self.name}/servers/{SERVER}", json={"profile": bench.profile.name},
                     ok=(201, 202))
        self.api.wait_ready(self.name, SERVER, t0 + limit)
        ready = time.monotonic() - t0
        first = ready + kernel_round_trip(self.api.server_url(self.name, SERVER), self.token)
        container = bench.client.containers.get(names.container_name(bench.project, self.name, SERVER))
        return {"ready": ready, "first_result": first, "cpu_s": cpu_seconds(container.id)}

    def answers(self) -> bool:
        """True when the server answers /api/status through the proxy."""
        try:
            return requests.get(self.api.server_url(self.name, SERVER) + "api/status", timeout=5,
                                headers={"Authorization": f"token {self.token}"}).status_code == 200
        except requests.RequestException:
            return False


def storm(fn, n: int, limit: float) -> tuple[list[dict], list[str], float]:
    """Run ``fn(i)`` for i < n at once; (results, failures, wall seconds)."""
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
    ok = [r for r in results if not isinstance(r, Exception)]
    failures = [f"{type(r).__name__}: {str(r)[:300]}" for r in results if isinstance(r, Exception)]
    return ok, failures, wall


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


class HubMeter:
    """The hub container's CPU seconds and its start log lines over one storm."""

    def __init__(self, bench: Bench):
        self.hub = hub_container(bench)
        self.since = datetime.now(timezone.utc)
        self.cpu0 = cpu_seconds(self.hub.id)

    def cpu(self) -> float:
        return cpu_seconds(self.hub.id) - self.cpu0

    def idle_rate(self, seconds: float = IDLE_SAMPLE) -> float:
        """The hub's CPU seconds per second with nothing starting (its periodic work: route
        checks, metrics), so that a longer storm is not charged for it per start."""
        cpu0, t0 = cpu_seconds(self.hub.id), time.monotonic()
        time.sleep(seconds)
        return (cpu_seconds(self.hub.id) - cpu0) / (time.monotonic() - t0)

    def engine_calls(self) -> list[int]:
        """Engine API calls of each start since the meter was made (from the hub's log)."""
        text = self.hub.logs(since=self.since, stdout=True, stderr=True).decode(errors="replace")
        return [int(m.group(1)) for m in ENGINE_CALLS.finditer(text)]


def run_level(bench: Bench, users: list[StormUser], n: int, limit: float) -> dict:
    floor = storm(lambda i: floor_start(bench, "storm", limit), n, limit)
    sampler = Sampler(bench.prep.url, bench.admin_token, limit + 300)
    idle = HubMeter(bench).idle_rate()
    meter = HubMeter(bench)
    sampler.start()
    try:
        hub = storm(lambda i: users[i].start(bench, limit), n, limit)
    finally:
        sampler.done.set()
        sampler.join(timeout=60)
    hub_cpu = meter.cpu()
    return level_summary(n, hub, floor, sampler, (hub_cpu, idle), meter.engine_calls())


def level_summary(n: int, hub, floor, sampler: Sampler, hub_cpu: tuple[float, float], calls: list[int]) -> dict:
    """One level's numbers; ``hub_cpu`` is (CPU seconds over the storm, idle CPU rate)."""
    cpu, idle = hub_cpu
    out = {"level": n, "hub_failures": hub[1], "floor_failures": floor[1],
           "hub_wall_s": round(hub[2], 2), "floor_wall_s": round(floor[2], 2),
           "hub_api_user_latency": {**stats(sampler.latencies), "errors": sampler.errors},
           "per_start": {
               "hub_cpu_s": round(cpu / n, 3),
               "hub_cpu_above_idle_s": round((cpu - idle * hub[2]) / n, 3),
               "engine_api_calls": {"p50": stats(calls)["p50"], "max": max(calls, default=None), "n": len(calls)},
               "server_cpu_s": {"hub": stats([r["cpu_s"] for r in hub[0]])["p50"],
                                "floor": stats([r["cpu_s"] for r in floor[0]])["p50"]},
           }}
    for what in ("ready", "first_result"):
        h, f = stats([r[what] for r in hub[0]]), stats([r[what] for r in floor[0]])
        out[what] = {"hub": h, "floor": f, "ratio": {q: ratio(h[q], f[q]) for q in ("p50", "p95", "max")}}
    return out


def until_all(users: list[StormUser], check, limit: float) -> dict:
    """Seconds until ``check(user)`` holds for every user (each rechecked every 0.1 s until
    it does); users still failing after ``limit`` s are named."""
    t0 = time.monotonic()
    pending = list(users)
    with ThreadPoolExecutor(16) as pool:
        while pending and time.monotonic() - t0 < limit:
            pending = [u for u, ok in zip(pending, pool.map(check, pending)) if not ok]
            if pending:
                time.sleep(0.1)
    return {"seconds": round(time.monotonic() - t0, 2), "servers": len(users),
            "not_back": [u.name for u in pending]}


def until(check, limit: float) -> float | None:
    """Seconds until ``check()`` holds (probed every 0.1 s, each probe short); None if not
    within ``limit``."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        try:
            if check():
                return round(time.monotonic() - t0, 2)
        except Exception:  # noqa: BLE001 - the component is still starting
            pass
        time.sleep(0.1)
    return None


def _staged(first: dict[str, float | None], users: list[StormUser], limit: float) -> dict:
    """The stages' times, then the sweep: every server answering through the proxy. A
    stage is timed by one probe at a time, so the sweep's per-request timeouts (a hundred
    requests to a component that is not back yet) do not inflate it."""
    t0 = time.monotonic()
    sweep = until_all(users, StormUser.answers, limit)
    stages = dict(first)
    done = max((v for v in stages.values() if v is not None), default=0.0)
    stages["every_server_answers"] = round(done + time.monotonic() - t0, 2)
    return {**sweep, "seconds": stages["every_server_answers"], "stages": stages}


def proxy_restart(bench: Bench, users: list[StormUser], limit: float) -> dict:
    """`docker restart` of the proxy, then seconds until it answers at all and until every
    server answers through it."""
    proxy_container(bench).restart(timeout=10)
    t0 = time.monotonic()
    hub_url = bench.api.url("hub/api/")
    # Any answer (CHP's own 404 while its table is empty) is the proxy back; the hub's
    # route answering is the first route restored.
    answers = until(lambda: requests.get(hub_url, timeout=1) is not None, limit)
    hub_route = until(lambda: requests.get(hub_url, timeout=1).status_code == 200, limit)
    return _staged({"proxy_answers": answers,
                    "hub_route_back": None if hub_route is None else round(time.monotonic() - t0, 2)},
                   users, limit)


def hub_restart(bench: Bench, users: list[StormUser], limit: float) -> dict:
    """`docker restart` of the hub, then seconds until its API answers, until it lists
    every server ready (one admin request), and until every one answers through the proxy."""
    hub_container(bench).restart(timeout=30)
    t0 = time.monotonic()
    names = {u.name for u in users}

    def all_ready() -> bool:
        listed = bench.api.api("GET", "users", params={"state": "ready", "limit": len(names) + 50},
                               timeout=2).json()
        listed = listed["items"] if isinstance(listed, dict) else listed
        ready = {m["name"] for m in listed if (m.get("servers", {}).get(SERVER) or {}).get("ready")}
        return names <= ready

    answers = until(lambda: bench.api.api("GET", "", timeout=1).status_code == 200, limit)
    remaining = max(1.0, limit - (time.monotonic() - t0))
    ready_after = until(all_ready, remaining)
    ready = None if ready_after is None else round(time.monotonic() - t0, 2)
    return _staged({"hub_answers": answers, "hub_lists_all_ready": ready}, users, limit)


def stop_all(users: list[StormUser], limit: float) -> None:
    def stop(u):
        try:
            u.api.stop_server(u.name, SERVER, time.monotonic() + limit)
        except Exception as exc:  # noqa: BLE001 - cleanup goes on; the user is deleted later
            print(f"stopping {u.name}'s server: {exc}", file=sys.stderr)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(stop, users, timeout=limit + 60))


def main() -> int:
    ap = site_args(__doc__.splitlines()[0])
    ap.set_defaults(json_out=str(RESULTS / "spawn_storm.json"))
    ap.add_argument("--levels", default="10,50,100", help="concurrency levels, comma-separated")
    ap.add_argument("--limit", type=float, default=900, help="seconds one start may take before it counts as failed")
    ap.add_argument("--no-restarts", dest="restarts", action="store_false",
                    help="skip the hub and proxy restarts with the largest level's servers running")
    args = ap.parse_args()
    levels = [int(x) for x in args.levels.split(",") if x.strip()]
    if not levels or min(levels) < 1 or max(levels) > 500:
        print("--levels: whole numbers from 1 to 500", file=sys.stderr)
        return 2

    bench = open_site(args.site)
    names_ = [f"storm-{i}" for i in range(max(levels))]
    results, restarts = [], {}
    try:
        for name in names_:
            bench.api.create_user(name)
            bench.api.stop_server(name, SERVER, time.monotonic() + 120)  # left by an interrupted run
        with ThreadPoolExecutor(4) as pool:
            users = list(pool.map(lambda n: StormUser(bench.prep.url, n), names_, timeout=600))
        # Warm both paths once so the first storm does not pay for cold caches.
        floor_start(bench, "storm", args.limit)
        users[0].start(bench, args.limit)
        stop_all(users[:1], 120)
        for n in levels:
            results.append(run_level(bench, users, n, args.limit))
            report(results[-1])
            write(Path(args.json_out), bench, results, restarts)
            if args.restarts and n == max(levels):
                running = users[:n]
                restarts = {"servers": n, "proxy": proxy_restart(bench, running, 300),
                            "hub": hub_restart(bench, running, 300)}
                print(f"  with {n} servers running: every route back {restarts['proxy']['seconds']:.2f}s after a "
                      f"proxy restart {restarts['proxy']['stages']}, every server ready "
                      f"{restarts['hub']['seconds']:.2f}s after a hub restart {restarts['hub']['stages']} "
                      f"(not back: {restarts['proxy']['not_back'] + restarts['hub']['not_back'] or 'none'})")
                write(Path(args.json_out), bench, results, restarts)
            stop_all(users[:n], 300)
        extra = extra_import(lambda m: image_import_seconds(bench.client, bench.image, m))
    finally:
        remove_users(bench, names_)
        remove_floor_containers(bench, "storm")

    write(Path(args.json_out), bench, results, restarts,
          {"p50": round(extra, 3), "note": f"import {SINGLEUSER} minus import {SERVER_APP} in the image"})
    print(f"jupyterhub-singleuser's extra import over jupyter server (same image): p50 {extra:.2f}s")
    print(f"wrote {args.json_out}")
    return 0


def write(out: Path, bench: Bench, results: list[dict], restarts: dict, extra: dict | None = None) -> None:
    """The results so far (after every level, so an interrupted run keeps what it measured)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "site": bench.prep.site.name, "profile": bench.profile.name,
        "concurrent_spawn_limit": bench.prep.site.hub.concurrent_spawn_limit,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "singleuser_extra_import_s": extra, "levels": results, "restarts": restarts}, indent=2))


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
    c = r["per_start"]
    print(f"  per start: hub CPU {c['hub_cpu_s']:.3f}s ({c['hub_cpu_above_idle_s']:.3f}s above idle), engine API calls p50 {c['engine_api_calls']['p50']} "
          f"(max {c['engine_api_calls']['max']}, from {c['engine_api_calls']['n']} log lines), server CPU by "
          f"its first result {c['server_cpu_s']['hub']:.2f}s (plain jupyter server {c['server_cpu_s']['floor']:.2f}s)")
    for f in r["hub_failures"] + r["floor_failures"]:
        print(f"  failure: {f}")


if __name__ == "__main__":
    sys.exit(main())
