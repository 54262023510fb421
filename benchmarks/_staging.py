"""Staging a changed collaboration image onto the nodes, against `docker save` of it.

A "changed" image is one whose tag now names another image id: each round points the
profile's tag at the site's base image and stages that (not timed), points it back and
times `hubdeploy images stage` (export, extract into the nodes' volume, the atomic
rename, the old directory removed), then times `docker save` of the same image to a
file. The two alternate, so both see the same machine. Target: staging at most 2x.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import pct

TARGET_RATIO = 2.0


def _stage(site: Path) -> dict:
    proc = subprocess.run([sys.executable, "-m", "hubdeploy", "--site", str(site), "images", "stage", "--json"],
                          capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"images stage exited {proc.returncode}: {proc.stderr[-300:]}")
    return json.loads(proc.stdout)


def measure_staging(client, site: Path, image: str, ref: str, other_ref: str, repeat: int) -> dict:
    """``image`` (a profile's, tagged ``ref``) staged after a change, ``repeat`` times,
    beside `docker save` of ``ref``; ``other_ref`` stands in for the change."""
    own = client.images.get(ref)
    stage_s: list[float] = []
    save_s: list[float] = []
    try:
        for _ in range(repeat):
            client.images.get(other_ref).tag(ref)
            _stage(site)
            own.tag(ref)
            t0 = time.monotonic()
            got = _stage(site)
            stage_s.append(time.monotonic() - t0)
            if got["staged"] != [image]:
                raise RuntimeError(f"images stage did not restage {image}: {got}")
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.monotonic()
                subprocess.run(["docker", "save", "-o", str(Path(tmp) / "image.tar"), ref], check=True,
                               timeout=900)
                save_s.append(time.monotonic() - t0)
    finally:
        # Whatever happened, the tag names the image's own build again and that is staged.
        own.tag(ref)
        _stage(site)
    ratio = pct(stage_s, 0.5) / pct(save_s, 0.5)
    return {"image": image, "ref": ref, "stage_p50_s": round(pct(stage_s, 0.5), 2),
            "docker_save_p50_s": round(pct(save_s, 0.5), 2), "ratio": round(ratio, 2),
            "target_ratio": TARGET_RATIO, "met": ratio <= TARGET_RATIO,
            "samples": {"stage": stage_s, "docker_save": save_s}}
