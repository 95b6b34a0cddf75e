"""engine/policy stays pure: no Redis, database, HTTP, watcher or provider imports, no environment, no clock."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

POLICY = Path(__file__).parents[3] / "engine" / "policy"
FORBIDDEN = ("redis", "peewee", "requests", "starlette", "watchfiles", "providers", "api", "engine.store", "uvicorn")
SUBPROCESS_ALLOWED = {"loader.py", "network.py"}  # git for load_git / versions, and the canary compile


def _modules() -> list[Path]:
    return sorted(POLICY.glob("*.py"))


def _imports(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _forbidden(name: str) -> bool:
    return any(name == bad or name.startswith(bad + ".") for bad in FORBIDDEN)


@pytest.mark.parametrize("path", _modules(), ids=lambda p: p.name)
def test_module_imports_nothing_impure(path: Path) -> None:
    """No policy module imports a forbidden package, even lazily inside a function."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    assert sorted(name for name in _imports(tree) if _forbidden(name)) == []


@pytest.mark.parametrize("path", _modules(), ids=lambda p: p.name)
def test_module_never_reads_the_environment_or_the_clock(path: Path) -> None:
    """No os.environ / os.getenv / putenv, and no datetime.now / utcnow / today / time.time."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv", "putenv", "environb"):
            bad.append(f"line {node.lineno}: .{node.attr}")
        if isinstance(node, ast.Attribute) and node.attr in ("now", "utcnow", "today") and _called_on_class(node):
            bad.append(f"line {node.lineno}: .{node.attr}()")
        if isinstance(node, ast.Attribute) and node.attr in ("time", "monotonic") and _is_name(node.value, "time"):
            bad.append(f"line {node.lineno}: time.{node.attr}")
        if isinstance(node, ast.Name) and node.id in ("getenv", "environ"):
            bad.append(f"line {node.lineno}: {node.id}")
    assert bad == []


@pytest.mark.parametrize("path", _modules(), ids=lambda p: p.name)
def test_only_the_loader_and_network_start_processes(path: Path) -> None:
    """subprocess appears only where git is read and where the canary compile runs."""
    uses = "subprocess" in _imports(ast.parse(path.read_text(encoding="utf-8")))
    assert not uses or path.name in SUBPROCESS_ALLOWED


def test_importing_policy_loads_no_impure_module() -> None:
    """In a fresh interpreter, importing engine.policy leaves every forbidden module out of sys.modules."""
    code = "import sys, engine.policy, engine.policy.loader, engine.policy.cases; print('\\n'.join(sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert sorted(name for name in done.stdout.split() if _forbidden(name)) == []


def _called_on_class(node: ast.Attribute) -> bool:
    return _is_name(node.value, "datetime") or _is_name(node.value, "date")


def _is_name(node: ast.AST, name: str) -> bool:
    return (isinstance(node, ast.Name) and node.id == name) or (isinstance(node, ast.Attribute) and node.attr == name)
