"""What the spawn benchmarks share: the site and its admin, the floor server, the kernel
round trip, percentiles, CPU from cgroups, and cleaning up.

Every wait here is bounded in time; every request goes to the stack's own containers or
to loopback.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import docker
import requests

from benchhomes import remove_home

from hubdeploy.ops import stack
from hubdeploy.contract.layout import HUB_SERVICE, PROXY_SERVICE, USERS_NETWORK, stack_name
from hubdeploy.smoke.hubclient import HubClient
from hubdeploy.smoke.kernel import ServerClient

ADMIN = "admin"
RESULTS = Path(__file__).parent / "results"
# The floor's program: the notebook image's plain server, with a token of its own.
FLOOR_CMD = ["jupyter", "server", "--ip=0.0.0.0", "--port=8888", "--no-browser"]
# jupyterhub-singleuser (jupyter server plus JupyterHub's extension, which imports much of
# JupyterHub), the floor plain jupyter server. Measured beside the runs, so the report can
# say how much of the difference is that program's own start and not hubdeploy's path.
IMPORT_PROBE = "import sys, time; t = time.perf_counter(); __import__(sys.argv[1]); print(time.perf_counter() - t)"
SINGLEUSER, SERVER_APP = "jupyterhub.singleuser", "jupyter_server.serverapp"
CGROUP_CPUACCT = Path("/sys/fs/cgroup/cpuacct/docker")


def site_args(description: str) -> argparse.ArgumentParser:
    """An argument parser with the options every spawn benchmark has."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--site", default="config/example/site.yaml")
    ap.add_argument("--json", dest="json_out", help="where to write the results (JSON)")
    return ap


@dataclass
class Bench:
    """A running site seen from the benchmark: its plan, the admin's API, the engine."""

    prep: stack.Prepared
    profile: object  # the profile the benchmark starts (the site's default)
    image: str
    network: str
    client: docker.DockerClient
    api: HubClient  # the admin's token
    admin_token: str

    @property
    def project(self) -> str:
        return self.prep.project


def open_site(site: str, *, profile=None, token_seconds: int = 7200, engine_timeout: int = 300) -> Bench:
    """The running site of ``site``, logged in as its admin; SystemExit(2) when the site's
    authenticator is not the dummy one (the benchmarks log users in through its form)."""
    prep = stack.prepare(Path(site))
    if prep.site.hub.authenticator.class_ != "dummy":
        print("the benchmark logs users in through the dummy authenticator's form", file=sys.stderr)
        raise SystemExit(2)
    chosen = profile(prep.site.profiles) if profile else next(
        (p for p in prep.site.profiles if p.default), prep.site.profiles[0])
    admin = HubClient(prep.url)
    admin.login(ADMIN, str(prep.site.hub.authenticator.config.get("password", "")))
    token, _ = admin.create_token(ADMIN, scopes=None, expires_in=token_seconds, note="benchmark")
    return Bench(prep=prep, profile=chosen, image=prep.plans[chosen.image].ref,
                 network=stack_name(prep.project, USERS_NETWORK), client=docker.from_env(timeout=engine_timeout),
                 api=HubClient(prep.url, token=token), admin_token=token)


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    if not values:
        return float("nan")
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def stats(values: list[float]) -> dict:
    """p50, p95, max and the number of samples, rounded to the millisecond."""
    return {"p50": round(pct(values, 0.5), 3), "p95": round(pct(values, 0.95), 3),
            "max": round(max(values), 3) if values else float("nan"), "n": len(values)}


def ratio(a: float, b: float) -> float:
    return round(a / b, 2) if b else float("nan")


def versus(hub: list[float], floor: list[float]) -> dict:
    """Hub path against its floor: p50 and p95 of each, their difference and ratio, and
    the number of samples of each (a failed start is no sample)."""
    h50, h95, f50, f95 = pct(hub, 0.5), pct(hub, 0.95), pct(floor, 0.5), pct(floor, 0.95)
    return {
        "hub_p50": round(h50, 3), "hub_p95": round(h95, 3),
        "floor_p50": round(f50, 3), "floor_p95": round(f95, 3),
        "diff_p50": round(h50 - f50, 3), "diff_p95": round(h95 - f95, 3),
        "ratio_p50": ratio(h50, f50), "ratio_p95": ratio(h95, f95),
        "n_hub": len(hub), "n_floor": len(floor),
    }


def versus_line(what: str, m: dict) -> str:
    """One line of a :func:`versus` result, for people."""
    return (f"{what:>12}: hub p50 {m['hub_p50']:.2f}s p95 {m['hub_p95']:.2f}s | "
            f"floor p50 {m['floor_p50']:.2f}s p95 {m['floor_p95']:.2f}s | "
            f"diff p50 {m['diff_p50']:+.2f}s p95 {m['diff_p95']:+.2f}s | "
            f"ratio p50 {m['ratio_p50']:.2f}x p95 {m['ratio_p95']:.2f}x (n={m['n_hub']}/{m['n_floor']})")


def print_report(result: dict, failures: list[str], floor_line: str, where: str, target_line: str,
                 json_out: str | None) -> None:
    """What the single-start benchmarks print and write: ready and first result against
    the floor, the floor's own step, the singleuser import, failures, the target; JSON."""
    for what in ("ready", "first_result"):
        print(versus_line(what, result[what]))
    print(floor_line)
    print(f"jupyterhub-singleuser's extra import over jupyter server ({where}): "
          f"p50 {result['singleuser_extra_import']['p50']:.2f}s")
    for f in failures:
        print(f"failure: {f}")
    print(target_line)
    if json_out:
        out = Path(json_out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {out}")


def hub_spawn(api: HubClient, user: str, server: str, profile: str, limit: float = 300) -> dict:
    """One start of ``user``'s named ``server`` through the hub API: seconds until the hub
    says ready and the proxy answers the server's /api/status ("ready"), and until the
    first kernel result through the proxy ("first_result"). The server is stopped and
    forgotten after, also when the start fails."""
    token, _ = api.create_token(user, scopes=None, expires_in=600, note="benchmark")
    t0 = time.monotonic()
    try:
        api.start_server(user, server, profile)
        api.wait_ready(user, server, time.monotonic() + limit)
        url = api.server_url(user, server)
        # Ready for a person: the proxy routes to the server and the server answers.
        wait_http(url + "api/status", {"Authorization": f"token {token}"}, limit=limit)
        ready = time.monotonic() - t0
        return {"ready": ready, "first_result": ready + kernel_round_trip(url, token)}
    finally:
        api.stop_server(user, server, time.monotonic() + 120)


def kernel_round_trip(server_url: str, token: str) -> float:
    """Seconds from asking for a kernel to its `5*4` result; the kernel is deleted after."""
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
    """Until ``url`` answers 200 (polled every 50 ms); TimeoutError after ``limit`` s."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            if requests.get(url, headers=headers, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.05)
    raise TimeoutError(url)


def floor_start(bench: Bench, tag: str, limit: float = 120) -> dict:
    """One plain ``docker run`` of the image's server on the users network: seconds to
    /api/status ("ready"), to the first kernel result ("first_result"), and the CPU
    seconds the container used by then ("cpu_s"). The container is removed."""
    token = secrets.token_hex(16)
    t0 = time.monotonic()
    c = bench.client.containers.run(
        bench.image, FLOOR_CMD, name=f"{bench.project}-{tag}-floor-{secrets.token_hex(4)}",
        network=bench.network, detach=True, environment={"JUPYTER_TOKEN": token},
    )
    try:
        c.reload()
        base = f"http://{c.attrs['NetworkSettings']['Networks'][bench.network]['IPAddress']}:8888/"
        wait_http(base + "api/status", {"Authorization": f"token {token}"}, limit=limit)
        ready = time.monotonic() - t0
        first = ready + kernel_round_trip(base, token)
        return {"ready": ready, "first_result": first, "cpu_s": cpu_seconds(c.id)}
    finally:
        c.remove(force=True)


def remove_floor_containers(bench: Bench, tag: str) -> None:
    for c in bench.client.containers.list(all=True, filters={"name": f"{bench.project}-{tag}-floor"}):
        c.remove(force=True)


def image_import_seconds(client, image: str, module: str) -> float:
    """How long the image's notebook Python takes to import ``module`` (timed inside)."""
    out = client.containers.run(image, ["python3", "-c", IMPORT_PROBE, module], remove=True, user="1000")
    return float(out.decode().split()[-1])


def extra_import(import_seconds, repeat: int = 5) -> float:
    """p50 of (import SINGLEUSER - import SERVER_APP), each pair timed back to back."""
    return pct([import_seconds(SINGLEUSER) - import_seconds(SERVER_APP) for _ in range(repeat)], 0.5)


def cpu_seconds(container_id: str) -> float:
    """CPU seconds a container has used (cgroup v1 cpuacct, cgroupfs driver); NaN where
    this machine keeps its cgroups elsewhere."""
    try:
        return int((CGROUP_CPUACCT / container_id / "cpuacct.usage").read_text()) / 1e9
    except (OSError, ValueError):
        return float("nan")


def service_container(bench: Bench, service: str):
    """The stack's container of ``service`` (HUB_SERVICE, PROXY_SERVICE)."""
    from hubdeploy.ops.engine import service_containers

    found = service_containers(bench.client, bench.project, service)
    if len(found) != 1:
        raise RuntimeError(f"expected one running {service} container of {bench.project}, found {len(found)}")
    return found[0]


def hub_container(bench: Bench):
    return service_container(bench, HUB_SERVICE)


def proxy_container(bench: Bench):
    return service_container(bench, PROXY_SERVICE)


def remove_users(bench: Bench, users: list[str]) -> None:
    """Delete benchmark users and their homes; best effort (the next run retries)."""
    for name in users:
        try:
            bench.api.delete_user(name)
        except Exception:  # noqa: BLE001 - cleanup goes on past one failure
            pass
        remove_home(bench.client, bench.prep, name)
