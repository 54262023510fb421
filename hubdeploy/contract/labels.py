"""Label keys: those Docker Compose and Docker Swarm put on a stack's objects (hubdeploy
finds the stack's containers, services, networks and volumes by them), and those
hubdeploy writes on its images and throwaway containers.

hubdeploy's own labels on notebooks, services and volumes (site, user, server, profile,
owner, config hash) are in :mod:`hubdeploy.contract.layout`.
"""

from __future__ import annotations

from hubdeploy.contract.layout import swarm_service

# -- set by Docker Compose on every object of a project ---------------------------------
COMPOSE_PROJECT = "com.docker.compose.project"
COMPOSE_SERVICE = "com.docker.compose.service"
COMPOSE_VOLUME = "com.docker.compose.volume"

# -- set by `docker stack deploy` and swarm on a stack's services, networks, volumes,
# secrets and configs, and on its tasks' containers -------------------------------------
STACK_NAMESPACE = "com.docker.stack.namespace"
SWARM_SERVICE_NAME = "com.docker.swarm.service.name"
SWARM_SERVICE_ID = "com.docker.swarm.service.id"

# Only Docker sets labels under these: a container the hub made with one could pass for
# a stack service or a swarm task (the engine proxy refuses them).
DOCKER_PREFIX = "com.docker."
SWARM_PREFIX = "com.docker.swarm."

# -- on hubdeploy's images (the site's is layout.LABEL_SITE) -----------------------------
IMAGE_NAME = "hubdeploy.image"
IMAGE_SPEC_HASH = "hubdeploy.spec-hash"
IMAGE_PARENT = "hubdeploy.parent"
# The hash of what an image holds whatever site it belongs to (hubdeploy.images).
IMAGE_CONTENT_KEY = "hubdeploy.content-key"
# The hub image's JupyterHub version, which `up` compares to detect an upgrade.
IMAGE_JUPYTERHUB_VERSION = "hubdeploy.jupyterhub-version"
# A notebook image's kernels (hubdeploy.kernels.label_value).
IMAGE_KERNELS = "hubdeploy.kernels"

# -- on throwaway objects, so a run interrupted half-way can be cleaned up by label ------
UPGRADE_DB = "hubdeploy.upgrade-db"
IMAGETEST = "hubdeploy.imagetest"


def compose_filter(project: str, service: str | None = None) -> list[str]:
    """Engine label filters for compose's containers (or networks, volumes) of
    ``project``, and of its ``service`` only when given."""
    return [f"{COMPOSE_PROJECT}={project}", *([f"{COMPOSE_SERVICE}={service}"] if service else [])]


def stack_filter(project: str, service: str | None = None) -> list[str]:
    """The same for the swarm stack ``project``: its objects, or its ``service``'s
    tasks' containers (swarm names a stack's service ``{project}_{service}``)."""
    return [f"{STACK_NAMESPACE}={project}",
            *([f"{SWARM_SERVICE_NAME}={swarm_service(project, service)}"] if service else [])]
