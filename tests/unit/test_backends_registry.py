"""Backend lookup by entry-point name."""

from __future__ import annotations

import pytest

from hubdeploy.backends import UnknownBackend, get_backend, installed_backends
from hubdeploy.backends.base import Backend
from hubdeploy.backends.docker import DockerBackend
from hubdeploy.errors import SiteError


def test_docker_is_installed():
    assert "docker" in installed_backends()
    assert get_backend("docker") is DockerBackend
    assert issubclass(DockerBackend, Backend)


def test_unknown_backend_lists_installed():
    with pytest.raises(UnknownBackend) as exc:
        get_backend("kubernetes")
    assert "'kubernetes'" in str(exc.value) and "installed: docker" in str(exc.value)
    assert isinstance(exc.value, SiteError) and exc.value.exit_code == 2


def test_backend_is_abstract():
    with pytest.raises(TypeError):
        Backend({})  # type: ignore[abstract]


def test_docker_backend_requires_its_config():
    with pytest.raises(ValueError, match="network"):
        DockerBackend({"prefix": "hubdeploy-test", "site": "t"})
