"""Backend lookup by entry-point name, and the closed configs backends read."""

from __future__ import annotations

import pytest

from hubdeploy.backends import UnknownBackend, get_backend, installed_backends
from hubdeploy.backends.base import parse_config
from hubdeploy.backends.docker import DockerBackend, DockerConfig
from hubdeploy.backends.slurm import SlurmBackend, SlurmConfig
from hubdeploy.errors import SiteError

DOCKER = {"network": "n", "prefix": "hubdeploy-test", "site": "t"}


def test_installed_backends_resolve_to_their_classes():
    assert {"docker", "slurm"} <= set(installed_backends())
    for name, cls in (("docker", DockerBackend), ("slurm", SlurmBackend)):
        assert get_backend(name) is cls
        assert cls.name == name  # messages name the backend as the site does


def test_unknown_backend_lists_installed():
    with pytest.raises(UnknownBackend) as exc:
        get_backend("kubernetes")
    assert "'kubernetes'" in str(exc.value) and "installed: docker, slurm" in str(exc.value)
    assert isinstance(exc.value, SiteError) and exc.value.exit_code == 2


def test_an_entry_point_that_is_not_a_backend_is_refused(tmp_path, monkeypatch):
    # A real distribution on sys.path whose entry point names a class that is no Backend.
    dist = tmp_path / "bogus_backend-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: bogus-backend\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[hubdeploy.backends]\nbogus = json:JSONDecoder\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "bogus" in installed_backends()
    with pytest.raises(UnknownBackend, match="json:JSONDecoder.*is not a hubdeploy Backend subclass"):
        get_backend("bogus")


def test_docker_backend_requires_its_config():
    with pytest.raises(ValueError, match="lacks network"):
        parse_config(DockerConfig, {"prefix": "hubdeploy-test", "site": "t"}, "docker")
    with pytest.raises(ValueError, match="lacks network"):
        parse_config(DockerConfig, {**DOCKER, "network": ""}, "docker")


def test_a_backend_takes_only_its_own_config():
    with pytest.raises(TypeError, match="the slurm backend takes a SlurmConfig, not DockerConfig"):
        SlurmBackend(DockerConfig(**DOCKER))
    with pytest.raises(TypeError, match="not dict"):
        DockerBackend(DOCKER)


@pytest.mark.parametrize("cls, config, words", [
    (DockerBackend, {**DOCKER, "netwrok": "n"}, "unknown key netwrok (did you mean network?); known: allowed_images, docker_url"),
    (DockerBackend, {**DOCKER, "timeout": "30"}, "timeout must be an integer, not '30'"),
    (DockerBackend, {**DOCKER, "init": 1}, "init must be true or false"),
    (SlurmBackend, {"submit_prefix": "ssh login"}, "submit_prefix must be a list of str"),
    (SlurmBackend, {"poll_interval": True}, "poll_interval must be a number"),
    (SlurmBackend, {"site": 3}, "site must be a string or null"),
])
def test_backend_configs_are_closed_and_typed(cls, config, words):
    with pytest.raises(ValueError) as exc:
        parse_config(cls.Config, config, cls.name)
    assert words in str(exc.value)


def test_backend_config_values_are_typed():
    b = SlurmBackend(parse_config(SlurmConfig, {"submit_prefix": ["ssh", "login"], "poll_interval": 3,
                                                "allowed_images": ["a:1"]}, "slurm"))
    assert b.config.submit_prefix == ("ssh", "login") and b.config.poll_interval == 3.0
    assert b.config.allowed_images == ("a:1",) and b.config.output == "hubdeploy-slurm-%j.log"
