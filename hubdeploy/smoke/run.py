"""``run_smoke``: do what a user does on a running hub and record every step.

login -> per profile: spawn, kernelspecs, one step per kernel (start, run a check, shut
down), stop -> cleanup. A failed step is recorded and the run goes on to the next profile
and always to cleanup; ``run_smoke`` itself does not raise for a failed step.
"""

from __future__ import annotations

import re
import time

from hubdeploy.contract.services import SMOKE_USER
from hubdeploy.smoke.hubclient import (
    HubAPIError,
    HubClient,
    SpawnFailed,
    user_token_scopes,
)
from hubdeploy.smoke.kernel import KernelCheck, KernelError, ServerClient, check_for, output_matches
from hubdeploy.smoke.report import SmokeReport, Step

# Exceptions whose message is the whole story; anything else also gets its type name.
_EXPECTED = (HubAPIError, SpawnFailed, KernelError, TimeoutError)


class StepFailed(Exception):
    """A check inside a step did not hold; the message is the step's detail."""


class _Recorder:
    """Times a block, records it as a Step, and swallows its exception (``with rec.step()``)."""

    def __init__(self, report: SmokeReport, console, secrets: list[str]):
        self.report = report
        self.console = console
        self.secrets = secrets

    def redact(self, text: str) -> str:
        # Belt and braces: no message we build holds a secret, but a hub's reply might echo one.
        for secret in self.secrets:
            if secret and len(secret) >= 4:
                text = text.replace(secret, "***")
        return text

    def step(self, name: str, profile: str | None = None) -> "_StepContext":
        return _StepContext(self, Step(name=name, profile=profile))

    def skip(self, name: str, profile: str | None, why: str) -> None:
        self.add(Step(name=name, profile=profile, skipped=True, detail=why))

    def add(self, step: Step) -> None:
        step.detail = self.redact(step.detail)
        self.report.steps.append(step)
        if self.console is not None:
            mark = {"ok": "[green]ok[/]", "failed": "[bold red]FAILED[/]", "skipped": "[yellow]skipped[/]"}
            where = f"{step.profile}: " if step.profile else ""
            tail = f": {step.detail}" if step.status != "ok" and step.detail else ""
            self.console.print(f"  {mark[step.status]} {where}{step.name} ({step.seconds:.1f} s){tail}",
                               markup=True, highlight=False)


class _StepContext:
    def __init__(self, rec: _Recorder, step: Step):
        self.rec = rec
        self.step = step

    def __enter__(self) -> Step:
        self._t0 = time.monotonic()
        return self.step

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.step.seconds = time.monotonic() - self._t0
        if exc is not None:
            if not isinstance(exc, Exception):
                return False  # KeyboardInterrupt, SystemExit: let them through (cleanup runs)
            self.step.ok = False
            if isinstance(exc, (StepFailed, *_EXPECTED)):
                self.step.detail = str(exc) or type(exc).__name__
            else:
                self.step.detail = f"{type(exc).__name__}: {exc}"
        self.rec.add(self.step)
        return True


def server_name(profile: str) -> str:
    """The named server a profile is tested on; the prefix keeps a real user's servers apart."""
    return "smoke-" + (re.sub(r"[^A-Za-z0-9._-]+", "-", profile).strip("-") or "profile")


def run_smoke(base_url: str, *, profiles: list[str], username: str | None = None,
              password: str | None = None, service_token: str | None = None,
              timeout: float = 180, console=None, checks: dict[str, KernelCheck] | None = None,
              verify: bool | str = True) -> SmokeReport:
    """Log a test user in, start each profile, run a check in every kernel, clean up.

    Authentication: without ``service_token`` the test logs in through the login form
    with ``username`` and ``password`` (the dummy authenticator). With only a
    ``service_token`` (a service holding SMOKE_SERVICE_SCOPES) it creates the user through
    the API instead. With both, it logs in through the form and uses the service only to
    delete the user at the end. ``username`` defaults to SMOKE_USER, the only user the
    service's scopes reach; a form-only run cannot delete its user, so it reuses that one.

    ``timeout`` bounds each wait (a spawn, a kernel's check, a stop), not the whole run.
    ``checks`` adds or replaces per-language checks (keys: kernelspec language).
    """
    username = username or SMOKE_USER
    auth = "service" if service_token and password is None else "form"
    report = SmokeReport(hub_url=base_url, username=username, auth=auth)
    rec = _Recorder(report, console, [password or "", service_token or ""])
    t_start = time.monotonic()
    hub = HubClient(base_url, verify=verify)  # form: cookie session; service: unused
    svc = HubClient(base_url, token=service_token, verify=verify) if service_token else None
    issuer = hub if auth == "form" else svc
    state = {"user": None, "token_id": None, "created": False, "active": []}
    # The user's token outlives the run only if cleanup fails; then it expires by itself.
    token_lifetime = int(max(3600, timeout * (3 * len(profiles) + 2)))
    try:
        with rec.step("login") as st:
            if auth == "form":
                hub.login(username, password or "")
                st.detail = "login form"
            else:
                state["created"] = svc.create_user(username)
                st.detail = "service token; " + ("user created" if state["created"] else "existing user reused")
            token, state["token_id"] = issuer.create_token(
                username, scopes=user_token_scopes(username), expires_in=token_lifetime)
            rec.secrets.append(token)
            state["user"] = (HubClient(base_url, token=token, verify=verify), token)
        for profile in profiles:
            if state["user"] is None:
                rec.skip("spawn", profile, "login failed")
                continue
            _profile_steps(rec, state, base_url, username, profile, timeout, checks, verify)
    finally:
        _cleanup(rec, state, hub, svc, issuer, username, auth, timeout)
        for client in (hub, svc, state["user"] and state["user"][0]):
            if client:
                client.close()
        report.seconds = time.monotonic() - t_start
        if console is not None:
            report.print_table(console)
    return report


def _profile_steps(rec, state, base_url, username, profile, timeout, checks, verify) -> None:
    """spawn, kernelspecs, one step per kernel, stop: for one profile."""
    user, token = state["user"]
    server = server_name(profile)
    with rec.step("spawn", profile) as st:
        if user.server_model(username, server) is not None:
            # Left running by an interrupted earlier run: start from a clean server.
            user.stop_server(username, server, time.monotonic() + timeout)
        state["active"].append(server)
        t0 = time.monotonic()
        ready_at_once = user.start_server(username, server, profile)
        message = "ready at once" if ready_at_once else user.wait_ready(username, server, t0 + timeout)
        st.detail = f"{server}: {message}"
    if st.ok:
        _kernel_steps(rec, ServerClient(user.server_url(username, server), token, verify=verify),
                      profile, timeout, checks)
    with rec.step("stop", profile) as st:
        user.stop_server(username, server, time.monotonic() + timeout)
        state["active"].remove(server)
        st.detail = f"{server} stopped and removed"


def _kernel_steps(rec, server: ServerClient, profile, timeout, checks) -> None:
    """List the kernelspecs, then start, check and shut down each kernel in turn."""
    try:
        with rec.step("kernelspecs", profile) as st:
            specs = server.kernelspecs()
            if not specs:
                raise StepFailed("the server lists no kernelspecs")
            st.detail = ", ".join(f"{name} ({lang or '?'})" for name, lang in specs.items())
        if not st.ok:
            return
        for name, language in specs.items():
            with rec.step(f"kernel {name}", profile) as st:
                check, real = check_for(language, checks)
                kernel_id = server.start_kernel(name)
                try:
                    output, error = server.execute(kernel_id, check.code, timeout=timeout)
                finally:
                    server.delete_kernel(kernel_id)
                if error:
                    raise StepFailed(f"{check.code!r} raised {error}")
                if not output_matches(output, check.expected):
                    raise StepFailed(f"{check.code!r} printed {output.strip()[-200:]!r}, "
                                     f"expected {check.expected!r}")
                st.detail = (f"{check.code!r} -> {check.expected}" if real else
                             f"no check for language {language!r}: the kernel started and ran an empty cell")
    finally:
        server.close()


def _cleanup(rec, state, hub, svc, issuer, username, auth, timeout) -> None:
    """Stop what is still running, then delete the user (or at least revoke its token)."""
    with rec.step("cleanup") as st:
        notes, problems = [], []
        user = state["user"][0] if state["user"] else None
        # The service deletes only the smoke user or one it created: never someone's account.
        deletable = svc is not None and (state["created"] or username == SMOKE_USER)
        if user is not None:
            leftovers = list(state["active"])
            if deletable:
                # DELETE /users stops only the default server; named ones must stop first.
                try:
                    leftovers = sorted(set(leftovers) | set(user.user_model(username).get("servers", {})))
                except HubAPIError as exc:
                    problems.append(str(exc))
            for server in leftovers:
                try:
                    user.stop_server(username, server, time.monotonic() + timeout)
                    notes.append(f"stopped {server or 'default server'}")
                except (HubAPIError, TimeoutError) as exc:
                    problems.append(f"stop {server}: {exc}")
        if deletable:
            try:
                svc.delete_user(username)
                notes.append("user deleted")
            except HubAPIError as exc:
                problems.append(f"delete user: {exc}")
        if not deletable or problems:
            if state["token_id"] is not None:
                try:
                    issuer.delete_token(username, state["token_id"])
                    notes.append("token revoked")
                except HubAPIError as exc:
                    problems.append(f"revoke token: {exc}")
            if not deletable:
                notes.append("user kept (deleting it needs the smoke service token)")
        if auth == "form":
            hub.logout()
        st.detail = "; ".join(notes)
        if problems:
            raise StepFailed("; ".join(problems + notes))
