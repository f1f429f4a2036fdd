"""Imports go one way only: lifeboat -> drills -> backup -> policies (DESIGN section 1)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LAYERS = ["policies", "backup", "drills", "lifeboat"]  # each may import only those before it


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found & set(LAYERS)


def upward_imports() -> list[str]:
    problems = []
    for rank, layer in enumerate(LAYERS):
        allowed = set(LAYERS[: rank + 1])
        for path in sorted((ROOT / layer).rglob("*.py")):
            for package in sorted(imported_packages(path) - allowed):
                problems.append(f"{path.relative_to(ROOT)} imports {package}")
    return problems


def test_no_layer_imports_a_layer_above_it() -> None:
    assert upward_imports() == []


def test_the_checker_sees_an_upward_import(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("import os\nfrom drills.runner import run\nimport lifeboat.cli\nfrom . import x\n")
    assert imported_packages(sample) == {"drills", "lifeboat"}


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports by its absolute name, at the top or inside a function."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_scratch_imports_nothing_of_drills_above_it() -> None:
    """drills/scratch/ sits under the runner, the faults and the reports: none of its arrows run back up."""
    problems = []
    for path in sorted((ROOT / "drills" / "scratch").rglob("*.py")):
        for module in sorted(imported_modules(path)):
            if module.split(".")[0] == "drills" and module.split(".")[:2] != ["drills", "scratch"]:
                problems.append(f"{path.relative_to(ROOT)} imports {module}")
    assert problems == []


def test_policies_stay_pure() -> None:
    """No network, no subprocess in the policy layer."""
    forbidden = {"subprocess", "socket", "boto3", "botocore", "clickhouse_driver", "kubernetes", "urllib.request"}
    for path in (ROOT / "policies").rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        names |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        assert not names & forbidden, f"{path} imports {names & forbidden}"


def test_the_repository_imports_no_source() -> None:
    """Sources plug into the repository (a kind's prune hook is handed to prune), never the other way round."""
    found = [
        f"{path.relative_to(ROOT)} imports {module}"
        for path in sorted((ROOT / "backup" / "repository").rglob("*.py"))
        for module in sorted(imported_modules(path))
        if module == "backup.sources" or module.startswith("backup.sources.")
    ]
    assert found == []
