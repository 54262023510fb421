"""Per-user SSH certificates (slurm.submit.ssh.certificates): the CA module, the Slurm
backend's argv per user, and the site schema and render."""

from __future__ import annotations

import asyncio
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import (
    SSHCertificateType,
    load_ssh_public_identity,
)
from ruamel.yaml import YAML

from hubdeploy import render
from hubdeploy.backends.base import ServerSpec, parse_config
from hubdeploy.backends.slurm import SlurmBackend, SlurmConfig
from hubdeploy.backends.sshcert import CertificateAuthority, CertificateError
from hubdeploy.contract.identity import Identity
from hubdeploy.errors import SiteError
from hubdeploy.site.loader import load_site, load_site_text
from hubdeploy.state.secrets import ensure_secrets, secret_names
from hubdeploy.contract import strict
from hubsections import profile

REFS = {"base": "hubdeploy/s-base:1", "hub": "hubdeploy/s-hub:2", "proxy": "hubdeploy/s-proxy:3"}
T0 = 1_800_000_000


class Clock:
    def __init__(self, now=T0):
        self.now = now

    def __call__(self):
        return self.now


@pytest.fixture
def ca_key(tmp_path):
    paths = ensure_secrets(tmp_path / "secrets", ["slurm_ssh_ca"])
    return paths["slurm_ssh_ca"]


def authority(ca_key, tmp_path, clock=None, minutes=5):
    return CertificateAuthority(str(ca_key), str(tmp_path / "certs"), minutes, key_id="hubdeploy-t",
                                clock=clock or Clock())


# -- the certificate ---------------------------------------------------------------------


def test_certificate_names_the_account_is_short_lived_and_signed_by_the_ca(ca_key, tmp_path):
    cred = authority(ca_key, tmp_path).credentials("carol")
    cert = load_ssh_public_identity(Path(cred.cert).read_bytes())
    assert cert.type == SSHCertificateType.USER
    assert cert.valid_principals == [b"carol"]
    assert cert.valid_before == T0 + 300 == cred.valid_before
    assert T0 - 120 <= cert.valid_after <= T0  # a little slack for the login host's clock
    assert cert.key_id == b"hubdeploy-t:carol"
    assert cert.extensions == {} and cert.critical_options == {}  # no pty, agent or forwarding
    cert.verify_cert_signature()  # raises unless the signature is good
    ca_pub = (tmp_path / "secrets" / "slurm_ssh_ca.pub").read_bytes().split()[1]
    from cryptography.hazmat.primitives import serialization

    signer = cert.signature_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    assert signer.split()[1] == ca_pub
    # The certificate certifies the private key written beside it.
    key = serialization.load_ssh_private_key(Path(cred.key).read_bytes(), None)
    assert key.public_key().public_bytes_raw() == cert.public_key().public_bytes_raw()


@pytest.mark.skipif(not shutil.which("ssh-keygen"), reason="no ssh-keygen")
def test_openssh_reads_the_certificate_as_the_ca_signed_it(ca_key, tmp_path):
    cred = authority(ca_key, tmp_path, clock=Clock(__import__("time").time())).credentials("carol")
    out = subprocess.run(["ssh-keygen", "-L", "-f", cred.cert], capture_output=True, text=True, check=True).stdout
    assert "ssh-ed25519-cert-v01@openssh.com user certificate" in out
    principals = out.split("Principals:")[1].split("Critical Options:")[0].split()
    assert principals == ["carol"]
    ca_fp = subprocess.run(["ssh-keygen", "-l", "-f", str(ca_key) + ".pub"], capture_output=True, text=True,
                           check=True).stdout.split()[1]
    assert f"Signing CA: ED25519 {ca_fp}" in out
    assert "Extensions: (none)" in out
    # OpenSSH pairs the certificate with its key: the key's public half is the certified one.
    derived = subprocess.run(["ssh-keygen", "-y", "-f", cred.key], capture_output=True, text=True, check=True).stdout
    fp_key = subprocess.run(["ssh-keygen", "-l", "-f", "-"], input=derived, capture_output=True, text=True,
                            check=True).stdout.split()[1]
    assert f"Public key: ED25519-CERT {fp_key}" in out


def test_key_certificate_and_directory_are_private(ca_key, tmp_path):
    cred = authority(ca_key, tmp_path).credentials("carol")
    assert stat.S_IMODE(Path(cred.directory).stat().st_mode) == 0o700
    assert Path(cred.directory) == tmp_path / "certs" / "carol"
    for path in (cred.key, cred.cert):
        assert stat.S_IMODE(Path(path).stat().st_mode) == 0o600


def test_an_existing_directory_is_made_private(ca_key, tmp_path):
    (tmp_path / "certs" / "carol").mkdir(parents=True, mode=0o755)
    cred = authority(ca_key, tmp_path).credentials("carol")
    assert stat.S_IMODE(Path(cred.directory).stat().st_mode) == 0o700


def test_reused_while_valid_renewed_near_expiry_and_old_pairs_removed(ca_key, tmp_path):
    clock = Clock()
    ca = authority(ca_key, tmp_path, clock)
    first = ca.credentials("carol")
    clock.now += 200  # 100 s left of 300: still good
    assert ca.credentials("carol") == first
    clock.now += 50  # 50 s left, less than the renewal margin (60 s)
    second = ca.credentials("carol")
    assert second.key != first.key and second.cert != first.cert
    assert second.valid_before == clock.now + 300
    assert Path(first.key).exists()  # an ssh that is reading the previous pair still finds it
    clock.now += 260
    third = ca.credentials("carol")
    assert not Path(first.key).exists() and not Path(first.cert).exists()
    assert {p.name for p in Path(third.directory).iterdir()} == {
        Path(p).name for p in (second.key, second.cert, third.key, third.cert)}


def test_a_deleted_certificate_is_made_again(ca_key, tmp_path):
    ca = authority(ca_key, tmp_path)
    first = ca.credentials("carol")
    Path(first.cert).unlink()
    assert Path(ca.credentials("carol").cert).is_file()


def test_each_account_gets_its_own_key(ca_key, tmp_path):
    ca = authority(ca_key, tmp_path)
    a, b = ca.credentials("carol"), ca.credentials("dave")
    assert Path(a.directory).name == "carol" and Path(b.directory).name == "dave"
    assert load_ssh_public_identity(Path(b.cert).read_bytes()).valid_principals == [b"dave"]


@pytest.mark.parametrize("name", ["../etc", "-oProxyCommand=x", "Carol", "", "a" * 40])
def test_only_posix_account_names_get_a_certificate(ca_key, tmp_path, name):
    with pytest.raises(CertificateError, match="not a POSIX account name"):
        authority(ca_key, tmp_path).credentials(name)
    assert not (tmp_path / "certs").exists() or not any((tmp_path / "certs").iterdir())


def test_a_missing_or_wrong_ca_key_is_a_certificate_error(tmp_path):
    with pytest.raises(CertificateError, match="cannot read the SSH CA key"):
        CertificateAuthority(str(tmp_path / "nope"), str(tmp_path / "c")).credentials("carol")
    (tmp_path / "junk").write_text("not a key")
    with pytest.raises(CertificateError, match="cannot read the SSH CA key"):
        CertificateAuthority(str(tmp_path / "junk"), str(tmp_path / "c")).credentials("carol")


def test_a_lifetime_under_a_minute_is_refused(ca_key, tmp_path):
    with pytest.raises(ValueError, match="at least a minute"):
        authority(ca_key, tmp_path, minutes=0.5)


# -- the Slurm backend: each server's commands as its user ---------------------------------

USER_PREFIX = ["ssh", "-F", "/dev/null", "-T", "-i", "{key}", "-o", "CertificateFile={cert}",
               "-o", "ControlPath={dir}/ssh-%C", "-l", "{name}", "--", "login1"]
SHARED_PREFIX = ["ssh", "-i", "/run/secrets/slurm_ssh_key", "-l", "svc", "--", "login1"]


class Recording(SlurmBackend):
    """Records each command's argv and stdin instead of running it."""

    def __init__(self, outcomes, **config):
        super().__init__(parse_config(SlurmConfig, config, "slurm"))
        self.outcomes, self.calls = list(outcomes), []

    async def run(self, argv, *, stdin=None, env=None, who=None, account=None):
        full = self._argv(argv, sorted(env or ()), who, account)
        self.calls.append((full, env or {}))
        return self.outcomes.pop(0)


def backend(ca_key, tmp_path, outcomes):
    return Recording(outcomes, submit_prefix=SHARED_PREFIX, submit_quote=True, submit_env_stdin=True,
                     submit_unreachable_code=255, ssh_ca_key=str(ca_key), ssh_user_prefix=USER_PREFIX,
                     ssh_cert_dir=str(tmp_path / "certs"), poll_interval=0.01, stop_timeout=1, site="t")


CAROL = Identity("carol", "carol", 31001, 31001, "/home/carol")
TOKEN = "s3cr3t-token-value"


def spec(identity=CAROL):
    return ServerSpec(user="carol", server_name="", profile=profile(name="c", slurm={}),
                      env={"JUPYTERHUB_API_TOKEN": TOKEN}, identity=identity)


def test_sbatch_squeue_and_scancel_of_a_server_run_as_its_user(ca_key, tmp_path):
    b = backend(ca_key, tmp_path, [(0, "7\n", ""), (0, "7|RUNNING|None|N/A|c1|hubdeploy:port=40000\n", ""),
                                   (0, "", ""), (0, "7|CANCELLED|None|N/A|c1|x\n", "")])
    state: dict = {}
    assert asyncio.run(b.start(spec(), state)) == ("c1", 40000)
    assert state["account"] == "carol"
    asyncio.run(b.stop(b.load_state(state)))  # the account survives the database round trip
    (sbatch, env), (squeue, _), (scancel, _), (after, _) = b.calls
    cred = b.ca.credentials("carol")
    for full in (sbatch, squeue, scancel, after):
        head = full[:-1]
        pairs = dict(zip(head, head[1:]))
        assert pairs["-l"] == "carol" and pairs["-i"] == cred.key
        assert f"CertificateFile={cred.cert}" in head and f"ControlPath={cred.directory}/ssh-%C" in head
        assert "svc" not in full and "/run/secrets/slurm_ssh_key" not in full
    assert sbatch[-1].startswith("sh -c ") and "sbatch" in sbatch[-1]
    assert scancel[-1] == "scancel 7"
    # The token goes to run()'s env (stdin, with submit_env_stdin); neither argv nor the
    # certificate directory has it.
    assert env["JUPYTERHUB_API_TOKEN"] == TOKEN and b.env_stdin
    assert not any(TOKEN in w for c, _ in b.calls for w in c)
    assert all(TOKEN.encode() not in p.read_bytes() for p in Path(cred.directory).iterdir())
    # No HOME/USER from the hub: sshd sets the account's own on the login host.
    assert "HOME" not in env and "USER" not in env


def test_poll_of_a_job_from_before_certificates_uses_the_submit_account(ca_key, tmp_path):
    b = backend(ca_key, tmp_path, [(0, "7|RUNNING|None|N/A|c1|x\n", "")])
    asyncio.run(b.poll({"job_id": "7", "job_name": "hubdeploy-t-nb-carol"}))
    assert b.calls[0][0][: len(SHARED_PREFIX)] == SHARED_PREFIX


def test_orphan_listing_and_its_cancel_are_the_submit_accounts(ca_key, tmp_path):
    # No node named: the listing asks nothing about nodes.
    b = backend(ca_key, tmp_path, [(0, "7|RUNNING||None|carol|31001|31001|hubdeploy-t-nb-carol\n"
                                      "8|RUNNING||None|dave|31002|31002|other\n", ""), (0, "", "")])
    found = asyncio.run(b.list_servers())
    asyncio.run(b.remove("7"))
    (listing, _), (scancel, _) = b.calls
    assert listing[: len(SHARED_PREFIX)] == SHARED_PREFIX and scancel[: len(SHARED_PREFIX)] == SHARED_PREFIX
    assert "--me" not in listing[-1]  # the jobs are many users'
    assert [f.id for f in found] == ["7"]


def test_a_server_without_an_account_is_refused_not_run_as_the_submit_account(ca_key, tmp_path):
    from hubdeploy.backends.base import BackendError

    b = backend(ca_key, tmp_path, [])
    with pytest.raises(BackendError, match="need the server's account"):
        asyncio.run(b.start(spec(identity=None), {}))
    assert b.calls == []


def test_an_unusable_ca_key_is_a_failed_submit_not_a_crash(tmp_path):
    from hubdeploy.backends.base import BackendError

    b = SlurmBackend(SlurmConfig(submit_prefix=SHARED_PREFIX, submit_quote=True, submit_env_stdin=True,
                                 ssh_ca_key=str(tmp_path / "missing"), ssh_user_prefix=USER_PREFIX,
                                 ssh_cert_dir=str(tmp_path / "certs")))
    with pytest.raises(BackendError, match="cannot submit to Slurm: .*no SSH certificate for carol"):
        asyncio.run(b.start(spec(), {}))


def test_a_ca_key_needs_the_per_user_prefix(ca_key):
    with pytest.raises(ValueError, match="ssh_ca_key needs an ssh_user_prefix"):
        parse_config(SlurmConfig, {"submit_prefix": SHARED_PREFIX, "ssh_ca_key": str(ca_key)}, "slurm")


def test_a_state_account_that_is_not_a_posix_name_is_dropped(ca_key, tmp_path):
    b = backend(ca_key, tmp_path, [])
    assert "account" not in b.load_state({"job_id": "7", "job_name": "n", "account": "-oProxyCommand=x"})


# -- a submit prefix of the hub's own host: sudo -u {name} ----------------------------------


def test_a_sudo_prefix_submits_as_the_user_and_counts_as_per_user():
    b = Recording([(0, "7\n", ""), (0, "7|RUNNING|None|N/A|c1|hubdeploy:port=40000\n", "")],
                  submit_prefix=["sudo", "-u", "{name}", "--"], poll_interval=0.01)
    assert b.per_user
    asyncio.run(b.start(spec(), {}))
    (sbatch, _), (squeue, _) = b.calls
    assert sbatch[:4] == ["sudo", "-u", "carol", "--"] and sbatch[4] == "sbatch"
    assert squeue[:4] == ["sudo", "-u", "carol", "--"]  # the job's own squeue is its owner's
    site = load_site_text(SITE.replace("SUBMIT", "submit: {prefix: [sudo, -u, '{name}', --]}"), "site.yaml")
    assert not site.shared_compute_account


# -- schema and render ---------------------------------------------------------------------

SITE = """\
name: s
slurm:
  SUBMIT
profiles:
  - {name: login, image: base, default: true}
  - {name: compute, image: base, node: compute}
"""
SSH = "submit:\n    ssh: {host: login1.example.org, user: svc, known_hosts: kh, certificates: true}"


def ssh_site(tmp_path, submit=SSH, extra=""):
    (tmp_path / "kh").write_text("login1.example.org ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample\n")
    (tmp_path / "site.yaml").write_text(SITE.replace("SUBMIT", submit) + extra)
    return load_site(tmp_path / "site.yaml")


def test_certificates_make_a_compute_site_per_user(tmp_path):
    s = ssh_site(tmp_path)  # no allow_shared_compute_account needed
    assert not s.shared_compute_account
    assert not any("one account" in w for w in s.warnings())


def test_without_certificates_ssh_is_still_one_account(tmp_path):
    with pytest.raises(SiteError, match="would run every user's jobs as one account"):
        ssh_site(tmp_path, SSH.replace(", certificates: true", ""))


def test_certificates_need_per_user_accounts(tmp_path):
    with pytest.raises(SiteError) as exc:
        ssh_site(tmp_path, extra="identity: {source: shared, allow_shared_compute_account: true}\n")
    assert "slurm.submit.ssh.certificates: " in str(exc.value)
    assert "identity.source shared has none" in str(exc.value)


@pytest.mark.parametrize("minutes", [0, 61])
def test_certificate_minutes_are_bounded(tmp_path, minutes):
    with pytest.raises(SiteError, match="certificate_minutes"):
        ssh_site(tmp_path, SSH.replace("}", f", certificate_minutes: {minutes}}}"))


def test_render_mounts_the_ca_into_the_hub_and_configures_the_backend(tmp_path):
    s = ssh_site(tmp_path, SSH.replace("}", ", certificate_minutes: 7}"))
    assert secret_names(s)[-2:] == ["slurm_ssh_key", "slurm_ssh_ca"]
    cfg = strict.plain(render.hub_data(s, REFS))["spawner"]["backends"]["slurm"]
    assert cfg["ssh_ca_key"] == "/run/secrets/slurm_ssh_ca" and cfg["ssh_cert_minutes"] == 7
    argv = cfg["ssh_user_prefix"]
    pairs = dict(zip(argv, argv[1:]))
    assert pairs["-l"] == "{name}" and pairs["-i"] == "{key}" and argv[-2:] == ["--", "login1.example.org"]
    options = {argv[i + 1] for i, w in enumerate(argv) if w == "-o"}
    assert {"CertificateFile={cert}", "ControlPath={dir}/ssh-%C", "IdentitiesOnly=yes", "BatchMode=yes",
            "StrictHostKeyChecking=yes", "UserKnownHostsFile=/etc/hubdeploy/ssh_known_hosts"} <= options
    # The submit account keeps its own ssh for the commands that are nobody's.
    assert dict(zip(cfg["submit_prefix"], cfg["submit_prefix"][1:]))["-l"] == "svc"
    SlurmBackend(parse_config(SlurmConfig, cfg, "slurm"))  # hub.json's config is one the backend takes
    compose = YAML(typ="safe").load(render.render(s, tmp_path, REFS)["compose.yaml"])
    assert "slurm_ssh_ca" in compose["services"]["hub"]["secrets"]
    assert compose["secrets"]["slurm_ssh_ca"] == {"file": "../secrets/slurm_ssh_ca"}
    assert all("slurm_ssh_ca" not in svc.get("secrets", []) for n, svc in compose["services"].items() if n != "hub")


def test_without_certificates_nothing_of_the_ca_is_rendered(tmp_path):
    s = ssh_site(tmp_path, SSH.replace(", certificates: true", ""),
                 extra="identity: {allow_shared_compute_account: true}\n")
    assert "slurm_ssh_ca" not in secret_names(s)
    cfg = strict.plain(render.hub_data(s, REFS))["spawner"]["backends"]["slurm"]
    assert "ssh_ca_key" not in cfg and "ssh_user_prefix" not in cfg


def test_the_ca_key_is_generated_once_owner_only_with_its_public_half(tmp_path):
    paths = ensure_secrets(tmp_path / "secrets", ["slurm_ssh_ca"])
    key, pub = paths["slurm_ssh_ca"], tmp_path / "secrets" / "slurm_ssh_ca.pub"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert key.read_bytes().startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
    assert pub.read_text().startswith("ssh-ed25519 ") and pub.read_text().rstrip().endswith(" hubdeploy-ca")
    first = key.read_bytes()
    ensure_secrets(tmp_path / "secrets", ["slurm_ssh_ca"])
    assert key.read_bytes() == first


def test_the_hub_image_has_cryptography():
    from hubdeploy.images.plan import plan_images

    s = load_site_text("name: s\nprofiles: [{name: p, image: base}]\n", "site.yaml")
    plans = plan_images(s, Path("."))
    assert b"cryptography" in plans["hub"].files["requirements.txt"]
