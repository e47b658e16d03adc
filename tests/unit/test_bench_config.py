"""`hearth bench`'s options → BenchConfig, without starting a server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from hearth.bench import bench_report
from hearth.bench import run as bench_run
from hearth.bench.run import BenchConfig
from hearth.config import Settings


def test_nothing_chosen_keeps_the_config() -> None:
    assert BenchConfig().choose() == BenchConfig()
    assert BenchConfig.quick().choose(contenders=[], levels=[]) == BenchConfig.quick()


def test_choices_replace_the_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    chosen = BenchConfig.quick().choose(
        contenders=["echo", "monolith"],
        levels=[32, 1, 32, 8],
        requests=60,
        baseline=Path("base"),
        rollback=False,
    )
    assert chosen.contenders == ("echo", "monolith")
    assert chosen.levels == (1, 8, 32)  # sorted, each once
    assert chosen.requests == 60
    assert chosen.baseline == tmp_path / "base"  # absolute: the bench runs from elsewhere
    assert chosen.rollback == ()
    # what was not chosen stays the quick run's
    assert (chosen.rounds, chosen.warmup) == (BenchConfig.quick().rounds, 40)


def test_cli_passes_its_options_to_the_bench(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hearth.cli import app

    seen: dict[str, Any] = {}

    def fake_run_bench(config: BenchConfig, source: Settings, root: Path, say: Any) -> dict:
        seen.update(config=config, root=root)
        return {"fake": True}

    def fake_write(data: dict, out: Path) -> list[Path]:
        seen.update(data=data, out=out)
        return [out / "bench.md"]

    monkeypatch.setattr(bench_run, "run_bench", fake_run_bench)
    monkeypatch.setattr(bench_report, "write", fake_write)
    argv = ["bench", "--quick", "--contender", "echo", "--concurrency", "8",
            "--concurrency", "1", "--no-rollback", "--out", "out", "--code", "code"]  # fmt: skip
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 0, result.output
    config = seen["config"]
    assert config.contenders == ("echo",) and config.levels == (1, 8)
    assert config.rollback == () and config.requests == BenchConfig.quick().requests
    assert seen["root"] == tmp_path / "code" and seen["out"] == Path("out")
    assert seen["data"] == {"fake": True}
    assert "hearth bench: echo at c=[1, 8]" in result.output
    assert "bench.md" in result.output


def test_the_model_service_contenders_carry_the_internal_token(tmp_path: Path) -> None:
    from hearth.bench.contenders import build_server
    from hearth.serving.auth import INTERNAL_TOKEN_HEADER

    source = Settings(home=tmp_path)
    for name in ("model-batched", "monolith", "microservices"):
        server = build_server(name, source, tmp_path, tmp_path / "work")
        token = server.env["HEARTH_INTERNAL_TOKEN"]  # what the services require…
        if name == "model-batched":  # …and what the load sends to the model service alone
            assert (INTERNAL_TOKEN_HEADER, token) in server.endpoint.headers
