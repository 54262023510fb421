"""A hub user's account at spawn: resolved from the site's identity source, with its home
made and, for the stack's own Slurm cluster, published to the nodes.

The spawner calls :func:`resolve` before anything starts; an IdentityError (the source
has no account for the user, or one that may not be used) becomes its 403.
"""

from __future__ import annotations

import asyncio
import json

from hubdeploy.contract.identity import Identity, IdentityConfig
from hubdeploy.contract.strict import plain
from hubdeploy.hub.identity import IdentitySource, ensure_home, get_source, write_nss

# One identity source per configuration for the whole hub (the auto source's lock and
# the file source's cache are shared by every user's spawner).
_SOURCES: dict[str, IdentitySource] = {}


def identity_source(config: IdentityConfig) -> IdentitySource:
    """The hub's one source for hub.json's ``identity`` section."""
    data = plain(config)
    key = json.dumps(data, sort_keys=True)
    if key not in _SOURCES:
        _SOURCES[key] = get_source(data)
    return _SOURCES[key]


async def resolve(config: IdentityConfig, user: str) -> tuple[Identity, IdentitySource]:
    """``user``'s account and the source it came from, its home made (when the site keeps
    homes) and published to the stack's cluster (when it has one). Never another account
    instead: IdentityError naming the source."""
    source = identity_source(config)
    account = await source.lookup(user)
    if config.homes_dir:
        await asyncio.to_thread(ensure_home, config.homes_dir, account, config.home_template)
    if config.nss_dir:
        await asyncio.to_thread(write_nss, config.nss_dir, [account])
    return account, source
