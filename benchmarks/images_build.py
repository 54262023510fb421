"""Image graph build times: cold, no-op, one collaboration changed; image sizes.

Not a test. Builds the kernel test graph (base + alpha with R and two Python kernels +
beta, a child of alpha) under its own site name, so every notebook image is cold; the
Debian rootfs comes from the shared cache (HUBDEPLOY_TEST_STATE) when present.

    .venv/bin/python benchmarks/images_build.py [--keep] [--json-out PATH]

Targets: no-op rebuild < 5 s and builds nothing; changing one kernel's package list of
alpha rebuilds alpha (and its child) in <= 20 % of alpha's cold build, both measured in
this run. The report lists every Dockerfile step of alpha, cold and incremental, with its
time and whether the layer cache served it: where a rebuild's time goes. Results are
written to benchmarks/results/images_build.json unless --json-out says otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import docker

from hubdeploy.images.build import build_images
from hubdeploy.images.buildsteps import BuildStep
from hubdeploy.images.plan import plan_images
from hubdeploy.site.model import Site

SITE = "hdtbench"
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
STATE = Path(os.environ.get("HUBDEPLOY_TEST_STATE", "/var/tmp/hubdeploy-test/state"))
NOTEBOOK = ("debian", "base", "alpha", "beta")


def site(py2_packages: list[str]) -> Site:
    return Site.model_validate({
        "name": SITE,
        "build": {"ca_bundle": "ca.pem"},
        "images": {"collaborations": {
            "alpha": {"kernels": [
                {"name": "r", "language": "r"},
                {"name": "py1", "packages": ["six"]},
                {"name": "py2", "packages": py2_packages},
            ]},
            "beta": {"parent": "alpha", "kernels": [{"name": "sh", "language": "bash"}, {"name": "py", "packages": ["packaging"]}]},
        }},
        "profiles": [{"name": "d", "image": "base"}],
    })


class Timings:
    """A console that records when each image started and finished building."""

    def __init__(self):
        self.started: dict[str, float] = {}
        self.seconds: dict[str, float] = {}

    def print(self, text: str, **kwargs) -> None:
        # The console's own "built X in N s" is rounded to whole seconds: time it here.
        now = time.monotonic()
        if text.startswith("[bold]building[/] "):
            self.started[text.split()[1]] = now
        elif text.startswith("[bold green]built[/] "):
            name = text.split()[2]
            self.seconds[name] = round(now - self.started[name], 2)


def build(client, plans) -> tuple[list[str], float, dict[str, float], list[BuildStep]]:
    rec = Timings()
    steps: list[BuildStep] = []
    t0 = time.monotonic()
    built = build_images(plans, client=client, state_dir=STATE, console=rec, steps=steps)
    return built, time.monotonic() - t0, rec.seconds, steps


def step_table(steps: list[BuildStep], image: str) -> list[dict]:
    return [{"step": s.number, "instruction": s.instruction[:120], "cached": s.cached, "seconds": round(s.seconds, 2)}
            for s in steps if s.image == image]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="keep the images afterwards")
    parser.add_argument("--json-out", default=str(Path(__file__).parent / "results" / "images_build.json"),
                        help="where to write the report (JSON)")
    args = parser.parse_args()
    client = docker.from_env(timeout=900)
    site_dir = Path(f"/tmp/{SITE}-site")
    site_dir.mkdir(exist_ok=True)
    (site_dir / "ca.pem").write_bytes(HOST_CA.read_bytes())
    plans = {n: p for n, p in plan_images(site(["idna"]), site_dir).items() if n in NOTEBOOK}
    report: dict = {}
    try:
        # Cold: drop earlier runs' notebook images so that every one is built.
        for name in ("beta", "alpha", "base"):
            for img in client.images.list(name=f"hubdeploy/{SITE}-{name}"):
                client.images.remove(img.id, force=True)
        built, total, per, cold_steps = build(client, plans)
        report["cold"] = {"built": built, "seconds": round(total, 1), "per_image": per,
                          "steps": {n: step_table(cold_steps, n) for n in ("base", "alpha", "beta")}}

        built, total, _, _ = build(client, plans)
        report["noop"] = {"built": built, "seconds": round(total, 2), "target_s": 5, "ok": not built and total < 5}

        changed = {n: p for n, p in plan_images(site(["idna", "six"]), site_dir).items() if n in NOTEBOOK}
        built, total, per2, steps = build(client, changed)
        ratio = per2.get("alpha", 0) / per["alpha"] if per.get("alpha") else None
        report["one_kernel_changed"] = {
            "built": built, "seconds": round(total, 1), "per_image": per2, "alpha_seconds": per2.get("alpha"),
            "alpha_cold_seconds": per.get("alpha"), "ratio": round(ratio, 3) if ratio else None,
            "target_ratio": 0.2, "ok": ratio is not None and ratio <= 0.2,
            "alpha_steps_run": [s for s in step_table(steps, "alpha") if not s["cached"]],
            "alpha_steps_cached": sum(1 for s in steps if s.image == "alpha" and s.cached),
        }
        sizes = {n: client.images.get(p.ref).attrs["Size"] for n, p in plans.items()}
        deb = sizes["debian"]
        report["sizes_mb"] = {n: round(s / 1e6) for n, s in sizes.items()}
        report["size_vs_debian"] = {n: round(s / deb, 2) for n, s in sizes.items()}
    finally:
        if not args.keep:
            for img in client.images.list():
                for t in img.tags:
                    if t.startswith(f"hubdeploy/{SITE}-"):
                        try:
                            client.images.remove(t, force=True)
                        except docker.errors.APIError:
                            pass
    report["machine"] = {"cpus": os.cpu_count(), "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    print(json.dumps(report, indent=1))
    out = Path(args.json_out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"cold {report['cold']['seconds']} s; no-op {report['noop']['seconds']} s "
          f"(target < 5 s, built {report['noop']['built'] or 'nothing'}); "
          f"alpha after one kernel changed {report['one_kernel_changed']['alpha_seconds']} s = "
          f"{report['one_kernel_changed']['ratio']} of its cold {report['cold']['per_image'].get('alpha')} s "
          "(target <= 0.2)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
