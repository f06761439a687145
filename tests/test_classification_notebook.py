"""The classification recipe: distillation_classification.ipynb runs end to end in smoke mode.

The smoke run executes the notebook headless with tools/run_notebook.py (SMOKE=1: a tiny
BERT built offline, a synthetic intent task the notebook generates) into a temporary
RESULTS_DIR, and checks the table it writes: one row per variant, finite numbers, and a
dynamically quantized student that is really smaller than the float one. The static tests
check the notebook's source: one parameter cell with the hub defaults, no stored outputs,
the lab and toolkit modules called rather than redefined or worked around. (That the student release
blanks the answer cells is checked for every shipped notebook by tests/test_tooling.py.)
"""
import ast
import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from notebook_source import NOTEBOOK_MODULES, ROOT, check_run, code_sources, defined_names, lab_names

NOTEBOOK = ROOT / "distillation_classification.ipynb"
RUNNER = ROOT / "tools" / "run_notebook.py"

ROWS = ("teacher", "student (undistilled)", "student (fine-tuned)", "student (distilled)",
        "student (distilled, int8)")
POSITIVE = ("parameters", "size_mb", "serialized_mb", "latency_median_ms", "latency_p90_ms", "size_ratio", "speedup")
SMOKE_INTENTS = 6  # the synthetic task's label count: chance accuracy is 1/6


# ---------------------------------------------------------------------------
# The notebook's source


def test_notebook_has_one_parameter_cell_with_the_hub_defaults():
    cells = nbformat.read(NOTEBOOK, as_version=4).cells
    tagged = [cell for cell in cells if "parameters" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1
    source = tagged[0].source
    assigned = {name.id for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Assign)
                for target in node.targets for name in ast.walk(target) if isinstance(name, ast.Name)}
    assert {"STUDENT_ID", "STUDENT_LAYERS", "TEMPERATURE", "ALPHA", "SMOKE", "SEED", "RESULTS_DIR"} <= assigned
    assert 'TEACHER_ID = "google-bert/bert-base-uncased"' in source
    assert 'DATASET_ID, DATASET_CONFIG = "clinc/clinc_oos", "plus"' in source
    assert "STUDENT_LAYERS = 6" in source


def test_notebook_is_stored_without_outputs():
    cells = nbformat.read(NOTEBOOK, as_version=4).cells
    assert all(not cell.outputs and cell.execution_count is None for cell in cells if cell.cell_type == "code")


def test_notebook_calls_the_lab_modules_and_redefines_none_of_their_names():
    lab = lab_names()
    assert {"DistillationTrainer", "make_student", "load_model", "accuracy", "compare", "parameter_count"} <= lab.keys()
    clashes = {name: lab[name] for name in defined_names(NOTEBOOK) & lab.keys()}
    assert not clashes, f"the notebook redefines lab functions (call them instead): {clashes}"
    trees = [ast.parse(source) for source in code_sources(NOTEBOOK)]
    imported = {alias.name for tree in trees for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom) and node.module in NOTEBOOK_MODULES for alias in node.names}
    assert {"DistillationTrainer", "make_student", "load_model", "accuracy", "compare", "parameter_count",
            "plot_comparison", "save_rows"} <= imported


def test_notebook_measures_through_evaluation_without_workarounds():
    code = "\n".join(code_sources(NOTEBOOK))
    # Classifiers are loaded by evaluation.load_model, quantized weights sized by model_size_mb and
    # parameter_count, accuracy scored by evaluation.accuracy and drawn by plot_comparison.
    for workaround in ("AutoModelForSequenceClassification", "_packed_params", "_weight_bias", "DataLoader",
                       "packed_weights", ".scatter(", ".axes["):
        assert workaround not in code, workaround
    assert 'metric_name="accuracy"' in code and 'metric="accuracy"' in code


# ---------------------------------------------------------------------------
# The smoke run


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    results = tmp_path_factory.mktemp("results")
    completed = subprocess.run(
        [sys.executable, str(RUNNER), str(NOTEBOOK), "--smoke", "--results-dir", str(results), "--timeout", "300"],
        capture_output=True, text=True, timeout=600, cwd=ROOT)
    check_run(completed)
    return results


def read_summary(results: Path) -> dict[str, dict[str, str]]:
    with (results / "classification_summary.csv").open(newline="", encoding="utf-8") as file:
        return {row["name"]: row for row in csv.DictReader(file)}


def test_smoke_run_says_it_is_smoke(smoke_run):
    executed = nbformat.read(smoke_run / NOTEBOOK.name, as_version=4)
    outputs = json.dumps([cell.get("outputs", []) for cell in executed.cells])
    assert "SMOKE MODE" in outputs and "not how BERT compresses" in outputs


def test_smoke_summary_has_every_variant_with_finite_numbers(smoke_run):
    rows = read_summary(smoke_run)
    assert tuple(rows) == ROWS
    for name, row in rows.items():
        assert 0.0 <= float(row["accuracy"]) <= 1.0, (name, row["accuracy"])
        assert math.isfinite(float(row["accuracy_ratio"])), name
        for column in POSITIVE:
            value = float(row[column])
            assert math.isfinite(value) and value > 0, (name, column, value)


def test_smoke_summary_ratios_refer_to_the_teacher(smoke_run):
    rows = read_summary(smoke_run)
    teacher = rows["teacher"]
    assert float(teacher["size_ratio"]) == float(teacher["speedup"]) == float(teacher["accuracy_ratio"]) == 1.0
    for name, row in rows.items():
        assert float(row["size_ratio"]) == pytest.approx(float(row["size_mb"]) / float(teacher["size_mb"]),
                                                         rel=1e-9), name
        assert float(row["accuracy_ratio"]) == pytest.approx(float(row["accuracy"]) / float(teacher["accuracy"]),
                                                             rel=1e-9), name


def test_smoke_teacher_and_students_learn_the_task(smoke_run):
    rows = read_summary(smoke_run)
    accuracy = {name: float(row["accuracy"]) for name, row in rows.items()}
    # Chance is 1/6; a trained model gets most of the utterances right.
    for name in ("teacher", "student (fine-tuned)", "student (distilled)", "student (distilled, int8)"):
        assert accuracy[name] > 3 / SMOKE_INTENTS, (name, accuracy[name])


def test_smoke_int8_student_is_smaller_with_the_same_weights(smoke_run):
    rows = read_summary(smoke_run)
    size = {name: float(row["size_mb"]) for name, row in rows.items()}
    parameters = {name: int(row["parameters"]) for name, row in rows.items()}
    # Fewer layers; training changes values, not shapes.
    assert parameters["student (distilled)"] < parameters["teacher"]
    assert size["student (distilled)"] < size["teacher"]
    assert size["student (undistilled)"] == size["student (fine-tuned)"] == size["student (distilled)"]
    # Dynamic int8 keeps every weight (the packed ones counted) and stores the linear ones in a byte each.
    assert parameters["student (distilled, int8)"] == parameters["student (distilled)"]
    assert size["student (distilled, int8)"] < size["student (distilled)"]
    serialized = {name: float(row["serialized_mb"]) for name, row in rows.items()}
    assert serialized["student (distilled, int8)"] < serialized["student (distilled)"]


def test_smoke_run_writes_the_figure(smoke_run):
    assert (smoke_run / "classification_summary.png").stat().st_size > 10_000
