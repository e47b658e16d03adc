"""`hearth ui mlflow|prefect` (the UIs over Hearth's state) and `hearth info` (where it is)."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Annotated

import typer

from hearth.cli._common import console, fail, load_context
from hearth.config import is_loopback
from hearth.secrets_file import secrets_path

commands = typer.Typer()
ui_app = typer.Typer(help="Open the Prefect or MLflow UI on Hearth's state.", no_args_is_help=True)


@ui_app.command("mlflow")
def ui_mlflow(
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 5000,
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
) -> None:
    """MLflow's UI over Hearth's tracking store and artifacts (loopback only: no auth here)."""
    if not is_loopback(host):
        fail(
            f"`hearth ui mlflow` serves without auth, so only on loopback, not {host}",
            f"for MLflow beyond loopback run `HEARTH_MLFLOW_HOST={host} hearth up`: it turns "
            "on MLflow's basic auth",
        )
    ctx = load_context()
    s = ctx.settings
    cmd = [
        sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", s.mlflow_uri,
        "--default-artifact-root", str(s.mlflow_artifact_root), "--host", host,
        "--port", str(port),
    ]  # fmt: skip
    console.print(f"MLflow UI on http://{host}:{port} (Ctrl-C to stop)")
    raise typer.Exit(subprocess.call(cmd, env=os.environ.copy()))


@ui_app.command("prefect")
def ui_prefect(
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 4200,
) -> None:
    """Prefect's server and UI over Hearth's Prefect home: every flow run `hearth run` made."""
    load_context()
    cmd = [sys.executable, "-m", "prefect", "server", "start", "--port", str(port)]
    console.print(f"Prefect UI on http://127.0.0.1:{port} (Ctrl-C to stop)")
    raise typer.Exit(subprocess.call(cmd, env=os.environ.copy()))


@commands.command()
def info() -> None:
    """Print where Hearth keeps everything, as configured now."""
    ctx = load_context()
    s = ctx.settings
    for label, value in (
        ("HEARTH_HOME", s.home_abs),
        ("secrets", secrets_path(s.home_abs)),
        ("MLflow tracking", s.mlflow_uri),
        ("MLflow artifacts", s.mlflow_artifact_root),
        ("Prefect home", s.prefect_home),
        ("DVC remote", s.dvc_remote),
        ("Data Docs", s.data_docs_dir),
        ("raw", s.raw_dir),
        ("processed", s.processed_dir),
        ("quarantine", s.quarantine_dir),
        ("reports", s.reports_dir),
    ):
        typer.echo(f"{label:<18} {value}")
