"""What every command module shares: the console, loading the context, failing with a hint."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, NoReturn

import typer
from rich.console import Console
from rich.logging import RichHandler

from hearth.config import HearthContext, Settings
from hearth.observability.logging import configure_logging
from hearth.params import ConfigError

if TYPE_CHECKING:
    from rich.progress import Progress

console = Console(stderr=True)


def load_context() -> HearthContext:
    """Settings and params.yaml, validated now; a configuration error ends the command."""
    try:
        ctx = HearthContext()
        ctx.params  # noqa: B018 - validate params.yaml now, not halfway through a step
    except (ConfigError, ValueError) as exc:
        fail(f"configuration error: {exc}")
    ctx.settings.apply()
    return ctx


def fail(message: str, hint: str | None = None) -> NoReturn:
    """Print an error line (and what to do about it) and exit 1."""
    console.print(f"[bold red]error:[/] {message}")
    if hint:
        console.print(f"[yellow]hint:[/] {hint}")
    raise typer.Exit(code=1)


def choose(given: list[str] | None, allowed: Sequence[str], noun: str) -> list[str]:
    """The names given to a repeatable option (all of `allowed` when none); an unknown name
    ends the command, listing the choices."""
    names = given or list(allowed)
    unknown = sorted(set(names) - set(allowed))
    if unknown:
        fail(f"unknown {noun}(s) {unknown}", f"choose from {', '.join(allowed)}")
    return names


def progress_bar() -> Progress:
    # lazy: ~40 ms that `hearth rollback` does not need (see hearth.cli)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    return Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )


def setup_logging(verbose: bool) -> None:
    json_lines = _log_format() == "json"
    # JSON lines (HEARTH_LOG_FORMAT=json, as `hearth up` runs its children) go to a plain
    # stream: Rich would wrap each object in columns and break it over lines.
    handler = (
        logging.StreamHandler()
        if json_lines
        else RichHandler(console=console, show_path=False, rich_tracebacks=True)
    )
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        datefmt="%H:%M:%S",
        handlers=[handler],
        force=True,
    )
    if json_lines:
        configure_logging(Settings(log_format="json"))
    for noisy in ("alembic", "urllib3", "mlflow.store", "great_expectations", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _log_format() -> str:
    """HEARTH_LOG_FORMAT from the environment or .env; text when Settings cannot load (the
    command then reports why)."""
    try:
        return Settings().log_format
    except ValueError:
        return "text"
