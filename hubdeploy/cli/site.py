"""Site commands: write a demo site file, check it, print its schema, render it."""

from __future__ import annotations

from pathlib import Path

import click

from hubdeploy.cli.common import handle, out, print_json, site_path, warn


@click.command()
@click.argument("directory", default=".", type=click.Path(file_okay=False))
@handle
def init(directory: str) -> None:
    """Write a commented, working demo site.yaml into DIRECTORY."""
    from hubdeploy.init import write_demo_site

    path = write_demo_site(Path(directory))
    out.print(f"wrote {path}\nnext: hubdeploy --site {path} up")


@click.command()
@click.pass_context
@handle
def validate(ctx: click.Context) -> None:
    """Check the site file; nothing is written or started."""
    from hubdeploy.site.loader import load_site

    site = load_site(site_path(ctx))
    warn(site)
    out.print(f"{site_path(ctx)}: ok (site {site.name}, {len(site.profiles)} profiles)")


@click.command()
def schema() -> None:
    """Print the site file's JSON Schema (for editors)."""
    from hubdeploy.site.model import json_schema

    print_json(json_schema())


@click.command("render")
@click.pass_context
@handle
def render_cmd(ctx: click.Context) -> None:
    """Write compose.yaml and the hub's configuration into .hubdeploy/ beside the site file."""
    from hubdeploy.ops import stack

    prep = stack.prepare(site_path(ctx))
    changed = stack.write(prep)
    out.print(f"rendered {prep.rendered} ({len(changed)} files changed)")
