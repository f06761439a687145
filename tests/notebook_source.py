"""Reading the notebooks and the lab and toolkit modules as source, and checking headless runs, for the notebook tests."""
import ast
import subprocess
from pathlib import Path

import nbformat
from nbclient.exceptions import CellExecutionError

ROOT = Path(__file__).resolve().parent.parent
# The student's three files, then the toolkit package beside them: the modules a notebook may import from.
LAB_MODULES = ("quantization", "pruning", "distillation")


def _dotted(path: Path) -> str:
    """toolkit/layers.py -> 'toolkit.layers'; a package's toolkit/evaluation/__init__.py -> 'toolkit.evaluation'."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


# The toolkit's modules, its packages (toolkit.evaluation) and their modules (toolkit.evaluation.scoring).
TOOLKIT_MODULES = tuple(sorted(
    _dotted(path) for path in (ROOT / "toolkit").rglob("*.py")
    if not path.stem.startswith("_") or (path.stem == "__init__" and path.parent.name != "toolkit")))
NOTEBOOK_MODULES = LAB_MODULES + TOOLKIT_MODULES


def code_sources(path: Path) -> list[str]:
    """The source of every code cell of the notebook at `path`."""
    return [cell.source for cell in nbformat.read(path, as_version=4).cells if cell.cell_type == "code"]


def module_path(module: str) -> Path:
    """The source file of a dotted module name of the repository (`toolkit.layers` -> toolkit/layers.py,
    a package `toolkit.evaluation` -> toolkit/evaluation/__init__.py)."""
    package = ROOT / module.replace(".", "/") / "__init__.py"
    return package if package.exists() else ROOT / f"{module.replace('.', '/')}.py"


def public_names(module: str) -> set[str]:
    """Top-level public functions and classes of a lab or toolkit module, read from its source."""
    tree = ast.parse(module_path(module).read_text(encoding="utf-8"))
    return {node.name for node in tree.body
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            and not node.name.startswith("_")}


def lab_names() -> dict[str, str]:
    """Public name -> the module defining it, for every module of NOTEBOOK_MODULES."""
    return {name: module for module in NOTEBOOK_MODULES for name in public_names(module)}


def defined_names(path: Path) -> set[str]:
    """Names of the functions and classes the notebook at `path` defines, at any depth."""
    return {node.name for source in code_sources(path) for node in ast.walk(ast.parse(source))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}


def check_run(completed: subprocess.CompletedProcess) -> None:
    """Raise unless a headless run of tools/run_notebook.py succeeded.

    A failed run raises nbclient's CellExecutionError carrying the end of the runner's report
    (the failing cell's traceback). In the student release the grading plugin turns one that
    stopped on an unsolved exercise into a skip naming that exercise.
    """
    if completed.returncode != 0:
        raise CellExecutionError(completed.stderr[-5000:], "NotebookRunFailed",
                                 f"tools/run_notebook.py exited with status {completed.returncode}")
