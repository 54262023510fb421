"""Notebook backends, found by name in the ``hubdeploy.backends`` entry-point group.

A facility adds a backend in its own package (see :mod:`hubdeploy.backends.base`); the
site selects it by name, as JupyterHub selects spawners by their entry-point names.
"""

from __future__ import annotations

from importlib.metadata import entry_points

from hubdeploy.backends.base import Backend, BackendConfig, parse_config
from hubdeploy.contract.hubjson import SpawnerSection
from hubdeploy.errors import SiteError

GROUP = "hubdeploy.backends"


class UnknownBackend(SiteError):
    """No backend of that name is installed."""


def installed_backends() -> list[str]:
    """Names of the installed backends, sorted."""
    return sorted({ep.name for ep in entry_points(group=GROUP)})


def get_backend(name: str) -> type[Backend]:
    """The backend class registered as ``name``; :class:`UnknownBackend` lists the installed ones."""
    matches = [ep for ep in entry_points(group=GROUP) if ep.name == name]
    if not matches:
        installed = ", ".join(installed_backends()) or "none"
        raise UnknownBackend(
            f"unknown notebook backend {name!r}; installed: {installed}",
            hint=f"install the package that provides it (entry-point group {GROUP!r})",
        )
    cls = matches[0].load()
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise UnknownBackend(f"backend {name!r} ({matches[0].value}) is not a hubdeploy Backend subclass")
    return cls


def backend_configs(spawner: SpawnerSection) -> dict[str, BackendConfig]:
    """Every backend hub.json's ``spawner`` names (``backend``, then ``backends``), each
    with its config read as that backend's own ``Config`` (:func:`parse_config`), plus
    ``allowed_images``: the image references of the site's profiles, the only images a
    backend starts. ValueError naming the backend and the key; UnknownBackend."""
    images = sorted({p.image_ref for p in spawner.profiles})
    configs = {spawner.backend: spawner.backend_config, **spawner.backends}
    return {name: parse_config(get_backend(name).Config, {**config, "allowed_images": images}, name)
            for name, config in configs.items()}


__all__ = ["GROUP", "Backend", "UnknownBackend", "backend_configs", "get_backend", "installed_backends"]
