"""`hearth features materialize|show`: the online feature store.

The store is imported inside the commands: it loads pandas (~1.5 s), which the other commands
should not pay for at start-up.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from hearth.cli._common import console, fail, load_context, progress_bar

features_app = typer.Typer(
    help="Online feature store: fill it from data/processed/, inspect a customer.",
    no_args_is_help=True,
)


@features_app.command("materialize")
def features_materialize(
    clear: Annotated[
        bool, typer.Option(help="Remove every stored customer state first (a clean rebuild).")
    ] = False,
) -> None:
    """Replay data/processed/ into the online store: one state per customer."""
    # lazy: pandas, see the module docstring
    from hearth.features.store import (
        MaterializeError,
        StoreError,
        materialize,
        open_store,
        store_location,
    )

    s = load_context().settings
    where = f"{s.store_backend} store at {store_location(s)}"
    try:
        store = open_store(s)
    except StoreError as exc:
        fail(str(exc), "check HEARTH_STORE_BACKEND / HEARTH_REDIS_URL")
    try:
        if clear:
            store.clear()
        with progress_bar() as progress:
            bar = progress.add_task("replaying transactions", total=None)

            def on_chunk(done: int, total: int) -> None:
                progress.update(bar, description="writing states", completed=done, total=total)

            report = materialize(store, s.processed_dir, progress=on_chunk)
    except MaterializeError as exc:
        fail(str(exc))
    except StoreError as exc:
        fail(str(exc), f"is the {where} reachable?")
    finally:
        store.close()
    console.print(
        f"[green]✓[/] {report.customers:,} customers ({report.transactions:,} transactions) "
        f"written in {report.seconds:.1f}s → {where}"
    )


@features_app.command("show")
def features_show(
    customer_id: Annotated[str, typer.Argument(help="The customer whose state to print.")],
) -> None:
    """Print a customer's stored state summary as JSON."""
    # lazy: pandas, see the module docstring
    from hearth.features.store import StoreError, open_store, state_summary, store_location

    s = load_context().settings
    try:
        store = open_store(s)
        try:
            state = store.get(customer_id)
        finally:
            store.close()
    except StoreError as exc:
        fail(str(exc))
    if state is None:
        raise fail(
            f"customer {customer_id!r} is not in the {s.store_backend} store at "
            f"{store_location(s)}",
            "run `hearth features materialize`, or check the id",
        )
    typer.echo(json.dumps(state_summary(customer_id, state), indent=2))
