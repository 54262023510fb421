"""The username policy and the account mapping through a real hub: hubdeploy's own
config/jupyterhub_config.py and rendered hub.json, JupyterHub 6.1.1 and CHP on loopback.

The red team's cases: a 10,000-character name, a full-width ``ａｄｍｉｎ`` beside
``admin``, and hub users ``root`` and ``slurm`` given the image's account names.
"""

from __future__ import annotations

import json
import stat
import time
from pathlib import Path

import pytest

from conftest_localhub import config_hub, find_chp
from hubdeploy.smoke.hubclient import HubAPIError, HubClient, escape_path

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(find_chp() is None, reason="configurable-http-proxy not installed"),
    pytest.mark.timeout(300),
]

# The stack's Slurm cluster: the hub then publishes every account it resolves for the
# nodes (nss_dir), where squeue names jobs' owners. Nothing of it runs here.
SITE = """\
name: hdtnmusers
hub:
  admin_users: [admin]
slurm:
  cluster: {nodes: 1, cpus: 1, memory: 1G}
profiles:
  - {name: login, image: base, default: true}
"""


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    with config_hub(tmp_path_factory.mktemp("confighub"), SITE) as h:
        yield h


@pytest.fixture(scope="module")
def admin(hub):
    """The REST API as the site's admin, logged in through the form."""
    form = HubClient(hub.url)
    form.login("admin", "")
    token, _ = form.create_token("admin", scopes=None, expires_in=600)
    return HubClient(hub.url, token=token)


def _names(admin) -> set[str]:
    return {u["name"] for u in admin.api("GET", "users").json()}


def test_fullwidth_admin_is_admin_and_never_a_second_user(hub, admin):
    # The login normalises before the admin check: the same user, with admin's rights.
    form = HubClient(hub.url)
    form.login("ａｄｍｉｎ", "")
    me = form.api("GET", "user").json()
    assert (me["name"], me["admin"]) == ("admin", True), me
    # The bulk creation normalises: ａｄｍｉｎ is admin, who exists already.
    with pytest.raises(HubAPIError) as exc:
        admin.api("POST", "users", json={"usernames": ["ａｄｍｉｎ"]})
    assert exc.value.status == 409, hub.log_tail()
    created = admin.api("POST", "users", json={"usernames": ["ｃａｒｏｌ"]}, ok=(201,)).json()
    assert [u["name"] for u in created] == ["carol"]
    # The single creation does not normalise in JupyterHub: hubdeploy refuses the spelling.
    with pytest.raises(HubAPIError) as exc:
        admin.api("POST", f"users/{escape_path('ａｄｍｉｎ')}")
    assert exc.value.status == 400
    assert admin.api("GET", f"users/{escape_path('ａｄｍｉｎ')}", ok=(404,)).status_code == 404
    assert {"admin", "carol"} <= _names(admin) and not any(n.startswith("ａ") for n in _names(admin))
    assert "not in Unicode normal form NFKC, which is 'admin'" in hub.log_tail(200)


def test_a_name_longer_than_the_limit_is_refused_on_every_path(hub, admin):
    long = "x" * 10_000
    for path, body in (("users", {"usernames": [long]}), (f"users/{long}", None)):
        with pytest.raises(HubAPIError) as exc:
            admin.api("POST", path, json=body)
        assert exc.value.status == 400, (path[:10], exc.value)
    with pytest.raises(HubAPIError, match="login rejected"):
        HubClient(hub.url).login(long, "")
    limit = hub.hub_json["username_max_length"]
    assert limit == 64  # the schema's default, carried by hub.json
    with pytest.raises(HubAPIError) as exc:
        admin.api("POST", "users", json={"usernames": ["y" * (limit + 1)]})
    assert exc.value.status == 400
    admin.api("POST", "users", json={"usernames": ["y" * limit]}, ok=(201,))
    assert max(len(n) for n in _names(admin)) == limit


def _start_and_settle(admin, user: str) -> None:
    """Ask for the user's server; the start fails once the account is resolved (no engine
    behind the docker backend). Return when it is no longer pending."""
    admin.api("POST", f"users/{user}/server", json={"profile": "login"}, ok=(201, 202, 400, 500, 503))
    deadline = time.monotonic() + 60
    while admin.api("GET", f"users/{user}").json()["pending"]:
        assert time.monotonic() < deadline, f"{user}'s start still pending"
        time.sleep(0.5)


def test_root_and_slurm_get_accounts_of_their_own_uid(hub, admin):
    created = admin.api("POST", "users", json={"usernames": ["root", "slurm"]}, ok=(201,)).json()
    assert sorted(u["name"] for u in created) == ["root", "slurm"]
    for user in ("root", "slurm"):
        _start_and_settle(admin, user)
    ident = hub.hub_json["identity"]
    uids = json.loads(Path(ident["state_file"]).read_text())["users"]
    passwd = (Path(ident["nss_dir"]) / "passwd").read_text().splitlines()
    for user in ("root", "slurm"):
        uid = uids[user]
        assert uid >= 20000, uids
        assert f"u{uid}:x:{uid}:{uid}::/home/u{uid}:/bin/bash" in passwd, passwd
        home = Path(ident["homes_dir"]) / f"u{uid}"
        st = home.stat()
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (uid, uid, 0o700)
        assert f"{user} runs as u{uid} (uid {uid}) from identity source auto" in hub.log_tail(400)
    # The published accounts never name an image's account.
    assert not [line for line in passwd if line.split(":")[0] in ("root", "slurm")], passwd
