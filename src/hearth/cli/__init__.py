"""`hearth …`: the command line. Each step command is also a DVC stage (see dvc.yaml).

One module per command group; each command parses its options, calls the library and prints.
"""

from __future__ import annotations

from typing import Annotated

import typer

from hearth.cli import bench, features, pipeline, rollout, serve, stack, ui
from hearth.cli._common import setup_logging

app = typer.Typer(
    name="hearth",
    help="Hearth: generate → ETL → validate → train → register, on your own hardware.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
# Top-level commands first, then the groups: `hearth --help` lists them in this order.
for module in (pipeline, serve, ui, stack, bench, rollout):
    app.add_typer(module.commands)
app.add_typer(pipeline.data_app, name="data")
app.add_typer(ui.ui_app, name="ui")
app.add_typer(features.features_app, name="features")
app.add_typer(rollout.rollout_app, name="rollout")


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    setup_logging(verbose)


def main() -> None:
    app()
