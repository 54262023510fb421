"""The ``images`` group: the site's images, listed, built, tested, pushed, saved and
staged onto the stack's compute nodes."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.table import Table

from hubdeploy.cli.common import err, handle, out, print_json, site_path
from hubdeploy.errors import SiteError


@click.group("images")
def images_group() -> None:
    """The site's images: list, build, test, push and save."""


@images_group.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@handle
def images_list(ctx: click.Context, as_json: bool) -> None:
    """Every image of the site with its tag and whether it is built."""
    from hubdeploy.ops import engine, stack
    from hubdeploy.images.build import missing_images

    prep = stack.prepare(site_path(ctx))
    client = engine.docker_client()
    missing = set(missing_images(prep.plans, client))
    rows = [{"name": n, "ref": p.ref, "parent": p.parent, "built": n not in missing} for n, p in prep.plans.items()]
    if as_json:
        print_json(rows)
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
@handle
def images_build(ctx: click.Context, names: tuple[str, ...], force: bool) -> None:
    """Build the site's images (only missing ones unless --force)."""
    from hubdeploy.ops import engine, stack
    from hubdeploy.images.build import build_images

    prep = stack.prepare(site_path(ctx))
    _known(prep, names)
    client = engine.docker_client()
    built = build_images(
        prep.plans, client=client, state_dir=prep.state, names=list(names) or None, force=force, console=err
    )
    out.print(f"built: {', '.join(built) if built else 'nothing (all up to date)'}")


def _known(prep, names: tuple[str, ...]) -> list[str]:
    """``names``; SiteError (exit 2) listing the site's images when one is not among them."""
    unknown = [n for n in names if n not in prep.plans]
    if unknown:
        raise SiteError(f"unknown image(s): {', '.join(unknown)}; images: {', '.join(prep.plans)}")
    return list(names)


def _notebook_names(prep, names: tuple[str, ...]) -> list[str]:
    """The named images, or every notebook image (base and collaborations) by default."""
    return _known(prep, names) if names else prep.site.images.names()


def _checked_names(prep, names: tuple[str, ...]) -> list[str]:
    """The named images, or every image of the site by default."""
    return _known(prep, names) or list(prep.plans)


@images_group.command("test")
@click.argument("names", nargs=-1)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@handle
def images_test(ctx: click.Context, names: tuple[str, ...], as_json: bool) -> None:
    """Start every kernel of the notebook images (default: all) and check its packages.

    Runs each image as uid 1000 with a fresh empty home; exit 1 if any kernel fails.
    """
    from rich.markup import escape

    from hubdeploy.ops import engine, stack
    from hubdeploy.images import imagetest

    prep = stack.prepare(site_path(ctx))
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
        print_json({"ok": ok, "images": [r.to_json() for r in results]})
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
@handle
def images_push(ctx: click.Context, names: tuple[str, ...], registry: str, username: str | None,
                password_stdin: bool) -> None:
    """Push built images (default: all of the site's) to REGISTRY/hubdeploy/<site>-<image>:<tag>."""
    from hubdeploy.ops import engine, stack
    from hubdeploy.images import publish

    if password_stdin and not username:
        raise SiteError("--password-stdin needs --username")
    if username and not password_stdin:
        raise SiteError("--username needs --password-stdin (a password never goes on the command line)")
    password = sys.stdin.readline().rstrip("\r\n") if password_stdin else None
    prep = stack.prepare(site_path(ctx))
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
@handle
def images_save(ctx: click.Context, names: tuple[str, ...], output: str) -> None:
    """`docker save` built images (default: all) with a manifest each, for air-gapped nodes."""
    from hubdeploy.ops import engine, stack
    from hubdeploy.images import publish

    prep = stack.prepare(site_path(ctx))
    selected = _checked_names(prep, names)
    client = engine.docker_client()
    for name in selected:
        manifest = publish.save(client, prep.plans[name], Path(output), console=err)
        out.print(f"saved {name} -> {Path(output) / manifest['tarball']}")


@images_group.command("stage")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@handle
def images_stage(ctx: click.Context, as_json: bool) -> None:
    """Put every image a compute profile runs through Charliecloud where the stack's nodes
    read it (what `up` does too): missing ones staged, unchanged ones left, unused ones removed."""
    from hubdeploy.images.build import build_images
    from hubdeploy.images.plan import image_refs
    from hubdeploy.contract.layout import SLURM_IMAGE
    from hubdeploy.images.stage import stage_images
    from hubdeploy.ops import engine, stack

    prep = stack.prepare(site_path(ctx))
    client = engine.docker_client()
    names = sorted({p.image for p in prep.site.staged_profiles})
    if names:
        # The staged images and the helper's (the nodes' image), built first if missing.
        build_images(prep.plans, client=client, state_dir=prep.state, names=[*names, SLURM_IMAGE], console=err)
    plan = stage_images(prep.site, image_refs(prep.plans), client, console=None if as_json else err)
    result = {"staged": [i.image for i in plan.stage], "unchanged": [i.image for i in plan.unchanged],
              "removed": list(plan.remove), "kept": list(plan.kept)}
    if as_json:
        print_json(result)
    elif not names and not plan.remove:
        out.print("nothing to stage: no compute profile runs through charliecloud on the stack's cluster")
    else:
        out.print(f"staged: {', '.join(result['staged']) or 'nothing (all up to date)'}"
                  + (f"; removed: {', '.join(plan.remove)}" if plan.remove else ""))
