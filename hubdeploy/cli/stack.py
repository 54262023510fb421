"""Stack commands: bring the stack up, report its status, show its logs, take it down,
and smoke-test it the way a user would."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.table import Table

from hubdeploy.cli.common import TAKE_OVER, err, handle, out, print_json, site_path, warn
from hubdeploy.errors import SiteError


@click.command()
@click.option("--wait-timeout", default=300, show_default=True, help="Seconds to wait for health.")
@click.option("--take-over", is_flag=True, help=TAKE_OVER)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--force", is_flag=True, help="Allow hub.jupyterhub_version older than the running hub's.")
@click.pass_context
@handle
def up(ctx: click.Context, wait_timeout: int, take_over: bool, as_json: bool, force: bool) -> None:
    """Render, build missing images, start the stack and wait until it is healthy.

    A changed hub.jupyterhub_version upgrades the hub: new images, a database backup,
    `jupyterhub upgrade-db`, then the new hub; a failed step leaves the old hub serving."""
    from hubdeploy.ops import stack

    prep = stack.prepare(site_path(ctx))
    warn(prep.site)
    result = stack.up(prep, console=None if as_json else err, wait_timeout=wait_timeout, take_over=take_over,
                      force=force)
    if as_json:
        print_json(
            {"url": result.url, "built": result.built, "changed_files": result.changed_files,
             "seconds": round(result.seconds, 2), "tls_certificate": result.tls_certificate,
             "upgraded": result.upgraded,
             "published": [{"image": p.image, "ref": p.ref, "pushed": p.pushed} for p in result.published]}
        )
    else:
        if result.upgraded:
            out.print(f"upgraded JupyterHub {result.upgraded['from']} -> {result.upgraded['to']}"
                      + (f" (database backup: {result.upgraded['backup']})" if result.upgraded["backup"] else ""),
                      markup=False, highlight=False, soft_wrap=True)
        built = f"built {', '.join(result.built)}; " if result.built else ""
        out.print(f"{built}up in {result.seconds:.1f} s: [bold]{result.url}[/]")
        if result.tls_certificate:
            out.print(
                f"self-signed TLS certificate: {result.tls_certificate} (pass it to "
                "`hubdeploy smoke --ca-bundle`, or import it into a browser)",
                markup=False, highlight=False, soft_wrap=True,  # a path to copy: never broken
            )


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@click.pass_context
@handle
def status(ctx: click.Context, as_json: bool) -> None:
    """Services, their health, and running user servers. Exit 1 when not healthy."""
    from hubdeploy.ops import stack

    prep = stack.prepare(site_path(ctx))
    data = stack.status(prep)
    if as_json:
        print_json(data)
    else:
        table = Table(title=f"site {data['site']}: {data['url']}")
        for col in ("service", "state", "health"):
            table.add_column(col)
        for s in data["services"]:
            table.add_row(s["service"], s["state"], s["health"] or "-")
        out.print(table)
        if data["servers"]:
            _print_servers(data["servers"], "user servers")
        else:
            out.print("no user servers")
        if not data["servers_error"]:
            out.print(_describe_spawns(data["spawns"]), markup=False, highlight=False)
        if data["servers_error"]:
            out.print(f"[yellow]only containers listed; the backends were not asked ({data['servers_error']})[/]")
        elif data["untracked"]:
            out.print(f"{len(data['untracked'])} server(s) the hub no longer tracks: remove them with "
                      "`hubdeploy orphans remove --all` (or by ID)")
    sys.exit(0 if data["healthy"] else 1)


def _describe_spawns(data: dict | None) -> str:
    """``spawns: 12 success, 1 failure; 2 starting, 3 waiting`` (from the hub's metrics)."""
    if not data:
        return "spawns: unknown (the hub's metrics could not be read)"
    counts = ", ".join(f"{n} {status}" for status, n in sorted(data["spawns"].items())) or "none yet"
    inflight = [f"{data[k]} {k}" for k in ("starting", "waiting") if data.get(k) is not None]
    return f"spawns: {counts}" + (f"; {', '.join(inflight)}" if inflight else "")


def _print_servers(rows: list[dict], title: str) -> None:
    table = Table(title=title)
    for col in ("backend", "id", "owner", "state", "node", "reason", "detail"):
        table.add_column(col)
    for r in rows:
        owner = r["owner"] or ("-" if r["tracked"] is None else "[bold]untracked[/]")
        detail = f"[bold red]{r['detail']}[/]" if "not responding" in r["detail"] or " is down" in r["detail"] else r["detail"]
        table.add_row(r["backend"], r["id"][:12], owner, r["state"], r["node"] or "-", r["reason"] or "-", detail or "-")
    out.print(table)


@click.command()
@click.argument("service", required=False)
@click.option("--user", help="Show this user's notebook server's own log instead (any backend).")
@click.option("--server", default="", help="With --user: the named server (default: the default server).")
@click.option("-f", "--follow", is_flag=True, help="Follow the log output.")
@click.option("--tail", default="200", show_default=True, help="Lines from the end of each log (or 'all').")
@click.pass_context
@handle
def logs(ctx: click.Context, service: str | None, user: str | None, server: str, follow: bool, tail: str) -> None:
    """Show the logs of the stack, of one SERVICE, or of a user's server (--user)."""
    from hubdeploy.ops import stack

    if user is None:
        if server:
            raise SiteError("--server needs --user")
        prep = stack.prepare(site_path(ctx))
        sys.exit(stack.logs(prep, service, follow, tail))
    from hubdeploy.ops import userlogs

    if service is not None:
        raise SiteError("give a SERVICE or --user, not both")
    if not user.strip():
        raise SiteError("--user needs a user name")
    userlogs.check_tail(tail)
    prep = stack.prepare(site_path(ctx))

    def write(data: bytes) -> None:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()

    sys.exit(userlogs.user_logs(prep, user, server, follow=follow, tail=tail, write=write))


@click.command()
@click.option("--volumes", is_flag=True, help="Also remove the hub database and user home volumes.")
@click.option("--take-over", is_flag=True, help=TAKE_OVER)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@handle
def down(ctx: click.Context, volumes: bool, take_over: bool, as_json: bool) -> None:
    """Stop and remove the stack and user servers (data is kept unless --volumes)."""
    from hubdeploy.ops import stack

    prep = stack.prepare(site_path(ctx))
    result = stack.down(prep, volumes=volumes, take_over=take_over)
    if as_json:
        print_json(result)
    else:
        for r in result["stopped_servers"]:
            out.print(f"stopped {r['backend']} server {r['id'][:12]} ({r['owner'] or r['name']})",
                      markup=False, highlight=False)
        for f in result["not_stopped"]:
            what = f"{f['backend'] or 'server'} {f['id'][:12]} ({f['name']})" if f["id"] else (f["backend"] or "servers")
            err.print(f"[bold red]not stopped:[/] {what}: {f['error']}", highlight=False, soft_wrap=True)
        out.print(
            f"down: {prep.project} ({len(result['stopped_servers'])} user servers stopped, "
            f"{len(result['removed_servers'])} containers removed"
            + (f", {len(result['removed_volumes'])} volumes removed" if volumes else ", data kept")
            + ")"
        )
    sys.exit(1 if result["not_stopped"] else 0)


@click.command()
@click.option("--throwaway", is_flag=True, help="Bring the stack up, test it, take it down with its volumes.")
@click.option("--profile", "profiles", multiple=True, help="Profile(s) to test; default: all.")
@click.option("--junit", type=click.Path(dir_okay=False), help="Write a JUnit XML report here.")
@click.option("--timeout", default=300, show_default=True, help="Seconds allowed per server start.")
@click.option("--ca-bundle", type=click.Path(exists=True, dir_okay=False),
              help="CA bundle that verifies the hub's TLS certificate (default: the system's; "
              "for tls: {self_signed: true}, the generated certificate).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@handle
def smoke(ctx: click.Context, throwaway: bool, profiles: tuple[str, ...], junit: str | None,
          timeout: int, ca_bundle: str | None, as_json: bool) -> None:
    """Log a test user in, start every profile, run code in every kernel, clean up."""
    from hubdeploy.ops import smoke_cmd

    report = smoke_cmd.smoke(
        site_path(ctx), throwaway=throwaway, profiles=list(profiles), timeout=timeout,
        console=None if as_json else out, verify=ca_bundle or True,
    )
    if junit:
        Path(junit).write_text(report.to_junit_xml())
    if as_json:
        print_json(report.to_dict())
    sys.exit(0 if report.ok else 1)
