"""Operating a site's stack on the engine: up, status, logs, down, upgrade, backup,
restore, a user's logs and the smoke test.

:mod:`hubdeploy.ops.stack` holds the operations; the orchestrator the site names
(compose or swarm) does its part of each through :mod:`hubdeploy.ops.orchestrator`.
"""
