"""The hub's web layer on the running stack, through the proxy: cookies, the CSP header,
usernames with control characters, oversized spawn options, the named-server limit."""

from __future__ import annotations

import re
import time
import uuid
from urllib.parse import urljoin, urlsplit

import docker
import pytest
import requests

from hubdeploy.smoke.hubclient import HubAPIError, HubClient, escape_path

from stackfixture import user_session  # noqa: E402

pytestmark = pytest.mark.integration

def _set_cookies(resp: requests.Response) -> list[str]:
    return resp.raw.headers.getlist("Set-Cookie")


def _log_mark(base_url: str) -> str:
    """Write a unique line into the hub's access log; _hub_logs_after cuts there, so a
    test reads only its own log lines (docker's `since` has whole seconds)."""
    mark = f"mark-{uuid.uuid4().hex}"
    requests.get(f"{base_url}hub/api/?{mark}", timeout=30)
    return mark


def _hub_logs_after(stack, mark: str) -> str:
    c = docker.from_env().containers.get(stack.container_ids()["hub"])
    logs = c.logs(stdout=True, stderr=True, tail=5000).decode(errors="replace")
    assert mark in logs, "the hub's access log does not have the mark"
    return logs.split(mark, 1)[1]


def _csp(resp: requests.Response) -> dict[str, str]:
    header = resp.headers.get("Content-Security-Policy", "")
    return dict(d.strip().split(" ", 1) for d in header.split(";") if d.strip())


def _assert_same_origin_resources(base: str, html: str) -> None:
    """Every script, stylesheet, image and form target of a hub page is on the hub's own
    origin, so the CSP's 'self' lets the page load all of it."""
    origin = urlsplit(base)[:2]
    refs = re.findall(r'<(?:script|img)[^>]*\ssrc="?([^"\s>]+)', html)
    refs += re.findall(r'<link[^>]*\shref="?([^"\s>]+)', html)
    refs += re.findall(r'<form[^>]*\saction="([^"]*)"', html)
    refs += re.findall(r'new EventSource\("([^"]+)"\)', html)
    assert refs, "no resources found: the page's markup changed?"
    for ref in refs:
        assert urlsplit(urljoin(base, ref))[:2] == origin, ref


def test_login_cookies_are_samesite_lax_and_not_secure_over_http(up_stack):
    http = requests.Session()
    page = http.get(up_stack.url + "hub/login", timeout=30)
    assert page.status_code == 200
    xsrf = re.search(r'name="_xsrf"\s+value="([^"]+)"', page.text).group(1)
    resp = http.post(up_stack.url + "hub/login", data={"username": "webcookie", "password": "", "_xsrf": xsrf},
                     allow_redirects=False, timeout=30)
    assert resp.status_code == 302
    cookies = _set_cookies(page) + _set_cookies(resp)
    names = {c.split("=", 1)[0] for c in cookies}
    assert {"_xsrf", "jupyterhub-hub-login", "jupyterhub-session-id"} <= names, names
    for cookie in cookies:
        attrs = [a.strip().lower() for a in cookie.split(";")[1:]]
        assert "samesite=lax" in attrs, cookie
        assert "secure" not in attrs, cookie  # plain http: a Secure cookie would be dropped


def test_csp_on_hub_pages_and_their_resources_are_allowed(up_stack):
    anonymous = requests.get(up_stack.url + "hub/login", timeout=30)
    hub, _ = user_session(up_stack, "webcsp")
    home = hub.request("GET", "hub/home")
    spawn = hub.request("GET", "hub/spawn")  # two profiles: hubdeploy's form
    assert 'name="profile"' in spawn.text
    for resp in (anonymous, home, spawn):
        csp = _csp(resp)
        assert csp.get("default-src") == "'self'", resp.url
        assert csp.get("frame-ancestors") == "'none'" and csp.get("report-uri") == "/hub/security/csp-report"
        assert "'unsafe-inline'" in csp["script-src"] and csp["connect-src"] == "'self'"
        _assert_same_origin_resources(resp.url, resp.text)


def test_username_with_newline_refused_on_every_path(up_stack):
    admin, token = user_session(up_stack, "admin")
    api = HubClient(up_stack.url, token=token)
    marker = f"FORGED-{uuid.uuid4().hex[:8]}"
    name = f"evil\n[W 2026-01-01 00:00:00.000 JupyterHub] {marker}"
    mark = _log_mark(up_stack.url)
    with pytest.raises(HubAPIError) as exc:
        api.api("POST", f"users/{escape_path(name)}")
    assert exc.value.status == 400
    # Not left behind in the hub's database either.
    assert api.api("GET", f"users/{escape_path(name)}", ok=(404,)).status_code == 404
    with pytest.raises(HubAPIError) as exc:
        api.api("POST", "users", json={"usernames": ["ok-name", "bad\x1bname"]})
    assert exc.value.status == 400 and "Invalid username" in str(exc.value)
    # The login form: the same name is refused as a wrong password would be.
    with pytest.raises(HubAPIError, match="login rejected"):
        HubClient(up_stack.url).login(name, "")
    # JupyterHub echoes the name in its own log lines; none of them starts a forged line.
    logs = _hub_logs_after(up_stack, mark)
    assert marker in logs
    forged = [line for line in logs.splitlines() if line.startswith("[W 2026-01-01")]
    assert not forged, forged
    assert "Traceback" not in logs, logs[-3000:]  # a refusal, not a crash


def test_oversized_spawn_option_is_a_400_naming_the_field_without_traceback(up_stack):
    user = "weboptions"
    hub, token = user_session(up_stack, user)
    api = HubClient(up_stack.url, token=token)
    mark = _log_mark(up_stack.url)
    with pytest.raises(HubAPIError) as exc:
        api.api("POST", f"users/{user}/server", json={"profile": "x" * 100000})
    assert exc.value.status == 400
    assert "'profile'" in str(exc.value) and "limit is 256" in str(exc.value), str(exc.value)
    with pytest.raises(HubAPIError) as exc:
        api.api("POST", f"users/{user}/server", json={"profile": "small", "cpu": {"nested": [1, 2]}})
    assert exc.value.status == 400 and "'cpu'" in str(exc.value)
    # The form path: JupyterHub logs any failure there with a traceback unless it is a
    # SpawnException, which hubdeploy's refusal is.
    form = hub.request("POST", f"hub/spawn/{user}", data={"profile": "p" * 300}, ok=(400,))
    assert "limit is 256" in form.text
    assert hub.server_model(user, "") is None  # nothing was started
    logs = _hub_logs_after(up_stack, mark)
    assert "limit is 256" in logs  # the refusals are logged...
    assert "Traceback" not in logs, logs[-3000:]  # ...in one line each
    assert "x" * 1000 not in logs  # and the value itself is not echoed


def test_fourth_named_server_is_refused(up_stack):
    user = "webnamed"
    hub, _ = user_session(up_stack, user)
    started = []
    try:
        for name in ("s1", "s2", "s3"):
            hub.start_server(user, name, "small")
            started.append(name)
            hub.wait_ready(user, name, time.monotonic() + 180)
        with pytest.raises(HubAPIError) as exc:
            hub.start_server(user, "s4", "small")
        assert exc.value.status == 400 and "maximum of 3 named servers" in str(exc.value)
    finally:
        for name in started:
            hub.stop_server(user, name, time.monotonic() + 120, remove=True)
    assert set(hub.user_model(user)["servers"]) == set()


@pytest.mark.browser
def test_hub_pages_work_in_a_browser_under_the_csp(up_stack, tmp_path):
    """Headless Chromium under the hub's CSP: login form, spawn form, the progress
    EventSource, the home page's stop button, with no CSP violation on the way."""
    import shutil

    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    args = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-quic",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"]
    user = f"webbrowser{int(time.time()) % 100000}"
    violations: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=args, headless=True)
        page = browser.new_page()
        page.set_default_timeout(120_000)
        page.on("console", lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None)
        try:
            page.goto(up_stack.url + "hub/login")
            page.fill("input[name=username]", user)
            page.fill("input[name=password]", "")
            page.click("#login_submit, input[type=submit], button[type=submit]")
            page.wait_for_selector("input[name=profile][value=small]")
            page.check("input[name=profile][value=small]")
            page.click("#spawn_form input[type=submit], #spawn_form button[type=submit]")
            page.wait_for_url(f"**/user/{user}/**", timeout=180_000)
            # The progress stream the spawn-pending page reads, opened from a hub page as
            # that page opens it (with the page's xsrf token).
            page.goto(up_stack.url + "hub/home")
            event = page.evaluate(
                """url => new Promise((resolve, reject) => {
                    const source = new EventSource(url + "?_xsrf=" + window.jhdata.xsrf_token);
                    source.onmessage = e => { source.close(); resolve(e.data); };
                    source.onerror = () => { source.close(); reject(new Error("EventSource failed")); };
                })""",
                f"/hub/api/users/{user}/server/progress",
            )
            assert "ready" in event
            # The home page's buttons are JavaScript (jhapi.js): stop the server with one.
            page.click("#stop")
            page.wait_for_selector("#stop", state="hidden", timeout=120_000)
            page.wait_for_function("document.querySelector('#start').innerText.includes('Start My Server')")
        except Exception:
            page.screenshot(path=str(tmp_path / "failure.png"))
            print(f"screenshot: {tmp_path / 'failure.png'}")
            raise
        finally:
            browser.close()
    assert not violations, violations
    hub, _ = user_session(up_stack, user)
    assert hub.server_model(user, "") is None
