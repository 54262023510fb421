"""hubdeploy.hub.run: secrets from files into the environment, never into argv."""

from __future__ import annotations

import os
import pwd
import subprocess
import sys

import pytest

from hubdeploy.hub import run as runmod

SECRET = "s3cr3t-value-for-test"


def run_wrapper(*args, check=True):
    return subprocess.run(
        [sys.executable, "-m", "hubdeploy.hub.run", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=check,
    )


@pytest.fixture
def secret_file(tmp_path):
    path = tmp_path / "token"
    path.write_text(f"  {SECRET}\n\n")
    path.chmod(0o600)
    return path


def test_env_from_file_stripped_and_not_in_argv(secret_file, tmp_path):
    other = tmp_path / "other"
    other.write_text("two\n")
    probe = (
        "import os,sys;"
        "print(os.environ['TOKEN']);print(os.environ['OTHER']);"
        "print(open('/proc/self/cmdline','rb').read().replace(b'\\0',b' ').decode())"
    )
    out = run_wrapper("--env", f"TOKEN={secret_file}", "--env", f"OTHER={other}", "--", sys.executable, "-c", probe)
    token, second, cmdline = out.stdout.splitlines()
    assert token == SECRET and second == "two"
    assert SECRET not in cmdline and str(secret_file) not in cmdline  # exec'd: our argv is gone


def test_command_options_are_not_ours(secret_file):
    probe = "import sys;print(sys.argv[1:])"
    out = run_wrapper("--env", f"T={secret_file}", "--", sys.executable, "-c", probe, "--env", "--user")
    assert out.stdout.strip() == "['--env', '--user']"


def test_missing_file_names_the_file_not_a_value(tmp_path):
    out = run_wrapper("--env", f"TOKEN={tmp_path}/absent", "--", "true", check=False)
    assert out.returncode != 0
    assert f"{tmp_path}/absent" in out.stderr and "TOKEN" in out.stderr


def test_empty_file_is_an_error(tmp_path):
    empty = tmp_path / "empty"
    empty.write_text("\n")
    out = run_wrapper("--env", f"TOKEN={empty}", "--", "true", check=False)
    assert out.returncode != 0 and "empty" in out.stderr


@pytest.mark.parametrize(
    "argv",
    [
        ["--env", "TOKEN"],
        ["--env", "1BAD=/x", "--", "true"],
        ["--env", "A=", "--", "true"],
        ["--", ],
        [],
    ],
)
def test_bad_arguments(argv):
    with pytest.raises(SystemExit) as exc:
        runmod.parse_args(argv)
    assert exc.value.code == 2


def test_command_not_found(secret_file):
    out = run_wrapper("--env", f"T={secret_file}", "--", "hubdeploy-test-no-such-command", check=False)
    assert out.returncode != 0 and "cannot run hubdeploy-test-no-such-command" in out.stderr


def test_drop_to_user(secret_file):
    if os.getuid() == 0:
        user, expect_uid = "nobody", pwd.getpwnam("nobody").pw_uid
        # Read as root before dropping: nobody could not read the 0600 file itself.
    else:
        user, expect_uid = pwd.getpwuid(os.getuid()).pw_name, os.getuid()
    # /bin/sh: the test's own Python may live under /root, where nobody cannot execute it.
    probe = 'echo "$(id -u) $(id -g) $T $USER"'
    out = run_wrapper("--env", f"T={secret_file}", "--user", user, "--", "/bin/sh", "-c", probe)
    uid, gid, token, name = out.stdout.split()
    assert int(uid) == expect_uid and token == SECRET and name == user
    assert int(gid) == pwd.getpwnam(user).pw_gid


def test_unknown_user(secret_file):
    out = run_wrapper("--env", f"T={secret_file}", "--user", "hubdeploy-test-nouser", "--", "true", check=False)
    assert out.returncode != 0 and "no such user" in out.stderr
