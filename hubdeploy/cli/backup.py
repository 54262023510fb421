"""Backup and restore of a site's state: database, secrets, site file, data volume."""

from __future__ import annotations

from pathlib import Path

import click

from hubdeploy.cli.common import err, handle, out, print_json, site_path


@click.command()
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="The archive to write (default: SITE-backup-TIME.tar.gz here); never overwritten.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@handle
def backup(ctx: click.Context, output: str | None, as_json: bool) -> None:
    """Archive the hub's database, secrets, site file and data volume (mode 0600).

    The stack must be running: the database is snapshot live by the hub's sqlite.
    """
    from hubdeploy.ops import backup as backup_mod
    from hubdeploy.ops import stack

    result = backup_mod.backup(stack.prepare(site_path(ctx)), Path(output) if output else None)
    if as_json:
        print_json(result)
    else:
        out.print(f"backup of site {result['site']}: {result['archive']} ({result['bytes']} bytes, "
                  f"{len(result['members'])} files, format version {result['version']}); it holds every "
                  "secret of the stack: keep it like one", markup=False, highlight=False, soft_wrap=True)


@click.command()
@click.argument("archive", type=click.Path(exists=True, dir_okay=False))
@click.option("--site", "site_opt", type=click.Path(dir_okay=False),
              help="Where to write the site file (default: hubdeploy's --site).")
@click.option("--force", is_flag=True, help="Replace an existing site file, secrets and hub data volume.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@handle
def restore(ctx: click.Context, archive: str, site_opt: str | None, force: bool, as_json: bool) -> None:
    """Put a backup ARCHIVE back: site file, secrets, the hub's data; then `up`.

    Refuses to overwrite existing state unless --force, and never runs under a live stack.
    """
    from hubdeploy.ops import restore as restore_mod

    site_file = Path(site_opt) if site_opt else site_path(ctx)
    result = restore_mod.restore(site_file, Path(archive), force=force, console=None if as_json else err)
    if as_json:
        print_json(result)
    else:
        out.print(f"restored site {result['site']} (backup of {result['created']}) into {result['site_file']}; "
                  f"servers are stopped. next: hubdeploy --site {result['site_file']} up",
                  markup=False, highlight=False, soft_wrap=True)
