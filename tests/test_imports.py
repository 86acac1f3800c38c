"""The house rules a newcomer relies on: the layers import in one direction and without cycles (function-local
imports count too), the orchestration names no stage, and a long module says why it is long."""
import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def import_graph(packages: tuple[str, ...]) -> dict[str, set[str]]:
    modules = {(f"{p}.{f.stem}" if f.stem != "__init__" else p): f for p in packages for f in (ROOT / p).glob("*.py")}
    graph = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


PACKAGES = ("flows", "tasks", "model", "warehouse")


def test_no_package_has_import_cycles():
    assert cycles(import_graph(PACKAGES)) == []


def test_cycles_are_found():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_stage_code_never_imports_the_orchestration():
    graph = import_graph(("tasks", "model", "warehouse", "flows"))
    assert not [(m, d) for m, deps in graph.items() for d in deps
                if not m.startswith("flows") and d.startswith("flows")]


def test_the_warehouse_never_imports_the_stages():
    graph = import_graph(PACKAGES)
    assert not [(m, d) for m, deps in graph.items() for d in deps
                if m.startswith("warehouse") and d.split(".")[0] in ("tasks", "flows")]


def _stage_names() -> set[str]:
    from tasks.registry import ORDER

    return set(ORDER)


def test_the_lifecycle_the_warehouse_and_the_cli_name_no_stage():
    """Stage behaviour lives in the stage's class: flows/ and warehouse/ neither test a stage's class nor compare
    with a stage's name (a stage added later must need no edit there). Migrations are history, and are exempt."""
    names = _stage_names()
    found = []
    for package in ("flows", "warehouse"):
        for path in sorted((ROOT / package).glob("*.py")):
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "isinstance":
                    classes = ast.unparse(node.args[1])
                    if re.search(r"\b\w+Stage\b", classes):
                        found.append(f"{path.name}:{node.lineno} isinstance(..., {classes})")
                if isinstance(node, ast.Compare):
                    for side in [node.left, *node.comparators]:
                        for const in ast.walk(side):
                            if isinstance(const, ast.Constant) and const.value in names:
                                found.append(f"{path.name}:{node.lineno} compares with {const.value!r}")
                if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "get":
                    for arg in node.args[:1]:
                        if isinstance(arg, ast.Constant) and arg.value in names:
                            found.append(f"{path.name}:{node.lineno} looks up {arg.value!r}")
    assert found == []


def test_a_long_module_says_why():
    """No module over ~400 lines without a reason at its top (a docstring line starting "Why one module")."""
    long = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).glob("*.py")):
            text = path.read_text()
            lines = text.count("\n")
            doc = ast.get_docstring(ast.parse(text)) or ""
            if lines > 420 and "Why one module" not in doc:
                long.append(f"{package}/{path.name}: {lines} lines")
    assert long == []
