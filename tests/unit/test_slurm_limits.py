"""The stack cluster's limits equal the spawn form: what render/slurm.py writes for a few
sites (slurm.conf, the QOS, job_submit.lua, slurmdbd.conf, accounting.json, compose), the
schema's defaults and refusals, the one root write the engine proxy lets through (a
user's association), and the Slurm backend making it once per user.

What Slurm then does with them (each over-the-form sbatch refused with Slurm's words, from
a notebook's kernel): tests/integration/test_identity_stack.py and test_stack_slurm.py.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from hubdeploy import render
from hubdeploy.backends.base import BackendError, ServerSpec, parse_config
from hubdeploy.backends.slurm import SlurmBackend, SlurmConfig
from hubdeploy.contract import slurmcmd
from hubdeploy.contract.identity import Identity
from hubdeploy.errors import SiteError
from hubdeploy.render import slurm
from hubdeploy.render.files import sha
from hubdeploy.site.loader import load_site_text
from hubdeploy.contract import strict
from hubsections import profile

REFS = {n: f"hubdeploy/lim-{n}:1" for n in ("base", "hub", "proxy", "slurm", "slurmdbd", "debian")}
# As the identity stack: one profile, fixed cpu, memory and time.
FIXED = """\
name: lim
slurm:
  cluster: {nodes: 1, cpus: 4, memory: 3G, max_time: "2:00:00"}
profiles:
  - {name: login, image: base, default: true}
  - {name: compute, image: base, node: compute, cpu: 1, memory: 512M, slurm: {time: "30"}}
"""
# Two compute profiles: a form with limits, and one with neither memory nor time.
FORM = """\
name: lim
slurm:
  cluster: {nodes: 3, cpus: 4, memory: 4G, partitions: [compute, debug], user_limits: {jobs: 4, cpus: 6}}
profiles:
  - name: big
    image: base
    node: compute
    cpu: 1
    memory: 1G
    slurm: {time: "60", limits: {max_cpu: 3, max_memory: 2G, max_time: "4:00:00"}}
  - {name: plain, image: base, node: compute, cpu: 2}
"""


def site(text: str):
    return load_site_text(text, "site.yaml")


def error(text: str) -> str:
    with pytest.raises(SiteError) as exc:
        site(text)
    return str(exc.value)


# -- per job: the largest profile's form ----------------------------------------------------


def test_fixed_profile_is_the_limit():
    s = site(FIXED)
    assert slurm.job_limits(s) == slurm.JobLimits(cpus=1, mem_mib=512, minutes=30, nodes=1)
    # A plain sbatch (no --mem) gets at most that: min(a core's share 768M, 512M per core).
    assert slurm.default_mem_per_cpu(s) == 512


def test_the_largest_form_over_every_profile():
    s = site(FORM)
    # big's form: 3 cores, 2G, 4 h; plain: 2 cores and, naming no memory, a core's 1G each;
    # with no time, the partition's limit, which is then max_time (8 h).
    assert slurm.job_limits(s) == slurm.JobLimits(cpus=3, mem_mib=2048, minutes=480)
    assert slurm.default_mem_per_cpu(s) == 682  # 2048M // 3 cores, below a core's 1024M


def test_without_compute_profiles_a_job_may_have_a_node():
    s = site(FIXED.replace("  - {name: compute, image: base, node: compute, cpu: 1, memory: 512M, "
                           "slurm: {time: \"30\"}}\n", ""))
    assert slurm.job_limits(s) == slurm.JobLimits(cpus=4, mem_mib=3072, minutes=120)


def test_slurm_conf_uses_the_accounting_database_and_the_forms_limits():
    conf = slurm.slurm_conf(site(FORM)).decode().splitlines()
    for line in ("AccountingStorageType=accounting_storage/slurmdbd", "AccountingStorageHost=slurmdbd",
                 "AccountingStorageEnforce=associations,limits,qos", "JobSubmitPlugins=lua",
                 "EnforcePartLimits=ALL", "DefMemPerCPU=682",
                 "PartitionName=compute Nodes=c1,c2,c3 Default=YES MaxTime=480 MaxNodes=1 State=UP",
                 "PartitionName=debug Nodes=c1,c2,c3 Default=NO MaxTime=480 MaxNodes=1 State=UP"):
        assert line in conf, line
    assert not any(line.startswith("AccountingStorageType=accounting_storage/none") for line in conf)


def test_the_qos_holds_the_job_and_user_limits():
    assert slurm.qos_argv(site(FORM)) == [
        "sacctmgr", "-i", "modify", "qos", "normal", "set", "MaxWall=480",
        "MaxTRESPerJob=cpu=3,mem=2048M,node=1", "MaxSubmitJobsPerUser=4", "MaxTRESPerUser=node=2,cpu=6",
        "Flags=DenyOnLimit"]


@pytest.mark.parametrize("nodes, user_nodes", [(1, 1), (2, 1), (3, 2), (16, 15)])
def test_by_default_no_user_holds_every_node(nodes, user_nodes):
    s = site(FIXED.replace("nodes: 1,", f"nodes: {nodes},"))
    assert slurm.user_limits(s) == slurm.UserLimits(jobs=10, nodes=user_nodes, cpus=None)
    # No core limit per user: -1 clears one an earlier site file set.
    assert f"MaxTRESPerUser=node={user_nodes},cpu=-1" in slurm.qos_argv(s)


def test_accounting_commands_are_argv_and_idempotent_words():
    doc = json.loads(slurm.accounting_json(site(FIXED)))
    assert doc["commands"] == [
        ["sacctmgr", "-i", "add", "cluster", "lim"],
        ["sacctmgr", "-i", "add", "account", "hubdeploy", "cluster=lim"],
        slurm.qos_argv(site(FIXED)),
    ]
    assert doc["wait"][0] == "sacctmgr" and doc["unchanged"] == list(slurmcmd.UNCHANGED)


def test_job_submit_refuses_what_the_limits_let_through():
    lua = slurm.job_submit_lua(site(FIXED)).decode()
    assert "job_desc.req_nodes ~= nil" in lua  # -w / --nodelist
    assert "job_desc.min_mem_per_node == 0 or job_desc.min_mem_per_cpu == 0" in lua  # --mem=0
    assert "job_desc.shared == 0" in lua  # --exclusive
    assert "ask for at most 512M" in lua
    # Checked in submit and in modify (scontrol update).
    assert lua.count("local refused = over_the_form(job_desc)") == 2
    # Only codes Slurm 22.05's lua defines (an undefined one is nil: success); and nil
    # never returns from refuse().
    assert set(re.findall(r"slurm\.(ESLURM_\w+)", lua)) == {"ESLURM_ACCESS_DENIED", "ESLURM_ACCOUNTING_POLICY"}
    assert "return code or slurm.ERROR" in lua


def test_slurmdbd_conf_has_no_password_and_no_tcp_database():
    conf = slurm.slurmdbd_conf(site(FIXED)).decode().splitlines()
    assert "StorageType=accounting_storage/mysql" in conf and "StorageHost=localhost" in conf
    assert "StorageUser=slurm" in conf and "DbdHost=slurmdbd" in conf
    assert not any(line.startswith(("StoragePass", "StoragePort")) for line in conf)


# -- compose ------------------------------------------------------------------------------


def compose(text: str) -> dict:
    return YAML(typ="safe").load(render.render(site(text), Path("."), REFS)["compose.yaml"])


def test_slurmdbd_is_a_hardened_service_on_the_slurm_network_with_its_volume():
    doc = compose(FIXED)
    dbd = doc["services"]["slurmdbd"]
    assert dbd["image"] == REFS["slurmdbd"] and dbd["networks"] == {"slurm": {"aliases": ["slurmdbd"]}}
    assert dbd["hostname"] == "slurmdbd" and not dbd.get("ports")
    assert "slurmdbd-data:/var/lib/mysql" in dbd["volumes"]
    assert "./slurm/slurmdbd.conf:/etc/hubdeploy-slurm/slurmdbd.conf:ro" in dbd["volumes"]
    assert dbd["cap_drop"] == ["ALL"] and dbd["security_opt"] == ["no-new-privileges:true"]
    assert dbd["secrets"] == ["munge_key"] and dbd["mem_limit"] == 2**30
    assert doc["volumes"]["slurmdbd-data"] == {"name": "hubdeploy-lim-slurmdbd-data"}
    ctld = doc["services"]["slurmctld"]
    assert ctld["depends_on"] == {"slurmdbd": {"condition": "service_started"}}
    for name in ("job_submit.lua", "accounting.json"):
        assert f"./slurm/{name}:/etc/hubdeploy-slurm/{name}:ro" in ctld["volumes"]
        assert not any(name in v for v in doc["services"]["slurm-c1"]["volumes"])


def test_a_changed_limit_recreates_the_controller_and_keeps_the_nodes():
    before, after = compose(FIXED), compose(FIXED.replace("max_time: \"2:00:00\"}",
                                                          "max_time: \"2:00:00\", user_limits: {jobs: 3}}"))

    def label(doc, svc):
        return doc["services"][svc]["labels"]["hubdeploy.config-hash"]

    assert label(before, "slurmctld") != label(after, "slurmctld")
    assert label(before, "slurm-c1") == label(after, "slurm-c1")
    assert label(before, "slurmdbd") == label(after, "slurmdbd")
    files = render.render(site(FIXED), Path("."), REFS)
    assert label(before, "slurm-c1") == sha(files["slurm/slurm.conf"], files["slurm/agent.json"])


# -- the schema ---------------------------------------------------------------------------


def test_user_limits_are_closed_and_bounded():
    assert "did you mean 'jobs'" in error(FIXED.replace("max_time: \"2:00:00\"}",
                                                         "max_time: \"2:00:00\", user_limits: {job: 3}}"))
    assert "user_limits.jobs: expected at least 1" in error(FIXED.replace("max_time: \"2:00:00\"}",
                                                               "max_time: \"2:00:00\", user_limits: {jobs: 0}}"))
    msg = error(FIXED.replace("max_time: \"2:00:00\"}", "max_time: \"2:00:00\", user_limits: {nodes: 2}}"))
    assert "slurm.cluster.user_limits.nodes: user_limits.nodes 2 is more than the cluster's 1 nodes" in msg


@pytest.mark.parametrize("profile, where, words", [
    ("cpu: 5", "profiles[1].cpu", "may ask for 5 cores; a node of slurm.cluster has 4"),
    ("cpu: 1, slurm: {limits: {max_cpu: 8}}", "profiles[1].slurm.limits.max_cpu", "may ask for 8 cores"),
    ("memory: 4G", "profiles[1].memory", "may ask for 4G of memory; a node of slurm.cluster has 3G"),
    ("slurm: {limits: {max_memory: 8G}}", "profiles[1].slurm.limits.max_memory", "may ask for 8G"),
    ("slurm: {qos: debug}", "profiles[1].slurm.qos", "has one QOS, 'normal'"),
])
def test_every_compute_profile_fits_the_cluster(profile, where, words):
    msg = error(FIXED.replace("cpu: 1, memory: 512M, slurm: {time: \"30\"}", profile))
    assert re.search(rf"^site\.yaml:6:\d+: {re.escape(where)}: .*{re.escape(words)}", msg, re.M), msg


def test_a_profile_within_the_users_cores_is_valid():
    site(FIXED.replace("max_time: \"2:00:00\"}", "max_time: \"2:00:00\", user_limits: {cpus: 1}}"))
    msg = error(FIXED.replace("max_time: \"2:00:00\"}", "max_time: \"2:00:00\", user_limits: {cpus: 1}}")
                .replace("cpu: 1,", "cpu: 2,"))
    assert "slurm.cluster.user_limits.cpus lets a user hold 1" in msg


# -- the one root write: a user's association ---------------------------------------------


def test_add_user_argv_is_exact_and_refuses_what_is_not_a_name():
    assert slurmcmd.add_user_argv("ann", ["physics", "astro"]) == [
        "sacctmgr", "-i", "add", "user", "name=ann", "account=physics,astro", "defaultaccount=physics"]
    for name, accounts in (("ann,bob", ["a"]), ("ann adminlevel=admin", ["a"]), ("Ann", ["a"]), ("", ["a"]),
                           ("ann", []), ("ann", ["a,b"]), ("ann", ["a b"]), ("ann", ["a=b"])):
        with pytest.raises(ValueError):
            slurmcmd.add_user_argv(name, accounts)


def test_root_commands_are_the_listings_and_exactly_an_association():
    ok = slurmcmd.add_user_argv("ann", ["physics", "astro"])
    assert slurmcmd.is_root_command(ok)
    assert slurmcmd.is_root_command(slurmcmd.list_jobs_argv())
    for bad in (
        [*ok, "adminlevel=admin"],
        ok[:-1],
        [*ok[:4], "name=ann", "account=physics,astro", "defaultaccount=astro"],  # another default
        [*ok[:4], "account=physics,astro", "name=ann", "defaultaccount=physics"],
        ["sacctmgr", "add", "user", "name=ann", "account=physics", "defaultaccount=physics"],  # no -i
        ["sacctmgr", "-i", "add", "user", "name=ann,root", "account=physics", "defaultaccount=physics"],
        ["sacctmgr", "-i", "add", "coordinator", "name=ann", "account=physics", "defaultaccount=physics"],
        ["sacctmgr", "-i", "modify", "user", "name=ann", "account=physics", "defaultaccount=physics"],
        ["sacctmgr", "-i", "add", "user", "name=ann", "account=", "defaultaccount="],
        ["/usr/bin/sacctmgr", *ok[1:]],
    ):
        assert not slurmcmd.is_root_command(bad), bad


# -- the backend makes it once per user, only for the stack's cluster -----------------------

ANN = Identity(user="ann", name="ann", uid=20001, gid=20001, home="/home/ann")


class Answering(SlurmBackend):
    """The backend with its commands recorded and sacctmgr/sbatch answered by a script."""

    answers: dict

    async def run(self, argv, *, stdin=None, env=None, who=None, account=None):
        self.calls.append((list(argv), who))
        return self.answers[argv[0]]

    async def _wait_started(self, state):
        return "c1", 40000


def backend(answers: dict, **config) -> Answering:
    b = Answering(parse_config(SlurmConfig, {"prefix": "hubdeploy", "site": "lim", **config}, "slurm"))
    b.calls, b.answers = [], answers
    return b


def start(b: Answering, ident: Identity = ANN) -> None:
    spec = ServerSpec("ann", "", profile(name="c", slurm={}), identity=ident)
    asyncio.run(b.start(spec, {}))


def test_the_association_comes_before_the_first_sbatch_and_once():
    b = backend({"sacctmgr": (0, " Adding User(s)\n", ""), "sbatch": (0, "7\n", "")},
                association_accounts=("physics", "astro"))
    start(b)
    start(b)
    assert [c[0][0] for c in b.calls] == ["sacctmgr", "sbatch", "sbatch"]
    argv, who = b.calls[0]
    assert argv == slurmcmd.add_user_argv("ann", ["physics", "astro"]) and who is None  # root's


def test_an_association_that_exists_is_success():
    b = backend({"sacctmgr": (1, " Nothing new added.\n", ""), "sbatch": (0, "7\n", "")},
                association_accounts=("hubdeploy",))
    start(b)
    assert [c[0][0] for c in b.calls] == ["sacctmgr", "sbatch"]


def test_a_refused_association_fails_the_start_and_is_tried_again():
    b = backend({"sacctmgr": (1, "", " This account 'gone' doesn't exist.\n"), "sbatch": (0, "7\n", "")},
                association_accounts=("gone",))
    with pytest.raises(BackendError, match="Slurm refused ann's association .*doesn't exist"):
        start(b)
    assert [c[0][0] for c in b.calls] == ["sacctmgr"]
    b.answers["sacctmgr"] = (0, " Adding User(s)\n", "")
    start(b)
    assert [c[0][0] for c in b.calls] == ["sacctmgr", "sacctmgr", "sbatch"]


def test_an_invalid_account_at_sbatch_makes_the_association_again_next_time():
    b = backend({"sacctmgr": (0, "", ""), "sbatch": (1, "", "sbatch: error: Batch job submission failed: "
                                                            "Invalid account or account/partition combination "
                                                            "specified\n")},
                association_accounts=("hubdeploy",))
    with pytest.raises(BackendError, match="Invalid account"):
        start(b)
    b.answers["sbatch"] = (0, "7\n", "")
    start(b)
    assert [c[0][0] for c in b.calls] == ["sacctmgr", "sbatch", "sacctmgr", "sbatch"]


def test_a_sites_own_slurm_gets_no_association_from_the_hub():
    s = site(FIXED.replace("  cluster: {nodes: 1, cpus: 4, memory: 3G, max_time: \"2:00:00\"}",
                           "  submit: {prefix: [sudo, -u, \"{name}\", --]}"))
    config = strict.plain(render.hub_data(s, REFS))["spawner"]["backends"]["slurm"]
    assert "association_accounts" not in config
    b = backend({"sbatch": (0, "7\n", "")}, **config)
    start(b)
    assert [c[0][0] for c in b.calls] == ["sbatch"]
