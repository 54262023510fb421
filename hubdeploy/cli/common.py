"""What every command module shares: the consoles, the error handler, the site path.

Exit codes: 0 ok, 1 a failed operation, 2 bad input. A HubdeployError is printed as one
clear message, never as a traceback; anything else is a bug and says so.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import click
from rich.console import Console

from hubdeploy.errors import HubdeployError

out = Console()
err = Console(stderr=True)


def handle(fn):
    """Turn HubdeployError into its exit code and message."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except HubdeployError as exc:
            err.print(f"[bold red]error:[/] {exc}", highlight=False, markup=True, soft_wrap=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            err.print("interrupted")
            sys.exit(130)

    return wrapper


def site_path(ctx: click.Context) -> Path:
    return Path(ctx.obj["site"])


def warn(site) -> None:
    """What the site allows but should know is unsafe (schema.Site.warnings)."""
    for text in site.warnings():
        err.print(f"[bold yellow]warning:[/] {text}", highlight=False, markup=True, soft_wrap=True)


def print_json(data) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))


TAKE_OVER = ("Act on the stack even though another site directory (with a site file of the "
             "same name) created it; from now on this directory owns it.")
