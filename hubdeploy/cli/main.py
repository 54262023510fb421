"""The ``hubdeploy`` command: the click group and its commands, one module per family.

Each command parses its options, calls a plain function and prints the result
(:mod:`hubdeploy.cli.common` has what they share); this module only assembles them.
"""

from __future__ import annotations

import click

from hubdeploy import __version__
from hubdeploy.cli import backup, images, orphans, site, stack


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


COMMANDS = (
    site.init, site.validate, site.schema, site.render_cmd,
    stack.up, stack.status, stack.logs, stack.down, stack.smoke,
    backup.backup, backup.restore,
    orphans.orphans_group, images.images_group,
)
for command in COMMANDS:
    cli.add_command(command)


def main() -> None:
    cli(obj={})
