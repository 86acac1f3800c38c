"""A stage's code version: a hash of every project module it runs, found by following its imports.

A cache key must change when the code that made a dataset changes. Listing the files by hand missed some (the
evaluate stage imports tasks/evalsets.py, model/train.py and the tokenizer loader), so the list is derived: from
the stage's module (and, for a torchrun stage, the model/ entry point) every ``import`` of a project module is
followed, statically with ``ast`` (function-local imports included), through tasks/, model/ and warehouse/.

Left out on purpose: ``tasks.config`` (a stage's effect of its configuration is its own section, which is in the key
already; hashing the module would make an edit to one section invalidate every stage) and flows/ (orchestration,
not the computation).

    >>> closure(["tasks.evaluate", "model.evaluate"])     # the module names, sorted
    >>> code_version(["tasks.evaluate", "model.evaluate"])  # 16 hex digits
"""
from __future__ import annotations

import ast
import functools
import hashlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("tasks", "model", "warehouse")
NOT_CODE = frozenset({"tasks.config"})


def _path(module: str) -> Path | None:
    parts = module.split(".")
    if parts[0] not in PACKAGES:
        return None
    file = ROOT.joinpath(*parts).with_suffix(".py")
    if file.is_file():
        return file
    package = ROOT.joinpath(*parts, "__init__.py")
    return package if package.is_file() else None


@functools.lru_cache(maxsize=None)
def _imports(module: str, mtime_ns: int) -> frozenset[str]:
    """Project modules that ``module`` imports anywhere in its source (mtime in the key: an edit is seen)."""
    tree = ast.parse(_path(module).read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from tasks import x` may name a module: take both
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(n for n in names if _path(n) is not None)
    return frozenset(found)


def closure(roots: list[str]) -> list[str]:
    """The project modules ``roots`` run, themselves included, sorted (``NOT_CODE`` left out)."""
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        module = todo.pop()
        if module in seen or module in NOT_CODE or _path(module) is None:
            continue
        seen.add(module)
        todo.extend(_imports(module, _path(module).stat().st_mtime_ns))
    return sorted(seen)


def code_version(roots: list[str]) -> str:
    """A hash of the source of every module in ``closure(roots)``; editing any of them changes it."""
    digest = hashlib.sha256()
    for module in closure(roots):
        digest.update(module.encode() + b"\0" + _path(module).read_bytes() + b"\0")
    return digest.hexdigest()[:16]
