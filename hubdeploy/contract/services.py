"""The hub services every stack has, with the scopes of their tokens.

The renderer lists them in hub.json and compose, ``secrets`` generates their tokens,
the schema refuses a site service that would take one of their names, and the tools
that use them (``hubdeploy smoke``, ``hubdeploy.hub.orphans``) take their scopes and
names from here.
"""

from __future__ import annotations

from dataclasses import dataclass

from hubdeploy.contract.layout import secret_path, service_token


@dataclass(frozen=True)
class BuiltinService:
    """A hub service hubdeploy itself runs or uses."""

    name: str
    scopes: tuple[str, ...]
    # Whether a site switch (``services.idle_culler.enabled``, ``services.prometheus.enabled``)
    # decides if the stack has it.
    optional: bool = False

    @property
    def secret(self) -> str:
        return service_token(self.name)

    @property
    def token_file(self) -> str:
        return secret_path(self.secret)


# The one account the smoke service may act on. A fixed name is what lets its scopes be
# filtered to that user: a leaked smoke token cannot touch any real user or server.
# It must differ from the service's name: the hub compares names when it refuses
# "Cannot delete yourself!", whether the requester is a user or a service.
SMOKE_USER = "hubdeploy-smoke-user"

# `hubdeploy smoke` on sites without a login form:
# - admin:users!user=...: POST /hub/api/users/{name} (creating a user) needs admin:users,
#   and on JupyterHub 6 it contains delete:users for the final DELETE. Filtered by user
#   name, so it works before the user exists and only for that name.
# - tokens!user=...: issue (and revoke) a token for that user; everything else, starting,
#   watching and stopping servers and running kernels, is done as the user with it.
# An unfiltered `tokens` would let the service become any user, admins included.
SMOKE = BuiltinService("hubdeploy-smoke", (f"admin:users!user={SMOKE_USER}", f"tokens!user={SMOKE_USER}"))

# `hubdeploy status` and `hubdeploy orphans`: which servers the hub tracks. Its only
# write-capable scope, admin:server_state, is read here, never written.
# read:metrics: `status` shows the spawn counts and the starts in flight.
CLI = BuiltinService("hubdeploy-cli", ("list:users", "read:users:name", "read:servers", "admin:server_state",
                                       "read:metrics"))

# jupyterhub-idle-culler: find idle servers and stop them.
IDLE_CULLER = BuiltinService(
    "idle-culler", ("list:users", "read:users:activity", "read:servers", "delete:servers"), optional=True
)

# Prometheus scraping the hub's /hub/metrics: that and nothing else.
PROMETHEUS = BuiltinService("prometheus", ("read:metrics",), optional=True)

BUILTIN = (SMOKE, CLI, IDLE_CULLER, PROMETHEUS)
RESERVED_NAMES = frozenset(s.name for s in BUILTIN)


def builtin_services(idle_culler: bool, prometheus: bool = False) -> list[BuiltinService]:
    """The built-in services of a stack, in hub.json's order."""
    on = {IDLE_CULLER.name: idle_culler, PROMETHEUS.name: prometheus}
    return [s for s in BUILTIN if not s.optional or on[s.name]]
