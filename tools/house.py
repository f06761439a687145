"""The shape of the code, read with `ast`: the import graph, the floors it stacks into, sizes.

`python tools/house.py [N]` prints the toolkit's import graph (`module -> modules`, project modules
only), how many floors it stands by its imports, the line count of every module and the N largest
functions. `FLOORS` is the plan the graph must keep; `tests/test_layering.py` checks it:

    1 plumbing      targets, calibration, blocks, packing, int4 (may import one another)
    2 formats       layers (quantized layers), sparse (sparse and N:M checkpoints)
    3 methods       awq, wanda, shrink, students, qat: side by side, none importing another
    4 measurement   evaluation (a package), sensitivity (may import evaluation)

The lab's three files stand below (floor 0) and import no project module.

It reads source files only; it imports nothing of the project.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAB = ("quantization", "pruning", "distillation")  # the student files, at the repository root
FLOORS = {
    "toolkit": 0, **dict.fromkeys(LAB, 0),
    **dict.fromkeys(("toolkit.targets", "toolkit.calibration", "toolkit.blocks", "toolkit.packing", "toolkit.int4"), 1),
    **dict.fromkeys(("toolkit.layers", "toolkit.sparse"), 2),
    **dict.fromkeys(("toolkit.awq", "toolkit.wanda", "toolkit.shrink", "toolkit.students", "toolkit.qat"), 3),
    **dict.fromkeys(("toolkit.evaluation", "toolkit.sensitivity"), 4),
}
SIDEWAYS = (1, 4)  # the floors whose modules may import one another (the methods may not)
# Imports against the plan, each with its reason; only inside a function (never loaded by the import).
SHORTCUTS = {("toolkit.layers", "toolkit.awq"): "quantize_model(..., 'int4', calibration=) is the documented "
                                                "shortcut to awq.awq_quantize"}


def module_files(root: Path = ROOT) -> dict[str, Path]:
    """Dotted module name -> file, for the lab files and every module of `toolkit/`."""
    files = {name: root / f"{name}.py" for name in LAB}
    for path in sorted((root / "toolkit").rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return files


def floor_of(module: str) -> int | None:
    """The planned floor of a module; a package's submodules stand on the package's floor."""
    while module not in FLOORS and "." in module:
        module = module.rpartition(".")[0]
        if module == "toolkit":
            return None
    return FLOORS.get(module)


def imports(path: Path, *, top_level: bool = False) -> list[tuple[str, list[str]]]:
    """(imported module, imported names) of every import statement in `path`, function bodies included
    unless `top_level`."""
    tree = ast.parse(path.read_text())
    found = []
    for node in (tree.body if top_level else ast.walk(tree)):
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


def private_imports(root: Path = ROOT) -> list[str]:
    """'module: name from other' for every private name (a leading underscore) imported from another
    module, in the lab, the toolkit, benchmarks/ and tools/."""
    paths = list(module_files(root).values()) + sorted((root / "benchmarks").glob("*.py")) \
        + sorted((root / "tools").glob("*.py"))
    return [f"{path.relative_to(root)}: {name} from {module}" for path in paths for module, names in imports(path)
            for name in names if name.startswith("_") and not name.startswith("__")]


def floors(graph: dict[str, set[str]]) -> dict[str, int]:
    """Module -> how many floors stand up to it: 1 + the most below it along its imports, where an import
    within one planned floor adds none (the shortcuts are left out). Raises ValueError on a cycle."""
    height: dict[str, int] = {}

    def floor(name: str, path: tuple[str, ...] = ()) -> int:
        if name in path:
            raise ValueError(f"import cycle: {' -> '.join((*path, name))}")
        if name not in height:
            height[name] = max((floor(dep, (*path, name)) + (floor_of(dep) != floor_of(name))
                                for dep in graph[name] if (name, dep) not in SHORTCUTS), default=1)
        return height[name]

    for name in graph:
        floor(name)
    return height


def functions(path: Path) -> list[tuple[str, int, int]]:
    """(qualified name, lines, lines without the docstring) of every function and class in `path`."""
    found = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                lines = child.end_lineno - child.lineno + 1
                first = child.body[0]
                doc = first.end_lineno - first.lineno + 1 if ast.get_docstring(child) is not None else 0
                found.append((prefix + child.name, lines, lines - doc))
                visit(child, f"{prefix}{child.name}.")

    visit(ast.parse(path.read_text()), "")
    return found


def main() -> None:
    files = module_files()
    graph = import_graph()
    toolkit = [name for name in files if name.startswith("toolkit.")]
    height = floors({name: graph[name] & set(toolkit) for name in toolkit})
    print("import graph (module -> project modules):")
    for name in sorted(toolkit, key=lambda n: (-(floor_of(n) or 9), n)):
        print(f"  [{floor_of(name)}] {name} -> {', '.join(sorted(graph[name])) or '-'}")
    print(f"floors of the toolkit by its imports (the lab below it): {max(height.values())}")
    print(f"shortcuts (function-level imports against the plan): {sorted(SHORTCUTS)}")
    print(f"private names imported across modules: {private_imports() or 'none'}")
    print("lines per module:")
    for name in sorted(files, key=lambda n: -len(files[n].read_text().splitlines())):
        print(f"  {len(files[name].read_text().splitlines()):5d} {name}")
    largest = sorted(((lines, code, f"{name}.{func}") for name in files
                      for func, lines, code in functions(files[name])), reverse=True)
    print("largest functions and classes (lines, lines without the docstring):")
    for lines, code, name in largest[: int(sys.argv[1]) if len(sys.argv) > 1 else 12]:
        print(f"  {lines:4d} {code:4d} {name}")


if __name__ == "__main__":
    main()
