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

import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _common import (
    SERVER_APP,
    SINGLEUSER,
    extra_import,
    floor_start,
    image_import_seconds,
    kernel_round_trip,
    open_site,
    pct,
    remove_floor_containers,
    remove_users,
    site_args,
)

from hubdeploy.smoke.hubclient import HubClient


def floor_once(bench) -> tuple[float, float]:
    r = floor_start(bench, "bench")
    return r["ready"], r["first_result"]


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
    ap = site_args(__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=8, help="spawns at concurrency 1")
    ap.add_argument("--rounds10", type=int, default=2, help="rounds of 10 concurrent spawns")
    args = ap.parse_args()

    bench = open_site(args.site, token_seconds=3600)
    api, profile = bench.api, bench.profile
    users = [f"bench-{i}" for i in range(10)]
    for u in users:
        api.create_user(u)
        # A server left by an interrupted earlier run would refuse the first start.
        api.stop_server(u, "bench", time.monotonic() + 120)

    results = []
    try:
        # Warm both paths once so the first sample is not an outlier from cold caches.
        floor_once(bench)
        hub_once(api, bench.prep.url, users[0], profile.name)
        for conc, repeat in ((1, args.repeat), (10, args.rounds10)):
            floor = run_rounds(lambda i: floor_once(bench), conc, repeat)
            hub = run_rounds(lambda i: hub_once(api, bench.prep.url, users[i], profile.name), conc, repeat)
            results.append(summary(f"concurrency {conc}", hub, floor))
        extra = extra_import(lambda m: image_import_seconds(bench.client, bench.image, m))
    finally:
        remove_users(bench, users)
        remove_floor_containers(bench, "bench")

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
