"""The shape of the code, read with `ast`: the import graph, the floors it stacks into, sizes.

`python tools/house.py` prints the toolkit's import graph (`module -> modules`, project modules only),
its floors (the length of the longest import chain above each module), the line count of every
module and the largest functions. `tests/test_layering.py` checks the graph against the floor map.

It reads source files only; it imports nothing of the project.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAB = ("quantization", "pruning", "distillation")  # the student files, at the repository root


def module_files(root: Path = ROOT) -> dict[str, Path]:
    """Dotted module name -> file, for the lab files and every module of `toolkit/`."""
    files = {name: root / f"{name}.py" for name in LAB}
    for path in sorted((root / "toolkit").rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return files


def imports(path: Path) -> list[tuple[str, list[str]]]:
    """(imported module, imported names) of every import statement in `path`, function bodies included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module, [alias.name for alias in node.names]))
    return found


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Module -> the project modules it imports (a package's submodule counts as itself)."""
    files = module_files(root)
    graph = {}
    for name, path in files.items():
        targets = set()
        for module, names in imports(path):
            for candidate in [f"{module}.{n}" for n in names] + [module]:
                if candidate in files and candidate != name:
                    targets.add(candidate)
                    break
        graph[name] = targets
    return graph


def floors(graph: dict[str, set[str]]) -> dict[str, int]:
    """Module -> its floor: 1 + the highest floor it imports (1 for a module importing none)."""
    height: dict[str, int] = {}

    def floor(name: str, path: tuple[str, ...] = ()) -> int:
        if name in path:
            raise ValueError(f"import cycle: {' -> '.join((*path, name))}")
        if name not in height:
            height[name] = 1 + max((floor(dep, (*path, name)) for dep in graph[name]), default=0)
        return height[name]

    for name in graph:
        floor(name)
    return height


def functions(path: Path) -> list[tuple[str, int]]:
    """(qualified name, lines) of every function and class in `path`."""
    found = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                found.append((prefix + child.name, child.end_lineno - child.lineno + 1))
                visit(child, f"{prefix}{child.name}.")

    visit(ast.parse(path.read_text()), "")
    return found


def main() -> None:
    files = module_files()
    graph = import_graph()
    toolkit = [name for name in files if name.startswith("toolkit.")]
    height = floors({name: graph[name] & set(toolkit) for name in toolkit})
    print("import graph (module -> project modules):")
    for name in sorted(toolkit, key=lambda n: (-height[n], n)):
        print(f"  {name} -> {', '.join(sorted(graph[name])) or '-'}")
    print(f"floors of the toolkit (its own imports, the lab below it): {max(height.values())}")
    print("lines per module:")
    for name in sorted(files, key=lambda n: -len(files[n].read_text().splitlines())):
        print(f"  {len(files[name].read_text().splitlines()):5d} {name}")
    largest = sorted(((lines, f"{name}.{func}") for name in files for func, lines in functions(files[name])),
                     reverse=True)
    print("largest functions and classes:")
    for lines, name in largest[: int(sys.argv[1]) if len(sys.argv) > 1 else 12]:
        print(f"  {lines:4d} {name}")


if __name__ == "__main__":
    main()
