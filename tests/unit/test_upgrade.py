"""The pure part of upgrades: reading versions and deciding what `up` does."""

from __future__ import annotations

import pytest

from hubdeploy.errors import SiteError
from hubdeploy.ops import upgrade
from hubdeploy.ops.upgrade import decide, parse_version


@pytest.mark.parametrize("text, expected", [("5.5.4", (5, 5, 4)), ("6.1.1\n", (6, 1, 1)),
                                            ("6.0.0b1", (6, 0, 0)), ("10.0.12", (10, 0, 12))])
def test_parse_version(text, expected):
    assert parse_version(text) == expected


@pytest.mark.parametrize("text", ["", "6", "6.1", "v6.1.1", "jupyterhub"])
def test_parse_version_refuses_what_is_not_one(text):
    with pytest.raises(ValueError):
        parse_version(text)


def test_no_running_hub_is_no_upgrade():
    d = decide(None, "6.1.1", force=False)
    assert d.kind == "none" and not d.migrate


def test_same_version_changes_nothing():
    assert decide("6.1.1", "6.1.1", force=False).kind == "same"


@pytest.mark.parametrize("old, new", [("5.5.4", "6.1.1"), ("6.1.0", "6.1.1"), ("5.5.4", "5.10.0")])
def test_newer_version_is_an_upgrade(old, new):
    d = decide(old, new, force=False)
    assert d.kind == "upgrade" and d.migrate and (d.running, d.wanted) == (old, new)


def test_version_order_is_numeric_not_textual():
    # "5.10.0" > "5.9.0" numerically; as text it would sort first and be refused.
    assert decide("5.9.0", "5.10.0", force=False).kind == "upgrade"
    with pytest.raises(SiteError):
        decide("5.10.0", "5.9.0", force=False)


def test_downgrade_is_bad_input_naming_both_versions():
    with pytest.raises(SiteError) as info:
        decide("6.1.1", "5.5.4", force=False)
    assert info.value.exit_code == 2
    assert "hub.jupyterhub_version" in info.value.message and "6.1.1" in info.value.message
    assert "5.5.4" in info.value.message


def test_forced_downgrade_migrates():
    d = decide("6.1.1", "5.5.4", force=True)
    assert d.kind == "downgrade" and d.migrate


@pytest.mark.parametrize("version, ok", [("5.5.0", True), ("5.5.4", True), ("6.1.1", True), ("5.4.6", False),
                                         ("4.1.6", False)])
def test_schema_takes_jupyterhub_from_5_5(version, ok):
    from hubdeploy.site.loader import load_site_text

    text = f"name: v\nhub: {{jupyterhub_version: '{version}'}}\nprofiles: [{{name: p, image: base}}]\n"
    if ok:
        assert load_site_text(text, "site.yaml").hub.jupyterhub_version == version
    else:
        with pytest.raises(SiteError) as info:
            load_site_text(text, "site.yaml")
        assert "site.yaml:2:" in info.value.message and "hub.jupyterhub_version" in info.value.message


def test_upgrade_db_task_is_the_hubs_with_the_new_image_and_command():
    hub = {
        "ContainerSpec": {"Image": "hub:old", "Command": ["tini", "--"], "Args": ["jupyterhub"],
                          "Healthcheck": {"Test": ["CMD", "true"]}, "Configs": [{"ConfigName": "c"}],
                          "Secrets": [{"SecretName": "s"}], "Mounts": [{"Source": "hub-data"}]},
        "Networks": [{"Target": "n1", "Aliases": ["hub"]}],
        "Placement": {"Constraints": ["node.id == abc"]},
        "RestartPolicy": {"Condition": "any"},
        "ForceUpdate": 3,
    }
    task = upgrade.upgrade_db_task(hub, "hub:new")
    box = task["ContainerSpec"]
    assert box["Image"] == "hub:new" and "Command" not in box
    assert box["Args"] == ["jupyterhub", "upgrade-db", "-f", upgrade.HUB_CONFIG_PATH]
    assert box["Healthcheck"] == {"Test": ["NONE"]}
    # What only a swarm task can mount, and where it runs, stay the hub's.
    assert (box["Configs"], box["Secrets"], box["Mounts"]) == ([{"ConfigName": "c"}], [{"SecretName": "s"}],
                                                               [{"Source": "hub-data"}])
    assert task["Placement"] == hub["Placement"]
    assert task["Networks"] == [{"Target": "n1"}] and task["RestartPolicy"] == {"Condition": "none"}
    assert "ForceUpdate" not in task
    assert hub["ContainerSpec"]["Image"] == "hub:old" and hub["Networks"][0]["Aliases"] == ["hub"]  # not changed
