"""slurm.cluster.accounts (the stack cluster's account check) and how a backend's refusal
reaches the hub's caller. The real cluster and hub: tests/integration/test_stack_slurm_queue.py."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace

import pytest
from ruamel.yaml import YAML

from hubdeploy import render
from hubdeploy.render import slurm
from hubdeploy.render.slurm import lua_string
from hubdeploy.errors import SiteError
from hubdeploy.site.loader import load_site_text

SITE = """\
name: acct
slurm:
  cluster: {nodes: 2, cpus: 1, memory: 1G, accounts: [physics, astro]}
profiles:
  - name: compute
    image: base
    node: compute
    slurm: {account: physics}
  - name: noaccount
    image: base
    node: compute
"""
REFS = {"base": "hubdeploy/acct-base:1", "hub": "hubdeploy/acct-hub:2", "proxy": "hubdeploy/acct-proxy:3",
        "slurm": "hubdeploy/acct-slurm:4", "slurmdbd": "hubdeploy/acct-slurmdbd:5"}


def site(text=SITE):
    return load_site_text(text, "site.yaml")


def error(text: str) -> str:
    with pytest.raises(SiteError) as exc:
        site(text)
    return str(exc.value)


# -- schema ---------------------------------------------------------------------------


def test_profile_account_must_be_admitted_by_the_cluster():
    msg = error(SITE.replace("{account: physics}", "{account: chem}"))
    # file:line:col of the profile's account, and what the cluster admits.
    assert msg.startswith("site.yaml:8:13: profiles[0].slurm.account: account 'chem' is not in "
                          "slurm.cluster.accounts (physics, astro)"), msg
    assert "would refuse every job of profile 'compute'" in msg


def test_accounts_are_optional_and_any_account_goes_without_them():
    s = site(SITE.replace(", accounts: [physics, astro]", "").replace("{account: physics}", "{account: chem}"))
    assert s.slurm.cluster.accounts is None


@pytest.mark.parametrize(
    "accounts, words",
    [
        ("[]", "at least 1"),
        ("[physics, physics]", "lists an account twice"),
        ("['a;b']", "accounts[0]: expected a Slurm name"),
        ("physics", "expected a list"),
    ],
)
def test_bad_account_lists(accounts, words):
    assert words in error(SITE.replace("[physics, astro]", accounts).replace("{account: physics}", "{}"))


def test_a_submit_site_is_not_checked():
    # A site's own Slurm: hubdeploy cannot know its accounts; sbatch will say.
    text = SITE.replace("  cluster: {nodes: 2, cpus: 1, memory: 1G, accounts: [physics, astro]}",
                        "  submit: {prefix: [ssh, login1]}\nidentity: {allow_shared_compute_account: true}").replace("{account: physics}", "{account: chem}")
    assert site(text).profiles[0].slurm.account == "chem"


# -- render ---------------------------------------------------------------------------


def test_accounts_render_a_job_submit_script_for_the_controller():
    files = render.render(site(), Path("."), REFS)
    conf = files["slurm/slurm.conf"].decode()
    assert conf.count("JobSubmitPlugins=lua\n") == 1
    lua = files["slurm/job_submit.lua"].decode()
    assert 'local admitted = {["physics"] = true, ["astro"] = true}' in lua
    assert 'local default_account = "physics"' in lua
    assert lua.count("refuse(slurm.ESLURM_INVALID_ACCOUNT") == 1  # in not_admitted(), for submit and modify
    assert lua.count("not_admitted(job_desc.account)") == 2
    assert "function slurm_job_submit(" in lua and "function slurm_job_modify(" in lua
    svcs = YAML(typ="safe").load(files["compose.yaml"])["services"]
    mount = "./slurm/job_submit.lua:/etc/hubdeploy-slurm/job_submit.lua:ro"
    assert mount in svcs["slurmctld"]["volumes"]
    assert mount not in svcs["slurm-c1"]["volumes"]  # job_submit plugins run in slurmctld only


def test_without_accounts_there_is_one_and_no_account_check():
    plain = site(SITE.replace(", accounts: [physics, astro]", ""))
    files = render.render(plain, Path("."), REFS)
    # The script is there for the limits; it checks no account (the association does).
    lua = files["slurm/job_submit.lua"].decode()
    assert "admitted" not in lua and "ESLURM_INVALID_ACCOUNT" not in lua
    assert ["sacctmgr", "-i", "add", "account", "hubdeploy", "cluster=acct"] in slurm.accounting_commands(plain)
    hub = strict.plain(render.hub_data(plain, REFS))["spawner"]["backends"]["slurm"]
    assert hub["association_accounts"] == ["hubdeploy"]


def test_accounts_are_every_users_associations():
    assert ["sacctmgr", "-i", "add", "account", "physics,astro", "cluster=acct"] in slurm.accounting_commands(site())
    hub = strict.plain(render.hub_data(site(), REFS))["spawner"]["backends"]["slurm"]
    assert hub["association_accounts"] == ["physics", "astro"]


def test_a_changed_account_list_recreates_the_cluster():
    def label(s):
        doc = YAML(typ="safe").load(render.render(s, Path("."), REFS)["compose.yaml"])
        return doc["services"]["slurmctld"]["labels"]["hubdeploy.config-hash"]

    assert label(site()) != label(site(SITE.replace("[physics, astro]", "[physics, astro, chem]")))
    assert label(site()) == label(site())


def test_lua_strings_are_only_slurm_names():
    with pytest.raises(AssertionError):
        lua_string('x"; os.execute("id") --')


# -- the spawner: a backend's refusal reaches the caller ---------------------------------

pytest.importorskip("jupyterhub")
from jupyterhub.objects import Hub  # noqa: E402
from jupyterhub.spawner import SpawnException  # noqa: E402
from jupyterhub.utils import format_exception  # noqa: E402
from tornado import web  # noqa: E402

from hubdeploy.backends.base import Backend, BackendConfig, BackendError  # noqa: E402
from hubsections import SHARED  # noqa: E402
from hubdeploy.hub import spawner as spawner_mod  # noqa: E402
from hubdeploy.contract import strict

REFUSAL = ("Slurm refused the job: account retired is not one of this cluster's accounts; Batch job submission "
           "failed: Invalid account or account/partition combination specified")


class Refusing(Backend):
    async def start(self, spec, state):
        state.update(job_name="j", phase="failed")
        raise BackendError(REFUSAL)

    async def stop(self, state):
        pass

    async def poll(self, state):
        return spawner_mod.Stopped(0)


def test_backend_refusal_is_an_http_error_with_its_words(monkeypatch):
    monkeypatch.setattr(spawner_mod, "get_backend", lambda name: Refusing)
    monkeypatch.setattr(spawner_mod, "_BACKENDS", {})
    profiles = list(render.hub_data(site(), REFS).spawner.profiles)
    s = spawner_mod.HubdeploySpawner(
        user=SimpleNamespace(name="u", url="/user/u/", escaped_name="u"), hub=Hub(),
        orm_spawner=SimpleNamespace(name="", server=None), profiles=profiles, backend="docker",
        backend_configs={"docker": BackendConfig(), "slurm": BackendConfig()}, user_options={"profile": "compute"},
        concurrent_spawn_limit=8, identity=SHARED,
    )
    with pytest.raises(web.HTTPError) as exc:
        asyncio.run(s.start())
    err = exc.value
    # A SpawnException: JupyterHub logs it in one line (no traceback), does not count it
    # toward consecutive_failure_limit, and writes its message into the API's JSON answer.
    assert isinstance(err, SpawnException) and err.status_code == 503
    assert err.message == REFUSAL and err.get_message() == REFUSAL
    # The progress stream's "Spawn failed: ..." event.
    assert format_exception(err)[0] == REFUSAL
    assert isinstance(err.__cause__, BackendError)
