"""The code's own rules: imports run downward (import-linter), ruff is clean, and ``importlib`` never crosses a
package (only the stage registry imports stage classes by name)."""
from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("trainer", "slurm", "evaluation", "generation", "lightning_modules", "datamodules", "common", "bench",
            "reports")
REGISTRY = ROOT / "lightning_modules" / "registry.py"


def tool(name: str) -> str:
    found = Path(sys.executable).with_name(name)
    return str(found) if found.is_file() else shutil.which(name) or name


def test_imports_run_downward():
    result = subprocess.run([tool("lint-imports"), "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def test_the_layer_contract_has_no_ignored_imports():
    import tomllib
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    assert contracts and not any("ignore_imports" in contract for contract in contracts)


def test_ruff_is_clean():
    result = subprocess.run([tool("ruff"), "check", "--no-cache", "."], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-4000:]


def dynamic_imports(path: Path) -> list[tuple[int, str]]:
    """(line, target) of every ``importlib.import_module(...)`` / ``__import__(...)`` call; the target is the
    string (or f-string) prefix, '' where it cannot be read."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Call) or not node.args:
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if name not in ("import_module", "__import__"):
            continue
        arg = node.args[0]
        if isinstance(arg, ast.Constant):
            found.append((node.lineno, str(arg.value)))
        elif isinstance(arg, ast.JoinedStr) and arg.values and isinstance(arg.values[0], ast.Constant):
            found.append((node.lineno, str(arg.values[0].value)))
        else:
            found.append((node.lineno, ""))
    return found


def test_importlib_never_crosses_a_package():
    crossing = []
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if path == REGISTRY:
                continue
            for line, target in dynamic_imports(path):
                if not target.startswith(f"{package}."):
                    crossing.append(f"{path.relative_to(ROOT)}:{line} imports {target or '<computed name>'}")
    assert not crossing, crossing
