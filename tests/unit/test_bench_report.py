"""The benchmarks' pure parts: hub against floor (percentiles, difference, ratio) and the
swarm benchmark's report, from samples alone."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import _common  # noqa: E402
import swarm_spawn_latency  # noqa: E402


def test_versus_gives_percentiles_difference_and_ratio():
    m = _common.versus([4.0, 2.0, 3.0], [2.0, 1.0, 3.0])
    assert (m["hub_p50"], m["floor_p50"]) == (3.0, 2.0)
    assert (m["hub_p95"], m["floor_p95"]) == (3.9, 2.9)  # interpolated between the two largest
    assert (m["diff_p50"], m["ratio_p50"], m["ratio_p95"]) == (1.0, 1.5, 1.34)
    assert (m["n_hub"], m["n_floor"]) == (3, 3)


def test_versus_without_floor_samples_has_no_ratio_instead_of_failing():
    m = _common.versus([2.0], [])
    assert m["n_floor"] == 0
    assert math.isnan(m["floor_p50"]) and math.isnan(m["ratio_p50"])


def test_versus_line_shows_both_paths_and_the_ratio():
    line = _common.versus_line("ready", _common.versus([3.0], [2.0]))
    assert "hub p50 3.00s" in line and "floor p50 2.00s" in line and "ratio p50 1.50x" in line


def _sample(ready: float) -> dict:
    return {"ready": ready, "first_result": ready + 0.5}


@pytest.mark.parametrize(("hub", "met"), [(2.6, True), (2.7, False)])
def test_swarm_report_judges_the_target_on_ready_p50(hub, met):
    floor = [{**_sample(2.0), "container": 0.4}]
    imports = [{_common.SINGLEUSER: 0.9, _common.SERVER_APP: 0.5}]
    r = swarm_spawn_latency.report([_sample(hub)], floor, imports, ["hub: TimeoutError: x"], "login")
    assert r["target_met"] is met
    assert r["ready"]["ratio_p50"] == round(hub / 2.0, 2)
    assert r["first_result"]["floor_p50"] == 2.5
    assert r["floor_create_to_container"]["p50"] == 0.4
    assert r["singleuser_extra_import"]["p50"] == 0.4
    assert r["failures"] == ["hub: TimeoutError: x"] and r["profile"] == "login"
    json.dumps(r, allow_nan=False)  # the report file is plain JSON
