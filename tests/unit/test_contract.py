"""The CLI side's real output fed to the hub side's real readers.

For each site below, `hubdeploy render` writes compose.yaml and hub.json; then
config/jupyterhub_config.py loads that hub.json in JupyterHub, the spawner is built from
the resulting config, and every backend it names is constructed from it (closed configs:
a key the renderer writes and the backend does not know fails here). Secrets must agree
three ways: what the CLI side generates, what compose mounts into the hub, what hub.json
tells the hub to read.
"""

from __future__ import annotations

import ast
import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from ruamel.yaml import YAML

from hubdeploy import render, resources
from hubdeploy.contract import hubjson
from hubdeploy.contract.layout import HUB_SERVICE, SECRETS_DIR, SSH_KEY
from hubdeploy.contract.services import BUILTIN, RESERVED_NAMES
from hubdeploy.site.loader import load_site, load_site_text
from hubdeploy.state.secrets import secret_names

pytest.importorskip("jupyterhub")
from jupyterhub.app import JupyterHub  # noqa: E402
from jupyterhub.objects import Hub  # noqa: E402

from hubdeploy.hub import spawner as spawner_mod  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
CONFIG = resources.path("config/jupyterhub_config.py")

SITES = {
    "example": (REPO / "config" / "example" / "site.yaml").read_text(),
    # Compute profiles on collaboration images through Charliecloud (staged images).
    "compute-images": (REPO / "config" / "example" / "site-compute-images.yaml").read_text(),
    "postgres-and-services": """\
name: hdtcontract
database: {type: postgresql}
services:
  idle_culler: {enabled: false}
  extra:
    - {name: web, command: [python3, -m, web], port: 9000, scopes: [read:users]}
    - {name: ext, url: "http://ext.example.org:8000"}
profiles:
  - {name: base, image: base}
""",
    "ssh-submit": """\
name: hdtcontract
slurm:
  submit:
    ssh: {host: login1.example.org, user: jupyter, known_hosts: known_hosts}
identity: {allow_shared_compute_account: true}
profiles:
  - {name: login, image: base, default: true}
  - {name: compute, image: base, node: compute, slurm: {partition: batch, time: "30"}}
""",
    "swarm": """\
name: hdtcontract
orchestrator: swarm
public: {host: 0.0.0.0}
profiles:
  - {name: login, image: base, placement: {constraints: [node.labels.role==login]}, reserve: {cpu: 1}}
""",
}


def _refs(site) -> dict[str, str]:
    names = [*site.images.names(), "debian", "hub", "proxy", "db", "slurm", "slurmdbd"]
    return {n: f"hubdeploy/{site.name}-{n}:000000000000" for n in names}


@pytest.fixture(params=sorted(SITES))
def rendered(request, tmp_path, monkeypatch):
    """(site, files, hub.json data) of a site rendered by the real renderer, with its
    secrets generated where the hub's readers will look for them."""
    (tmp_path / "known_hosts").write_text("login1.example.org ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE\n")
    site_file = tmp_path / "site.yaml"
    site_file.write_text(SITES[request.param])
    site = load_site(site_file)
    files = render.render(site, tmp_path, _refs(site))
    data = json.loads(files["hub/hub.json"])
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    for name in secret_names(site):
        (secrets_dir / name).write_text(f"value-of-{name}\n")
    # The hub reads secrets at /run/secrets; here they are in tmp_path.
    text = files["hub/hub.json"].decode().replace(f'"{SECRETS_DIR}/', f'"{secrets_dir}/')
    (tmp_path / "hub.json").write_text(text)
    monkeypatch.setenv("HUBDEPLOY_HUB_JSON", str(tmp_path / "hub.json"))
    return site, files, data


def test_secrets_agree_three_ways(rendered):
    site, files, data = rendered
    generated = set(secret_names(site))
    compose = YAML(typ="safe").load(files["compose.yaml"])
    mounted = set(compose["services"][HUB_SERVICE]["secrets"])
    read = {data["cookie_secret_file"], data["proxy"]["token_file"],
            *(s["token_file"] for s in data["services"]),
            *([data["database"]["password_file"]] if data["database"]["password_file"] else [])}
    assert all(p.startswith(SECRETS_DIR + "/") for p in read)
    read_names = {p[len(SECRETS_DIR) + 1:] for p in read}
    # The hub reads only what compose mounts into it, and compose mounts only what exists.
    assert read_names <= mounted <= generated | ({SSH_KEY} if site.submit_ssh else set())
    assert set(compose["secrets"]) <= generated | {SSH_KEY}
    # Every built-in service a stack has is listed with the registry's scopes.
    listed = {s["name"]: s for s in data["services"]}
    for svc in BUILTIN:
        if not svc.optional or {"idle-culler": site.services.idle_culler.enabled,
                                "prometheus": site.services.prometheus.enabled}[svc.name]:
            assert listed[svc.name]["scopes"] == list(svc.scopes)
            assert listed[svc.name]["token_file"] == svc.token_file


def test_jupyterhub_loads_rendered_config_and_the_spawner_builds_every_backend(rendered, tmp_path):
    site, files, data = rendered
    app = JupyterHub()
    app.load_config_file(str(CONFIG))
    assert app.spawner_class is spawner_mod.HubdeploySpawner
    assert app.proxy_class.__name__ == "RouteKeepingProxy"
    assert [s["name"] for s in app.services] == [s["name"] for s in data["services"]]
    assert app.hub_connect_url == data["hub"]["connect_url"]
    spawner = spawner_mod.HubdeploySpawner(
        config=app.config, user=SimpleNamespace(name="ann", url="/user/ann/", escaped_name="ann"), hub=Hub(),
        orm_spawner=SimpleNamespace(name="", server=None),
    )
    assert spawner.profiles == list(hubjson.load().spawner.profiles)
    names = {spawner.backend_for(p) for p in spawner.profiles}
    for name in names | {spawner.backend}:
        backend = spawner.get_backend(name)  # the real class, parsing its real config
        assert backend.name == name
        assert set(backend.config.allowed_images) == {p["image_ref"] for p in data["spawner"]["profiles"]}
    # Every profile is one the spawner can resolve, and its limits parse.
    for p in spawner.profiles:
        assert spawner.resolve_profile({"profile": p.name}) is p


def test_a_backend_config_key_no_backend_knows_stops_the_hub(rendered, monkeypatch):
    site, files, data = rendered
    good = json.loads(Path(os.environ["HUBDEPLOY_HUB_JSON"]).read_text())
    names = [data["spawner"]["backend"], *data["spawner"]["backends"]]
    for name in names:
        bad = copy.deepcopy(good)
        config = bad["spawner"]["backend_config"] if name == names[0] else bad["spawner"]["backends"][name]
        config["no_such_key"] = 1
        path = Path(os.environ["HUBDEPLOY_HUB_JSON"]).with_name(f"bad-{name}.json")
        path.write_text(json.dumps(bad))
        monkeypatch.setenv("HUBDEPLOY_HUB_JSON", str(path))
        with pytest.raises(SystemExit, match=f"hub.json spawner: {name} backend config: unknown key no_such_key"):
            JupyterHub().load_config_file(str(CONFIG))


@pytest.mark.parametrize("name", sorted(RESERVED_NAMES))
def test_builtin_service_names_are_refused_for_site_services(name):
    text = f"name: x\nservices: {{extra: [{{name: {name}, url: 'http://x:1'}}]}}\nprofiles: [{{name: p, image: base}}]\n"
    from hubdeploy.errors import SiteError

    with pytest.raises(SiteError, match=f"service name '{name}' is reserved"):
        load_site_text(text, "site.yaml")


def test_validate_refuses_a_builtin_service_name_with_exit_2(tmp_path):
    site = tmp_path / "site.yaml"
    site.write_text("name: x\nservices:\n  extra:\n    - {name: hubdeploy-cli, url: 'http://x:1'}\n"
                    "profiles: [{name: p, image: base}]\n")
    proc = subprocess.run([sys.executable, "-m", "hubdeploy", "--site", str(site), "validate"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "site.yaml:4:8: services.extra[0].name: service name 'hubdeploy-cli' is reserved" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / ".hubdeploy").exists()


# -- layering: nothing imports upward ---------------------------------------------------

PACKAGE = REPO / "hubdeploy"
# Modules that run inside the hub's container (or are the contract both sides share).
HUB_SIDE = ("hubdeploy.contract", "hubdeploy.hub", "hubdeploy.backends", "hubdeploy.engineproxy")


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # ``from pkg import sub`` depends on the module pkg.sub, ``from mod import name``
            # on mod: _deps tells the two apart once it knows which modules exist.
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return {m for m in out if m == "hubdeploy" or m.startswith("hubdeploy.")}


def _module(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _all_modules() -> dict[str, set[str]]:
    return {_module(p): _imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


def _deps(modules: dict[str, set[str]], module: str) -> set[str]:
    """The hubdeploy modules ``module`` imports (``from X import name`` counts as X,
    ``from P import sub`` as the module P.sub)."""
    return {i if i in modules else i.rsplit(".", 1)[0] for i in modules[module]} & set(modules) - {module}


def _within(module: str, packages) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def test_contract_imports_only_the_standard_library_and_itself():
    for path in sorted((PACKAGE / "contract").glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
            for m in mods:
                top = m.split(".")[0]
                assert top in sys.stdlib_module_names or m.startswith("hubdeploy.contract") or top == "__future__", \
                    f"{path.name} imports {m}"


def test_no_module_imports_upward():
    modules = _all_modules()
    for module in modules:
        targets = _deps(modules, module)
        if _within(module, HUB_SIDE):
            # The hub side never imports the CLI side (the hub image does not even have it);
            # hubdeploy's package face and its error types are shipped with it.
            bad = [t for t in targets if not _within(t, HUB_SIDE) and t not in ("hubdeploy", "hubdeploy.errors")]
            assert not bad, f"{module} (hub side) imports {bad}"
        if _within(module, ("hubdeploy.backends",)):
            assert not [t for t in targets if _within(t, ("hubdeploy.hub",))], f"{module} imports hubdeploy.hub"
        if _within(module, ("hubdeploy.engineproxy",)):
            # The privileged part stays small: the standard library and the contract only.
            assert not [t for t in targets if not _within(t, ("hubdeploy.contract", "hubdeploy.engineproxy"))], \
                f"{module} imports beyond the contract"
        if _within(module, ("hubdeploy.contract",)):
            assert not [t for t in targets if not _within(t, ("hubdeploy.contract",))], module
        if _within(module, ("hubdeploy.render",)):
            assert not [t for t in targets if _within(t, ("hubdeploy.hub", "hubdeploy.smoke", "hubdeploy.backends",
                                                          "hubdeploy.engineproxy"))], \
                f"{module} takes constants from the hub side or the smoke client"


def _cycle(modules: dict[str, set[str]]) -> list[str] | None:
    """The first import cycle found among ``modules`` (name -> what it imports), or None."""
    state: dict[str, int] = {}

    def visit(m, trail):
        if state.get(m) == 1:
            return trail[trail.index(m):] + [m]
        if state.get(m) == 2:
            return None
        state[m] = 1
        for d in sorted(_deps(modules, m)):
            found = visit(d, trail + [m])
            if found:
                return found
        state[m] = 2
        return None

    for m in sorted(modules):
        found = visit(m, [])
        if found:
            return found
    return None


def test_the_cycle_check_sees_modules_that_share_a_prefix():
    # hub.identity <-> hub.identity_ldap once passed a check that took a shared name
    # prefix for a package and its own submodule.
    pair = {"hubdeploy.hub.identity": {"hubdeploy.hub.identity_ldap.LdapSource"},
            "hubdeploy.hub.identity_ldap": {"hubdeploy.hub.identity.IdentitySource"}}
    assert _cycle(pair) == ["hubdeploy.hub.identity", "hubdeploy.hub.identity_ldap", "hubdeploy.hub.identity"]
    # A package's __init__ importing its submodule, which imports a sibling through the
    # package (``from hubdeploy.render import slurm``), is no cycle: that names the sibling.
    package = {"hubdeploy.render": {"hubdeploy.render.compose.compose_data"},
               "hubdeploy.render.compose": {"hubdeploy.render.slurm"}, "hubdeploy.render.slurm": set()}
    assert _cycle(package) is None
    package["hubdeploy.render.slurm"] = {"hubdeploy.render.Mounts"}
    assert _cycle(package) == ["hubdeploy.render", "hubdeploy.render.compose", "hubdeploy.render.slurm",
                               "hubdeploy.render"]


def test_import_graph_has_no_cycle():
    cycle = _cycle(_all_modules())
    assert cycle is None, " -> ".join(cycle)
