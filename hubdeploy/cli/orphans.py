"""The ``orphans`` group: servers the backends run that no hub server owns."""

from __future__ import annotations

import re

import click
from rich.table import Table

from hubdeploy.cli.common import handle, out, print_json, site_path
from hubdeploy.errors import SiteError


def _print_orphans(rows: list[dict], title: str) -> None:
    table = Table(title=title)
    for col in ("backend", "id", "name", "state", "owner"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["backend"], r["id"][:12], r["name"], r["state"], r["owner"] or "[bold]untracked[/]")
    out.print(table)


@click.group("orphans")
def orphans_group() -> None:
    """Servers (Slurm jobs, containers) the hub no longer tracks.

    A lost database, a crash between submitting a job and recording it: the backend still
    runs a server no hub server owns. `status` lists them; only `orphans remove` removes.
    """


@orphans_group.command("list")
@click.option("--all", "show_all", is_flag=True, help="Also list the servers the hub tracks.")
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON.")
@click.pass_context
@handle
def orphans_list(ctx: click.Context, show_all: bool, as_json: bool) -> None:
    """List the servers no hub server owns (exit 0 even when there are some)."""
    from hubdeploy.ops import stack

    report = stack.orphans(stack.prepare(site_path(ctx)))
    rows = report["servers"] if show_all else [r for r in report["servers"] if not r["tracked"]]
    if as_json:
        print_json({"backends": report["backends"], "servers": rows})
    elif rows:
        _print_orphans(rows, "backend servers" if show_all else "servers the hub no longer tracks")
    else:
        out.print(f"no untracked servers (checked: {', '.join(report['backends']) or 'no backend can list'})")


_ORPHAN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")  # Slurm job ids, container ids


@orphans_group.command("remove")
@click.argument("ids", nargs=-1)
@click.option("--all", "remove_all", is_flag=True, help="Remove every untracked server.")
@click.option("--json", "as_json", is_flag=True, help="Print what was removed as JSON.")
@click.pass_context
@handle
def orphans_remove(ctx: click.Context, ids: tuple[str, ...], remove_all: bool, as_json: bool) -> None:
    """Cancel the jobs / remove the containers IDS (or --all) that the hub does not track.

    All or nothing: an ID that is tracked, unknown or ambiguous removes nothing (exit 2).
    """
    from hubdeploy.ops import stack

    if bool(ids) == remove_all:
        raise SiteError("name the IDs to remove, or --all (not both)", hint="hubdeploy orphans list")
    bad = [i for i in ids if not _ORPHAN_ID.match(i)]
    if bad:
        raise SiteError(f"not a job or container ID: {', '.join(repr(i) for i in bad)}", hint="hubdeploy orphans list")
    report = stack.orphans(stack.prepare(site_path(ctx)), remove=ids, remove_all=remove_all)
    if as_json:
        print_json({"removed": report["removed"]})
    else:
        out.print(f"removed {len(report['removed'])}: {', '.join(i[:12] for i in report['removed']) or '-'}")
