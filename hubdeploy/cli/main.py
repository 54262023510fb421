"""The ``hubdeploy`` command: parse, call a plain function, print.

Exit codes: 0 ok, 1 a failed operation, 2 bad input. A HubdeployError is printed as one
clear message, never as a traceback; anything else is a bug and says so.
"""

from __future__ import annotations

import functools
import json
import re
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from hubdeploy import __version__
from hubdeploy.errors import HubdeployError, SiteError

out = Console()
err = Console(stderr=True)


def _handle(fn):
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


def _site_path(ctx: click.Context) -> Path:
    return Path(ctx.obj["site"])


def _warn(site) -> None:
    """What the site allows but should know is unsafe (schema.Site.warnings)."""
    for text in site.warnings():
        err.print(f"[bold yellow]warning:[/] {text}", highlight=False, markup=True, soft_wrap=True)


def _print_json(data) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--site",
    default="site.yaml",
    show_default=True,
    type=click.Path(dir_okay=False),
    envvar="HUBDEPLOY_SITE",
    help="The site description.",
)
@click.version_option(__version__, prog_name="hubdeploy")
@click.pass_context
def cli(ctx: click.Context, site: str) -> None:
    """Run JupyterHub at a facility from one site description."""
    ctx.ensure_object(dict)
    ctx.obj["site"] = site


@cli.command()
@click.argument("directory", default=".", type=click.Path(file_okay=False))
@_handle
def init(directory: str) -> None:
    """Write a commented, working demo site.yaml into DIRECTORY."""
    from hubdeploy.init import write_demo_site

    path = write_demo_site(Path(directory))
    out.print(f"wrote {path}\nnext: hubdeploy --site {path} up")


@cli.command()
@click.pass_context
@_handle
def validate(ctx: click.Context) -> None:
    """Check the site file; nothing is written or started."""
    from hubdeploy.loader import load_site

    site = load_site(_site_path(ctx))
    _warn(site)
    out.print(f"{_site_path(ctx)}: ok (site {site.name}, {len(site.profiles)} profiles)")


@cli.command()
def schema() -> None:
    """Print the site file's JSON Schema (for editors)."""
    from hubdeploy.schema import json_schema

    _print_json(json_schema())


@cli.command("render")
@click.pass_context
@_handle
def render_cmd(ctx: click.Context) -> None:
    """Write compose.yaml and the hub's configuration into .hubdeploy/ beside the site file."""
    from hubdeploy import stack

    prep = stack.prepare(_site_path(ctx))
    changed = stack.write(prep)
    out.print(f"rendered {prep.rendered} ({len(changed)} files changed)")


_TAKE_OVER = ("Act on the stack even though another site directory (with a site file of the "
              "same name) created it; from now on this directory owns it.")


@cli.command()
@click.option("--wait-timeout", default=300, show_default=True, help="Seconds to wait for health.")
@click.option("--take-over", is_flag=True, help=_TAKE_OVER)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--force", is_flag=True, help="Allow hub.jupyterhub_version older than the running hub's.")
@click.pass_context
@_handle
def up(ctx: click.Context, wait_timeout: int, take_over: bool, as_json: bool, force: bool) -> None:
    """Render, build missing images, start the stack and wait until it is healthy.

    A changed hub.jupyterhub_version upgrades the hub: new images, a database backup,
    `jupyterhub upgrade-db`, then the new hub; a failed step leaves the old hub serving."""
    from hubdeploy import stack

    prep = stack.prepare(_site_path(ctx))
    _warn(prep.site)
    result = stack.up(prep, console=None if as_json else err, wait_timeout=wait_timeout, take_over=take_over,
                      force=force)
    if as_json:
        _print_json(
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


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@click.pass_context
@_handle
def status(ctx: click.Context, as_json: bool) -> None:
    """Services, their health, and running user servers. Exit 1 when not healthy."""
    from hubdeploy import stack

    prep = stack.prepare(_site_path(ctx))
    data = stack.status(prep)
    if as_json:
        _print_json(data)
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


def _print_orphans(rows: list[dict], title: str) -> None:
    table = Table(title=title)
    for col in ("backend", "id", "name", "state", "owner"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["backend"], r["id"][:12], r["name"], r["state"], r["owner"] or "[bold]untracked[/]")
    out.print(table)


@cli.group("orphans")
def orphans_group() -> None:
    """Servers (Slurm jobs, containers) the hub no longer tracks.

    A lost database, a crash between submitting a job and recording it: the backend still
    runs a server no hub server owns. `status` lists them; only `orphans remove` removes.
    """


@orphans_group.command("list")
@click.option("--all", "show_all", is_flag=True, help="Also list the servers the hub tracks.")
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON.")
@click.pass_context
@_handle
def orphans_list(ctx: click.Context, show_all: bool, as_json: bool) -> None:
    """List the servers no hub server owns (exit 0 even when there are some)."""
    from hubdeploy import stack

    report = stack.orphans(stack.prepare(_site_path(ctx)))
    rows = report["servers"] if show_all else [r for r in report["servers"] if not r["tracked"]]
    if as_json:
        _print_json({"backends": report["backends"], "servers": rows})
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
@_handle
def orphans_remove(ctx: click.Context, ids: tuple[str, ...], remove_all: bool, as_json: bool) -> None:
    """Cancel the jobs / remove the containers IDS (or --all) that the hub does not track.

    All or nothing: an ID that is tracked, unknown or ambiguous removes nothing (exit 2).
    """
    from hubdeploy import stack

    if bool(ids) == remove_all:
        raise SiteError("name the IDs to remove, or --all (not both)", hint="hubdeploy orphans list")
    bad = [i for i in ids if not _ORPHAN_ID.match(i)]
    if bad:
        raise SiteError(f"not a job or container ID: {', '.join(repr(i) for i in bad)}", hint="hubdeploy orphans list")
    report = stack.orphans(stack.prepare(_site_path(ctx)), remove=ids, remove_all=remove_all)
    if as_json:
        _print_json({"removed": report["removed"]})
    else:
        out.print(f"removed {len(report['removed'])}: {', '.join(i[:12] for i in report['removed']) or '-'}")


@cli.command()
@click.argument("service", required=False)
@click.option("--user", help="Show this user's notebook server's own log instead (any backend).")
@click.option("--server", default="", help="With --user: the named server (default: the default server).")
@click.option("-f", "--follow", is_flag=True, help="Follow the log output.")
@click.option("--tail", default="200", show_default=True, help="Lines from the end of each log (or 'all').")
@click.pass_context
@_handle
def logs(ctx: click.Context, service: str | None, user: str | None, server: str, follow: bool, tail: str) -> None:
    """Show the logs of the stack, of one SERVICE, or of a user's server (--user)."""
    from hubdeploy import stack

    if user is None:
        if server:
            raise SiteError("--server needs --user")
        prep = stack.prepare(_site_path(ctx))
        sys.exit(stack.logs(prep, service, follow, tail))
    from hubdeploy import userlogs

    if service is not None:
        raise SiteError("give a SERVICE or --user, not both")
    if not user.strip():
        raise SiteError("--user needs a user name")
    userlogs.check_tail(tail)
    prep = stack.prepare(_site_path(ctx))

    def write(data: bytes) -> None:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()

    sys.exit(userlogs.user_logs(prep, user, server, follow=follow, tail=tail, write=write))


@cli.command()
@click.option("--volumes", is_flag=True, help="Also remove the hub database and user home volumes.")
@click.option("--take-over", is_flag=True, help=_TAKE_OVER)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@_handle
def down(ctx: click.Context, volumes: bool, take_over: bool, as_json: bool) -> None:
    """Stop and remove the stack and user servers (data is kept unless --volumes)."""
    from hubdeploy import stack

    prep = stack.prepare(_site_path(ctx))
    result = stack.down(prep, volumes=volumes, take_over=take_over)
    if as_json:
        _print_json(result)
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


@cli.command()
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="The archive to write (default: SITE-backup-TIME.tar.gz here); never overwritten.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@_handle
def backup(ctx: click.Context, output: str | None, as_json: bool) -> None:
    """Archive the hub's database, secrets, site file and data volume (mode 0600).

    The stack must be running: the database is snapshot live by the hub's sqlite.
    """
    from hubdeploy import backup as backup_mod
    from hubdeploy import stack

    result = backup_mod.backup(stack.prepare(_site_path(ctx)), Path(output) if output else None)
    if as_json:
        _print_json(result)
    else:
        out.print(f"backup of site {result['site']}: {result['archive']} ({result['bytes']} bytes, "
                  f"{len(result['members'])} files, format version {result['version']}); it holds every "
                  "secret of the stack: keep it like one", markup=False, highlight=False, soft_wrap=True)


@cli.command()
@click.argument("archive", type=click.Path(exists=True, dir_okay=False))
@click.option("--site", "site_opt", type=click.Path(dir_okay=False),
              help="Where to write the site file (default: hubdeploy's --site).")
@click.option("--force", is_flag=True, help="Replace an existing site file, secrets and hub data volume.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@_handle
def restore(ctx: click.Context, archive: str, site_opt: str | None, force: bool, as_json: bool) -> None:
    """Put a backup ARCHIVE back: site file, secrets, the hub's data; then `up`.

    Refuses to overwrite existing state unless --force, and never runs under a live stack.
    """
    from hubdeploy import restore as restore_mod

    site_file = Path(site_opt) if site_opt else _site_path(ctx)
    result = restore_mod.restore(site_file, Path(archive), force=force, console=None if as_json else err)
    if as_json:
        _print_json(result)
    else:
        out.print(f"restored site {result['site']} (backup of {result['created']}) into {result['site_file']}; "
                  f"servers are stopped. next: hubdeploy --site {result['site_file']} up",
                  markup=False, highlight=False, soft_wrap=True)


@cli.command()
@click.option("--throwaway", is_flag=True, help="Bring the stack up, test it, take it down with its volumes.")
@click.option("--profile", "profiles", multiple=True, help="Profile(s) to test; default: all.")
@click.option("--junit", type=click.Path(dir_okay=False), help="Write a JUnit XML report here.")
@click.option("--timeout", default=300, show_default=True, help="Seconds allowed per server start.")
@click.option("--ca-bundle", type=click.Path(exists=True, dir_okay=False),
              help="CA bundle that verifies the hub's TLS certificate (default: the system's; "
              "for tls: {self_signed: true}, the generated certificate).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@_handle
def smoke(ctx: click.Context, throwaway: bool, profiles: tuple[str, ...], junit: str | None,
          timeout: int, ca_bundle: str | None, as_json: bool) -> None:
    """Log a test user in, start every profile, run code in every kernel, clean up."""
    from hubdeploy import smoke_cmd

    report = smoke_cmd.smoke(
        _site_path(ctx), throwaway=throwaway, profiles=list(profiles), timeout=timeout,
        console=None if as_json else out, verify=ca_bundle or True,
    )
    if junit:
        Path(junit).write_text(report.to_junit_xml())
    if as_json:
        _print_json(report.to_dict())
    sys.exit(0 if report.ok else 1)


@cli.group("images")
def images_group() -> None:
    """The site's images: list, build, test, push and save."""


@images_group.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@_handle
def images_list(ctx: click.Context, as_json: bool) -> None:
    """Every image of the site with its tag and whether it is built."""
    from hubdeploy import engine, stack
    from hubdeploy.images.build import missing_images

    prep = stack.prepare(_site_path(ctx))
    client = engine.docker_client()
    missing = set(missing_images(prep.plans, client))
    rows = [{"name": n, "ref": p.ref, "parent": p.parent, "built": n not in missing} for n, p in prep.plans.items()]
    if as_json:
        _print_json(rows)
        return
    table = Table()
    for col in ("image", "ref", "parent", "built"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["name"], r["ref"], r["parent"] or "-", "yes" if r["built"] else "[yellow]no[/]")
    out.print(table)


@images_group.command("build")
@click.argument("names", nargs=-1)
@click.option("--force", is_flag=True, help="Rebuild even when the tag exists.")
@click.pass_context
@_handle
def images_build(ctx: click.Context, names: tuple[str, ...], force: bool) -> None:
    """Build the site's images (only missing ones unless --force)."""
    from hubdeploy import engine, stack
    from hubdeploy.images.build import build_images

    prep = stack.prepare(_site_path(ctx))
    unknown = [n for n in names if n not in prep.plans]
    if unknown:
        raise SiteError(f"unknown image(s): {', '.join(unknown)}; images: {', '.join(prep.plans)}")
    client = engine.docker_client()
    built = build_images(
        prep.plans, client=client, state_dir=prep.state, names=list(names) or None, force=force, console=err
    )
    out.print(f"built: {', '.join(built) if built else 'nothing (all up to date)'}")


def _notebook_names(prep, names: tuple[str, ...]) -> list[str]:
    """The named images, or every notebook image (base and collaborations) by default."""
    if names:
        unknown = [n for n in names if n not in prep.plans]
        if unknown:
            raise SiteError(f"unknown image(s): {', '.join(unknown)}; images: {', '.join(prep.plans)}")
        return list(names)
    return prep.site.images.names()


def _checked_names(prep, names: tuple[str, ...]) -> list[str]:
    unknown = [n for n in names if n not in prep.plans]
    if unknown:
        raise SiteError(f"unknown image(s): {', '.join(unknown)}; images: {', '.join(prep.plans)}")
    return list(names) or list(prep.plans)


@images_group.command("test")
@click.argument("names", nargs=-1)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@_handle
def images_test(ctx: click.Context, names: tuple[str, ...], as_json: bool) -> None:
    """Start every kernel of the notebook images (default: all) and check its packages.

    Runs each image as uid 1000 with a fresh empty home; exit 1 if any kernel fails.
    """
    from rich.markup import escape

    from hubdeploy import engine, stack
    from hubdeploy.images import imagetest

    prep = stack.prepare(_site_path(ctx))
    selected = _notebook_names(prep, names)
    client = engine.docker_client()
    results = []
    for name in selected:
        if not as_json:
            err.print(f"[bold]testing[/] {name} ({prep.plans[name].ref})")
        results.append(imagetest.check_image(client, name, prep.plans[name].ref,
                                             name_prefix=prep.project))
    ok = all(r.ok for r in results)
    if as_json:
        _print_json({"ok": ok, "images": [r.to_json() for r in results]})
    else:
        table = Table()
        for col in ("image", "kernel", "language", "result", "seconds", "detail"):
            table.add_column(col)
        for r in results:
            if r.error:
                table.add_row(r.image, "-", "-", "[bold red]error[/]", f"{r.seconds:.0f}", escape(r.error))
            for k in r.kernels:
                verdict = "[green]pass[/]" if k["ok"] else "[bold red]FAIL[/]"
                detail = "; ".join(k["problems"]) or ("" if k["declared"] else "not declared: started only")
                table.add_row(r.image, k["kernel"], k["language"], verdict, f"{k['seconds']:.1f}", escape(detail))
        out.print(table)
        failed = sum(not k["ok"] for r in results for k in r.kernels) + sum(bool(r.error) for r in results)
        out.print("[bold green]all kernels pass[/]" if ok else f"[bold red]{failed} failure(s)[/]")
    if not ok:
        sys.exit(1)


@images_group.command("push")
@click.argument("names", nargs=-1)
@click.option("--registry", required=True, help="HOST or HOST:PORT of the registry.")
@click.option("--username", help="Registry user; the password is read from stdin.")
@click.option("--password-stdin", is_flag=True, help="Read the password from stdin (first line).")
@click.pass_context
@_handle
def images_push(ctx: click.Context, names: tuple[str, ...], registry: str, username: str | None,
                password_stdin: bool) -> None:
    """Push built images (default: all of the site's) to REGISTRY/hubdeploy/<site>-<image>:<tag>."""
    from hubdeploy import engine, stack
    from hubdeploy.images import publish

    if password_stdin and not username:
        raise SiteError("--password-stdin needs --username")
    if username and not password_stdin:
        raise SiteError("--username needs --password-stdin (a password never goes on the command line)")
    password = sys.stdin.readline().rstrip("\r\n") if password_stdin else None
    prep = stack.prepare(_site_path(ctx))
    selected = _checked_names(prep, names)
    client = engine.docker_client()
    for name in selected:
        pushed = publish.push(client, prep.plans[name], registry, username=username, password=password,
                              console=err)
        out.print(f"pushed {name} -> {pushed.remote}" + (f" ({pushed.digest})" if pushed.digest else ""))


@images_group.command("save")
@click.argument("names", nargs=-1)
@click.option("-o", "--output", "output", required=True, type=click.Path(file_okay=False),
              help="Directory for the tarballs and their manifests.")
@click.pass_context
@_handle
def images_save(ctx: click.Context, names: tuple[str, ...], output: str) -> None:
    """`docker save` built images (default: all) with a manifest each, for air-gapped nodes."""
    from hubdeploy import engine, stack
    from hubdeploy.images import publish

    prep = stack.prepare(_site_path(ctx))
    selected = _checked_names(prep, names)
    client = engine.docker_client()
    for name in selected:
        manifest = publish.save(client, prep.plans[name], Path(output), console=err)
        out.print(f"saved {name} -> {Path(output) / manifest['tarball']}")


def main() -> None:
    cli(obj={})
