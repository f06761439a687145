"""Reading the notebooks and the lab modules as source, for the notebook tests."""
import ast
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
LAB_MODULES = ("quantization", "pruning", "distillation", "evaluation")


def code_sources(path: Path) -> list[str]:
    """The source of every code cell of the notebook at `path`."""
    return [cell.source for cell in nbformat.read(path, as_version=4).cells if cell.cell_type == "code"]


def public_names(module: str) -> set[str]:
    """Top-level public functions and classes of a lab module, read from its source."""
    tree = ast.parse((ROOT / f"{module}.py").read_text(encoding="utf-8"))
    return {node.name for node in tree.body
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            and not node.name.startswith("_")}


def lab_names() -> dict[str, str]:
    """Public name -> the lab module defining it, for every module of LAB_MODULES."""
    return {name: module for module in LAB_MODULES for name in public_names(module)}


def defined_names(path: Path) -> set[str]:
    """Names of the functions and classes the notebook at `path` defines, at any depth."""
    return {node.name for source in code_sources(path) for node in ast.walk(ast.parse(source))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
