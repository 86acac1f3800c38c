"""The package layers import in one direction and without cycles (function-local imports count too)."""
import ast
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


def test_tasks_model_and_warehouse_have_no_import_cycles():
    assert cycles(import_graph(("tasks", "model", "warehouse"))) == []


def test_cycles_are_found():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_stage_code_never_imports_the_orchestration():
    graph = import_graph(("tasks", "model", "warehouse", "flows"))
    assert not [(m, d) for m, deps in graph.items() for d in deps
                if not m.startswith("flows") and d.startswith("flows")]
