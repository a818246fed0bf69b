#!/usr/bin/env python3
"""Report import cycles between the modules of a package (static, stdlib only).

    python tools/check_import_cycles.py [PACKAGE_DIR ...]     (default: pybox)

Every .py module under PACKAGE_DIR is parsed with ast (nothing is imported) and every
import statement between two modules of the package is an edge: module level, under
`if TYPE_CHECKING:` and inside functions alike. An import moved into a function or
under TYPE_CHECKING only hides a cycle from the interpreter; it is still a cycle in
the design, so it is reported here.

Resolution:
  - relative imports are made absolute from the importing module's package;
  - `from a.b import c` is an edge to module a.b.c when that is a module (file or
    package) in the tree, else to a.b; `import a.b.c` is an edge to a.b.c;
  - no implicit edges: importing a.b.c runs a/__init__.py and a/b/__init__.py, but
    (as in the usual cycle checkers) that is not counted as an edge to a or a.b;
  - dynamic imports (importlib.import_module, __import__) are not seen; imports of
    names of the package that are no module in the tree are warned about on stderr.

A cycle is a strongly connected component of more than one module, or a module that
imports itself. Each one is printed as a chain `a -> b -> a` with the file:line of
every import statement making each edge; the exit status is then 1. Without cycles
it prints `no import cycles among N modules in PACKAGE_DIR/` and exits 0. Usage
errors and files that do not parse exit 2.
"""

from __future__ import annotations

import argparse
import ast
import os
import sys
from itertools import pairwise
from pathlib import Path
from typing import NamedTuple

MAX_CYCLES_PER_GROUP = 50  # elementary cycles listed per strongly connected component


class Location(NamedTuple):
    path: Path
    line: int
    context: str  # "module", "TYPE_CHECKING" or "function"

    def __str__(self) -> str:
        suffix = "" if self.context == "module" else f" ({self.context})"
        return f"{display(self.path)}:{self.line}{suffix}"


Graph = dict[str, dict[str, list[Location]]]  # importer -> imported -> import statements


def display(path: Path) -> str:
    """The path relative to the working directory when it is under it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def find_modules(package_dir: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every importable .py file under package_dir.

    A package is named by its __init__.py; directories without one still give their
    modules dotted names (namespace packages). Names that are not identifiers cannot
    be imported and are skipped, as are hidden directories and __pycache__."""
    root = package_dir.resolve()
    modules: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d.isidentifier() and d != "__pycache__")
        parts = [root.name, *Path(dirpath).relative_to(root).parts]
        for filename in sorted(filenames):
            stem, ext = os.path.splitext(filename)
            if ext != ".py" or not stem.isidentifier():
                continue
            name = ".".join(parts if stem == "__init__" else [*parts, stem])
            modules[name] = package_dir / Path(dirpath).relative_to(root) / filename
    return modules


def is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


class ImportCollector(ast.NodeVisitor):
    """Every import statement of one module with its context, in source order."""

    def __init__(self) -> None:
        self.imports: list[tuple[ast.Import | ast.ImportFrom, str]] = []
        self.context = ["module"]

    def _within(self, context: str, nodes: list[ast.stmt]) -> None:
        self.context.append(context)
        for node in nodes:
            self.visit(node)
        self.context.pop()

    def visit_If(self, node: ast.If) -> None:
        if is_type_checking(node.test):
            self.visit(node.test)
            # inside a function it stays "function": that is where it would run
            self._within("TYPE_CHECKING" if self.context[-1] == "module" else self.context[-1], node.body)
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self.context.append("function")
        self.generic_visit(node)
        self.context.pop()

    visit_FunctionDef = visit_AsyncFunctionDef = _function

    def visit_Import(self, node: ast.Import) -> None:
        self.imports.append((node, self.context[-1]))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        self.imports.append((node, self.context[-1]))


def targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool,
            modules: dict[str, Path]) -> tuple[list[str], list[str]]:
    """The modules of the tree one import statement names, and the names it imports
    from the package's namespace that are no module of the tree (a stale import)."""
    top = module.partition(".")[0]
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
        return [n for n in names if n in modules], [n for n in names if is_missing(n, top, modules)]
    if node.level:
        package = module if is_package else module.rpartition(".")[0]
        parts = package.split(".")
        if node.level - 1 >= len(parts):
            return [], []  # beyond the top-level package: Python refuses it too
        base = ".".join(parts[: len(parts) - (node.level - 1)])
        base = f"{base}.{node.module}" if node.module else base
    else:
        base = node.module or ""
    found = []
    for alias in node.names:
        submodule = f"{base}.{alias.name}"
        if alias.name != "*" and submodule in modules:
            found.append(submodule)
        elif base in modules:
            found.append(base)
    missing = [base] if not found and is_missing(base, top, modules) else []
    return list(dict.fromkeys(found)), missing


def is_missing(name: str, top: str, modules: dict[str, Path]) -> bool:
    """name is in the package's namespace but neither a module nor a directory of it."""
    if name != top and not name.startswith(top + "."):
        return False
    return not any(m == name or m.startswith(name + ".") for m in modules)


def build_graph(package_dir: Path, warn=None) -> tuple[dict[str, Path], Graph]:
    """The modules and their import graph; warn(message) hears of imports of modules
    of the package that do not exist (default: printed on stderr)."""
    if warn is None:
        def warn(message: str) -> None:
            print(f"warning: {message}", file=sys.stderr)
    modules = find_modules(package_dir)
    graph: Graph = {name: {} for name in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_bytes(), filename=str(path))
        collector = ImportCollector()
        collector.visit(tree)
        for node, context in collector.imports:
            found, missing = targets(node, name, path.name == "__init__.py", modules)
            for target in found:
                graph[name].setdefault(target, []).append(Location(path, node.lineno, context))
            for target in missing:
                warn(f"{Location(path, node.lineno, context)}: imports {target}, which is no module "
                     f"in {display(package_dir)}/ (not counted)")
    return modules, graph


def strongly_connected_components(graph: Graph) -> list[list[str]]:
    """Tarjan's algorithm, iterative; each component sorted, components in order."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, successors = work[-1]
            for succ in successors:
                if succ not in index:
                    index[succ] = low[succ] = len(index)
                    stack.append(succ)
                    on_stack.add(succ)
                    work.append((succ, iter(sorted(graph[succ]))))
                    break
                if succ in on_stack:
                    low[node] = min(low[node], index[succ])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    components.append(sorted(component))
    return sorted(components)


def elementary_cycles(graph: Graph, component: list[str], limit: int) -> list[list[str]]:
    """Johnson's algorithm restricted to one component: each cycle starts at its
    smallest module; at most `limit` of them."""
    cycles: list[list[str]] = []
    for position, start in enumerate(component):
        cycles_through(graph, start, set(component[position:]), cycles, limit)
        if len(cycles) >= limit:
            break
    return cycles


def cycles_through(graph: Graph, start: str, allowed: set[str], cycles: list[list[str]], limit: int) -> None:
    """Append the elementary cycles through start that use only allowed modules."""
    blocked: set[str] = set()
    blockers: dict[str, set[str]] = {name: set() for name in allowed}
    path: list[str] = []

    def unblock(node: str) -> None:
        pending = [node]
        while pending:
            current = pending.pop()
            if current in blocked:
                blocked.discard(current)
                pending.extend(blockers[current])
                blockers[current].clear()

    def circuit(node: str) -> bool:
        found = False
        path.append(node)
        blocked.add(node)
        for succ in sorted(graph[node]):
            if succ not in allowed or len(cycles) >= limit:
                continue
            if succ == start:
                cycles.append(list(path))
                found = True
            elif succ not in blocked and circuit(succ):
                found = True
        if found:
            unblock(node)
        else:
            for succ in graph[node]:
                if succ in allowed:
                    blockers[succ].add(node)
        path.pop()
        return found

    circuit(start)


def report(package_dir: Path) -> int:
    """Print the cycles of one package; the number of cycle groups found."""
    modules, graph = build_graph(package_dir)
    shown = display(package_dir).rstrip("/") + "/"
    groups = [c for c in strongly_connected_components(graph) if len(c) > 1 or c[0] in graph[c[0]]]
    if not groups:
        print(f"no import cycles among {len(modules)} modules in {shown}")
        return 0
    print(f"import cycles in {shown}: {len(groups)} group(s) of modules importing each other "
          f"({len(modules)} modules)")
    for number, group in enumerate(groups, 1):
        cycles = elementary_cycles(graph, group, MAX_CYCLES_PER_GROUP + 1)
        print(f"\ngroup {number}: {', '.join(group)}")
        for cycle in cycles[:MAX_CYCLES_PER_GROUP]:
            chain = [*cycle, cycle[0]]
            print("  " + " -> ".join(chain))
            for importer, imported in pairwise(chain):
                where = ", ".join(str(location) for location in graph[importer][imported])
                print(f"      {importer} -> {imported}: {where}")
        if len(cycles) > MAX_CYCLES_PER_GROUP:
            print(f"  ... more cycles in this group; the first {MAX_CYCLES_PER_GROUP} are listed")
    return len(groups)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("package_dirs", nargs="*", metavar="PACKAGE_DIR", default=["pybox"],
                        help="directory of a package to check (default: pybox)")
    args = parser.parse_args(argv)
    found = False
    for index, package_dir in enumerate(map(Path, args.package_dirs)):
        if not package_dir.is_dir():
            print(f"error: {package_dir} is not a directory", file=sys.stderr)
            return 2
        if index:
            print()
        try:
            found |= report(package_dir) > 0
        except (SyntaxError, ValueError, OSError) as error:
            print(f"error: {package_dir}: {error}", file=sys.stderr)
            return 2
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
