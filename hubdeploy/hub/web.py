"""The hub's web layer: cookies, Content-Security-Policy, refusals, usernames, spawn options, logs.

Standard library, JupyterHub and hubdeploy.contract only: this runs inside the hub, and
hubdeploy.hub.configure applies it.
"""

from __future__ import annotations

import functools
import json
import logging
import unicodedata
from typing import Any

from tornado import web

from hubdeploy.contract.identity import USERNAME_FORM, normal_username

# A choice is a profile name, a partition, a time, a core count or a memory size: short.
MAX_OPTION_CHARS = 256
# The whole user_options dict, as JSON: room for every choice, not for a payload.
MAX_OPTIONS_CHARS = 4096
MAX_OPTIONS_KEYS = 16


class OptionsError(ValueError):
    """A spawn option that is malformed or too large; the message names the field."""


class UsernameRefused(ValueError):
    """A username hubdeploy's policy refuses: a refusal, logged without traceback."""


# -- cookies and headers --------------------------------------------------------------


def cookie_options(tls: bool) -> dict[str, Any]:
    """tornado set_cookie arguments for every hub cookie (session, login, xsrf).

    Lax keeps the cookie off cross-site subrequests and form posts while a link from
    elsewhere still arrives logged in. Secure only with TLS: a browser drops a Secure
    cookie sent over plain http, so a site without TLS could not log in at all.
    """
    options: dict[str, Any] = {"samesite": "Lax"}
    if tls:
        options["secure"] = True
    return options


def content_security_policy(report_uri: str) -> str:
    """The hub pages' Content-Security-Policy.

    Everything from the hub's own origin only. JupyterHub's templates carry inline
    scripts (page config, the spawn-pending page's EventSource, the home page's buttons)
    and inline styles, hence 'unsafe-inline' for those two; bootstrap's icons are data:
    URIs. frame-ancestors 'none' and the report-uri are JupyterHub's own default, which
    setting the header replaces, so they are kept.
    """
    return "; ".join(
        [
            "default-src 'self'",
            "script-src 'self' 'unsafe-inline'",
            "style-src 'self' 'unsafe-inline'",
            "img-src 'self' data:",
            "font-src 'self' data:",
            "connect-src 'self'",
            "object-src 'none'",
            "base-uri 'self'",
            "frame-ancestors 'none'",
            f"report-uri {report_uri}",
        ]
    )


# -- refusals a user reads -------------------------------------------------------------

try:  # JupyterHub >= 6.0
    from jupyterhub.spawner import SpawnException
except ImportError:  # pragma: no cover - older hubs: a plain HTTPError carries the message too
    SpawnException = None


def refused(message: str, status: int = 400, reason: str = "user_options") -> web.HTTPError:
    """An HTTPError whose message reaches the user (API, spawn page, progress stream).

    400 for a spawn request the site does not allow (a bad profile or choice), 403 for a
    user without an account, 503 for a backend that cannot start the server now. A
    SpawnException is JupyterHub's handled refusal: the REST API answers with its message
    and the hub logs one line, no traceback.
    """
    if SpawnException is not None:
        err = SpawnException(message, reason=reason, status_code=status)
    else:  # pragma: no cover
        err = web.HTTPError(status, "%s", message)
    err.jupyterhub_message = message
    return err


def start_failed(exc: Exception) -> web.HTTPError:
    """The HTTP error a backend's failed start (its BackendError) becomes, so its words
    reach the user.

    JupyterHub answers any other exception from ``start()`` with a bare 500 "Internal
    Server Error" (the reason only in the hub's log, with a traceback) and counts it toward
    ``consecutive_failure_limit``. An HTTPError's message is the API response's
    ``message`` and the spawn page's text; ``jupyterhub_message`` is what the progress
    stream's "Spawn failed: ..." event shows. 503: the site cannot start this server now
    (a scheduler refusing the job, an engine without the image), not a malformed request.
    """
    return refused(str(exc) or type(exc).__name__, 503, "backend")


# -- usernames ------------------------------------------------------------------------


def control_characters(text: str) -> list[str]:
    """The Unicode category Cc characters of ``text`` (newline, escape, NUL, C1 ...)."""
    return [ch for ch in text if unicodedata.category(ch) == "Cc"]


def username_problem(username: str, max_length: int) -> str | None:
    """Why hubdeploy refuses ``username`` (an already normalised name), or None.

    Control characters would forge log lines; a name longer than ``max_length`` fills
    logs, pages and the database; a name that is not its own normal form (:data:`USERNAME_FORM`)
    is a second spelling of another user. JupyterHub's login and bulk user creation
    normalise first, so only a path that does not (``POST /hub/api/users/<name>``, the
    database at start) meets the last one.
    """
    if control_characters(username):
        return "it contains control characters"
    if len(username) > max_length:
        return f"it is {len(username)} characters long; the limit is {max_length}"
    if normal_username(username) != username:
        return f"it is not in Unicode normal form {USERNAME_FORM}, which is {shown(normal_username(username))}"
    return None


def shown(username: str, limit: int = 40) -> str:
    """``username`` for a message: its repr, cut at ``limit`` characters."""
    return repr(username) if len(username) <= limit else repr(username[:limit]) + f"... ({len(username)} characters)"


def username_policy(authenticator_class: type, *, max_length: int) -> type:
    """A subclass of ``authenticator_class`` that applies hubdeploy's username policy.

    normalize_username takes the name to :data:`USERNAME_FORM` before the class's own
    normalisation (JupyterHub's lowercases), so ``ａｄｍｉｎ`` is ``admin`` before any
    allowed_users, blocked_users or admin_users check and before the account mapping.
    validate_username refuses what :func:`username_problem` names, before the class's own
    checks. Every path that names a user passes there: the login
    (get_authenticated_user), REST user creation (add_user), the bulk POST /users and the
    hub's start-up check of existing users. A subclass overrides whatever the site's
    authenticator does there, so no authenticator lets such a name through. The class
    keeps its name, so config sections and logs read as before.
    """
    return _with_policy(authenticator_class, max_length)


@functools.cache
def _with_policy(base: type, max_length: int) -> type:
    def normalize_username(self, username):
        return super(cls, self).normalize_username(normal_username(username))

    def validate_username(self, username):
        problem = username_problem(username, max_length)
        if problem:
            self.log.warning("Refusing username %s: %s", shown(username), problem)
            return False
        return super(cls, self).validate_username(username)

    def add_user(self, user):
        # POST /hub/api/users/<name> creates the user before add_user validates it, and
        # logs what add_user raises with a traceback unless the log filter knows it.
        problem = username_problem(user.name, max_length)
        if problem:
            raise UsernameRefused(f"Invalid username {shown(user.name)}: {problem}")
        return super(cls, self).add_user(user)

    cls = type(
        base.__name__,
        (base,),
        {
            "normalize_username": normalize_username,
            "validate_username": validate_username,
            "add_user": add_user,
            "username_max_length": max_length,
            "__module__": base.__module__,
            "__qualname__": base.__qualname__,
            "__doc__": base.__doc__,
        },
    )
    return cls


def resolve_authenticator(value: Any) -> type:
    """The class ``c.JupyterHub.authenticator_class`` names: a class, an entry point of
    ``jupyterhub.authenticators`` (``dummy``, ``github``) or a dotted import path."""
    if isinstance(value, type):
        return value
    from importlib.metadata import entry_points

    from traitlets.utils.importstring import import_item

    for ep in entry_points(group="jupyterhub.authenticators"):
        if ep.name.lower() == str(value).lower():
            return ep.load()
    return import_item(str(value))


# -- spawn options --------------------------------------------------------------------


def check_option_value(field: str, value: Any, *, numbers: bool = False) -> None:
    """One spawn option: a string of at most MAX_OPTION_CHARS characters without control
    characters (a whole number too where ``numbers``). Raises OptionsError naming it."""
    if numbers and isinstance(value, int) and not isinstance(value, bool):
        return
    if not isinstance(value, str):
        kind = "a string or a whole number" if numbers else "a string"
        raise OptionsError(f"user option {field!r} must be {kind}, not {type(value).__name__}")
    if len(value) > MAX_OPTION_CHARS:
        raise OptionsError(
            f"user option {field!r} is {len(value)} characters long; the limit is {MAX_OPTION_CHARS}"
        )
    if control_characters(value):
        raise OptionsError(f"user option {field!r} contains control characters")


def check_user_options(options: Any, fields: dict[str, bool]) -> None:
    """The whole user_options (from the form or the REST API) before anything reads it.

    ``fields`` maps the option names the spawner reads to whether a whole number is also
    accepted. Other keys are left alone (the spawner ignores them) but count toward the
    size limit. Raises OptionsError naming the field and its limit.
    """
    if options is None:
        return
    if not isinstance(options, dict):
        raise OptionsError(f"user options must be an object, not {type(options).__name__}")
    if len(options) > MAX_OPTIONS_KEYS:
        raise OptionsError(f"user options have {len(options)} fields; the limit is {MAX_OPTIONS_KEYS}")
    for field, numbers in fields.items():
        if options.get(field) is not None:
            check_option_value(field, options[field], numbers=numbers)
    size = len(json.dumps(options, default=str))
    if size > MAX_OPTIONS_CHARS:
        raise OptionsError(f"user options are {size} characters as JSON; the limit is {MAX_OPTIONS_CHARS}")


# -- logs -----------------------------------------------------------------------------


class LogRecordFilter(logging.Filter):
    """One log record, one line; no traceback for a refusal.

    Control characters in a message (a username or option with a newline, echoed by
    JupyterHub's own log calls) are escaped, so nobody can forge a log line. A record
    carrying a refusal loses its traceback: a SpawnException, which JupyterHub defines as
    a handled policy refusal (bad spawn options) yet its form handler logs with exc_info,
    and UsernameRefused, which its user-creation handler logs so. The exception's message
    stays in the line.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and _is_refusal(exc):
            message = f"{message}: {exc}"
            record.exc_info = None
            record.exc_text = None
        if control_characters(message):
            message = escape_control(message)
        record.msg, record.args = message, ()
        return True


def _is_refusal(exc: BaseException) -> bool:
    if isinstance(exc, UsernameRefused):
        return True
    try:
        from jupyterhub.spawner import SpawnException
    except ImportError:  # pragma: no cover - JupyterHub < 6
        return False
    return isinstance(exc, SpawnException)


def escape_control(text: str) -> str:
    """``text`` with each control character written as a Python escape (\\n, \\x1b)."""
    return "".join(
        ch.encode("unicode_escape").decode("ascii") if unicodedata.category(ch) == "Cc" else ch for ch in text
    )


LOGGING_CONFIG = {
    "filters": {"hubdeploy_web": {"()": f"{__name__}.LogRecordFilter"}},
    "handlers": {"console": {"filters": ["hubdeploy_web"]}},
}
