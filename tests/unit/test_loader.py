"""The site loader: every bad input becomes one SiteError naming file, line, column and key.

The corpus in ``bad_sites/`` pairs each ``NAME.yaml`` with ``NAME.expect``: every line of
the expect file must appear in the error message, except lines starting with ``!``,
which must not (values that could be secrets), and ``#`` comments.
"""

from __future__ import annotations

import copy
import io
import os
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from ruamel.yaml import YAML

from hubdeploy.errors import SiteError
from hubdeploy.init import demo_site_text, write_demo_site
from hubdeploy.site import messages, model
from hubdeploy.site.files import resolve_site_path
from hubdeploy.site.loader import load_site, load_site_text

HERE = Path(__file__).parent
BAD = HERE / "bad_sites"
REPO = HERE.parent.parent
CORPUS = sorted(p.stem for p in BAD.glob("*.yaml"))
LINE_RE = re.compile(r"^(?P<file>[^:\n]+):(?P<line>\d+):(?P<col>\d+): \S")


def _dump(data: Any) -> str:
    out = io.StringIO()
    YAML().dump(data, out)
    return out.getvalue()


def _site_error(text: str, filename: str = "site.yaml") -> str:
    with pytest.raises(SiteError) as info:
        load_site_text(text, filename)
    return str(info.value)


# -- the corpus of bad sites -----------------------------------------------------------


def test_corpus_is_complete() -> None:
    assert len(CORPUS) >= 25
    assert sorted(p.stem for p in BAD.glob("*.expect")) == CORPUS


@pytest.mark.parametrize("name", CORPUS)
def test_bad_site(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Run from the corpus directory so messages say "NAME.yaml:..." as the expect files do.
    monkeypatch.chdir(BAD)
    with pytest.raises(SiteError) as info:
        load_site(Path(f"{name}.yaml"))
    message = str(info.value)
    assert info.value.exit_code == 2
    for line in (BAD / f"{name}.expect").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        if line.startswith("!"):
            assert line[1:] not in message, f"{name}: must not show {line[1:]!r}:\n{message}"
        else:
            assert line in message, f"{name}: missing {line!r} in:\n{message}"
    for line in message.splitlines():
        if line.startswith("  hint: "):
            continue
        m = LINE_RE.match(line)
        assert m and m["file"] == f"{name}.yaml", f"not FILE:LINE:COL: ...: {line!r}"


# -- files -----------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SiteError, match=r"site\.yaml: no such file"):
        load_site(tmp_path / "site.yaml")


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(SiteError, match="is a directory"):
        load_site(tmp_path)


def test_not_utf8(tmp_path: Path) -> None:
    p = tmp_path / "site.yaml"
    p.write_bytes(b"name: demo\ndescription: caf\xe9\n")
    with pytest.raises(SiteError, match=r"site\.yaml:2:17: not UTF-8"):
        load_site(p)


def test_unreadable(tmp_path: Path, monkeypatch) -> None:
    p = tmp_path / "site.yaml"
    p.write_text("name: demo\n")
    p.chmod(0)
    if os.geteuid() == 0:
        # Root reads every file: inject the PermissionError a normal user would get.
        def refuse(self):
            raise PermissionError(13, "Permission denied", str(self))

        monkeypatch.setattr(Path, "read_bytes", refuse)
    with pytest.raises(SiteError, match="cannot read"):
        load_site(p)


def test_fifo_is_not_read(tmp_path: Path) -> None:
    fifo = tmp_path / "site.yaml"
    os.mkfifo(fifo)
    with pytest.raises(SiteError, match="not a regular file"):
        load_site(fifo)


def test_resolve_site_path(tmp_path: Path) -> None:
    assert resolve_site_path(tmp_path, "certs/ca.pem") == tmp_path / "certs" / "ca.pem"
    assert resolve_site_path(tmp_path, "/etc/ca.pem") == Path("/etc/ca.pem")
    assert resolve_site_path(tmp_path, "~/ca.pem") == tmp_path / "~" / "ca.pem"


def test_relative_files_are_found_from_any_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site_dir = tmp_path / "site"
    (site_dir / "tls").mkdir(parents=True)
    for f in ("tls/cert.pem", "tls/key.pem", "ca.pem"):
        (site_dir / f).write_text("-----BEGIN-----\n")
    (site_dir / "site.yaml").write_text(
        "name: demo\ntls: {cert: tls/cert.pem, key: tls/key.pem}\nbuild: {ca_bundle: ca.pem}\n"
        "profiles: [{name: login, image: base}]\n"
    )
    monkeypatch.chdir(tmp_path)
    site = load_site(Path("site/site.yaml"))
    assert site.tls is not None and site.tls.cert == "tls/cert.pem"


def test_every_missing_file_is_reported(tmp_path: Path) -> None:
    (tmp_path / "ca").mkdir()
    (tmp_path / "site.yaml").write_text(
        "name: demo\ntls:\n  cert: cert.pem\n  key: /nonexistent/key.pem\nbuild:\n  ca_bundle: ca\n"
        "profiles: [{name: login, image: base}]\n"
    )
    with pytest.raises(SiteError) as info:
        load_site(tmp_path / "site.yaml")
    lines = str(info.value).splitlines()
    assert len(lines) == 3
    assert lines[0].endswith(f"site.yaml:3:3: tls.cert: file not found: {tmp_path}/cert.pem "
                             "(relative paths start at the site file's directory)")
    assert lines[1].endswith("site.yaml:4:3: tls.key: file not found: /nonexistent/key.pem")
    assert "site.yaml:6:3: build.ca_bundle: is a directory" in lines[2]


def test_file_checks_and_schema_errors_together(tmp_path: Path) -> None:
    (tmp_path / "site.yaml").write_text("name: demo\nbuild: {ca_bundle: nope.pem}\nprofiles: []\n")
    with pytest.raises(SiteError) as info:
        load_site(tmp_path / "site.yaml")
    assert "build.ca_bundle: file not found" in str(info.value)
    assert "profiles: expected at least 1 item" in str(info.value)


# -- YAML corners ----------------------------------------------------------------------


def test_alias_bomb_is_refused() -> None:
    text = "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
    for prev, cur in zip("abcdef", "bcdefg", strict=True):
        text += f"{cur}: &{cur} [{', '.join([f'*{prev}'] * 10)}]\n"
    assert "more than" in _site_error(text)


def test_merge_keys_are_located() -> None:
    text = "name: demo\nprofiles:\n  - &p {name: a, image: base}\n  - <<: *p\n    cpu: x\n"
    assert "site.yaml:5:5: profiles[1].cpu: expected a number" in _site_error(text)


def test_yaml_11_document_may_use_yes() -> None:
    # Declaring YAML 1.1 is an explicit choice: then yes is a boolean.
    site = load_site_text(
        "%YAML 1.1\n---\nname: demo\nservices: {idle_culler: {enabled: no}}\n"
        "profiles: [{name: a, image: base}]\n",
        "site.yaml",
    )
    assert site.services.idle_culler.enabled is False


def test_python_field_names_are_not_keys() -> None:
    msg = _site_error("name: demo\nimages: {base: {from_: debian}}\nprofiles: [{name: a, image: base}]\n")
    assert "images.base.from_: unknown key; did you mean 'from'?" in msg


def test_a_wrong_file_gives_a_bounded_message() -> None:
    text = "".join(f"user{i}: x\n" for i in range(500))
    lines = _site_error(text).splitlines()
    assert len(lines) <= 51
    assert lines[-1].endswith("more problems")


def test_long_keys_are_cut_short() -> None:
    key = "k" * 100
    msg = _site_error(f"name: demo\n{key}: 1\nprofiles: [{{name: a, image: base}}]\n")
    assert key not in msg and "k" * 40 + "..." in msg


# -- the demo site ---------------------------------------------------------------------


def test_demo_site_validates() -> None:
    site = load_site_text(demo_site_text(), "site.yaml")
    assert site.name == "demo"
    assert (site.public.host, site.public.port) == ("127.0.0.1", 8000)
    assert site.hub.authenticator.class_ == "dummy"
    assert site.hub.admin_users == ["admin"]
    assert site.database.type == "sqlite"
    assert site.services.idle_culler.enabled and site.services.idle_culler.timeout == 3600
    assert site.build.ca_bundle == "/etc/ssl/certs/ca-certificates.crt"
    assert list(site.images.collaborations) == ["astro"]
    assert site.images.collaborations["astro"].pip == ["numpy"]
    base, astro, compute = site.profiles
    assert (base.name, base.image, base.cpu, base.memory, base.home, base.default) == (
        "login-base", "base", 1.0, "2G", True, True,
    )
    assert (astro.name, astro.image, astro.cpu, astro.memory) == ("login-astro", "astro", 2.0, "4G")
    # No host path that may not exist: only named volumes.
    assert all(not v.source.startswith("/") for v in astro.volumes)
    # Login and compute nodes side by side: the demo runs its own Slurm cluster.
    assert (compute.node, compute.image) == ("compute", "base")
    assert site.slurm.cluster.nodes == 2 and compute.slurm.partitions == ["compute", "debug"]


def test_demo_text_is_commented() -> None:
    # Every key line is a comment's neighbour: the line above is a comment, or the
    # key is part of a short run of keys under one comment (at most 3 lines on).
    lines = demo_site_text().splitlines()
    for i, line in enumerate(lines):
        if re.match(r"^\s*(- )?[a-z_]+:", line):
            above = lines[max(0, i - 4) : i]
            assert any(a.strip().startswith("#") for a in above), f"uncommented key at line {i + 1}: {line}"


@pytest.mark.skipif(
    not os.access("/etc/ssl/certs/ca-certificates.crt", os.R_OK), reason="no Debian CA bundle here"
)
def test_example_site_loads_with_file_checks() -> None:
    assert load_site(REPO / "config" / "example" / "site.yaml").name == "demo"


def test_example_swarm_site_loads() -> None:
    site = load_site(REPO / "config" / "example" / "site-swarm.yaml")
    assert (site.name, site.orchestrator, site.hub.authenticator.class_) == ("swarmdemo", "swarm", "dummy")


def test_init_writes_the_example_byte_for_byte(tmp_path: Path) -> None:
    path = write_demo_site(tmp_path / "new")
    assert path == tmp_path / "new" / "site.yaml"
    assert path.read_bytes() == (REPO / "config" / "example" / "site.yaml").read_bytes()


def test_init_refuses_to_overwrite(tmp_path: Path) -> None:
    (tmp_path / "site.yaml").write_text("name: mine\n")
    with pytest.raises(SiteError, match="already exists"):
        write_demo_site(tmp_path)
    assert (tmp_path / "site.yaml").read_text() == "name: mine\n"


def test_init_refuses_a_dangling_symlink(tmp_path: Path) -> None:
    (tmp_path / "site.yaml").symlink_to(tmp_path / "elsewhere.yaml")
    with pytest.raises(SiteError, match="already exists"):
        write_demo_site(tmp_path)
    assert not (tmp_path / "elsewhere.yaml").exists()


# -- the schema is closed --------------------------------------------------------------

# Free-form maps by design: JupyterHub traits and environment variables.
PASS_THROUGH = {
    "hub.config",
    "hub.authenticator.config",
    "profiles[].spawner_config",
    "profiles[].environment",
    "services.extra[].environment",
    "images.base.kernels[].env",
    "images.collaborations.*.kernels[].env",
}
# Maps whose keys are names the site chooses, but whose values are closed models.
NAMED_MAPS = {"images.collaborations"}


def test_json_schema_is_closed_at_every_level() -> None:
    js = model.json_schema()
    defs = js.get("$defs", {})
    seen_defs: set[str] = set()
    maps: set[str] = set()

    def walk(node: dict[str, Any], path: str) -> None:
        if "$ref" in node:
            name = node["$ref"].rsplit("/", 1)[-1]
            seen_defs.add(name)
            node = defs[name]
        for key in ("anyOf", "oneOf", "allOf"):
            for sub in node.get(key, []):
                walk(sub, path)
        if "properties" in node:
            assert node.get("additionalProperties") is False, f"{path or '(top)'} is open"
            for k, sub in node["properties"].items():
                walk(sub, f"{path}.{k}" if path else k)
        elif node.get("type") == "object":
            maps.add(path)
            assert path in PASS_THROUGH | NAMED_MAPS, f"{path} is a free-form map"
            if "patternProperties" in node:
                # Keys constrained by a pattern: anything else must be refused too.
                assert node.get("additionalProperties") is False, f"{path}: keys off the pattern pass"
            if path in NAMED_MAPS:
                assert "patternProperties" in node, f"{path}: names unchecked"
                for sub in node["patternProperties"].values():
                    walk(sub, f"{path}.*")
        if node.get("type") == "array" and "items" in node:
            walk(node["items"], f"{path}[]")

    walk(js, "")
    assert seen_defs == set(defs), "a model the walk did not reach"
    assert maps == PASS_THROUGH | NAMED_MAPS
    # Aliases as written in YAML, not Python names.
    assert "class" in defs["Authenticator"]["properties"]
    assert "from" in defs["BaseImage"]["properties"]


# -- unknown keys anywhere are rejected (property test) --------------------------------

FULL: dict[str, Any] = {
    "name": "demo",
    "public": {"host": "0.0.0.0", "port": 8000},
    "tls": {"cert": "cert.pem", "key": "key.pem"},
    "hub": {"authenticator": {"class": "dummy"}, "admin_users": ["admin"]},
    "database": {"type": "sqlite"},
    "proxy": {"route_check_interval": 1},
    "services": {"idle_culler": {"enabled": True}, "prometheus": {"enabled": True, "port": 9090},
                 "extra": [{"name": "mon", "url": "http://mon:9000"}]},
    "build": {"debian": {"suite": "bookworm"}},
    "images": {"base": {"pip": []}, "collaborations": {"astro": {"parent": "base",
                                                                   "kernels": [{"name": "py", "packages": ["six"]}]}}},
    "slurm": {"submit": {"prefix": ["ssh", "login1", "{name}"]}},
    "identity": {"source": "auto", "auto": {"uid_min": 30000, "uid_max": 39999}, "home": "/home/{name}"},
    "limits": {"hub": {"memory": "4G", "cpus": 4, "pids": 4096}},
    "orchestrator": "swarm",
    "swarm": {"encrypted": True},
    "profiles": [
        {"name": "login", "image": "astro", "volumes": [{"source": "/data", "target": "/data"}], "pids_limit": 300,
         "placement": {"constraints": ["node.labels.role==login"], "spread": ["node.labels.rack"]},
         "reserve": {"cpu": 0.5, "memory": "1G"}},
        {"name": "compute", "image": "base", "node": "compute",
         "slurm": {"partitions": ["compute", "debug"], "time": "60", "limits": {"max_cpu": 2, "max_time": "4:00:00"}}},
    ],
}
# The stack's own cluster runs with orchestrator compose only (no swarm settings then).
FULL_CLUSTER: dict[str, Any] = {
    **{k: v for k, v in FULL.items() if k not in ("orchestrator", "swarm")},
    "slurm": {"cluster": {"nodes": 2, "partitions": ["compute", "debug"], "user_limits": {"jobs": 4}}},
    "profiles": [{k: v for k, v in p.items() if k not in ("placement", "reserve")} for p in FULL["profiles"]],
}
# slurm.cluster and slurm.submit exclude each other: the submit level has its own document.
# (Each also carries another identity source: file and ldap exclude auto's section.)
FULL_SUBMIT: dict[str, Any] = {
    **FULL, "slurm": {"submit": {"prefix": ["ssh", "login1"]}},
    "identity": {"source": "file", "file": {"passwd": "passwd", "group": "group"},
                 "allow_shared_compute_account": True},
}
# ... and submit.ssh excludes submit.prefix.
FULL_SSH: dict[str, Any] = {
    **FULL,
    "slurm": {"submit": {"ssh": {"host": "login1", "user": "svc", "port": 2222, "known_hosts": "kh"}}},
    "identity": {"source": "ldap", "allow_shared_compute_account": True,
                 "ldap": {"url": "ldaps://ldap.example.org", "bind_dn": "cn=hub,dc=example,dc=org",
                          "bind_password_file": "pw", "user_base": "ou=people,dc=example,dc=org"}},
}
LEVELS: list[tuple[Any, ...]] = [
    (),
    ("public",),
    ("tls",),
    ("hub",),
    ("hub", "authenticator"),
    ("database",),
    ("proxy",),
    ("services",),
    ("services", "idle_culler"),
    ("services", "prometheus"),
    ("services", "extra", 0),
    ("build",),
    ("build", "debian"),
    ("images",),
    ("images", "base"),
    ("images", "collaborations", "astro"),
    ("images", "collaborations", "astro", "kernels", 0),
    ("profiles", 0),
    ("profiles", 0, "volumes", 0),
    ("profiles", 0, "placement"),
    ("profiles", 0, "reserve"),
    ("swarm",),
    ("profiles", 1, "slurm"),
    ("profiles", 1, "slurm", "limits"),
    ("slurm",),
    ("slurm", "cluster"),
    ("slurm", "cluster", "user_limits"),
    ("slurm", "submit"),
    ("slurm", "submit", "ssh"),
    ("identity",),
    ("identity", "auto"),
    ("identity", "file"),
    ("identity", "ldap"),
    ("limits",),
    ("limits", "hub"),
]


def _full_for(level: tuple[Any, ...]) -> dict[str, Any]:
    if level[:3] == ("slurm", "submit", "ssh") or level[:2] == ("identity", "ldap"):
        return FULL_SSH
    if level[:2] == ("identity", "file"):
        return FULL_SUBMIT
    if level[:2] == ("slurm", "cluster"):
        return FULL_CLUSTER
    return FULL_SUBMIT if level[:2] == ("slurm", "submit") else FULL


def _at(data: Any, level: tuple[Any, ...]) -> Any:
    for seg in level:
        data = data[seg]
    return data


def test_full_site_is_valid_and_levels_cover_every_model() -> None:
    load_site_text(_dump(FULL), "site.yaml")
    load_site_text(_dump(FULL_CLUSTER), "site.yaml")
    load_site_text(_dump(FULL_SUBMIT), "site.yaml")
    load_site_text(_dump(FULL_SSH), "site.yaml")
    models = {messages.model_at(level) for level in LEVELS}
    assert None not in models
    assert {m.__name__ for m in models} == {"Site", *model.json_schema()["$defs"]}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(level=st.sampled_from(LEVELS), key=st.text(min_size=1, max_size=50))
def test_unknown_keys_are_rejected_at_every_level(level: tuple[Any, ...], key: str) -> None:
    if key in messages.allowed_keys(level):
        return
    # ruamel's emitter does not round-trip every string (a lone U+0085 comes back as a
    # space); what is tested here is the loader, so use keys that YAML carries intact.
    assume(dict(YAML().load(_dump({key: 1}))) == {key: 1})
    data = copy.deepcopy(_full_for(level))
    _at(data, level)[key] = "x"
    text = _dump(data)
    message = _site_error(text)
    expected = f"{messages.format_path((*level, key))}: unknown key"
    assert expected in message, message
    for line in message.splitlines():
        assert LINE_RE.match(line), line


# -- nothing but SiteError, whatever the input (property test) -------------------------


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=300))
def test_arbitrary_text_gives_site_error_or_site(text: str) -> None:
    try:
        load_site_text(text, "site.yaml")
    except SiteError as e:
        assert str(e).startswith("site.yaml")


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_mutated_demo_gives_site_error_or_site(data: st.DataObject) -> None:
    text = demo_site_text()
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(text)))
        op = data.draw(st.sampled_from(["insert", "delete", "replace"]))
        ch = data.draw(st.sampled_from(list(" \t\n:-[]{}#&*!|>'\"%@`,?0yx")))
        if op == "insert":
            text = text[:i] + ch + text[i:]
        elif op == "delete":
            text = text[:i] + text[i + 1 :]
        else:
            text = text[:i] + ch + text[i + 1 :]
    try:
        load_site_text(text, "site.yaml")
    except SiteError as e:
        for line in str(e).splitlines():
            assert line.startswith("site.yaml") or line.startswith("  hint: "), line
