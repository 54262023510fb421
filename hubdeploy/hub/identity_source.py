"""The base class of identity sources (:mod:`hubdeploy.hub.identity` lists them).

Its own module so that a source kept in a module of its own (``ldap``, with its ldap3
dependency, in :mod:`hubdeploy.hub.identity_ldap`) subclasses it without importing the
module that chooses among the sources.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hubdeploy.contract.identity import Identity

DEFAULT_TEMPLATE = "/home/{name}"


class IdentitySource:
    """Base class of identity sources; ``config`` is hub.json's ``identity`` section."""

    name = "?"

    def __init__(self, config: Mapping[str, Any]):
        self.config = dict(config)
        self.home_template = str(self.config.get("home_template") or DEFAULT_TEMPLATE)

    async def lookup(self, user: str) -> Identity:
        """The account of hub user ``user``; IdentityError (naming this source) if none."""
        raise NotImplementedError

    def describe(self) -> str:
        """What to name in a refusal: the source and where it reads from."""
        return self.name

    def home(self, name: str) -> str:
        return self.home_template.format(name=name)
