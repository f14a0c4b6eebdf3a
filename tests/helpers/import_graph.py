"""The import graph of the project's own code, read with `ast` (imports inside functions count too: a lazy
import is still a dependency, it only hides a cycle from the interpreter), and the two checks on it: cycles
and imports that go up the declared layer order (tests/test_import_graph.py)."""
from __future__ import annotations

import ast
from pathlib import Path


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def project_modules(root: Path, packages: tuple[str, ...]) -> dict[str, Path]:
    """Every module of `packages` (folders under `root`) by its dotted name."""
    return {module_name(path, root): path for package in packages for path in sorted((root / package).rglob("*.py"))}


def _imported(node: ast.AST, module: str, is_package: bool) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    base = node.module or ""
    if node.level:   # relative: resolved against the importing module's package
        package = module.split(".") if is_package else module.split(".")[:-1]
        package = package[:len(package) - node.level + 1]
        base = ".".join(package + ([base] if base else []))
    # `from a import b` imports the module a.b when there is one, else a name of a
    return [f"{base}.{alias.name}" for alias in node.names] + [base]


def import_graph(root: Path, packages: tuple[str, ...]) -> dict[str, set[str]]:
    """module -> the project modules it imports (at any depth of its code)."""
    modules = project_modules(root, packages)
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        targets = set()
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            names = _imported(node, module, path.name == "__init__.py")
            submodules = [n for n in names[:-1] if n in modules] if isinstance(node, ast.ImportFrom) else []
            if submodules:
                targets.update(submodules)
            else:
                targets.update(_nearest_module(n, modules) for n in names)
        graph[module] = {t for t in targets if t is not None and t != module}
    return graph


def _nearest_module(name: str, modules: dict) -> str | None:
    parts = name.split(".")
    while parts:
        if ".".join(parts) in modules:
            return ".".join(parts)
        parts.pop()
    return None


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one member (Tarjan), each sorted: every import cycle
    lies inside one of them."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def unit_of(module: str, units: dict[str, int]) -> str:
    """The unit (a module or package prefix of `units`) a module belongs to: the longest matching prefix."""
    parts = module.split(".")
    while parts:
        if ".".join(parts) in units:
            return ".".join(parts)
        parts.pop()
    raise KeyError(f"{module} is in no layer: add it (or its package) to the layer order")


def unit_graph(graph: dict[str, set[str]], units: dict[str, int]) -> dict[str, set[str]]:
    """The module graph collapsed onto units (packages at the layer granularity)."""
    collapsed: dict[str, set[str]] = {}
    for module, targets in graph.items():
        source = unit_of(module, units)
        collapsed.setdefault(source, set()).update(unit_of(t, units) for t in targets if unit_of(t, units) != source)
    return collapsed


def upward_imports(graph: dict[str, set[str]], units: dict[str, int]) -> list[tuple[str, str]]:
    """(importer, imported) pairs where a lower layer imports a higher one."""
    return sorted((module, target) for module, targets in graph.items() for target in targets
                  if units[unit_of(target, units)] > units[unit_of(module, units)])
