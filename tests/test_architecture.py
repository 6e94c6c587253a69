"""The package's shape, checked from its source: no import circles, stages apart from each other.

Every `import` counts, function-local ones too (a circle hidden inside a function is still a circle).
Run alone to see the graph: `python tests/test_architecture.py` prints each module's imports.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "dmd2report"
ENTRY_POINTS = {"dmd2report.cli", "dmd2report.pipeline"}   # may import anything (the pipeline loads stages by name)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """{module: the dmd2report modules it imports}, from every import statement of every module."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                # `from . import files` names a module; `from .files import x` names one in `base`.
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                continue
            for t in targets:
                while t and t not in modules:  # `import dmd2report.models.unet` counts as that module
                    t = t.rsplit(".", 1)[0] if "." in t else ""
                if t and t != name:
                    edges.add(t)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def is_stage(name: str) -> bool:
    return name.startswith("dmd2report.stages.")


def test_no_import_circles():
    assert cycles(import_graph()) == []


def test_stages_import_libraries_only():
    """A stage imports no other stage and not the pipeline or the CLI: each can be read and rerun alone."""
    graph = import_graph()
    bad = {(m, t) for m, targets in graph.items() if is_stage(m)
           for t in targets if is_stage(t) or t in ENTRY_POINTS}
    assert bad == set()


def test_libraries_import_no_stage():
    """Libraries (everything but the stages, the pipeline and the CLI) never reach up into them."""
    graph = import_graph()
    bad = {(m, t) for m, targets in graph.items() if not is_stage(m) and m not in ENTRY_POINTS
           and m != "dmd2report.stages" for t in targets if is_stage(t) or t in ENTRY_POINTS}
    assert bad == set()


def test_report_imports_no_search_or_metric_computation():
    """The report shows what the stages computed: no module under report/ imports the k-NN search (knn,
    knn_kernels) or the metrics' computation (metrics and any module under it); the metrics' declarations
    (metric_defs) it may. Synthetic report data, which does compute them, lives in tests/synthetic.py."""
    graph = import_graph()
    report = {m for m in graph if m == "dmd2report.report" or m.startswith("dmd2report.report.")}
    assert "dmd2report.report.data" in report and "dmd2report.report.render" in report   # not blind to report/
    computation = ("dmd2report.knn", "dmd2report.metrics")   # prefixes: knn_kernels too; metric_defs does not match
    bad = {(m, t) for m in report for t in graph[m] if t.startswith(computation)}
    assert bad == set()


def test_graph_sees_function_local_imports():
    """The check is not blind: imports inside functions are edges (WorkDir.store imports store.py inside
    the method), and a circle through one is found."""
    graph = import_graph()
    assert "dmd2report.store" in graph["dmd2report.workdir"]
    graph["dmd2report.files"] = graph["dmd2report.files"] | {"dmd2report.workdir"}  # as `def f(): from .workdir import X`
    assert any({"dmd2report.files", "dmd2report.workdir"} <= set(c) for c in cycles(graph))


if __name__ == "__main__":
    for module, targets in sorted(import_graph().items()):
        print(f"{module}: {', '.join(sorted(t.removeprefix('dmd2report.') for t in targets))}")
    found = cycles(import_graph())
    print("circles:", found or "none")
