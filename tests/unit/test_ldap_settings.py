"""identity.ldap is decided once: ``validate`` (the site schema) and the hub (the ldap
identity source, reading the rendered hub.json) give every setting the same verdict, so
a site that passes ``validate`` is never refused at its first spawn, and what the hub
would refuse is refused at ``validate`` with the file, line and key (exit 2)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from hubdeploy import render
from hubdeploy.contract.layout import IDENTITY_FILES_DIR, LDAP_BIND_PASSWORD, secret_path
from hubdeploy.errors import SiteError
from hubdeploy.hub.identity import get_source
from hubdeploy.site.loader import load_site

SITE = """\
name: hdtldap
identity:
  source: ldap
  ldap:
    url: ldaps://ldap.example.org
{bind}    user_base: "ou=people,dc=example,dc=org"
{extra}profiles:
  - {{name: login, image: base}}
"""
BIND = """\
    bind_dn: "cn=hub,dc=example,dc=org"
    bind_password_file: ldap.pw
"""

# name -> (the settings, where validate points, what it says): the cases on which the
# two parsers disagreed. The first three passed validate and failed the first spawn.
REFUSED = {
    "user_filter_without_name": ("    user_filter: '(uid=carol)'\n", "identity.ldap.user_filter",
                                 "must contain {name}"),
    "group_filter_without_the_user": ("    group_filter: '(objectClass=posixGroup)'\n",
                                      "identity.ldap.group_filter", "must contain {name} or {dn}"),
    "unparenthesised_filter": ("    user_filter: 'uid={name}'\n", "identity.ldap.user_filter", "parenthesised"),
    # The hub took an anonymous bind, which validate refused (and render cannot express).
    "anonymous_bind": ("", "identity.ldap.bind_dn", "required"),
    "timeout_zero": ("    timeout: 0\n", "identity.ldap.timeout", "greater than 0"),
}
# The hub took a fractional timeout, which validate refused.
ACCEPTED = {"fractional_timeout": "    timeout: 2.5\n", "fractional_cache": "    cache_seconds: 0.5\n"}


def _site(tmp_path: Path, extra: str, bind: str = BIND) -> Path:
    (tmp_path / "ldap.pw").write_text("secret\n")
    (tmp_path / "ldap.pw").chmod(0o600)
    site = tmp_path / "site.yaml"
    site.write_text(SITE.format(bind=bind, extra=extra))
    return site


def _hub_reads(site_file: Path) -> dict:
    """identity.ldap as the renderer writes it into hub.json for this site file, even one
    validate refuses: the site's keys, with the password file where the hub mounts it."""
    ldap = dict(YAML(typ="safe").load(site_file.read_text())["identity"]["ldap"])
    if "bind_password_file" in ldap:
        ldap["bind_password_file"] = secret_path(LDAP_BIND_PASSWORD)
    return {"source": "ldap", "ldap": ldap, "home_template": "/home/{name}"}


def _verdicts(site_file: Path) -> tuple[str | None, str | None]:
    """(what validate says, what the hub says); None for accepted."""
    try:
        load_site(site_file)
        said = None
    except SiteError as exc:
        said = str(exc)
    try:
        get_source(_hub_reads(site_file))
        hub = None
    except ValueError as exc:
        hub = str(exc)
    return said, hub


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_validate_refuses_what_the_hub_would(tmp_path, name):
    extra, key, words = REFUSED[name]
    site_file = _site(tmp_path, extra, bind="" if name == "anonymous_bind" else BIND)
    said, hub = _verdicts(site_file)
    assert hub is not None, f"the hub accepts {name}"
    assert said is not None, f"validate accepts {name}, which the hub refuses: {hub}"
    assert f"site.yaml:" in said and f"{key}:" in said and words in said, said


@pytest.mark.parametrize("name", sorted(ACCEPTED))
def test_the_hub_reads_what_validate_accepts(tmp_path, name):
    site_file = _site(tmp_path, ACCEPTED[name])
    assert _verdicts(site_file) == (None, None)
    # And through the real renderer: hub.json's section is what the hub's source reads.
    site = load_site(site_file)
    refs = {n: f"hubdeploy/{site.name}-{n}:000000000000" for n in [*site.images.names(), "debian", "hub", "proxy"]}
    data = json.loads(render.render(site, tmp_path, refs)["hub/hub.json"])
    source = get_source(data["identity"])
    assert source.cfg.bind_password_file == secret_path(LDAP_BIND_PASSWORD)
    assert source.cfg.ca_file in (None, f"{IDENTITY_FILES_DIR}/ldap-ca.pem")


def test_validate_exits_2_at_the_key(tmp_path):
    site_file = _site(tmp_path, REFUSED["user_filter_without_name"][0])
    proc = subprocess.run([sys.executable, "-m", "hubdeploy", "--site", str(site_file), "validate"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "site.yaml:9:5: identity.ldap.user_filter: must contain {name}" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_the_schema_lists_the_contracts_keys_and_defaults():
    # The schema's model only names the keys and their types for editors: the same keys,
    # required or defaulted alike, as the contract's parser.
    from dataclasses import MISSING, fields

    from hubdeploy.contract.ldap import LdapConfig
    from hubdeploy.site.identity import IdentityLdap

    contract = {f.name: "required" if f.default is MISSING else f.default for f in fields(LdapConfig)}
    schema = {name: "required" if f.is_required() else f.default for name, f in IdentityLdap.model_fields.items()}
    assert schema == contract
