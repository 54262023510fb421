"""Shell scripts, Dockerfiles and the nodes' agent spell values of the contract (ports,
paths, peers' names) that Python cannot import there. Each such literal is checked
against hubdeploy.contract here, and a new one fails until it is listed: a port or a
hubdeploy path in one of these files must be one the contract defines."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from hubdeploy.contract import layout as L
from hubdeploy.contract.services import PROMETHEUS
from hubdeploy.render import slurm as slurm_render

REPO = Path(__file__).resolve().parents[2]
HUB_URL = f"http://{L.HUB_SERVICE}:{L.HUB_PORT}"

# file -> [(regex with one group, the contract's value)]: every match must be the value,
# and there must be one. ``ports``: what may stand as a port in the file.
FILES: dict[str, dict] = {
    "compose/proxy-entrypoint.sh": {
        "literals": [
            (r"cat (\S+)\)", L.secret_path(L.PROXY_TOKEN)),
            (r"getent hosts (\S+) ", L.PROXY_API_ALIAS),
            (r'dns\.lookup\("([^"]+)"', L.ENGINE_PROXY_SERVICE),
            (r"--port (\d+)", str(L.PROXY_PORT)),
            (r"--api-port (\d+)", str(L.PROXY_API_PORT)),
            (r"--default-target (\S+)", HUB_URL),
            (r"--error-target (\S+)", f"{HUB_URL}/hub/error"),
            (r"if \[ -f (\S+) \]", L.PROXY_TLS_KEY_PATH),
            (r"install -m 0400 (\S+) ", L.PROXY_TLS_KEY_PATH),
            (r"--ssl-cert (\S+)", L.PROXY_TLS_CERT_PATH),
        ],
        "ports": {L.PROXY_PORT, L.PROXY_API_PORT, L.HUB_PORT},
    },
    "compose/prometheus-entrypoint.sh": {
        "literals": [
            (r"install -m 0400 -o prometheus -g prometheus (\S+) ", PROMETHEUS.token_file),
            (r"install -m 0400 -o prometheus -g prometheus \S+ (\S+)", L.PROMETHEUS_TOKEN_PATH),
            (r"--config\.file=(\S+)", L.PROMETHEUS_CONFIG_PATH),
            (r"--storage\.tsdb\.path=(\S+)", L.PROMETHEUS_DATA_DIR),
            (r"--web\.listen-address=0\.0\.0\.0:(\d+)", str(L.PROMETHEUS_PORT)),
        ],
        "ports": {L.PROMETHEUS_PORT},
    },
    "images/slurm/entrypoint.sh": {
        "literals": [
            (r"conf=(\S+)", L.NODE_CONFIG_DIR),
            (r"s\.connect\(\(sys\.argv\[1\], (\d+)\)\)", str(L.SLURMCTLD_PORT)),
            (r"install -d -m 0755 /var/spool/slurmd /var/log/slurm (\S+)", L.NODE_RUN_DIR),
            (r"while :; do (\S+) serve;", L.NODE_AGENT_PROGRAM),
        ],
        "ports": {L.SLURMCTLD_PORT},
    },
    "images/slurm/node-agent.py": {
        "literals": [(r'CONFIG = "([^"]+)"', L.NODE_AGENT_CONFIG), (r"settings come from (\S+),", L.NODE_AGENT_CONFIG)],
    },
    "images/slurm/Dockerfile": {
        "literals": [
            (r"COPY node-agent\.py (\S+)", L.NODE_AGENT_PROGRAM),
            (r'> "(\S+)-\$step"', L.NODE_AGENT_PROGRAM),
            (r"copied into\n# (\S+)/ before", L.NODE_CONFIG_DIR),
        ],
    },
    "images/slurmdbd/entrypoint.sh": {
        "literals": [(r"conf=(\S+)", L.NODE_CONFIG_DIR), (r"Expects (\S+)/slurmdbd\.conf", L.NODE_CONFIG_DIR)],
    },
    "images/db/entrypoint.sh": {
        "literals": [(r"PGDATA:-([^}]+)\}", L.DB_DATA_DIR),
                     (r"DB_PASSWORD_FILE:-([^}]+)\}", L.secret_path(L.DB_PASSWORD))],
    },
    "images/hub/Dockerfile.j2": {
        "literals": [(r'CMD \["jupyterhub", "-f", "([^"]+)"\]', L.HUB_CONFIG_PATH)],
        "expose": {L.HUB_PORT},
    },
    "images/proxy/Dockerfile.j2": {"expose": {L.PROXY_PORT, L.PROXY_API_PORT}},
    "images/base/Dockerfile.j2": {"expose": {L.NOTEBOOK_PORT}},
    "images/db/Dockerfile.j2": {"expose": {L.DB_PORT}},
    "images/slurmdbd/Dockerfile.j2": {
        "literals": [(r"COPY health\.sh /usr/local/sbin/(\S+)", L.SLURMDBD_HEALTH)],
        "expose": {L.SLURMDBD_PORT},
    },
    "images/prometheus/Dockerfile.j2": {
        "literals": [(r"mkdir -p (\S+) ", L.PROMETHEUS_DATA_DIR),
                     (r"mkdir -p \S+ (\S+) ", str(Path(L.PROMETHEUS_TOKEN_PATH).parent))],
        "expose": {L.PROMETHEUS_PORT},
    },
}

# hubdeploy's own paths (and the secrets' directory): each one in these files must be a
# value of the contract, a directory of one, a file the renderer mounts, or one of the
# paths an image keeps to itself (written and read inside that image only).
_OWN_PATH = re.compile(r"(?:/etc/hubdeploy|/run/hubdeploy|/srv/hubdeploy|/run/secrets|/usr/local/sbin/hubdeploy)"
                       r"[\w./-]*[\w/]")
IMAGE_INTERNAL = {
    "/usr/local/sbin/hubdeploy-slurm-node",  # the slurm image's entrypoint
    "/usr/local/sbin/hubdeploy-slurmdbd",  # the slurmdbd image's entrypoint
    f"/usr/local/sbin/{L.SLURMDBD_HEALTH}",
    "/run/hubdeploy-slurmdbd.pid",  # written by its entrypoint, read by its health check
}
# A port: four or five digits that are not a file mode (0755) or part of a longer word.
_PORT = re.compile(r"(?<![\w.:-])([1-9]\d{3,4})(?![\w.])|:([1-9]\d{3,4})\b")


def _text(name: str) -> str:
    return (REPO / name).read_text(encoding="utf-8")


def _contract_paths() -> set[str]:
    values = {v for k, v in vars(L).items() if k.isupper() and isinstance(v, str) and v.startswith("/")}
    values |= {L.secret_path(getattr(L, k)) for k in ("PROXY_TOKEN", "DB_PASSWORD", "MUNGE_KEY")}
    values |= {PROMETHEUS.token_file}
    values |= {f"{L.NODE_CONFIG_DIR}/{Path(f).name}"
               for f in (*slurm_render.NODE_FILES, *slurm_render.CONTROLLER_FILES, *slurm_render.DBD_FILES)}
    return values | {str(Path(v).parent) for v in values} | IMAGE_INTERNAL



@pytest.mark.parametrize("name", sorted(n for n, spec in FILES.items() if "literals" in spec))
def test_each_literal_is_the_contracts_value(name):
    text = _text(name)
    for pattern, value in FILES[name]["literals"]:
        found = re.findall(pattern, text)
        assert found, f"{name}: {pattern!r} matches nothing: the file changed, update this test"
        assert set(found) == {value}, f"{name}: {pattern!r} found {found}, the contract says {value!r}"


@pytest.mark.parametrize("name", sorted(FILES))
def test_no_other_hubdeploy_path(name):
    stray = sorted({m.rstrip("/") for m in _OWN_PATH.findall(_text(name))} - _contract_paths())
    assert not stray, f"{name} spells paths the contract does not define: {stray}"


@pytest.mark.parametrize("name", sorted(n for n, spec in FILES.items() if "ports" in spec))
def test_no_other_port_in_scripts(name):
    ports = {int(a or b) for a, b in _PORT.findall(_text(name))}
    assert ports == FILES[name]["ports"], f"{name}: ports {sorted(ports)}, the contract's: {FILES[name]['ports']}"


@pytest.mark.parametrize("name", sorted(n for n, spec in FILES.items() if "expose" in spec))
def test_images_expose_the_contracts_ports(name):
    lines = re.findall(r"^EXPOSE (.+)$", _text(name), re.M)
    assert len(lines) == 1, f"{name}: {lines}"
    assert {int(p) for p in lines[0].split()} == FILES[name]["expose"]


def test_every_image_that_exposes_a_port_is_checked():
    exposing = {str(p.relative_to(REPO)) for p in (REPO / "images").rglob("Dockerfile*")
                if re.search(r"^EXPOSE ", p.read_text(), re.M)}
    assert exposing == {n for n, spec in FILES.items() if "expose" in spec}


def test_the_checks_see_a_wrong_value(tmp_path, monkeypatch):
    # The same checks on a copy of the proxy's entrypoint with the hub's port changed.
    wrong = _text("compose/proxy-entrypoint.sh").replace(f"hub:{L.HUB_PORT}", "hub:8082")
    (tmp_path / "compose").mkdir()
    (tmp_path / "compose" / "proxy-entrypoint.sh").write_text(wrong)
    monkeypatch.setitem(globals(), "REPO", tmp_path)
    with pytest.raises(AssertionError, match="the contract says"):
        test_each_literal_is_the_contracts_value("compose/proxy-entrypoint.sh")
    with pytest.raises(AssertionError, match="8082"):
        test_no_other_port_in_scripts("compose/proxy-entrypoint.sh")
