"""The ldap identity source without a directory: its config, filters, entry mapping, cache
and thread. tests/integration/test_identity_ldap.py runs it against a real slapd."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from hubdeploy.contract.identity import Group, IdentityError
from hubdeploy.hub import identity_ldap
from hubdeploy.hub.identity import get_source
from hubdeploy.contract.ldap import DEFAULT_GROUP_FILTER, DEFAULT_USER_FILTER, parse_config
from hubdeploy.hub.identity_ldap import LdapSource, fill, identity_from_entries

BASE = {"url": "ldaps://ldap.example.org", "user_base": "ou=people,dc=example,dc=org",
        "group_base": "ou=groups,dc=example,dc=org", "bind_dn": "cn=hub,dc=example,dc=org",
        "bind_password_file": "/run/secrets/ldap_bind_password"}
SOURCE = "ldap (ldaps://ldap.example.org, ou=people,dc=example,dc=org)"


def home(name):
    return f"/home/{name}"


def test_defaults():
    cfg = parse_config(BASE)
    assert (cfg.start_tls, cfg.ca_file) == (False, None)
    assert (cfg.user_filter, cfg.group_filter) == (DEFAULT_USER_FILTER, DEFAULT_GROUP_FILTER)
    assert (cfg.timeout, cfg.cache_seconds) == (10, 60)


def test_what_the_site_schema_dumps_is_read():
    # The renderer writes every key of the site's identity.ldap, unset ones as null.
    dumped = {**BASE, "start_tls": True, "ca_file": None, "bind_dn": "cn=hub,dc=example,dc=org",
              "bind_password_file": "/run/secrets/ldap_bind_password", "group_base": None,
              "user_filter": DEFAULT_USER_FILTER, "group_filter": DEFAULT_GROUP_FILTER, "timeout": 10,
              "cache_seconds": 60}
    cfg = parse_config(dumped)
    assert cfg.ca_file is None and cfg.group_base is None and cfg.start_tls
    for key in ("url", "user_base", "user_filter", "timeout", "start_tls"):
        with pytest.raises(ValueError, match=f"identity.ldap.{key} must be"):
            parse_config({**dumped, key: None})


def test_full_config_is_read():
    cfg = parse_config({**BASE, "url": "ldap://ldap.example.org:389", "start_tls": True, "ca_file": "/ca.pem",
                        "bind_dn": "cn=hub,dc=example,dc=org", "bind_password_file": "/run/secrets/ldap",
                        "timeout": 2.5, "cache_seconds": 0})
    assert cfg.start_tls and cfg.timeout == 2.5 and cfg.cache_seconds == 0
    assert cfg.bind_password_file == "/run/secrets/ldap"


@pytest.mark.parametrize("bad, words", [
    ({"uri": "ldaps://x"}, "unknown key(s) 'uri'"),
    ({"bind_password": "hunter2"}, "bind_password_file"),
    ({"url": "https://ldap.example.org"}, "ldap://host"),
    ({"url": "ldaps://hub:s3cret@ldap.example.org"}, "without credentials"),
    ({"url": "ldaps://ldap.example.org/dc=example,dc=org"}, "only the server"),
    ({"url": "ldap://ldap.example.org"}, "needs start_tls"),
    ({"bind_dn": None}, "bind_dn must be str"),
    ({"url": "ldaps://ldap.example.org:x"}, "port that is not a number"),
    ({"url": "ldaps://ldap_example.org"}, "host name or an address"),
    ({"user_filter": "(uid=carol)"}, "must contain {name}"),
    ({"group_filter": "(objectClass=posixGroup)"}, "{name} or {dn}"),
    ({"user_filter": "uid={name}"}, "parenthesised"),
    ({"timeout": True}, "timeout must be int or float"),
    ({"timeout": 0}, "timeout must be greater than 0"),
    ({"timeout": 121}, "at most 120"),
    ({"cache_seconds": -1}, "cache_seconds must be between 0 and 3600"),
    ({"start_tls": "yes"}, "start_tls must be bool"),
])
def test_bad_config_is_refused(bad, words):
    with pytest.raises(ValueError) as err:
        parse_config({**BASE, **bad})
    assert words in str(err.value)


def test_required_keys_and_a_mapping():
    # The hub always binds (no anonymous search): the DN and its password file are required.
    for key in ("url", "user_base", "bind_dn", "bind_password_file"):
        with pytest.raises(ValueError, match=f"identity.ldap.{key} is required"):
            parse_config({k: v for k, v in BASE.items() if k != key})
    with pytest.raises(ValueError, match="must be a mapping"):
        parse_config(None)
    with pytest.raises(ValueError, match="must be a mapping"):
        get_source({"source": "ldap"})


def test_refusals_never_echo_a_password():
    for raw in ({**BASE, "bind_password": "hunter2"}, {**BASE, "url": "ldaps://hub:hunter2@ldap.example.org"}):
        with pytest.raises(ValueError) as err:
            parse_config(raw)
        assert "hunter2" not in str(err.value)


@pytest.mark.parametrize("user", ["*)(uid=*", "*", "carol)(|(uid=*", "a\\b", "x\x00y"])
def test_the_username_is_escaped_in_filters(user):
    flt = fill(DEFAULT_USER_FILTER, name=user)
    value = flt[len("(&(objectClass=posixAccount)(uid="):-2]
    # Every filter metacharacter of the name is a \XX escape: the filter keeps its shape.
    assert not set(value) & set("*()\x00") and flt.count("(") == 3 and flt.count(")") == 3
    assert value.replace("\\2a", "*").replace("\\28", "(").replace("\\29", ")").replace("\\00", "\x00") \
        .replace("\\5c", "\\") == user


def test_dn_is_escaped_too():
    assert fill("(member={dn})", dn="uid=a*,ou=p") == "(member=uid=a\\2a,ou=p)"
    # A placeholder inside a substituted value is left as text.
    assert fill("(|(uid={name})(member={dn}))", name="{dn}", dn="uid=x") == "(|(uid={dn})(member=uid=x))"


ATTRS = {"uid": ["carol"], "uidNumber": [30001], "gidNumber": ["30001"], "homeDirectory": ["/home/c"],
         "loginShell": ["/bin/zsh"]}


def test_entry_mapping():
    groups = [{"cn": ["astro"], "gidNumber": [40001]}, {"cn": ["carol"], "gidNumber": ["30001"]},
              {"cn": ["aaa"], "gidNumber": ["30500"]}]
    ident = identity_from_entries("carol", ATTRS, groups, SOURCE, home)
    assert (ident.user, ident.name, ident.uid, ident.gid, ident.home, ident.shell, ident.group_name) == \
        ("carol", "carol", 30001, 30001, "/home/c", "/bin/zsh", "carol")
    assert ident.groups == (Group("aaa", 30500), Group("astro", 40001))  # by gid, primary not repeated


def test_entry_mapping_defaults_and_case():
    # uid matches case-insensitively: the account name is the directory's spelling.
    attrs = {"UID": ["other", "carol"], "UIDNUMBER": ["30001"], "gidnumber": ["100"]}
    ident = identity_from_entries("Carol", attrs, [], SOURCE, home)
    assert (ident.user, ident.name, ident.home, ident.shell, ident.group_name) == \
        ("Carol", "carol", "/home/carol", "/bin/bash", "")


@pytest.mark.parametrize("attrs, words", [
    ({**ATTRS, "uidNumber": []}, "no usable uidNumber"),
    ({**ATTRS, "uidNumber": ["12a"]}, "no usable uidNumber ('12a')"),
    ({**ATTRS, "gidNumber": ["-5"]}, "no usable gidNumber"),
    ({**ATTRS, "uidNumber": ["\u0663"]}, "no usable uidNumber"),  # a digit, but not ASCII
    ({**ATTRS, "uidNumber": ["0"]}, "uid 0 is reserved (system accounts)"),
    # jovyan's uid owns /home/jovyan in the images (and once owned /opt/venv).
    ({**ATTRS, "uidNumber": ["1000"]}, "uid 1000 is reserved (the notebook user jovyan"),
    ({**ATTRS, "uidNumber": ["64030"]}, "uid 64030 is reserved (Debian's global system accounts"),
    ({**ATTRS, "uid": ["slurm"]}, "account name 'slurm' is an account or group of the images"),
    ({**ATTRS, "homeDirectory": ["relative"]}, "not an absolute path"),
    ({k: v for k, v in ATTRS.items() if k != "uid"}, "has no uid"),
])
def test_bad_entries_are_refused(attrs, words):
    user = attrs.get("uid", ["carol"])[0]
    with pytest.raises(IdentityError) as err:
        identity_from_entries(user, attrs, [], SOURCE, home)
    assert words in str(err.value) and SOURCE in str(err.value)


def test_bad_group_is_refused():
    with pytest.raises(IdentityError, match="posixGroup 'astro' .* no usable gidNumber"):
        identity_from_entries("carol", ATTRS, [{"cn": ["astro"], "gidNumber": ["x"]}], SOURCE, home)


def _fake_source(monkeypatch, cache_seconds, delay=0.0):
    calls = []

    def fake_lookup(self, user):
        calls.append((user, threading.current_thread() is threading.main_thread()))
        time.sleep(delay)
        if user == "nobody":
            raise IdentityError("no posixAccount")
        return identity_from_entries(user, {**ATTRS, "uidNumber": [30000 + len(calls)]}, [], SOURCE, home)

    monkeypatch.setattr(LdapSource, "_lookup", fake_lookup)
    src = get_source({"source": "ldap", "ldap": {**BASE, "cache_seconds": cache_seconds, "timeout": 1}})
    return src, calls


def test_positive_answers_are_cached_refusals_are_not(monkeypatch):
    src, calls = _fake_source(monkeypatch, 60)

    async def run():
        first, again = await src.lookup("carol"), await src.lookup("carol")
        for _ in range(2):
            with pytest.raises(IdentityError):
                await src.lookup("nobody")
        return first, again

    first, again = asyncio.run(run())
    assert first == again and [u for u, _ in calls] == ["carol", "nobody", "nobody"]
    src0, calls0 = _fake_source(monkeypatch, 0)
    assert asyncio.run(src0.lookup("carol")).uid != asyncio.run(src0.lookup("carol")).uid


def test_lookups_run_off_the_event_loop_and_are_bounded(monkeypatch):
    src, calls = _fake_source(monkeypatch, 0, delay=0.3)

    async def run():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.02)
                ticks += 1

        t = asyncio.create_task(ticker())
        await src.lookup("carol")
        t.cancel()
        return ticks

    assert asyncio.run(run()) >= 5  # the loop kept running during the 0.3 s lookup
    assert calls == [("carol", False)]
    slow, _ = _fake_source(monkeypatch, 0, delay=3)

    async def bounded():
        t0 = time.monotonic()
        with pytest.raises(IdentityError, match="did not answer within 1 s"):
            await slow.lookup("carol")
        return time.monotonic() - t0

    assert asyncio.run(bounded()) < 2  # (asyncio.run then waits for the worker thread to end)


def test_describe_names_the_server_and_base():
    assert get_source({"source": "ldap", "ldap": BASE}).describe() == SOURCE
    assert identity_ldap.LdapSource.name == "ldap"


def test_a_library_message_echoing_the_password_is_masked():
    exc = OSError("bind as cn=hub with password s3cr3t-pw failed")
    assert identity_ldap._reason(exc, "s3cr3t-pw") == "bind as cn=hub with password *** failed"
