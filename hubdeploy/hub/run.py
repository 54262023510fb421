"""Run a command with secrets from files in its environment, optionally as another user.

    python -m hubdeploy.hub.run --env NAME=/run/secrets/file ... [--user nobody] -- argv...

Compose mounts secrets as files; many programs (the idle culler, services) want a token in
an environment variable. Reading the file here, in the container, keeps the token out of
argv (``ps``), compose.yaml and ``docker inspect``. The process then replaces itself with
the command (``execvp``), so signals reach the command directly.
"""

from __future__ import annotations

import argparse
import os
import pwd
import re
import sys

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Parse our options; the command is everything after the first ``--``."""
    parser = argparse.ArgumentParser(
        prog="python -m hubdeploy.hub.run",
        usage="%(prog)s [--env NAME=FILE ...] [--user USER] -- argv...",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=FILE",
        help="set environment variable NAME to the stripped contents of FILE (repeatable)",
    )
    parser.add_argument("--user", help="drop to this user (name or uid) before running the command")
    # Split by hand: the command has options of its own that argparse must not see.
    cut = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:cut])
    args.command = argv[cut + 1 :]
    if not args.command:
        parser.error("no command given after --")
    for item in args.env:
        name, sep, path = item.partition("=")
        if not sep or not _ENV_NAME.match(name) or not path:
            parser.error(f"--env expects NAME=FILE, got {item!r}")
    return args


def read_secrets(pairs: list[str]) -> dict[str, str]:
    """``["NAME=FILE", ...]`` -> ``{NAME: stripped contents of FILE}``.

    An unreadable or empty file is an error (SystemExit naming the file, never the value):
    a service started with an empty token would fail later with a far less clear message.
    """
    env = {}
    for item in pairs:
        name, _, path = item.partition("=")
        try:
            with open(path, encoding="utf-8") as f:
                value = f.read().strip()
        except OSError as exc:
            raise SystemExit(f"hubdeploy.hub.run: cannot read {path} for {name}: {exc.strerror}") from None
        if not value:
            raise SystemExit(f"hubdeploy.hub.run: {path} (for {name}) is empty")
        env[name] = value
    return env


def drop_privileges(user: str) -> None:
    """Become ``user`` (name or numeric uid): groups first, then gid, then uid."""
    try:
        pw = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except KeyError:
        raise SystemExit(f"hubdeploy.hub.run: no such user {user!r}") from None
    if os.getuid() == pw.pw_uid:
        return
    # Order matters: after setuid we could no longer change groups.
    os.setgroups(os.getgrouplist(pw.pw_name, pw.pw_gid))
    os.setgid(pw.pw_gid)
    os.setuid(pw.pw_uid)
    os.environ.update(HOME=pw.pw_dir, USER=pw.pw_name, LOGNAME=pw.pw_name)


def main(argv: list[str] | None = None) -> None:
    """Read the secrets (as the starting user, who can read them), drop privileges, exec."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    os.environ.update(read_secrets(args.env))
    if args.user:
        drop_privileges(args.user)
    try:
        os.execvp(args.command[0], args.command)
    except OSError as exc:
        raise SystemExit(f"hubdeploy.hub.run: cannot run {args.command[0]}: {exc.strerror}") from None


if __name__ == "__main__":
    main()
