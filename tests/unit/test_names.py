"""Escaping of usernames and server names into Docker object names."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hubdeploy.contract import names

PREFIX = "hubdeploy-test-names"


@pytest.mark.parametrize(
    "raw, escaped",
    [
        ("has@", "has-40"),
        ("a--b", "a-2d-2db"),
        ("秀樹", "-e7-a7-80-e6-a8-b9"),
        ("Ann", "-41nn"),
        ("first.last@example.org", "first-2elast-40example-2eorg"),
        ("plain0", "plain0"),
    ],
)
def test_escape_examples(raw, escaped):
    assert names.escape(raw) == escaped
    assert names.unescape(escaped) == raw


def test_container_and_volume_names():
    assert names.container_name(PREFIX, "has@") == f"{PREFIX}-nb-has-40"
    assert names.container_name(PREFIX, "has@", "gpu-1") == f"{PREFIX}-nb-has-40--gpu-2d1"
    assert names.home_volume(PREFIX, "秀樹") == f"{PREFIX}-home--e7-a7-80-e6-a8-b9"


def test_default_and_named_server_differ_from_other_users():
    # "a" with server "b" and user "a--b" must not share a container.
    assert names.container_name(PREFIX, "a", "b") != names.container_name(PREFIX, "a--b")
    assert names.container_name(PREFIX, "a--b") == f"{PREFIX}-nb-a-2d-2db"


def test_long_names_are_capped_and_stay_distinct():
    a = names.container_name(PREFIX, "x" * 300)
    b = names.container_name(PREFIX, "x" * 301)
    assert len(a) == len(b) == names.MAX_NAME
    assert a != b
    assert names.DOCKER_NAME_RE.match(a)
    assert len(names.home_volume(PREFIX, "秀" * 100)) == names.MAX_NAME


def test_dns_name_is_per_instance_and_fits_a_label():
    short = names.container_name(PREFIX, "has@")
    assert names.dns_name(short, "0a1b2c3d4e5f") == f"{short}-0a1b2c3d4e5f"
    # A restarted server is a new instance: a new name, never an old cached address.
    assert names.dns_name(short, "0a1b2c3d4e5f") != names.dns_name(short, "ffffffffffff")
    long = names.container_name(PREFIX, "秀樹" * 10)
    alias = names.dns_name(long, "0a1b2c3d4e5f")
    assert len(alias) <= names.MAX_DNS_LABEL and alias.startswith(long[:40])
    with pytest.raises(ValueError):
        names.dns_name(short, "not hex!")


@pytest.mark.parametrize("prefix", ["", "Hub", "hub_x", "-hub", "hub.x"])
def test_bad_prefix_rejected(prefix):
    with pytest.raises(ValueError):
        names.container_name(prefix, "u")


@pytest.mark.parametrize("bad", ["-4", "-zz", "A", "a_b"])
def test_unescape_rejects_malformed(bad):
    with pytest.raises(ValueError):
        names.unescape(bad)


# Any Unicode text, including surrogate-free astral characters, '-' runs and separators.
texts = st.text(min_size=1, max_size=40, alphabet=st.characters(exclude_categories=("Cs",)))
servers = st.one_of(st.just(""), texts)


@settings(max_examples=400, deadline=None)
@given(st.tuples(texts, servers), st.tuples(texts, servers))
def test_container_name_injective(a, b):
    if a != b:
        assert names.container_name(PREFIX, *a) != names.container_name(PREFIX, *b)
    else:
        assert names.container_name(PREFIX, *a) == names.container_name(PREFIX, *b)


@settings(max_examples=400, deadline=None)
@given(texts, texts)
def test_home_volume_injective(a, b):
    assert (names.home_volume(PREFIX, a) == names.home_volume(PREFIX, b)) == (a == b)


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=300, alphabet=st.characters(exclude_categories=("Cs",))), servers)
def test_names_are_valid_docker_names(user, server):
    for name in (names.container_name(PREFIX, user, server), names.home_volume(PREFIX, user)):
        assert names.DOCKER_NAME_RE.match(name), name
        assert len(name) <= names.MAX_NAME
    assert names.unescape(names.escape(user)) == user


@settings(max_examples=400, deadline=None)
@given(texts, servers)
def test_container_name_decodes_back(user, server):
    # Decodability implies injectivity: an uncapped name determines (user, server).
    name = names.container_name(PREFIX, user, server)
    if len(name) == names.MAX_NAME and "_" in name:
        return  # capped: covered by the hash
    rest = name.removeprefix(f"{PREFIX}-nb-")
    esc_user, sep, esc_server = rest.partition("--")
    assert names.unescape(esc_user) == user
    assert names.unescape(esc_server) == server
    assert bool(sep) == bool(server)


def test_the_stack_objects_names_and_labels():
    # Existing stacks carry these names and Docker sets these labels: the values are the
    # contract, so they are spelt out here once more on purpose.
    from hubdeploy.contract import labels, layout

    project = layout.project_name("demo")
    assert project == "hubdeploy-demo"
    assert layout.stack_name(project, layout.USERS_NETWORK) == "hubdeploy-demo-users"
    assert layout.stack_name(project, layout.HUB_DATA_VOLUME) == "hubdeploy-demo-hub-data"
    assert layout.swarm_service(project, layout.HUB_SERVICE) == "hubdeploy-demo_hub"
    assert layout.slurm_node_service("c1") == "slurm-c1"
    assert labels.compose_filter(project) == ["com.docker.compose.project=hubdeploy-demo"]
    assert labels.compose_filter(project, "hub") == ["com.docker.compose.project=hubdeploy-demo",
                                                     "com.docker.compose.service=hub"]
    assert labels.stack_filter(project, "hub") == ["com.docker.stack.namespace=hubdeploy-demo",
                                                   "com.docker.swarm.service.name=hubdeploy-demo_hub"]
    assert names.server_prefix(project) == "hubdeploy-demo-nb-"
