"""Containers: `hearth images engine|base` and `hearth containerize` (Hearth's images).

Images come only from the local engine: `hearth images base` builds Hearth's Debian base
from packages, `hearth containerize` builds gateway, features, model, monolith and the flow
worker on it (or on HEARTH_BASE_IMAGE). `containerize` imports the build inside: it brings
the serving packaging and the rollout state (pandas, mlflow), which the other commands do
not need.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Annotated

import typer

from hearth import __version__
from hearth.cli._common import choose, console, fail, load_context
from hearth.config import project_root
from hearth.containers import base, recipes
from hearth.containers import engine as engines

commands = typer.Typer()
images_app = typer.Typer(
    help="The container engine and Hearth's base image (no hub needed).", no_args_is_help=True
)
NO_ENGINE_HINT = (
    "start one: `hearth images engine` (installs nothing: `make container-deps` installs "
    "Debian's docker.io first)"
)


def _engine_or_fail(engine: str) -> None:
    problem = engines.problem(engine)
    if problem:
        fail(f"no container engine: {problem}", NO_ENGINE_HINT)


def _mib(size: int) -> str:
    return f"{size / 2**20:,.0f} MiB"


@images_app.command("engine")
def engine_command(
    log: Annotated[
        Path | None,
        typer.Option(help="dockerd's log (default /var/log/hearth-dockerd.log, as root)."),
    ] = None,
) -> None:
    """Start Debian's dockerd in the background unless an engine answers already."""
    try:
        started = engines.start(log)
    except engines.EngineError as exc:
        fail(str(exc), "install it: `make container-deps` (Debian's docker.io)")
    if not started.started:
        console.print(f"a container engine answers already ({started.storage_driver})")
        return
    console.print(
        f"[green]✓[/] dockerd started (pid {started.pid}, storage {started.storage_driver}, "
        f"log {started.log}); it keeps running after this command"
    )


@images_app.command("base")
def base_command(
    tag: Annotated[str, typer.Option(help="The image's name.")] = "",
    mirror: Annotated[
        str | None, typer.Option(help="Debian mirror (default: the one apt uses here).")
    ] = None,
) -> None:
    """Build Hearth's base image (Debian bookworm, its Python 3.11) with debootstrap."""
    ctx = load_context()
    _engine_or_fail("docker")
    try:
        built = base.build(
            ctx.settings.home_abs / "containers",
            tag or recipes.LOCAL_BASE,
            mirror,
            progress=lambda line: console.print(f"  {line}"),
        )
    except (FileNotFoundError, RuntimeError) as exc:
        fail(str(exc), "`make container-deps` installs debootstrap and docker.io")
    cached = "downloaded" if built.downloaded else "cached"
    console.print(
        f"[green]✓[/] {built.tag} in {built.seconds:.0f}s (packages {cached}, from "
        f"{built.mirror}; {len(built.certificates)} extra CA certificate(s))"
    )


ImageOption = Annotated[
    list[str] | None,
    typer.Option(
        "--image",
        help="gateway, features, model, monolith or worker (Prefect's, with Hearth's flows); "
        "repeatable (all five).",
    ),
]


@commands.command()
def containerize(
    image: ImageOption = None,
    engine: Annotated[str, typer.Option(help="Container engine: docker or podman.")] = "docker",
) -> None:
    """Build the container images (gateway, features, model, monolith, worker) from local
    images."""
    # lazy: the rollout state and the serving packaging load mlflow and pandas
    from hearth.cli.serve import _served
    from hearth.containers import build
    from hearth.serving.model_cache import RegistryCatalog

    ctx = load_context()
    names = choose(image, list(recipes.IMAGES), "image")
    _engine_or_fail(engine)
    try:
        base_image = build.choose_base(engine)
    except build.MissingBase as exc:
        fail(str(exc), "build Hearth's: `hearth images base` (or set HEARTH_BASE_IMAGE)")
    served: dict[str, str] = {}
    model_dirs: dict[str, Path] = {}
    if any(recipes.IMAGES[n].carries_models for n in names):
        served = _served(ctx)
        model = ctx.params.registry.model_name
        catalog = RegistryCatalog(ctx.settings, model)
        model_dirs = {f"{model}/{v}": catalog.record(v).path for v in served.values()}
    workdir = ctx.settings.home_abs / "containers" / "contexts"
    console.print(f"building {', '.join(names)} on {base_image} (Hearth {__version__})")
    results = []
    for name in names:
        context = workdir / name
        shutil.rmtree(context, ignore_errors=True)
        spec = recipes.IMAGES[name]
        tags = build.write_context(
            spec, project_root(), context, base_image, __version__, served, model_dirs
        )
        console.print(f"[bold]{spec.repository}[/] …")
        try:
            built = build.docker_build(name, context, tags, engine, output=_step_line)
        except RuntimeError as exc:
            fail(str(exc), f"the build context is in {context}")
        results.append(built)
        size = _mib(built.size_bytes)
        console.print(f"[green]✓[/] {built.tags[0]}  {size}, {built.seconds:.0f}s")
    for built in results:
        console.print(f"  {' '.join(built.tags)}")


def _step_line(line: str) -> None:
    # The Dockerfile's steps, one line each; pip and the engine's chatter stay quiet.
    if line.startswith("Step "):
        console.print(f"  {line[:120]}", markup=False, highlight=False)
