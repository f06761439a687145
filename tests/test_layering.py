"""The house keeps its plan: imports go down the floors of `tools.house.FLOORS`, never up or sideways
between methods; no private name crosses a module; the lab imports no project module.

The checks read the source with `ast` (tools/house.py); nothing of the project is imported. Each rule is
also run on a small planted tree, so that a broken check cannot pass unnoticed.
"""
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tools import house


def violations(root: Path = house.ROOT) -> list[str]:
    """Every import of a project module that breaks the plan, as 'module -> module (why)'."""
    found = []
    for name, path in house.module_files(root).items():
        here = house.floor_of(name)
        if here is None:
            found.append(f"{name} (no floor in tools/house.FLOORS)")
            continue
        top_level = {module for module, _ in house.imports(path, top_level=True)}
        for dep in house.import_graph(root)[name]:
            there = house.floor_of(dep)
            same_package = name.startswith(f"{dep}.") or dep.startswith(f"{name}.") \
                or (name.count(".") > 1 and dep.rpartition(".")[0] == name.rpartition(".")[0])
            if (name, dep) in house.SHORTCUTS:
                if any(module == dep or module.startswith(f"{dep}.") for module in top_level):
                    found.append(f"{name} -> {dep} (a shortcut must be imported inside its function)")
                continue
            if there is None or same_package:
                continue
            if name in house.LAB:
                found.append(f"{name} -> {dep} (the lab imports libraries only)")
            elif there > here:
                found.append(f"{name} -> {dep} (up: floor {here} -> {there})")
            elif there == here and here not in house.SIDEWAYS:
                found.append(f"{name} -> {dep} (sideways on floor {here}: methods do not import one another)")
    return found


def test_imports_go_down_the_floors():
    assert violations() == []


def test_the_toolkit_stands_at_most_four_floors_tall():
    graph = house.import_graph()
    toolkit = [name for name in graph if name.startswith("toolkit.")]
    height = house.floors({name: graph[name] & set(toolkit) for name in toolkit})
    assert max(height.values()) <= 4, height


def test_no_private_name_is_imported_across_modules():
    assert house.private_imports() == []


def test_importing_the_evaluation_package_loads_no_matplotlib_and_no_method():
    code = ("import sys, toolkit.evaluation, toolkit.layers; "
            "print(sorted(m for m in sys.modules if m.startswith('matplotlib') or m in "
            "('toolkit.awq', 'toolkit.wanda', 'toolkit.shrink', 'toolkit.students')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=house.ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _plant(root: Path, files: dict[str, str]) -> Path:
    for name in (*house.LAB, "toolkit/__init__"):
        (root / f"{name}.py").parent.mkdir(parents=True, exist_ok=True)
        (root / f"{name}.py").write_text("")
    for name, text in files.items():
        (root / name).write_text(textwrap.dedent(text))
    return root


@pytest.mark.parametrize("files, expected", [
    ({"toolkit/targets.py": "from toolkit.layers import QuantizedLinear\n", "toolkit/layers.py": ""},
     ["toolkit.targets -> toolkit.layers (up: floor 1 -> 2)"]),
    ({"toolkit/wanda.py": "def f():\n    from toolkit.awq import awq_quantize\n", "toolkit/awq.py": ""},
     ["toolkit.wanda -> toolkit.awq (sideways on floor 3: methods do not import one another)"]),
    ({"pruning.py": "import toolkit.targets\n", "toolkit/targets.py": ""},
     ["pruning -> toolkit.targets (the lab imports libraries only)"]),
    ({"toolkit/layers.py": "from toolkit.awq import awq_quantize\n", "toolkit/awq.py": ""},
     ["toolkit.layers -> toolkit.awq (a shortcut must be imported inside its function)"]),
    ({"toolkit/newthing.py": ""}, ["toolkit.newthing (no floor in tools/house.FLOORS)"]),
    ({"toolkit/calibration.py": "from toolkit.targets import model_device\n", "toolkit/targets.py": "",
      "toolkit/layers.py": "def f():\n    from toolkit.awq import awq_quantize\n", "toolkit/awq.py": ""}, []),
])
def test_the_check_catches_each_kind_of_bad_import(tmp_path, files, expected):
    assert violations(_plant(tmp_path, files)) == expected


def test_the_check_catches_a_private_name_and_a_cycle(tmp_path):
    root = _plant(tmp_path, {"toolkit/awq.py": "from distillation import _prepare_batch\n"})
    assert house.private_imports(root) == ["toolkit/awq.py: _prepare_batch from distillation"]
    with pytest.raises(ValueError, match="import cycle"):
        house.floors({"toolkit.a": {"toolkit.b"}, "toolkit.b": {"toolkit.a"}})
