"""The layers are held by import-linter (`make lint`): a change that breaks one fails CI.

Each case copies the sources to a temporary folder, adds one import that a careless change
could add, and runs `lint-imports` on the copy with the project's own contracts. The copy
without the change must pass, so a failure is the injected import's doing.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
LAYERS = "hearth's layers"
ADAPTERS = "the library never imports its adapters"
ACYCLIC = "no import cycle between hearth's packages"

pytestmark = pytest.mark.skipif(
    not LINT_IMPORTS.exists(), reason=f"import-linter is not installed ({LINT_IMPORTS})"
)


def _copy_sources(dest: Path) -> None:
    for part in ("src/hearth", "flows", "bentos"):
        shutil.copytree(ROOT / part, dest / part, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", dest / "pyproject.toml")


def _lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree / "src"), str(tree)])}
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(tree / "pyproject.toml"), "--no-cache"],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_sources_keep_every_contract(tmp_path: Path) -> None:
    _copy_sources(tmp_path)
    done = _lint_imports(tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


@pytest.mark.parametrize(
    ("module", "injected", "contract"),
    [
        # serving and rollout are siblings that never import each other
        ("hearth/serving/gateway.py", "import hearth.rollout.control", LAYERS),
        # core never imports a service
        ("hearth/registry.py", "from hearth.serving import routing", LAYERS),
        # a service never imports orchestration, not even lazily inside a function
        ("hearth/rollout/control.py", "def _f() -> None:\n    import hearth.bench", LAYERS),
        # the library never imports the Prefect flows
        ("hearth/steps.py", "import flows.pipeline", ADAPTERS),
        # two core packages that import each other are a cycle
        ("hearth/schema.py", "import hearth.features.definitions", ACYCLIC),
    ],
)
def test_breaking_a_layer_fails_the_contracts(
    tmp_path: Path, module: str, injected: str, contract: str
) -> None:
    _copy_sources(tmp_path)
    path = tmp_path / "src" / module
    path.write_text(f"{path.read_text()}\n{injected}  # injected by test_layers\n")
    done = _lint_imports(tmp_path)
    assert done.returncode != 0, f"lint-imports passed with `{injected}` in {module}"
    broken = [line for line in done.stdout.splitlines() if "BROKEN" in line]
    assert any(contract in line for line in broken), done.stdout


def _function_level_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of each import of hearth inside a function of `path`."""
    tree = ast.parse(path.read_text())
    found: list[tuple[int, str]] = []
    for func in ast.walk(tree):
        if not isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for node in ast.walk(func):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            elif isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            else:
                continue
            found += [(node.lineno, m) for m in modules if m.split(".")[0] == "hearth"]
    return sorted(set(found))


def _says_lazy(lines: list[str], lineno: int) -> bool:
    """True when the import's line, or the comment and import lines right above it, say
    that the import is lazy (kept out of start-up on purpose)."""
    index = lineno - 1
    if "lazy" in lines[index].lower():
        return True
    while index > 0:
        index -= 1
        text = lines[index].strip()
        if text and not text.startswith(("#", "from ", "import ", ")")) and not text.endswith(","):
            return False
        if "lazy" in text.lower():
            return True
    return False


def test_every_function_level_import_of_hearth_says_why() -> None:
    """No import hides inside a function to dodge a cycle: the layers make cycles impossible,
    so the only reason left is start-up time, and the comment says so."""
    unexplained = []
    for path in sorted((ROOT / "src" / "hearth").rglob("*.py")):
        lines = path.read_text().splitlines()
        for lineno, module in _function_level_imports(path):
            if not _says_lazy(lines, lineno):
                unexplained.append(f"{path.relative_to(ROOT)}:{lineno} imports {module}")
    assert not unexplained, "function-level imports without a `# lazy: …` reason:\n" + "\n".join(
        unexplained
    )
