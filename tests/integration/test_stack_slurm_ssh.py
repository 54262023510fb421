"""A site's own Slurm reached over ssh: the ``slurm.submit.ssh`` path, end to end.

The "existing cluster" is the test cluster of slurmcluster.py (slurmctld, two slurmd)
plus a login host running sshd, munge and the Slurm client, as a facility's login node
does. Site ``hdtssh`` has no cluster of its own: its hub (the real hub image, with its
generated key and the login host's key in known_hosts) submits with ssh, as each user
with a short-lived certificate from the hub's CA (``certificates: true``), whose public
half the login host's sshd trusts (``TrustedUserCAKeys``). The user's account comes
from a passwd file (identity source ``file``) and exists with the same uid on the login
host, the controller and the nodes, as a site's directory would provide it. ``jovyan``
(the site's ``user``, with the hub's generated key) runs only the untracked-job listing.
The test joins the cluster's containers to the site's users network, as a facility's
routing would let the hub, the proxy and the nodes reach each other.

Proved here: a compute-node server starts through ssh as its user's own job (squeue
%u) and runs ``5*4`` through the proxy; its API token reached the job (the server
answers the hub's auth) but neither argv on the login host nor the stored batch script;
stop cancels the job over ssh; the untracked-server listing works over ssh; the login
host refuses a certificate of the hub's CA for another principal; a wrong host key fails
with ssh's message.
"""

from __future__ import annotations

import contextlib
import os
import time

import docker
import pytest
from slurmcluster import ACCOUNT, CONTROLLER, LOGIN, NODES, SlurmCluster
from stackfixture import SITE_NAME, diagnostics, free_port, run_5x4, run_cli, tear_down_site, user_session
from test_slurm_backend import stack_base_tag

from hubdeploy.smoke.hubclient import escape_path

pytestmark = pytest.mark.integration

SITE = os.environ.get("HUBDEPLOY_TEST_SSH_SITE", "hdtssh")  # another name: two runs on one engine
PROJECT = f"hubdeploy-{SITE}"
USERS_NET = f"{PROJECT}-users"
USER = "hideki"  # the hub username is the passwd name (identity source file)
UID = GID = 31001
CA_PUB = "/etc/ssh/hubdeploy_ca.pub"
SITE_YAML = f"""\
name: {SITE}
public: {{host: 127.0.0.1, port: {{port}}}}
hub:
  authenticator: {{class: dummy}}
services:
  idle_culler: {{enabled: false}}
build:
  ca_bundle: /etc/ssl/certs/ca-certificates.crt
slurm:
  submit:
    ssh: {{host: {LOGIN}, user: jovyan, known_hosts: known_hosts, certificates: true}}
identity: {{source: file, file: {{passwd: users.passwd}}}}
profiles:
  - name: login
    image: base
    default: true
  - name: compute
    image: base
    node: compute
    cpu: 1
    memory: 256M
    slurm:
      partition: interactive
      account: {ACCOUNT}
      time: "10"
      # The job gets the account's login environment on the node (a bare --export list).
      path_prepend: [/opt/venv/bin]
"""


def _users_net(client, connect: bool) -> None:
    net = client.networks.get(USERS_NET)
    for name in [LOGIN, *NODES]:
        with contextlib.suppress(docker.errors.APIError):
            (net.connect if connect else net.disconnect)(name, **({} if connect else {"force": True}))


@pytest.fixture(scope="module")
def ssh_site(client, stack, tmp_path_factory):
    stack.ensure_up()
    root = tmp_path_factory.mktemp("sshsite")
    site_file = root / "site.yaml"
    with SlurmCluster(client, base=f"hubdeploy/{SITE_NAME}-base:{stack_base_tag(stack)}") as cluster:
        # sshd reads the CA file at each login: it is put there after `up` made it.
        host_key = cluster.start_login(sshd_config=f"TrustedUserCAKeys {CA_PUB}\n")
        cluster.add_account(USER, UID, GID)
        (root / "known_hosts").write_text(f"{LOGIN} {host_key}\n")
        (root / "users.passwd").write_text(f"{USER}:x:{UID}:{GID}::/home/{USER}:/bin/bash\n")
        port = free_port()
        site_file.write_text(SITE_YAML.replace("{port}", str(port)))
        try:
            run_cli(site_file, "down", "--volumes", "--take-over", timeout=300)
            t0 = time.monotonic()
            proc = run_cli(site_file, "up", timeout=1800)
            assert proc.returncode == 0, proc.stdout + proc.stderr + diagnostics(PROJECT)
            print(f"{SITE} up in {time.monotonic() - t0:.0f} s")
            assert "new SSH key for Slurm submission: add " in proc.stderr, proc.stderr
            assert "new SSH certificate authority for per-user Slurm submission: " in proc.stderr, proc.stderr
            _users_net(client, connect=True)
            secrets = root / ".hubdeploy" / "secrets"
            cluster.authorize((secrets / "slurm_ssh_key.pub").read_text())
            cluster.put_file(LOGIN, CA_PUB, (secrets / "slurm_ssh_ca.pub").read_bytes())
            yield {"dir": root, "site_file": site_file, "url": f"http://127.0.0.1:{port}/", "cluster": cluster}
        finally:
            _users_net(client, connect=False)
            tear_down_site(site_file, SITE)


class _Url:
    def __init__(self, url):
        self.url = url


def squeue(cluster) -> dict[str, str]:
    code, out = cluster.exec(CONTROLLER, ["squeue", "-h", "-o", "%i %j %T %u"])
    assert code == 0, out
    return {line.split()[0]: " ".join(line.split()[1:]) for line in out.splitlines() if line.strip()}


# Run on the node as the job's user: the API token in the environment of the job's server.
TOKEN_PROBE = """
import os
for pid in filter(str.isdigit, os.listdir("/proc")):
    if int(pid) == os.getpid():  # this program's own argv names the server too
        continue
    try:
        cmd = open(f"/proc/{pid}/cmdline", "rb").read()
        env = open(f"/proc/{pid}/environ", "rb").read().split(b"\\0")
    except OSError:
        continue
    token = dict(e.split(b"=", 1) for e in env if b"=" in e).get(b"JUPYTERHUB_API_TOKEN", b"")
    if b"jupyterhub-singleuser" in cmd and token:
        print(token.decode())
        break
"""


def desc_node(cluster, job: str) -> str:
    code, out = cluster.exec(CONTROLLER, ["squeue", "-h", "-j", job, "-o", "%N"])
    assert code == 0 and out.strip(), out
    return out.strip()


def node_server_token(cluster, node: str) -> str:
    code, out = cluster.exec(node, ["python3", "-c", TOKEN_PROBE], user=USER)  # the job's uid: no ptrace cap needed
    assert code == 0, out
    return out.strip()


def hub_container(client):
    return client.containers.list(filters={"label": [f"com.docker.compose.project={PROJECT}",
                                                     "com.docker.compose.service=hub"]})[0]


def test_compute_server_over_ssh_runs_code_and_stops(client, ssh_site):
    cluster = ssh_site["cluster"]
    hub, token = user_session(_Url(ssh_site["url"]), USER)
    t0 = time.monotonic()
    hub.api("POST", f"users/{escape_path(USER)}/server", json={"profile": "compute"}, ok=(201, 202))
    hub.wait_ready(USER, "", time.monotonic() + 180)
    print(f"compute server over ssh ready in {time.monotonic() - t0:.1f} s")
    jobs = squeue(cluster)
    assert len(jobs) == 1, jobs
    job, desc = next(iter(jobs.items()))
    # The job is the user's own, not the submit account's.
    assert desc.startswith(f"hubdeploy-{SITE}-nb-") and desc.endswith(f"RUNNING {USER}"), desc
    # The token reached the server (it checks the hub's auth with it) ...
    assert run_5x4(hub.server_url(USER), token) == "20"
    # ... but not into the job script Slurm keeps or the job's record.
    server_token = node_server_token(cluster, desc_node(cluster, job))
    assert len(server_token) >= 32
    for argv in (["scontrol", "write", "batch_script", job, "-"], ["scontrol", "show", "job", job]):
        code, out = cluster.exec(CONTROLLER, argv)
        assert code == 0 and server_token not in out, argv

    # Nothing untracked: the listing asks squeue over the same ssh.
    proc = run_cli(ssh_site["site_file"], "orphans", "list")
    assert proc.returncode == 0 and "no untracked servers" in proc.stdout, proc.stdout + proc.stderr

    hub.api("DELETE", f"users/{escape_path(USER)}/server", ok=(202, 204))
    deadline = time.monotonic() + 60
    while job in squeue(cluster) and time.monotonic() < deadline:
        time.sleep(1)
    assert job not in squeue(cluster), "the job outlived its server"


# The backend's own ssh argv (hub.json), with an empty known_hosts and no shared
# connection (a live master would skip the host check).
STRANGER_PROBE = """
import json, subprocess
argv = json.load(open("/etc/hubdeploy/hub.json"))["spawner"]["backends"]["slurm"]["submit_prefix"]
out, words = [], iter(argv)
for w in words:
    if w == "-o":
        v = next(words)
        if v.startswith("Control"):
            continue
        if v.startswith("UserKnownHostsFile="):
            v = "UserKnownHostsFile=/dev/null"
        out += ["-o", v]
    else:
        out.append(w)
p = subprocess.run(out + ["squeue"], capture_output=True, text=True)
print(p.returncode, p.stderr)
"""


def test_a_host_key_not_in_known_hosts_is_refused_by_ssh(client, ssh_site):
    # The hub's own ssh, as the backend runs it, against a known_hosts without this host.
    hub = hub_container(client)
    res = hub.exec_run(["python3", "-c", STRANGER_PROBE])
    out = res.output.decode()
    assert out.startswith("255 ") and "Host key verification failed" in out, out


# ssh as the backend runs it for a user (hub.json's ssh_user_prefix), with a certificate
# the hub's CA signs for PRINCIPAL, logging in as LOGIN_AS; no shared connection (a live
# master would skip authentication).
CERT_PROBE = """
import json, subprocess, sys
from hubdeploy.backends.sshcert import CertificateAuthority
principal, login_as = sys.argv[1:]
slurm = json.load(open("/etc/hubdeploy/hub.json"))["spawner"]["backends"]["slurm"]
cred = CertificateAuthority(slurm["ssh_ca_key"], "/tmp/hubdeploy-test-probe", 5).credentials(principal)
fill = {"{key}": cred.key, "{cert}": cred.cert, "{dir}": cred.directory, "{name}": login_as}
def filled(word):
    for k, v in fill.items():
        word = word.replace(k, v)
    return word
out, words = [], iter(slurm["ssh_user_prefix"])
for w in words:
    if w == "-o":
        v = next(words)
        if not v.startswith("Control"):
            out += ["-o", filled(v)]
    else:
        out.append(filled(w))
p = subprocess.run(out + ["id -un"], capture_output=True, text=True)
print(p.returncode, p.stdout.strip(), p.stderr.strip())
"""


def test_the_login_host_takes_a_certificate_only_for_its_principal(client, ssh_site):
    hub = hub_container(client)
    own = hub.exec_run(["python3", "-c", CERT_PROBE, USER, USER]).output.decode()
    assert own.startswith(f"0 {USER}"), own  # the control: the same argv logs in as its principal
    other = hub.exec_run(["python3", "-c", CERT_PROBE, "intruder", USER]).output.decode()
    assert other.startswith("255 ") and "Permission denied" in other, other
