"""hubdeploy.hub.web: the hub's cookie, header, username, option and log rules."""

from __future__ import annotations

import asyncio
import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hubdeploy.hub import web


def test_cookies_are_lax_and_secure_only_with_tls():
    assert web.cookie_options(tls=False) == {"samesite": "Lax"}
    assert web.cookie_options(tls=True) == {"samesite": "Lax", "secure": True}


def test_csp_keeps_jupyterhubs_frame_ancestors_and_report_uri():
    csp = web.content_security_policy("/hub/security/csp-report")
    directives = dict(d.split(" ", 1) for d in csp.split("; "))
    assert directives["frame-ancestors"] == "'none'"
    assert directives["report-uri"] == "/hub/security/csp-report"
    assert directives["default-src"] == "'self'" and directives["object-src"] == "'none'"
    # The hub's templates run inline scripts (spawn-pending's EventSource, home buttons).
    assert "'unsafe-inline'" in directives["script-src"] and directives["connect-src"] == "'self'"


@pytest.mark.parametrize("name", ["a\nb", "a\rb", "a\x00", "\x1b[31mred", "a\x85b", "tab\there", "x\x7f"])
def test_control_characters_found(name):
    assert web.control_characters(name)


@pytest.mark.parametrize("name", ["alice", "has@", "jürgen", "名前", "a b", "a\u2028b"])
def test_other_names_have_no_control_characters(name):
    # U+2028 is a line separator but category Zl, not Cc: the rule is the category.
    assert not web.control_characters(name)


def _authenticators():
    from jupyterhub.auth import Authenticator, DummyAuthenticator

    class Permissive(Authenticator):
        """Lets every name through, as a careless site authenticator might."""

        def validate_username(self, username):
            return True

    return DummyAuthenticator, Permissive


def policy(base, max_length=64):
    return web.username_policy(base, max_length=max_length)


@pytest.mark.parametrize("index", [0, 1])
def test_every_authenticator_refuses_control_characters(index):
    base = _authenticators()[index]
    cls = policy(base)
    assert issubclass(cls, base) and cls.__name__ == base.__name__
    auth = cls()
    assert auth.validate_username("alice")
    assert not auth.validate_username("evil\nINFO forged line")
    assert not auth.validate_username("x\x1b[2J")
    # The class's own rules still apply after ours.
    if base.__name__ == "DummyAuthenticator":
        assert not auth.validate_username("a/b")
    # One class per authenticator and limit, however often the config is read.
    assert policy(base) is cls and policy(base, 32) is not cls


@pytest.mark.parametrize("index", [0, 1])
def test_every_authenticator_refuses_names_over_the_limit(index):
    """Red team: a 10,000-character hub username was accepted."""
    auth = policy(_authenticators()[index], max_length=64)()
    assert auth.validate_username("a" * 64)
    assert not auth.validate_username("a" * 65)
    assert not auth.validate_username("a" * 10_000)
    assert policy(_authenticators()[index], max_length=8)().validate_username("a" * 9) is False


@pytest.mark.parametrize("index", [0, 1])
def test_every_authenticator_normalises_to_nfkc_first(index):
    """Red team: full-width ａｄｍｉｎ was a separate user who looks like admin. NFKC
    first, then the class's own normalisation (JupyterHub's lowercases)."""
    auth = policy(_authenticators()[index])()
    assert auth.normalize_username("ａｄｍｉｎ") == "admin"
    assert auth.normalize_username("ＡＤＭＩＮ") == "admin"
    assert auth.normalize_username("ﬁona") == "fiona"  # the ligature ﬁ
    assert auth.normalize_username("秀樹") == "秀樹"
    # A path that skips normalisation (POST /hub/api/users/<name>) meets validate_username.
    assert not auth.validate_username("ａｄｍｉｎ")


@given(st.text(max_size=80))
def test_a_normalised_name_is_never_refused_as_unnormalised(name):
    auth = policy(_authenticators()[0], max_length=10_000)()
    normal = auth.normalize_username(name)
    assert auth.normalize_username(normal) == normal
    problem = web.username_problem(normal, 10_000)
    assert problem is None or "normal form" not in problem


def _login(auth, name):
    return asyncio.run(auth.get_authenticated_user(None, {"username": name, "password": ""}))


def test_login_with_a_newline_is_refused():
    from jupyterhub.auth import DummyAuthenticator

    auth = policy(DummyAuthenticator)(allow_all=True)
    assert _login(auth, "bob\nx") is None
    assert _login(auth, "bob")["name"] == "bob"


def test_login_normalises_before_allowed_blocked_and_admin_checks():
    """JupyterHub 6.1.1's get_authenticated_user normalises, validates, then checks the
    blocked and allowed sets and admin_users: each sees the normal form."""
    from jupyterhub.auth import DummyAuthenticator

    cls = policy(DummyAuthenticator, max_length=64)
    open_hub = cls(allow_all=True, admin_users={"admin"})
    assert _login(open_hub, "ａｄｍｉｎ") == {"name": "admin", "admin": True, "auth_state": None, "user_info": None}
    restricted = cls(allowed_users={"admin"})
    assert _login(restricted, "ａｄｍｉｎ")["name"] == "admin"
    assert _login(cls(allow_all=True, blocked_users={"admin"}), "ａｄｍｉｎ") is None
    assert _login(open_hub, "x" * 10_000) is None
    assert _login(open_hub, "x" * 64)["name"] == "x" * 64


def test_add_user_refuses_what_the_policy_refuses():
    """POST /hub/api/users/<name> creates the user, then add_user validates the name."""
    from types import SimpleNamespace

    from jupyterhub.auth import DummyAuthenticator

    auth = policy(DummyAuthenticator, max_length=64)(allowed_users={"ann"})
    with pytest.raises(web.UsernameRefused, match=r"Invalid username 'a\\nb': it contains control characters"):
        auth.add_user(SimpleNamespace(name="a\nb"))
    with pytest.raises(web.UsernameRefused, match=r"not in Unicode normal form NFKC, which is 'admin'"):
        auth.add_user(SimpleNamespace(name="ａｄｍｉｎ"))
    with pytest.raises(web.UsernameRefused) as err:
        auth.add_user(SimpleNamespace(name="y" * 10_000))
    # The message says how long, without repeating the name.
    assert "10000 characters long; the limit is 64" in str(err.value) and len(str(err.value)) < 200
    auth.add_user(SimpleNamespace(name="ab"))  # the class's own add_user still runs
    assert auth.allowed_users == {"ann", "ab"}


def test_resolve_authenticator_by_entry_point_path_or_class():
    from jupyterhub.auth import DummyAuthenticator

    assert web.resolve_authenticator("dummy") is DummyAuthenticator
    assert web.resolve_authenticator("jupyterhub.auth.DummyAuthenticator") is DummyAuthenticator
    assert web.resolve_authenticator(DummyAuthenticator) is DummyAuthenticator


def test_option_value_limits():
    web.check_option_value("profile", "p" * 256)
    web.check_option_value("cpu", 4, numbers=True)
    with pytest.raises(web.OptionsError, match="'profile' is 257 characters long; the limit is 256"):
        web.check_option_value("profile", "p" * 257)
    with pytest.raises(web.OptionsError, match="'cpu' must be a string or a whole number, not bool"):
        web.check_option_value("cpu", True, numbers=True)
    with pytest.raises(web.OptionsError, match="'profile' must be a string, not int"):
        web.check_option_value("profile", 3)


def test_user_options_limits():
    fields = {"profile": False, "cpu": True}
    web.check_user_options(None, fields)
    web.check_user_options({"profile": "small", "cpu": 2, "other": [1, 2]}, fields)
    with pytest.raises(web.OptionsError, match="limit is 4096"):
        web.check_user_options({"profile": "small", "other": "z" * 4096}, fields)


def _record(msg, *args, exc=None):
    exc_info = None
    if exc is not None:
        try:
            raise exc
        except BaseException as e:
            exc_info = (type(e), e, e.__traceback__)
    return logging.LogRecord("JupyterHub", logging.ERROR, __file__, 1, msg, args, exc_info)


def test_log_filter_escapes_control_characters():
    record = _record("Failed to create user: %s", "evil\n[I 2026-01-01 JupyterHub] forged")
    assert web.LogRecordFilter().filter(record)
    assert record.getMessage() == "Failed to create user: evil\\n[I 2026-01-01 JupyterHub] forged"
    assert "\n" not in logging.Formatter().format(record)


def test_log_filter_drops_the_traceback_of_a_refusal_only():
    from jupyterhub.spawner import SpawnException

    refusal = _record("Failed to spawn single-user server with form",
                      exc=SpawnException("user option 'profile' is too long", reason="user_options"))
    web.LogRecordFilter().filter(refusal)
    text = logging.Formatter().format(refusal)
    assert "Traceback" not in text and "user option 'profile' is too long" in text
    refused_name = _record("Failed to create user: %s", "a\nb", exc=web.UsernameRefused("Invalid username"))
    web.LogRecordFilter().filter(refused_name)
    assert "Traceback" not in logging.Formatter().format(refused_name)
    crash = _record("Unhandled error", exc=RuntimeError("boom"))
    web.LogRecordFilter().filter(crash)
    assert "Traceback" in logging.Formatter().format(crash)
