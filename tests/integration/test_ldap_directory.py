"""The ``ldap`` identity source against a real OpenLDAP slapd, over verified TLS.

The session fixture starts slapd (Debian's package: scripts/host-setup.sh --test installs
it; missing, the fixture fails) on free loopback ports with a throwaway configuration and
database: ldap:// (for StartTLS) and ldaps:// on 127.0.0.1, and ldaps:// on 127.0.0.2 too,
with a certificate naming only 127.0.0.1 and localhost. Anonymous clients read nothing;
the hub's bind DN reads everything.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import hashlib
import ipaddress
import os
import secrets
import shutil
import socket
import ssl
import subprocess
import time

import ldap3
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from hubdeploy.contract.identity import Group, IdentityError
from hubdeploy.hub.identity import get_source

pytestmark = pytest.mark.integration

SUFFIX = "dc=example,dc=org"
HUB_DN = f"cn=hub,{SUFFIX}"
ADMIN_DN = f"cn=admin,{SUFFIX}"
PEOPLE, GROUPS = f"ou=people,{SUFFIX}", f"ou=groups,{SUFFIX}"
SCHEMAS = ("core", "cosine", "nis", "inetorgperson")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ssha(password: str) -> str:
    salt = secrets.token_bytes(8)
    return "{SSHA}" + base64.b64encode(hashlib.sha1(password.encode() + salt).digest() + salt).decode()


def _pem(obj) -> bytes:
    if hasattr(obj, "private_bytes"):
        return obj.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())
    return obj.public_bytes(serialization.Encoding.PEM)


def _cert(subject: str, key, issuer_name: x509.Name, issuer_key, ca: bool) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    b = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
         .issuer_name(issuer_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        b = b.add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
    else:
        b = b.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def _make_ca(tmp, name: str):
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _cert(name, key, x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]), key, ca=True)
    (tmp / f"{name}.pem").write_bytes(_pem(cert))
    return key, cert


SLAPD_CONF = """\
{includes}
modulepath /usr/lib/ldap
moduleload back_mdb
pidfile {d}/slapd.pid
TLSCACertificateFile {d}/ca.pem
TLSCertificateFile {d}/server.pem
TLSCertificateKeyFile {d}/server.key
# As a real directory: nothing but StartTLS itself over a connection without TLS.
security tls=1
database mdb
maxsize 33554432
suffix "{suffix}"
rootdn "{admin}"
rootpw {admin_pw}
directory {d}/db
access to attrs=userPassword by anonymous auth by * none
access to * by dn.exact="{hub}" read by * none
"""


def _ldif(hub_pw: str) -> str:
    def entry(dn, *lines):
        return f"dn: {dn}\n" + "".join(f"{line}\n" for line in lines) + "\n"

    def person(name, uid, gid, shell=True):
        lines = ["objectClass: inetOrgPerson", "objectClass: posixAccount", f"uid: {name}", f"cn: {name}",
                 f"sn: {name}", f"uidNumber: {uid}", f"gidNumber: {gid}", f"homeDirectory: /home/{name}"]
        return entry(f"uid={name},{PEOPLE}", *lines, *(["loginShell: /bin/zsh"] if shell else []))

    def group(name, gid, *members):
        return entry(f"cn={name},{GROUPS}", "objectClass: posixGroup", f"cn: {name}", f"gidNumber: {gid}",
                     *(f"memberUid: {m}" for m in members))

    return (entry(SUFFIX, "objectClass: dcObject", "objectClass: organization", "dc: example", "o: example")
            + entry(HUB_DN, "objectClass: person", "objectClass: simpleSecurityObject", "cn: hub", "sn: hub",
                    f"userPassword: {_ssha(hub_pw)}")
            + entry(PEOPLE, "objectClass: organizationalUnit", "ou: people")
            + entry(GROUPS, "objectClass: organizationalUnit", "ou: groups")
            + person("carol", 30001, 30001) + person("dave", 30002, 30002, shell=False)
            + group("carol", 30001) + group("astro", 40001, "carol") + group("optics", 40002, "dave"))


@pytest.fixture(scope="session")
def slapd(tmp_path_factory):
    """A running slapd: its URLs, CA file, bind DN and password files, admin password."""
    for tool in ("slapd", "slapadd"):
        assert shutil.which(tool) or os.path.exists(f"/usr/sbin/{tool}"), \
            f"{tool} missing: scripts/host-setup.sh --test installs slapd"
    d = tmp_path_factory.mktemp("slapd")
    (d / "db").mkdir()
    ca_key, ca = _make_ca(d, "ca")
    _make_ca(d, "other-ca")
    key = ec.generate_private_key(ec.SECP256R1())
    (d / "server.pem").write_bytes(_pem(_cert("127.0.0.1", key, ca.subject, ca_key, ca=False)))
    (d / "server.key").write_bytes(_pem(key))
    os.chmod(d / "server.key", 0o600)
    hub_pw, admin_pw = secrets.token_hex(16), secrets.token_hex(16)
    (d / "hub.pw").write_text(hub_pw + "\n")
    os.chmod(d / "hub.pw", 0o600)
    includes = "\n".join(f"include /etc/ldap/schema/{s}.schema" for s in SCHEMAS)
    (d / "slapd.conf").write_text(SLAPD_CONF.format(includes=includes, d=d, suffix=SUFFIX, admin=ADMIN_DN,
                                                    admin_pw=admin_pw, hub=HUB_DN))
    (d / "data.ldif").write_text(_ldif(hub_pw))
    sbin = lambda tool: shutil.which(tool) or f"/usr/sbin/{tool}"  # noqa: E731
    subprocess.run([sbin("slapadd"), "-f", str(d / "slapd.conf"), "-l", str(d / "data.ldif")],
                   check=True, capture_output=True, timeout=60)
    plain, tls = _free_port(), _free_port()
    urls = " ".join(f"{scheme}://{ip}:{port}/" for scheme, port in (("ldap", plain), ("ldaps", tls))
                    for ip in ("127.0.0.1", "127.0.0.2"))
    log = open(d / "slapd.log", "wb")
    # -d keeps slapd in the foreground, so this Popen is the server and the finaliser stops it.
    proc = subprocess.Popen([sbin("slapd"), "-f", str(d / "slapd.conf"), "-h", urls, "-d", "0"],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, f"slapd exited: {(d / 'slapd.log').read_text()[-2000:]}"
            try:
                socket.create_connection(("127.0.0.1", tls), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "slapd did not listen within 20 s"
                time.sleep(0.1)
        yield {"dir": d, "ldap": f"ldap://127.0.0.1:{plain}", "ldaps": f"ldaps://127.0.0.1:{tls}",
               "ldaps_other_ip": f"ldaps://127.0.0.2:{tls}",
               "ldap_other_ip": f"ldap://127.0.0.2:{plain}", "ca": str(d / "ca.pem"),
               "other_ca": str(d / "other-ca.pem"), "pw_file": str(d / "hub.pw"), "hub_pw": hub_pw,
               "admin_pw": admin_pw}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


def _source(slapd, url_key="ldaps", **over):
    ldap = {"url": slapd[url_key], "ca_file": slapd["ca"], "bind_dn": HUB_DN, "bind_password_file": slapd["pw_file"],
            "user_base": PEOPLE, "group_base": GROUPS, "timeout": 5, **over}
    if url_key == "ldap":
        ldap["start_tls"] = True
    return get_source({"source": "ldap", "ldap": ldap, "home_template": "/home/{name}"})


def _lookup(source, user):
    return asyncio.run(source.lookup(user))


@pytest.mark.parametrize("url_key", ["ldaps", "ldap"])
def test_carol_over_ldaps_and_starttls(slapd, url_key):
    ident = _lookup(_source(slapd, url_key), "carol")
    assert (ident.user, ident.name, ident.uid, ident.gid) == ("carol", "carol", 30001, 30001)
    assert ident.home == "/home/carol" and ident.shell == "/bin/zsh"
    assert ident.groups == (Group("astro", 40001),)
    assert ident.group_name == "carol"
    assert ident.group_lines() == ["carol:x:30001:", "astro:x:40001:carol"]


def test_defaults_when_directory_has_no_shell_or_primary_group(slapd):
    ident = _lookup(_source(slapd), "dave")
    assert (ident.uid, ident.gid, ident.shell, ident.group_name) == (30002, 30002, "/bin/bash", "")
    assert ident.groups == (Group("optics", 40002),)


def test_without_group_base_no_group_is_searched(slapd):
    ident = _lookup(_source(slapd, group_base=None), "carol")
    assert (ident.uid, ident.gid, ident.groups, ident.group_name) == (30001, 30001, (), "")


def test_start_tls_on_ldaps_is_tls_once(slapd):
    # The site schema accepts start_tls with an ldaps:// URL: the connection is TLS already.
    assert _lookup(_source(slapd, start_tls=True), "carol").uid == 30001


def test_unknown_user_is_refused_naming_the_source(slapd):
    with pytest.raises(IdentityError) as err:
        _lookup(_source(slapd), "mallory")
    msg = str(err.value)
    assert "'mallory' has no posixAccount" in msg and slapd["ldaps"] in msg and PEOPLE in msg


@pytest.mark.parametrize("user", ["*)(uid=*", "*", "carol)(uid=*", "car*"])
def test_filter_injection_gets_a_refusal_not_an_account(slapd, user):
    with pytest.raises(IdentityError, match="has no posixAccount"):
        _lookup(_source(slapd), user)


def test_wrong_password_cannot_bind_and_no_password_is_shown(slapd, tmp_path):
    wrong = secrets.token_hex(16)
    (tmp_path / "pw").write_text(wrong)
    with pytest.raises(IdentityError) as err:
        _lookup(_source(slapd, bind_password_file=str(tmp_path / "pw")), "carol")
    msg = str(err.value)
    assert "cannot bind" in msg and "invalidCredentials" in msg and "no posixAccount" not in msg
    assert wrong not in msg and slapd["hub_pw"] not in msg
    assert wrong not in repr(err.value.args) and err.value.__cause__ is None
    # An empty password would make the simple bind an anonymous one: refused before any bind.
    (tmp_path / "pw").write_text("\n")
    with pytest.raises(IdentityError, match="empty bind_password_file"):
        _lookup(_source(slapd, bind_password_file=str(tmp_path / "pw")), "carol")


def test_anonymous_reads_nothing(slapd):
    # The ACLs the fixture sets are what the bind is for: the source never searches
    # without it (validate and the hub refuse a section without bind_dn) ...
    with pytest.raises(ValueError, match="identity.ldap.bind_dn is required"):
        get_source({"source": "ldap", "ldap": {"url": slapd["ldaps"], "ca_file": slapd["ca"],
                                               "user_base": PEOPLE, "group_base": GROUPS}})
    # ... and an anonymous client sees no account: slapd hides even the base from it.
    tls = ldap3.Tls(validate=ssl.CERT_REQUIRED, ca_certs_file=slapd["ca"])
    with ldap3.Connection(ldap3.Server(slapd["ldaps"], tls=tls, get_info=ldap3.NONE), auto_bind=True) as conn:
        conn.search(SUFFIX, "(objectClass=*)", attributes=["*"])
        assert conn.response == [] or all(e.get("type") != "searchResEntry" for e in conn.response)


@pytest.mark.parametrize("url_key", ["ldaps", "ldap"])
def test_a_ca_that_does_not_verify_the_server_is_refused(slapd, url_key):
    with pytest.raises(IdentityError) as err:
        _lookup(_source(slapd, url_key, ca_file=slapd["other_ca"]), "carol")
    assert "cannot reach the directory" in str(err.value) and "certificate verify failed" in str(err.value)


@pytest.mark.parametrize("url_key", ["ldaps_other_ip", "ldap_other_ip"])
def test_the_host_name_is_checked(slapd, url_key):
    # Same server, trusted CA, but the certificate does not name 127.0.0.2.
    src = _source(slapd, url_key, **({"start_tls": True} if url_key.startswith("ldap_") else {}))
    with pytest.raises(IdentityError, match="does not name this host"):
        _lookup(src, "carol")


def test_unreachable_directory_says_so(slapd):
    with pytest.raises(IdentityError, match="cannot reach the directory"):
        _lookup(_source(slapd, url=f"ldaps://127.0.0.1:{_free_port()}"), "carol")


def test_a_silent_server_is_bounded_by_the_timeout(slapd):
    with socket.socket() as s:  # accepts connections (the backlog) and never answers
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        src = _source(slapd, url=f"ldaps://127.0.0.1:{s.getsockname()[1]}", timeout=1)
        t0 = time.monotonic()
        with pytest.raises(IdentityError, match="did not answer within 1 s"):
            _lookup(src, "carol")
        assert time.monotonic() - t0 < 5


def _set_uid_number(slapd, name, number):
    tls = ldap3.Tls(validate=ssl.CERT_REQUIRED, ca_certs_file=slapd["ca"])
    server = ldap3.Server(slapd["ldaps"], tls=tls, get_info=ldap3.NONE)
    with ldap3.Connection(server, ADMIN_DN, slapd["admin_pw"], auto_bind=True) as conn:
        assert conn.modify(f"uid={name},{PEOPLE}", {"uidNumber": [(ldap3.MODIFY_REPLACE, [str(number)])]})


def test_a_changed_uid_number_is_seen_after_cache_seconds(slapd):
    async def run():
        fresh, cached = _source(slapd, cache_seconds=0), _source(slapd, cache_seconds=600)
        assert (await fresh.lookup("dave")).uid == 30002
        assert (await cached.lookup("dave")).uid == 30002
        _set_uid_number(slapd, "dave", 30099)
        try:
            assert (await fresh.lookup("dave")).uid == 30099
            assert (await cached.lookup("dave")).uid == 30002  # within cache_seconds
        finally:
            _set_uid_number(slapd, "dave", 30002)

    asyncio.run(run())
