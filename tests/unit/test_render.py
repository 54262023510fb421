"""The renderer is a pure function: golden output, determinism, and no secret in it."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from hubdeploy import render
from hubdeploy.site.loader import load_site
from hubdeploy.ops.engine import compose_command
from hubdeploy.state.secrets import ensure_secrets, secret_names

HERE = Path(__file__).parent / "golden"
REFS = {
    "base": "hubdeploy/golden-base:000000000001",
    "astro": "hubdeploy/golden-astro:000000000002",
    "hub": "hubdeploy/golden-hub:000000000003",
    "proxy": "hubdeploy/golden-proxy:000000000004",
    "db": "hubdeploy/golden-db:000000000005",
}


@pytest.fixture(scope="module")
def site():
    return load_site(HERE / "site.yaml")


def test_golden_compose(site):
    files = render.render(site, HERE, REFS)
    golden = HERE / "compose.yaml"
    if os.environ.get("HUBDEPLOY_UPDATE_GOLDEN") and files["compose.yaml"] != golden.read_bytes():
        golden.write_bytes(files["compose.yaml"])
        # Never passes while rewriting: the new file is reviewed (git diff), then checked.
        pytest.fail("golden compose.yaml rewritten: review `git diff`, then run without HUBDEPLOY_UPDATE_GOLDEN")
    assert files["compose.yaml"].decode() == golden.read_text()


def test_deterministic(site):
    assert render.render(site, HERE, REFS) == render.render(site, HERE, dict(REFS))


def test_topology(site):
    doc = YAML(typ="safe").load(render.render(site, HERE, REFS)["compose.yaml"])
    svcs = doc["services"]
    assert set(svcs) == {"hub", "proxy", "engine-proxy", "db", "idle-culler", "announce"}
    # Only the proxy publishes a port, and only on the site's address.
    published = {n: s["ports"] for n, s in svcs.items() if s.get("ports")}
    assert published == {"proxy": ["127.0.0.1:8765:8000"]}
    assert doc["networks"]["internal"]["internal"] is True
    assert set(svcs["db"]["networks"]) == {"internal"}
    assert svcs["hub"]["depends_on"]["proxy"]["condition"] == "service_healthy"
    assert svcs["hub"]["depends_on"]["db"]["condition"] == "service_healthy"
    assert all(s["restart"] == "unless-stopped" for s in svcs.values())
    assert "healthcheck" in svcs["hub"] and "healthcheck" in svcs["proxy"]
    # Secrets are referenced by file, relative to the rendered dir.
    assert doc["secrets"]["db_password"] == {"file": "../secrets/db_password"}


def test_only_the_engine_proxy_holds_the_docker_socket(site):
    svcs = YAML(typ="safe").load(render.render(site, HERE, REFS)["compose.yaml"])["services"]
    holders = [n for n, s in svcs.items() if any("docker.sock" in v for v in s.get("volumes", []))]
    assert holders == ["engine-proxy"]
    proxy = svcs["engine-proxy"]
    # Reachable only where the hub is, and holding no capability.
    assert set(proxy["networks"]) == {"internal"} and "ports" not in proxy
    assert proxy["cap_drop"] == ["ALL"] and proxy["read_only"] is True
    assert proxy["security_opt"] == ["no-new-privileges:true"]
    # Its policy: this site, and the host path the site declared for a profile.
    cmd = proxy["command"]
    assert cmd[cmd.index("--site") + 1] == "golden"
    assert [cmd[i + 1] for i, a in enumerate(cmd) if a == "--bind-path"] == ["/srv/data"]
    assert svcs["hub"]["environment"]["DOCKER_HOST"] == "tcp://engine-proxy:2375"
    assert svcs["hub"]["depends_on"]["engine-proxy"] == {"condition": "service_healthy"}


def test_hub_data(site):
    data = json.loads(render.render(site, HERE, REFS)["hub/hub.json"])
    assert data["spawner"]["profiles"][1]["mem_limit"] == int(2.5 * 1024**3)
    assert data["spawner"]["profiles"][1]["image_ref"] == REFS["astro"]
    names = [s["name"] for s in data["services"]]
    assert names == ["hubdeploy-smoke", "hubdeploy-cli", "idle-culler", "announce", "docs"]
    assert data["services"][3]["url"] == "http://announce:9000"
    # The CLI's token reads server state and nothing else of consequence.
    assert data["services"][1]["scopes"] == ["list:users", "read:users:name", "read:servers", "admin:server_state",
                                             "read:metrics"]
    assert data["config"] == {"JupyterHub": {"shutdown_on_logout": True}}


def test_config_hash_tracks_hub_inputs(site):
    a = YAML(typ="safe").load(render.render(site, HERE, REFS)["compose.yaml"])
    refs = dict(REFS, astro="hubdeploy/golden-astro:00000000000f")
    b = YAML(typ="safe").load(render.render(site, HERE, refs)["compose.yaml"])
    # A new collaboration image changes what the hub offers, so the hub is recreated;
    # the proxy's inputs did not change, so compose leaves it alone.
    assert a["services"]["hub"]["labels"] != b["services"]["hub"]["labels"]
    assert a["services"]["proxy"] == b["services"]["proxy"]


def test_no_secret_in_rendered_files(site, tmp_path):
    paths = ensure_secrets(tmp_path / "secrets", secret_names(site))
    values = [p.read_text() for p in paths.values()]
    files = render.render(site, HERE, REFS)
    for name, data in files.items():
        for v in values:
            assert v.encode() not in data, name
    for p in paths.values():
        assert p.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "secrets").stat().st_mode & 0o777 == 0o700


def test_secrets_reused(site, tmp_path):
    first = {n: p.read_text() for n, p in ensure_secrets(tmp_path, secret_names(site)).items()}
    second = {n: p.read_text() for n, p in ensure_secrets(tmp_path, secret_names(site)).items()}
    assert first == second and len(set(first.values())) == len(first)


def test_write_files_atomic_and_idempotent(tmp_path):
    files = {"a.txt": b"1", "d/b.sh": b"#!/bin/sh\n"}
    assert render.write_files(tmp_path, files) == ["a.txt", "d/b.sh"]
    mtime = (tmp_path / "a.txt").stat().st_mtime_ns
    assert render.write_files(tmp_path, files) == []
    assert (tmp_path / "a.txt").stat().st_mtime_ns == mtime
    assert render.write_files(tmp_path, {"a.txt": b"2"}) == ["a.txt"]
    assert not (tmp_path / "d" / "b.sh").exists()
    assert not [p for p in tmp_path.rglob(".*")]


def test_compose_accepts_render(site, tmp_path):
    """`docker compose config` (the real Compose v2) accepts the rendered file."""
    files = render.render(site, HERE, REFS)
    render.write_files(tmp_path / "rendered", files)
    ensure_secrets(tmp_path / "secrets", secret_names(site))
    proc = subprocess.run(
        [*compose_command(), "-f", str(tmp_path / "rendered" / "compose.yaml"), "config", "--quiet"],
        capture_output=True, text=True, cwd=tmp_path / "rendered",
    )
    assert proc.returncode == 0, proc.stderr
