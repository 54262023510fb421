"""Notebook backends, found by name in the ``hubdeploy.backends`` entry-point group.

A facility adds a backend in its own package (see :mod:`hubdeploy.backends.base`); the
site selects it by name, as JupyterHub selects spawners by their entry-point names.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from importlib.metadata import entry_points
from typing import Any

from hubdeploy.backends.base import Backend
from hubdeploy.contract.hubjson import Profile
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


def backend_config(base: Mapping[str, Any], profiles: Iterable[Profile]) -> dict[str, Any]:
    """A backend's config as the hub builds it: hub.json's config for that backend plus
    ``allowed_images``, the image references of the site's profiles."""
    return {**base, "allowed_images": sorted({p.image_ref for p in profiles})}


__all__ = ["GROUP", "Backend", "UnknownBackend", "backend_config", "get_backend", "installed_backends"]
