"""`hearth …`: the command line. Each step command is also a DVC stage (see dvc.yaml).

One module per command group; each command parses its options, calls the library and prints.
The command modules are imported when the app is built, except for `hearth rollback` and
`hearth rollout …`: an operator runs them when seconds matter, so `main` builds an app of
`hearth.cli.rollout`'s commands alone and skips importing the others.
"""

from __future__ import annotations

import sys
from functools import cache
from typing import Annotated

import typer

from hearth.cli._common import setup_logging

HELP = "Hearth: generate → ETL → validate → train → register, on your own hardware."
FAST_COMMANDS = ("rollback", "rollout")  # hearth.cli.rollout's `commands` and `rollout_app`


def _typer() -> typer.Typer:
    app = typer.Typer(
        name="hearth", help=HELP, no_args_is_help=True, pretty_exceptions_show_locals=False
    )
    app.callback()(_main)
    return app


@cache
def full_app() -> typer.Typer:
    """Every command: top-level commands first, then the groups (`hearth --help` lists them
    in this order)."""
    # lazy: `hearth rollback` must start in well under a second; the full CLI imports a lot.
    from hearth.cli import bench, features, images, pipeline, rollout, serve, stack, ui

    app = _typer()
    for module in (pipeline, serve, images, ui, stack, bench, rollout):
        app.add_typer(module.commands)
    app.add_typer(pipeline.data_app, name="data")
    app.add_typer(ui.ui_app, name="ui")
    app.add_typer(images.images_app, name="images")
    app.add_typer(features.features_app, name="features")
    app.add_typer(rollout.rollout_app, name="rollout")
    return app


def _fast_app() -> typer.Typer:
    from hearth.cli import rollout  # lazy: only the rollback command's imports, for speed

    app = _typer()
    app.add_typer(rollout.commands)
    app.add_typer(rollout.rollout_app, name="rollout")
    return app


def _main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    setup_logging(verbose)


def __getattr__(name: str) -> typer.Typer:
    if name == "app":  # `from hearth.cli import app` (tests, benchmarks): the full app
        return full_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main() -> None:
    args = [a for a in sys.argv[1:] if a not in {"-v", "--verbose"}]
    if args[:1] and args[0] in FAST_COMMANDS:
        _fast_app()()
    else:
        full_app()()
