"""run_smoke against a real JupyterHub, CHP and single-user servers on loopback."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest
import requests

from conftest_localhub import PASSWORD, find_chp, local_hub
from hubdeploy.smoke import SMOKE_USER, KernelCheck, run_smoke

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(find_chp() is None, reason="configurable-http-proxy not installed"),
    pytest.mark.timeout(300),
]


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    with local_hub(tmp_path_factory.mktemp("localhub")) as h:
        yield h


def _explain(hub, report) -> str:
    # On failure: what the report says and what the hub logged.
    return json.dumps(report.to_dict(), indent=1) + "\n--- hub log ---\n" + hub.log_tail()


def _steps(report) -> list[tuple[str | None, str, str]]:
    return [(s.profile, s.name, s.status) for s in report.steps]


def _user_exists(hub, name: str) -> bool:
    return hub.admin("GET", f"users/{name}").status_code == 200


def test_form_login_runs_python_check_and_deletes_user(hub):
    report = run_smoke(hub.url, profiles=["python"], password=PASSWORD,
                       service_token=hub.smoke_token, timeout=90)
    assert report.ok, _explain(hub, report)
    assert report.auth == "form"
    assert _steps(report)[:3] == [(None, "login", "ok"), ("python", "spawn", "ok"),
                                  ("python", "kernelspecs", "ok")]
    kernel = next(s for s in report.steps if s.name == "kernel python3")
    assert kernel.ok and kernel.detail == "'print(5 * 4)' -> 20"
    assert _steps(report)[-2:] == [("python", "stop", "ok"), (None, "cleanup", "ok")]
    assert "user deleted" in report.steps[-1].detail
    assert report.steps[0].detail == "login form"
    assert not _user_exists(hub, SMOKE_USER)


def test_form_only_keeps_user_but_revokes_token(hub):
    name = "smoke-formonly"
    report = run_smoke(hub.url, profiles=["python"], username=name, password=PASSWORD, timeout=90)
    assert report.ok, _explain(hub, report)
    assert "token revoked" in report.steps[-1].detail
    assert "user kept" in report.steps[-1].detail
    model = hub.admin("GET", f"users/{name}").json()
    assert model["servers"] == {}
    tokens = hub.admin("GET", f"users/{name}/tokens").json()["api_tokens"]
    assert [t for t in tokens if t["note"] == "hubdeploy smoke"] == []
    hub.admin("DELETE", f"users/{name}")


def test_service_token_without_form(hub):
    report = run_smoke(hub.url, profiles=["python", "python-alt"], service_token=hub.smoke_token, timeout=90)
    assert report.ok, _explain(hub, report)
    assert report.auth == "service"
    assert report.steps[0].detail == "service token; user created"
    assert [s.profile for s in report.steps if s.name == "kernel python3"] == ["python", "python-alt"]
    [klingon] = [s for s in report.steps if s.name == "kernel klingon"]
    assert klingon.profile == "python-alt" and klingon.ok
    assert klingon.detail.startswith("no check for language 'klingon'")
    assert not _user_exists(hub, SMOKE_USER)


def test_failing_check_is_reported_and_cleaned_up(hub):
    report = run_smoke(hub.url, profiles=["python"], service_token=hub.smoke_token, timeout=90,
                       checks={"python": KernelCheck("print(5 * 4)", "21")})
    assert not report.ok
    failed = report.failed
    assert [(s.profile, s.name) for s in failed] == [("python", "kernel python3")], _explain(hub, report)
    assert failed[0].detail == "'print(5 * 4)' printed '20', expected '21'"
    assert report.steps[-1].name == "cleanup" and report.steps[-1].ok
    assert not _user_exists(hub, SMOKE_USER)
    suite = ET.fromstring(report.to_junit_xml()).find("testsuite")
    assert suite.get("failures") == "1"
    failures = [c.get("name") for c in suite.iter("testcase") if c.find("failure") is not None]
    assert failures == ["kernel python3"]


def test_kernel_error_is_reported(hub):
    report = run_smoke(hub.url, profiles=["python"], service_token=hub.smoke_token, timeout=90,
                       checks={"python": KernelCheck("1/0", "20")})
    [failed] = report.failed
    assert "ZeroDivisionError" in failed.detail, _explain(hub, report)


def test_unknown_profile_fails_its_spawn_and_goes_on(hub):
    report = run_smoke(hub.url, profiles=["nope", "python"], service_token=hub.smoke_token, timeout=90)
    assert not report.ok
    [failed] = report.failed
    assert (failed.profile, failed.name) == ("nope", "spawn"), _explain(hub, report)
    assert "unknown profile 'nope'" in failed.detail
    assert ("python", "kernel python3", "ok") in _steps(report)
    assert report.steps[-1].ok and not _user_exists(hub, SMOKE_USER)


def test_wrong_password_fails_login_only(hub):
    report = run_smoke(hub.url, profiles=["python"], password="wrong", timeout=30)
    assert _steps(report) == [(None, "login", "failed"), ("python", "spawn", "skipped"),
                              (None, "cleanup", "ok")]
    assert "login rejected" in report.steps[0].detail
    assert "wrong" not in json.dumps(report.to_dict())


def test_service_scopes_reach_only_the_smoke_user(hub):
    """SMOKE_SERVICE_SCOPES: the service can create, see, impersonate or delete no one else."""
    assert hub.admin("POST", "users/bystander").status_code == 201
    auth = {"Authorization": f"token {hub.smoke_token}"}
    api = f"{hub.url}hub/api/"
    try:
        assert requests.post(api + "users/someone-else", headers=auth, timeout=30).status_code in (403, 404)
        assert not _user_exists(hub, "someone-else")
        listed = requests.get(api + "users", headers=auth, timeout=30).json()
        assert "bystander" not in [u["name"] for u in listed]
        assert requests.post(api + "users/bystander/tokens", headers=auth, json={}, timeout=30).status_code == 403
        assert requests.post(api + "users/bystander/servers/x", headers=auth, timeout=30).status_code in (403, 404)
        assert requests.delete(api + "users/bystander", headers=auth, timeout=30).status_code in (403, 404)
        assert _user_exists(hub, "bystander")
    finally:
        hub.admin("DELETE", "users/bystander")
    # and the service's token shows up nowhere in a report
    report = run_smoke(hub.url, profiles=[], service_token=hub.smoke_token, timeout=30)
    assert report.ok, _explain(hub, report)
    assert hub.smoke_token not in json.dumps(report.to_dict()) + report.to_junit_xml()
