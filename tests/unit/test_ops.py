"""The pure parts of ownership, backup/restore and ``logs --user``, and their argument
errors through the real CLI (exit 2, a message, nothing written)."""

from __future__ import annotations

import json
import sqlite3
import tarfile
from pathlib import Path

import pytest
from click.testing import CliRunner
from ruamel.yaml import YAML

from hubdeploy import render
from hubdeploy.cli.main import cli
from hubdeploy.contract.layout import LABEL_OWNER, LABEL_OWNER_DIR
from hubdeploy.errors import OperationError, SiteError
from hubdeploy.site.loader import load_site
from hubdeploy.ops import backup, restore, userlogs
from hubdeploy.state import ownership

GOLDEN = Path(__file__).parent / "golden"
REFS = {
    "base": "hubdeploy/golden-base:000000000001",
    "astro": "hubdeploy/golden-astro:000000000002",
    "hub": "hubdeploy/golden-hub:000000000003",
    "proxy": "hubdeploy/golden-proxy:000000000004",
    "db": "hubdeploy/golden-db:000000000005",
}
SITE = "name: hdtounit\nprofiles:\n  - {name: small, image: base}\n"


# -- ownership ----------------------------------------------------------------------


def test_a_new_directory_gets_an_id_only_when_saved(tmp_path):
    state = tmp_path / ".hubdeploy"
    first = ownership.load(state)
    assert first.new and first.directory == str(tmp_path.resolve())
    assert not state.exists()  # load has no side effect
    ownership.save(state, first)
    again = ownership.load(state)
    assert (again.id, again.new) == (first.id, False)
    other = ownership.load(tmp_path / "elsewhere" / ".hubdeploy")
    assert other.id != first.id


def test_the_first_saved_id_wins(tmp_path):
    state = tmp_path / ".hubdeploy"
    a, b = ownership.load(state), ownership.load(state)
    ownership.save(state, a)
    ownership.save(state, b)
    assert ownership.load(state).id == a.id


def test_refusal_names_the_other_directory():
    mine = ownership.Owner("aaa", "/sites/two")
    theirs = {LABEL_OWNER: "bbb", LABEL_OWNER_DIR: "/sites/one", "x": "y"}
    assert ownership.refusal(mine, [], "hubdeploy-s") is None
    assert ownership.refusal(mine, [{LABEL_OWNER: "aaa"}], "hubdeploy-s") is None
    assert ownership.refusal(mine, [{"com.docker.compose.project": "hubdeploy-s"}], "hubdeploy-s") is None
    why = ownership.refusal(mine, [{LABEL_OWNER: "aaa"}, theirs], "hubdeploy-s")
    assert "/sites/one" in why and "/sites/two" in why and "hubdeploy-s" in why


def test_the_hub_alone_carries_the_owner_and_goldens_do_not():
    site = load_site(GOLDEN / "site.yaml")
    owner = ownership.Owner("0123", "/sites/one")
    doc = YAML(typ="safe").load(render.render(site, GOLDEN, REFS, owner=owner.labels())["compose.yaml"])
    labelled = {n: (s["labels"][LABEL_OWNER], s["labels"][LABEL_OWNER_DIR])
                for n, s in doc["services"].items() if LABEL_OWNER in s["labels"]}
    assert labelled == {"hub": ("0123", "/sites/one")}
    plain = YAML(typ="safe").load(render.render(site, GOLDEN, REFS)["compose.yaml"])
    assert not any(LABEL_OWNER in s["labels"] for s in plain["services"].values())


# -- the archive --------------------------------------------------------------------


def _members():
    return {
        "site/site.yaml": backup.Member(SITE.encode(), 0o644),
        "secrets/cookie_secret": backup.Member(b"c" * 64),
        "hub-data/hubdeploy-identities.json": backup.Member(b"{}", 0o600, 1000, 1000),
        backup.DATABASE: backup.Member(b"db", 0o644, 0, 0),
    }


def _write(tmp_path, members, changes=None) -> Path:
    man = {**backup.manifest("hdtounit", "site.yaml", "sqlite", members, 0), **(changes or {})}
    path = tmp_path / "b.tar.gz"
    path.write_bytes(backup.archive_bytes(man, members))
    return path


def test_archive_round_trip_keeps_layout_modes_and_owners(tmp_path):
    members = _members()
    path = _write(tmp_path, members)
    with tarfile.open(path) as tar:
        assert tar.getnames()[0] == backup.MANIFEST
        man = json.load(tar.extractfile(backup.MANIFEST))
    assert (man["format"], man["version"], man["site"], man["database"]) == ("hubdeploy-backup", 1, "hdtounit", "sqlite")
    assert sorted(man["members"]) == sorted(members)
    got = backup.read_archive(path)
    assert got.site_text == SITE.encode()
    ident = got.under("hub-data")["hubdeploy-identities.json"]
    assert (ident.mode, ident.uid, ident.gid) == (0o600, 1000, 1000)
    assert set(got.under("secrets")) == {"cookie_secret"}
    # The same contents make the same bytes.
    assert backup.archive_bytes(man, members) == path.read_bytes()


@pytest.mark.parametrize("change, words", [
    ({"version": 2}, "archive version 2; this hubdeploy reads up to 1"),
    ({"format": "other"}, "not a hubdeploy backup"),
    ({"members": {}}, "damaged archive"),
])
def test_a_bad_manifest_is_refused(tmp_path, change, words):
    with pytest.raises(SiteError, match=words):
        backup.read_archive(_write(tmp_path, _members(), change))


def test_a_changed_member_is_refused(tmp_path):
    members = _members()
    man = backup.manifest("hdtounit", "site.yaml", "sqlite", members, 0)
    members["secrets/cookie_secret"] = backup.Member(b"d" * 64)
    path = tmp_path / "b.tar.gz"
    path.write_bytes(backup.archive_bytes(man, members))
    with pytest.raises(SiteError, match="secrets/cookie_secret"):
        backup.read_archive(path)


def test_not_an_archive_is_refused(tmp_path):
    path = tmp_path / "x.tar.gz"
    path.write_bytes(b"nothing")
    with pytest.raises(SiteError, match=str(path)):
        backup.read_archive(path)


def test_restore_conflicts(tmp_path):
    got = backup.read_archive(_write(tmp_path, _members()))
    site = tmp_path / "site" / "site.yaml"
    assert restore.conflicts(site, got, volume_exists=False, running=False) == []
    site.parent.mkdir()
    site.write_text(SITE)  # the same site file is no conflict
    assert restore.conflicts(site, got, volume_exists=False, running=False) == []
    site.write_text(SITE + "# edited\n")
    (site.parent / ".hubdeploy" / "secrets").mkdir(parents=True)
    (site.parent / ".hubdeploy" / "secrets" / "cookie_secret").write_text("x")
    found = restore.conflicts(site, got, volume_exists=True, running=True)
    assert len(found) == 4 and "hubdeploy-hdtounit-hub-data" in found[3] and "differs" in found[1]


def test_restored_servers_are_stopped(tmp_path):
    db = tmp_path / "j.sqlite"
    con = sqlite3.connect(db)
    con.executescript("""
        CREATE TABLE servers (id INTEGER PRIMARY KEY, url TEXT);
        CREATE TABLE spawners (id INTEGER PRIMARY KEY, name TEXT, server_id INTEGER, state TEXT);
        INSERT INTO servers VALUES (1, 'http://x');
        INSERT INTO spawners VALUES (1, 'proj', 1, '{"hubdeploy": {"state": {"job_id": "7"}}}');
        INSERT INTO spawners VALUES (2, '', NULL, NULL);
    """)
    con.commit()
    con.close()
    out = tmp_path / "out.sqlite"
    out.write_bytes(restore.stopped_database(db.read_bytes()))
    con = sqlite3.connect(out)
    assert con.execute("SELECT name, server_id, state FROM spawners ORDER BY id").fetchall() == [
        ("proj", None, "{}"), ("", None, "{}")]
    assert con.execute("SELECT count(*) FROM servers").fetchone() == (0,)
    with pytest.raises(OperationError):
        restore.stopped_database(b"not a database at all, not at all")


# -- logs --user --------------------------------------------------------------------

ROWS = [
    {"backend": "docker", "id": "c1", "owner": "ann", "tracked": True},
    {"backend": "slurm", "id": "12", "owner": "ann/big", "tracked": True},
    {"backend": "docker", "id": "c9", "owner": None, "tracked": False},
]


def test_find_server():
    assert userlogs.find_server(ROWS, "ann", "")["id"] == "c1"
    assert userlogs.find_server(ROWS, "ann", "big")["id"] == "12"
    with pytest.raises(SiteError, match="theirs: the default server, --server big"):
        userlogs.find_server(ROWS, "ann", "small")
    with pytest.raises(SiteError, match="of user 'bob': the user is unknown or has no running server"):
        userlogs.find_server(ROWS, "bob", "")
    with pytest.raises(SiteError, match="'annie'"):  # a prefix is not the user
        userlogs.find_server(ROWS, "annie", "")


def test_job_output_from_scontrol():
    line = ("JobId=12 JobName=hubdeploy-s-nb-ann UserId=ann(1001) GroupId=ann(1001) JobState=RUNNING "
            "BatchHost=c1 StdErr=/h/ann/.hubdeploy/logs/slurm-12.log StdOut=/h/ann/.hubdeploy/logs/slurm-12.log\n")
    assert userlogs.job_output(line) == {"path": "/h/ann/.hubdeploy/logs/slurm-12.log", "uid": "1001",
                                         "gid": "1001", "node": "c1", "state": "RUNNING"}
    with pytest.raises(OperationError, match="did not say"):
        userlogs.job_output("JobId=12 JobState=PENDING")
    assert userlogs.tail_argv("/p", "all", True) == ["tail", "-n", "+1", "-F", "--", "/p"]
    assert userlogs.tail_argv("-p", "20", False) == ["tail", "-n", "20", "--", "-p"]


# -- the CLI's argument errors: exit 2, no traceback, nothing written ----------------


def _site(tmp_path) -> Path:
    path = tmp_path / "site.yaml"
    path.write_text(SITE)
    return path


@pytest.mark.parametrize("args, words", [
    (["logs", "--server", "x"], "--server needs --user"),
    (["logs", "hub", "--user", "ann"], "a SERVICE or --user, not both"),
    (["logs", "--user", "ann", "--tail", "lots"], "a number of lines or 'all'"),
    (["logs", "--user", " "], "--user needs a user name"),
])
def test_logs_argument_errors(tmp_path, args, words):
    site = _site(tmp_path)
    res = CliRunner().invoke(cli, ["--site", str(site), *args])
    assert res.exit_code == 2, res.output
    assert words in res.output and "Traceback" not in res.output
    assert not (tmp_path / ".hubdeploy").exists()


def test_backup_never_overwrites(tmp_path):
    site = _site(tmp_path)
    target = tmp_path / "b.tar.gz"
    target.write_bytes(b"keep")
    res = CliRunner().invoke(cli, ["--site", str(site), "backup", "-o", str(target)])
    assert res.exit_code == 2 and "never overwrites" in res.output, res.output
    assert target.read_bytes() == b"keep" and not (tmp_path / ".hubdeploy").exists()


def test_restore_of_a_bad_archive_writes_nothing(tmp_path):
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(b"x" * 100)
    target = tmp_path / "new" / "site.yaml"
    res = CliRunner().invoke(cli, ["restore", str(bad), "--site", str(target)])
    assert res.exit_code == 2 and str(bad) in res.output and "Traceback" not in res.output, res.output
    assert not target.parent.exists()
