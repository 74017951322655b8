"""The package's import graph, read with ``ast`` (nothing is imported): which ``pipeline`` modules each
module imports, and what a set of modules pulls in. Used by tests/test_architecture.py and
docs/architecture.py."""

from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def module_file(name: str) -> Path | None:
    base = REPO / Path(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def is_trivial(path: Path) -> bool:
    """A file that holds only a docstring cannot change what a stage computes."""
    body = ast.parse(path.read_text()).body
    return all(isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) for node in body)


def _type_checking_only(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


@functools.cache
def imports_of(name: str) -> frozenset[str]:
    """The ``pipeline`` modules that module ``name`` imports anywhere in its body (function-level
    imports included, ``if TYPE_CHECKING:`` blocks not), as explicit edges."""
    tree = ast.parse(module_file(name).read_text())
    skipped = {id(n) for node in ast.walk(tree) if _type_checking_only(node) for n in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "pipeline"}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module.split(".")[0] == "pipeline":
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if module_file(sub) else node.module)
    return frozenset(m for m in found if module_file(m))


def targets_in(config_text: str) -> set[str]:
    """Modules named by ``_target_: pipeline....`` in a config file (imported by ``instantiate``)."""
    found = set()
    for dotted in re.findall(r"_target_:\s*(pipeline(?:\.\w+)+)", config_text):
        parts = dotted.split(".")
        while parts and not module_file(".".join(parts)):
            parts.pop()
        if parts:
            found.add(".".join(parts))
    return found


def closure(roots: set[str]) -> set[str]:
    """Every module executed when ``roots`` are imported: their imports, transitively, and the
    packages (``__init__.py``) around each."""
    seen, todo = set(), list(roots)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parts = name.split(".")
        todo += [".".join(parts[:k]) for k in range(1, len(parts))]
        todo += imports_of(name)
    return seen


def all_modules() -> list[str]:
    return sorted(".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
                  for p in (REPO / "pipeline").rglob("*.py"))
