"""Tests of the release and grading tools (tools/make_student.py, tools/grading.py).

Unit tests work on small synthetic sources, notebooks, repositories and a mini test
project graded in a subprocess. The integration tests at the end build and grade
the real lab: the solution (full marks), the student release (zero, every graded
test failing with its own exercise's NotImplementedError, every ungraded test that
needs an exercise skipped, naming it; three short lab files) and a partially solved
release (exactly the points of its solved exercises).
"""
import ast
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from notebook_source import LAB_MODULES, NOTEBOOK_MODULES, module_path
from tools.grading import Exercise
from tools.make_student import (
    INSTRUCTOR_ONLY,
    STUDENT_README,
    SolutionMarkerError,
    build_student_release,
    drop_hidden_tests,
    main,
    strip_notebook,
    strip_solutions,
)

ROOT = Path(__file__).resolve().parent.parent


def dedent(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


# --------------------------------------------------------------------------- strip_solutions

MODULE = dedent('''
    """A module."""
    import torch


    class QuantizedVector:
        """Int8 codes and a scale."""

        def quantize(self, x):
            """Quantize `x`."""
            if x is None:
                raise ValueError("x is None")
            # BEGIN SOLUTION (Exercise 1)
            # TODO: the scale is max|x| / 127,
            #       one per row.
            # the solution's own comment
            scale = x.abs().max() / 127
            # TODO: round to int8.
            return torch.round(x / scale)
            # END SOLUTION


    def forward(a, b):
        # BEGIN SOLUTION (Exercise 2)
        return a @ b
        # END SOLUTION
''')

MODULE_STUDENT = dedent('''
    """A module."""
    import torch


    class QuantizedVector:
        """Int8 codes and a scale."""

        def quantize(self, x):
            """Quantize `x`."""
            if x is None:
                raise ValueError("x is None")
            # TODO: the scale is max|x| / 127,
            #       one per row.
            # TODO: round to int8.
            raise NotImplementedError("Exercise 1: QuantizedVector.quantize")


    def forward(a, b):
        raise NotImplementedError("Exercise 2: forward")
''')


def test_strip_solutions_replaces_regions_by_todos_and_raise():
    assert strip_solutions(MODULE, "mod.py") == MODULE_STUDENT


def test_strip_solutions_is_idempotent_and_leaves_unmarked_sources_alone():
    assert strip_solutions(MODULE_STUDENT, "mod.py") == MODULE_STUDENT
    plain = "def f(x):\n    return x  # not a marker: BEGIN SOLUTION\n"
    assert strip_solutions(plain, "plain.py") == plain


def test_strip_solutions_keep_exercises_leaves_those_regions_solved():
    expected = MODULE_STUDENT.replace('    raise NotImplementedError("Exercise 2: forward")\n', "    return a @ b\n")
    assert strip_solutions(MODULE, "mod.py", keep_exercises={2}) == expected


def test_strip_solutions_names_the_innermost_def_qualified_by_classes():
    source = dedent('''
        class Outer:
            class Inner:
                @staticmethod
                async def method(x):
                    # BEGIN SOLUTION (Exercise 3)
                    return x
                    # END SOLUTION


        def outer():
            def helper():
                # BEGIN SOLUTION (Exercise 4)
                return 1
                # END SOLUTION
            return helper
    ''')
    stripped = strip_solutions(source, "mod.py")
    assert 'raise NotImplementedError("Exercise 3: Outer.Inner.method")' in stripped
    assert 'raise NotImplementedError("Exercise 4: outer.helper")' in stripped
    assert "return x" not in stripped and "return 1" not in stripped


def test_strip_solutions_keeps_crlf_line_endings():
    source = ("def f():\r\n    # BEGIN SOLUTION (Exercise 1)\r\n    # TODO: one\r\n    return 1\r\n"
              "    # END SOLUTION\r\n")
    expected = 'def f():\r\n    # TODO: one\r\n    raise NotImplementedError("Exercise 1: f")\r\n'
    assert strip_solutions(source, "crlf.py") == expected


BAD_SOURCES = {
    "nested": ("def f():\n    # BEGIN SOLUTION (Exercise 1)\n    # BEGIN SOLUTION (Exercise 2)\n"
               "    return 1\n    # END SOLUTION\n    # END SOLUTION\n",
               r"bad\.py:3: BEGIN SOLUTION inside the region opened at line 2; regions never nest"),
    "unclosed": ("def f():\n    x = 1\n    # BEGIN SOLUTION (Exercise 1)\n    return x\n",
                 r"bad\.py:3: BEGIN SOLUTION is never closed by an END SOLUTION"),
    "stray end": ("def f():\n    return 1\n    # END SOLUTION\n",
                  r"bad\.py:3: END SOLUTION without a BEGIN SOLUTION before it"),
    "no number": ("def f():\n    # BEGIN SOLUTION\n    return 1\n    # END SOLUTION\n",
                  r"bad\.py:2: malformed solution marker '# BEGIN SOLUTION'; the markers are "
                  r"'# BEGIN SOLUTION \(Exercise N\)' and '# END SOLUTION'"),
    "end with number": ("def f():\n    # BEGIN SOLUTION (Exercise 1)\n    return 1\n    # END SOLUTION (Exercise 1)\n",
                        r"bad\.py:4: malformed solution marker '# END SOLUTION \(Exercise 1\)'"),
    "end indentation": ("def f():\n    if True:\n        # BEGIN SOLUTION (Exercise 1)\n        return 1\n"
                        "    # END SOLUTION\n",
                        r"bad\.py:5: END SOLUTION is not at the indentation of the BEGIN SOLUTION at line 3"),
    "body outdented": ("def f():\n    for i in range(2):\n        # BEGIN SOLUTION (Exercise 1)\n        print(i)\n"
                       "    return 1\n        # END SOLUTION\n",
                       r"bad\.py:5: line is indented less than the BEGIN SOLUTION at line 3"),
    "outside def": ("import torch\n# BEGIN SOLUTION (Exercise 1)\nX = 1\n# END SOLUTION\n",
                    r"bad\.py:2: solution region outside any function"),
    "broken result": ("def f(x):\n    if x:\n    # BEGIN SOLUTION (Exercise 1)\n        return 1\n    # END SOLUTION\n",
                      r"bad\.py:3: student release is not valid Python"),
    "not python": ("def f(:\n    # BEGIN SOLUTION (Exercise 1)\n    return 1\n    # END SOLUTION\n",
                   r"bad\.py:1: not valid Python"),
    "hidden name": ("def f(x):\n    # BEGIN SOLUTION (Exercise 1)\n    # TODO: KD = x + 1\n    kd = x + 1\n"
                    "    # END SOLUTION\n    return kd\n",
                    r"bad\.py:2: code after this region reads kd, which the region sets but its TODO lines never name"),
    "hidden attribute": ("class A:\n    def f(self, x):\n        # BEGIN SOLUTION (Exercise 1)\n"
                         "        # TODO: set the codes\n        self.codes = x\n        # END SOLUTION\n"
                         "        return self.codes\n",
                         r"bad\.py:3: code after this region reads self\.codes"),
    "two regions": ("def f(x):\n    # BEGIN SOLUTION (Exercise 1)\n    y = x\n    # END SOLUTION\n"
                    "    # BEGIN SOLUTION (Exercise 1)\n    return x\n    # END SOLUTION\n",
                    r"bad\.py:5: a second solution region in f: each region is one exercise part"),
}


def test_strip_solutions_accepts_names_the_todo_gives_and_regions_that_return():
    given = ("def f(x):\n    # BEGIN SOLUTION (Exercise 1)\n    # TODO: set self.codes and out = x + 1\n"
             "    out = x + 1\n    # END SOLUTION\n    return out\n")
    assert "raise NotImplementedError" in strip_solutions(given, "ok.py")
    returning = "def f(x):\n    # BEGIN SOLUTION (Exercise 1)\n    kd = x\n    return kd\n    # END SOLUTION\n"
    assert "raise NotImplementedError" in strip_solutions(returning, "ok.py")


@pytest.mark.parametrize("case", list(BAD_SOURCES))
def test_strip_solutions_rejects_bad_markers_naming_file_and_line(case):
    source, message = BAD_SOURCES[case]
    with pytest.raises(SolutionMarkerError, match="^" + message):
        strip_solutions(source, "bad.py")


# --------------------------------------------------------------------------- notebooks

def notebook(*cells: dict) -> str:
    return json.dumps({"cells": list(cells), "metadata": {}, "nbformat": 4, "nbformat_minor": 5},
                      indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def code_cell(source: str, outputs: list | None = None) -> dict:
    return {"cell_type": "code", "execution_count": 3 if outputs else None, "id": "c", "metadata": {},
            "outputs": outputs or [], "source": source.splitlines(keepends=True)}


def text_cell(kind: str, source: str) -> dict:
    return {"cell_type": kind, "id": "t", "metadata": {}, "source": source.splitlines(keepends=True)}


OUTPUT = [{"name": "stdout", "output_type": "stream", "text": ["0.25\n"]}]


def test_strip_notebook_blanks_answer_cells_and_clears_outputs():
    cells = [
        text_cell("markdown", "**Question.** Why int8?\n<!-- BEGIN SOLUTION -->\nBecause it is small.\n"
                              "<!-- END SOLUTION -->"),
        code_cell("x = 1\n# BEGIN SOLUTION (Exercise 2)\n# TODO: call it.\ny = f(x)\n# END SOLUTION\nprint(y)", OUTPUT),
        code_cell("def g():\n    # BEGIN SOLUTION (Exercise 5)\n    return 2\n    # END SOLUTION"),
        code_cell("%matplotlib inline\nprint(0.25)", OUTPUT),
        text_cell("raw", "<!-- BEGIN SOLUTION -->"),
    ]
    student = json.loads(strip_notebook(notebook(*cells), "lab.ipynb"))["cells"]
    assert student[0]["source"] == ["**Question.** Why int8?\n", "*Your answer here.*"]
    assert student[1]["source"] == ["x = 1\n", "# TODO: call it.\n", 'raise NotImplementedError("Exercise 2")\n',
                                    "print(y)"]
    assert student[2]["source"] == ["def g():\n", '    raise NotImplementedError("Exercise 5: g")']
    assert student[3]["source"] == cells[3]["source"]  # IPython syntax is fine outside regions
    assert [cell.get("outputs") for cell in student[1:4]] == [[], [], []]
    assert [cell.get("execution_count") for cell in student[1:4]] == [None, None, None]
    assert student[4] == cells[4]  # raw cells are never answer cells


def test_strip_notebook_keeps_unchanged_notebooks_byte_identical_and_is_idempotent():
    text = notebook(code_cell("print(1)"), text_cell("markdown", "# Title\n"))
    assert strip_notebook(text, "lab.ipynb") == text
    solved = notebook(code_cell("def g():\n    # BEGIN SOLUTION (Exercise 5)\n    return 2\n    # END SOLUTION\n",
                                OUTPUT))
    once = strip_notebook(solved, "lab.ipynb")
    assert strip_notebook(once, "lab.ipynb") == once


def test_strip_notebook_keep_exercises_and_numbered_markdown():
    text = notebook(code_cell("# BEGIN SOLUTION (Exercise 2)\ny = 1\n# END SOLUTION\n"),
                    text_cell("markdown", "<!-- BEGIN SOLUTION (Exercise 2) -->\nyes\n<!-- END SOLUTION -->\n"),
                    text_cell("markdown", "<!-- BEGIN SOLUTION -->\nno\n<!-- END SOLUTION -->\n"))
    cells = json.loads(strip_notebook(text, "lab.ipynb", keep_exercises={2}))["cells"]
    assert [cell["source"] for cell in cells] == [["y = 1\n"], ["yes\n"], ["*Your answer here.*\n"]]


@pytest.mark.parametrize("cell, message", [
    (text_cell("markdown", "intro\n<!-- BEGIN SOLUTION -->\nanswer\n"),
     r"lab\.ipynb: cell 2, line 2: BEGIN SOLUTION is never closed"),
    (text_cell("markdown", "answer\n<!-- END SOLUTION -->\n"),
     r"lab\.ipynb: cell 2, line 2: END SOLUTION without a BEGIN SOLUTION"),
    (code_cell("x = 1\n# BEGIN SOLUTION (Exercise 1)\n# BEGIN SOLUTION (Exercise 1)\n"),
     r"lab\.ipynb: cell 2, line 3: BEGIN SOLUTION inside the region opened at line 2"),
    (text_cell("markdown", "<!-- BEGIN SOLUTION (exercise 1) -->\n<!-- END SOLUTION -->\n"),
     r"lab\.ipynb: cell 2, line 1: malformed solution marker"),
])
def test_strip_notebook_rejects_bad_markers_naming_cell_and_line(cell, message):
    with pytest.raises(SolutionMarkerError, match="^" + message):
        strip_notebook(notebook(code_cell("print(1)"), cell), "lab.ipynb")


# --------------------------------------------------------------------------- hidden tests

def test_drop_hidden_tests_removes_hidden_functions_and_classes_with_their_decorators():
    source = dedent('''
        import pytest


        @pytest.mark.exercise(1, points=2)
        def test_visible():
            assert True


        @pytest.mark.parametrize("x", [1, 2])
        @pytest.mark.exercise(1, points=1, visibility="hidden")
        def test_hidden(x):
            assert x


        @pytest.mark.exercise(2, visibility="hidden")
        class TestSecret:
            @pytest.mark.exercise(2, visibility="hidden")
            def test_method(self):
                pass


        def test_after():
            pass
    ''')
    expected = dedent('''
        import pytest


        @pytest.mark.exercise(1, points=2)
        def test_visible():
            assert True






        def test_after():
            pass
    ''')
    stripped, removed = drop_hidden_tests(source, "tests/test_x.py")
    assert stripped == expected
    assert removed == ["tests/test_x.py::test_hidden", "tests/test_x.py::TestSecret"]
    assert drop_hidden_tests(expected, "tests/test_x.py") == (expected, [])


# --------------------------------------------------------------------------- build_student_release

def tree(folder: Path) -> dict[str, bytes]:
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in sorted(folder.rglob("*"))
            if path.is_file()}


TEST_FILE = dedent('''
    import pytest
    from mod import forward


    @pytest.mark.exercise(2, points=1)
    def test_forward():
        assert forward(2, 3) == 6


    @pytest.mark.exercise(2, visibility="hidden")
    def test_forward_secret():
        assert forward(1, 1) == 1
''')


def make_repo(root: Path, git: bool = True) -> Path:
    """A small solution repository: a marked module, tests, a notebook, instructor files."""
    files = {
        "mod.py": MODULE.replace("return a @ b", "return a * b"),
        "tests/test_mod.py": TEST_FILE,
        "lab.ipynb": notebook(code_cell("from mod import forward\nforward(2, 3)", OUTPUT)),
        "README.md": "# Lab\n",
        "tools/make_student.py": "print('instructor only')\n",
        "CONTRIBUTING.md": "markers\n",
        "run.sh": "#!/bin/sh\necho hi\n",
        ".gitignore": "ignored.txt\n.venv/\n",
        "ignored.txt": "not shipped\n",
        "new_untracked.py": "VALUE = 1\n",
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    (root / "run.sh").chmod(0o755)
    if git:
        subprocess.run(["git", "init", "-q"], cwd=root, check=True)
        subprocess.run(["git", "add", "mod.py", "tests", "README.md", ".gitignore"], cwd=root, check=True)
    return root


SHIPPED = [".gitignore", "README.md", "lab.ipynb", "mod.py", "new_untracked.py", "run.sh", "tests/test_mod.py"]


def test_build_student_release_ships_the_tree_with_solutions_stripped(tmp_path):
    root = make_repo(tmp_path / "repo")
    (root / ".venv").mkdir()
    (root / ".venv" / "x.py").write_text("ignored by git\n")
    summary = build_student_release(root, tmp_path / "out")
    student = tree(tmp_path / "out")
    assert sorted(student) == SHIPPED == summary.files
    assert student["mod.py"].decode() == MODULE_STUDENT
    assert "test_forward_secret" not in student["tests/test_mod.py"].decode()
    assert summary.hidden_tests == ["tests/test_mod.py::test_forward_secret"]
    for name in ("README.md", "run.sh", ".gitignore", "new_untracked.py"):
        assert student[name] == (root / name).read_bytes()
    assert os.access(tmp_path / "out" / "run.sh", os.X_OK)
    assert json.loads(student["lab.ipynb"])["cells"][0]["outputs"] == []
    assert [(r.exercise, r.function) for r in summary.regions] == [(1, "QuantizedVector.quantize"), (2, "forward")]


def test_build_student_release_without_git_walks_the_tree(tmp_path):
    root = make_repo(tmp_path / "repo", git=False)
    for folder in (".venv", "dist", "results", "__pycache__"):
        (root / folder).mkdir()
        (root / folder / "junk.py").write_text("x = 1\n")
    build_student_release(root, tmp_path / "out")
    assert sorted(tree(tmp_path / "out")) == sorted(SHIPPED + ["ignored.txt"])  # no .gitignore outside git


def test_build_student_release_is_idempotent_and_replaces_the_release_wholesale(tmp_path):
    root = make_repo(tmp_path / "repo")
    out = root / "dist" / "student"
    build_student_release(root, out)
    first = tree(out)
    (out / "stale.py").write_text("left from an older release\n")
    build_student_release(root, out)
    assert tree(out) == first
    assert sorted(path.name for path in out.parent.iterdir()) == ["student"]


def test_build_student_release_keep_exercises(tmp_path):
    root = make_repo(tmp_path / "repo")
    summary = build_student_release(root, tmp_path / "out", keep_exercises={1})
    text = (tmp_path / "out" / "mod.py").read_text()
    assert "scale = x.abs().max() / 127" in text and "SOLUTION" not in text
    assert 'raise NotImplementedError("Exercise 2: forward")' in text
    assert [(r.exercise, r.kept) for r in summary.regions] == [(1, True), (2, False)]


def test_build_student_release_error_leaves_the_previous_release_untouched(tmp_path):
    root = make_repo(tmp_path / "repo")
    out = tmp_path / "out"
    build_student_release(root, out)
    before = tree(out)
    (root / "broken.py").write_text("def f():\n    # BEGIN SOLUTION (Exercise 1)\n    return 1\n")
    with pytest.raises(SolutionMarkerError, match=r"^broken\.py:2: BEGIN SOLUTION is never closed"):
        build_student_release(root, out)
    assert tree(out) == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out", "repo"]


@pytest.mark.parametrize("out", [".", ".."])
def test_build_student_release_refuses_to_replace_the_repository(tmp_path, out):
    root = make_repo(tmp_path / "repo")
    with pytest.raises(ValueError, match="would replace the repository"):
        build_student_release(root, root / out)
    assert (root / "mod.py").exists()


def test_command_line_prints_a_summary_and_reports_errors(tmp_path, capsys):
    root = make_repo(tmp_path / "repo")
    assert main(["--root", str(root), "--keep-exercises", "2"]) == 0
    printed = capsys.readouterr().out
    assert f"student release written to {root / 'dist' / 'student'}: 7 files, 1 with solution regions" in printed
    assert "  exercise 1: 1 region  [mod.py:QuantizedVector.quantize]" in printed
    assert "  exercise 2: 1 region (kept solved)  [mod.py:forward]" in printed
    assert "hidden tests left out: tests/test_mod.py::test_forward_secret" in printed
    (root / "mod.py").write_text("def f():\n    return 1\n    # END SOLUTION\n")
    assert main(["--root", str(root)]) == 1
    assert capsys.readouterr().err == "make_student: error: mod.py:3: END SOLUTION without a BEGIN SOLUTION before it\n"
    with pytest.raises(SystemExit):
        main(["--root", str(root), "--keep-exercises", "one"])
    assert "expected comma-separated exercise numbers, got 'one'" in capsys.readouterr().err


# --------------------------------------------------------------------------- grading plugin

MINI_TESTS = dedent('''
    import pytest

    def solved(x):
        return x

    def unsolved():
        raise NotImplementedError("Exercise 2: unsolved")

    @pytest.fixture
    def broken():
        raise NotImplementedError("Exercise 3: fixture")

    @pytest.mark.exercise(1, points=2)
    def test_one_a():
        assert solved(1) == 1

    @pytest.mark.exercise(1, points=0.5)
    def test_one_b():
        assert solved(2) == SECOND

    @pytest.mark.exercise(2, points=3, visibility="hidden")
    def test_two():
        unsolved() if FAIL else None

    @pytest.mark.exercise(3)
    def test_three(broken):
        pass

    @pytest.mark.exercise(3)
    @pytest.mark.skip(reason="not today")
    def test_three_skipped():
        pass

    def test_ungraded():
        pass
''')


def grade_mini(folder: Path, *args: str, second: int = 2,
               fail: bool = False) -> tuple[subprocess.CompletedProcess, dict | None]:
    """Run the grader on a mini project; returns the process and the results file (None if not written)."""
    folder.mkdir(exist_ok=True)
    (folder / "pytest.ini").write_text("[pytest]\n")
    (folder / "test_mini.py").write_text(MINI_TESTS.replace("SECOND", str(second)).replace("FAIL", str(fail)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    process = subprocess.run([sys.executable, "-m", "pytest", "-p", "tools.grading", "-p", "no:cacheprovider",
                              "-q", *args], cwd=folder, env=env, capture_output=True, text=True)
    results = folder / "results" / "grading.json"
    return process, json.loads(results.read_text()) if results.exists() else None


def mini_test(name: str, number: str, score: float, max_score: float, output: str = "",
              visibility: str = "visible") -> dict:
    return {"name": f"test_mini.py::{name}", "number": number, "score": score, "max_score": max_score,
            "status": "passed" if score == max_score else "failed", "output": output, "visibility": visibility}


def test_grade_scores_each_graded_test_and_writes_gradescope_json(tmp_path):
    process, results = grade_mini(tmp_path, "--grade", fail=True)
    assert process.returncode == 1, process.stdout
    assert set(results) == {"score", "max_score", "execution_time", "visibility", "stdout_visibility", "output",
                            "tests"}
    assert (results["score"], results["max_score"]) == (2.5, 7.5)
    assert results["visibility"] == "visible" and results["execution_time"] >= 0
    assert results["tests"] == [
        mini_test("test_one_a", "1.1", 2, 2),
        mini_test("test_one_b", "1.2", 0.5, 0.5),
        mini_test("test_two", "2.1", 0, 3, "NotImplementedError: Exercise 2: unsolved", "hidden"),
        mini_test("test_three", "3.1", 0, 1, "error in setup: NotImplementedError: Exercise 3: fixture"),
        mini_test("test_three_skipped", "3.2", 0, 1, "Skipped: not today"),
    ]
    table = ["exercise   passed       points",
             "       1      2/2      2.5/2.5",
             "       2      0/1          0/3",
             "       3      0/2          0/2",
             "   total      2/5      2.5/7.5"]
    assert results["output"] == "\n".join(table)
    lines = process.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if re.fullmatch(r"=+ grading =+", line))
    assert lines[start + 1:start + 6] == table
    assert lines[start + 6] == f"results written to {tmp_path / 'results' / 'grading.json'}"
    assert "1 deselected" in process.stdout  # test_ungraded is not graded


def test_grade_full_and_zero_marks_and_failure_summary(tmp_path):
    _, full = grade_mini(tmp_path / "full", "--grade", "-k", "not three")
    assert (full["score"], full["max_score"]) == (5.5, 5.5)
    assert all(test["status"] == "passed" and test["output"] == "" for test in full["tests"])
    _, zero = grade_mini(tmp_path / "zero", "--grade", "-k", "two or one_b", second=3, fail=True)
    assert (zero["score"], zero["max_score"]) == (0, 3.5)
    assert [test["number"] for test in zero["tests"]] == ["1.1", "2.1"]  # numbered after -k
    assert zero["tests"][0]["output"].startswith("AssertionError: assert 2 == 3")


def test_grade_output_option_and_collection_errors(tmp_path):
    (tmp_path / "test_broken.py").write_text("import not_a_module_anywhere\n")
    process, default = grade_mini(tmp_path, "--grade", "--grade-output", "custom/out.json")
    assert default is None
    results = json.loads((tmp_path / "custom" / "out.json").read_text())
    assert results["score"] == 5.5  # the broken file costs only its own tests
    assert results["output"].endswith(
        "collection error: test_broken.py: ModuleNotFoundError: No module named 'not_a_module_anywhere'")


def test_exercise_option_runs_one_exercise_and_its_exit_status_says_whether_it_passes(tmp_path):
    passing, results = grade_mini(tmp_path, "--exercise", "1", fail=True)
    assert passing.returncode == 0 and results is None and "grading" not in passing.stdout
    assert "2 passed, 4 deselected" in passing.stdout
    failing, _ = grade_mini(tmp_path, "--exercise", "2", "--exercise", "1", fail=True)
    assert failing.returncode == 1 and "1 failed, 2 passed, 3 deselected" in failing.stdout


def test_without_grade_graded_tests_run_as_usual(tmp_path):
    process, results = grade_mini(tmp_path)
    assert results is None and "grading" not in process.stdout
    # test_three's fixture raises an exercise's NotImplementedError: a graded test errors, it is never skipped.
    assert "4 passed, 1 skipped, 1 error in" in process.stdout


WAITING_TESTS = dedent('''
    import pytest

    def unsolved():
        raise NotImplementedError("Exercise 2: forward")

    @pytest.fixture(scope="module")
    def needs_one():
        raise NotImplementedError("Exercise 1")

    def test_calls_an_unsolved_exercise():
        unsolved()

    def test_fixture_needs_an_unsolved_exercise(needs_one):
        pass

    class CellExecutionError(Exception):
        """As nbclient names it."""

    def test_notebook_cell_stopped_on_an_exercise():
        raise CellExecutionError("An error occurred while executing the following cell:\\n"
                                 "\\x1b[0;31mNotImplementedError\\x1b[0m: Exercise 3: distill_model")

    def test_assertion_quoting_an_unsolved_exercise():
        assert False, "the run printed NotImplementedError: Exercise 3: distill_model"

    def test_error_raised_while_handling_an_unsolved_exercise():
        try:
            unsolved()
        except NotImplementedError as error:
            raise ValueError("could not build the model") from error

    def test_other_not_implemented_error():
        raise NotImplementedError("not an exercise")

    def test_plain_failure():
        assert 1 == 2

    @pytest.mark.exercise(2)
    def test_graded():
        unsolved()

    @pytest.mark.exercise(1)
    def test_graded_fixture(needs_one):
        pass
''')


def test_ungraded_tests_waiting_for_an_exercise_are_skipped_naming_it(tmp_path):
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_waiting.py").write_text(WAITING_TESTS)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "COLUMNS": "300"}  # summary lines in full
    process = subprocess.run([sys.executable, "-m", "pytest", "-p", "tools.grading", "-p", "no:cacheprovider",
                              "-q", "-rfEs"], cwd=tmp_path, env=env, capture_output=True, text=True)
    summary = sorted(line for line in process.stdout.splitlines() if line.startswith(("SKIPPED", "FAILED", "ERROR")))
    assert summary == sorted([
        "ERROR test_waiting.py::test_graded_fixture - NotImplementedError: Exercise 1",
        "FAILED test_waiting.py::test_graded - NotImplementedError: Exercise 2: forward",
        "FAILED test_waiting.py::test_assertion_quoting_an_unsolved_exercise - AssertionError: the run printed "
        "NotImplementedError: Exercise 3: distill_model",
        "FAILED test_waiting.py::test_other_not_implemented_error - NotImplementedError: not an exercise",
        "FAILED test_waiting.py::test_plain_failure - assert 1 == 2",
        "SKIPPED [1] test_waiting.py:10: needs Exercise 2 (forward), not solved yet",  # at each test's def
        "SKIPPED [1] test_waiting.py:13: needs Exercise 1, not solved yet",
        "SKIPPED [1] test_waiting.py:19: needs Exercise 3 (distill_model), not solved yet",
        "SKIPPED [1] test_waiting.py:26: needs Exercise 2 (forward), not solved yet",
    ]), process.stdout
    assert "4 failed, 4 skipped, 1 error in" in process.stdout


@pytest.mark.parametrize("args, kwargs, message", [
    ((0,), {}, "exercise number must be an int >= 1, got 0"),
    (("1",), {}, "exercise number must be an int >= 1, got '1'"),
    ((True,), {}, "exercise number must be an int >= 1, got True"),
    ((1,), {"points": -1}, "points must be a finite number >= 0, got -1"),
    ((1,), {"points": float("inf")}, "points must be a finite number >= 0, got inf"),
    ((1,), {"visibility": "secret"},
     "visibility must be one of ('visible', 'hidden', 'after_due_date', 'after_published'), got 'secret'"),
])
def test_exercise_marker_arguments_are_validated(args, kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        Exercise(*args, **kwargs)


def test_bad_exercise_marker_is_a_usage_error_naming_the_test(tmp_path):
    (tmp_path / "test_bad.py").write_text("import pytest\n\n@pytest.mark.exercise(1, weight=2)\n"
                                          "def test_bad():\n    pass\n")
    process, results = grade_mini(tmp_path, "--grade")
    assert process.returncode == 4 and results is None
    assert ("ERROR: test_bad.py::test_bad: bad @pytest.mark.exercise marker: "
            "Exercise.__init__() got an unexpected keyword argument 'weight'") in process.stderr


# --------------------------------------------------------------------------- the real lab

# The course statement's exercises: 1-3 autograded (the functions each strips, points), 4 the notebooks'
# analysis answers (markdown regions, graded by hand).
EXERCISE_FUNCTIONS = {1: ("QuantizedVector.quantize", "QuantizedVector.dequantize", "absmax_quantize",
                          "mixed_precision_forward"),
                      2: ("apply_weight_pruning",),
                      3: ("compute_distillation_loss", "distillation_objective", "teacher_and_student_outputs",
                          "optimizer_step")}
POINTS = {1: 28, 2: 20, 3: 19}
ANSWERS = 4
NOTEBOOKS = ("model_compression_and_pruning.ipynb", "distillation_classification.ipynb")
PARTIAL = (1, 3)
MAX_LAB_LINES = 300  # readable in one sitting
MAX_REGION_LINES = 40  # a region with its TODOs fits on one screen
missing = [name for name in LAB_MODULES if not module_path(name).exists()]
lab = pytest.mark.skipif(bool(missing), reason=f"lab modules not written yet: {', '.join(missing)}")


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True)


def grade(folder: Path, output: Path) -> dict:
    process = run(["-m", "pytest", "--grade", "--grade-output", str(output), "-q", "-p", "no:cacheprovider"], folder)
    assert output.exists(), process.stdout + process.stderr
    return json.loads(output.read_text())


def exercise_number(test: dict) -> int:
    return int(test["number"].split(".")[0])


@pytest.fixture(scope="module")
def solution(tmp_path_factory):
    return grade(ROOT, tmp_path_factory.mktemp("solution") / "grading.json")


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    out = tmp_path_factory.mktemp("release") / "student"
    return out, build_student_release(ROOT, out)


@lab
def test_solution_gets_full_marks_on_every_exercise(solution):
    points = {}
    for test in solution["tests"]:
        points[exercise_number(test)] = points.get(exercise_number(test), 0) + test["max_score"]
    assert points == POINTS
    failed = [(test["name"], test["output"]) for test in solution["tests"] if test["score"] != test["max_score"]]
    assert failed == []
    assert solution["score"] == solution["max_score"] == sum(POINTS.values())


@lab
def test_classroom_autograding_runs_each_exercise_for_its_points(solution):
    config = json.loads((ROOT / ".github" / "classroom" / "autograding.json").read_text())
    visible = {}
    for test in solution["tests"]:
        if test["visibility"] != "hidden":  # hidden tests do not ship to the students' repository
            visible[exercise_number(test)] = visible.get(exercise_number(test), 0) + test["max_score"]
    assert [(entry["run"], entry["points"]) for entry in config["tests"]] == [
        (f"python -m pytest --exercise {number} -q", points) for number, points in sorted(visible.items())]
    assert [entry["name"].split(":")[0] for entry in config["tests"]] == [f"Exercise {n}" for n in sorted(visible)]


@lab
def test_student_release_strips_every_exercise_and_nothing_else(release):
    out, summary = release
    functions = {}
    for region in summary.regions:
        functions.setdefault(region.exercise, set()).add(region.function)
    for number, names in EXERCISE_FUNCTIONS.items():  # each exercise strips (at least) its functions
        assert set(names) <= functions.get(number, set()), (number, functions)
    # The analysis answers: numbered Exercise 4, in both notebooks, nothing unnumbered left.
    assert {region.path for region in summary.regions if region.exercise == ANSWERS} == set(NOTEBOOKS)
    assert all(region.exercise is not None for region in summary.regions)
    assert not any((out / name).exists() for name in INSTRUCTOR_ONLY)
    assert {"tools/grading.py", "tests/conftest.py", "pytest.ini"} <= set(summary.files)
    changed = {region.path for region in summary.regions} | {name.split("::")[0] for name in summary.hidden_tests}
    for name in summary.files:
        text = (out / name).read_bytes()
        assert b"BEGIN SOLUTION" not in text and b"END SOLUTION" not in text, name
        if name == "README.md":  # the students' README, not the maintainers'
            assert text == (ROOT / STUDENT_README).read_bytes()
        elif name not in changed and not name.endswith(".ipynb"):
            assert text == (ROOT / name).read_bytes(), name
    assert STUDENT_README not in summary.files


@lab
def test_student_files_are_short_and_import_only_libraries(release):
    out, _ = release
    lengths = {name: len((out / f"{name}.py").read_text().splitlines()) for name in LAB_MODULES}
    assert all(length <= MAX_LAB_LINES for length in lengths.values()), lengths
    for name in LAB_MODULES:  # every region, TODOs and solution, on one screen; exercises before provided code
        lines = module_path(name).read_text().splitlines()
        begins = [i for i, line in enumerate(lines) if "# BEGIN SOLUTION" in line]
        ends = [i for i, line in enumerate(lines) if "# END SOLUTION" in line]
        assert all(end - begin + 1 <= MAX_REGION_LINES for begin, end in zip(begins, ends)), name
        banner = next(i for i, line in enumerate(lines) if line.startswith("# ") and "Provided code" in line)
        assert begins and max(ends) < banner, name
    ours = {path.stem for path in ROOT.glob("*.py")} | {path.name for path in ROOT.iterdir() if path.is_dir()}
    for name in LAB_MODULES:
        tree = ast.parse((out / f"{name}.py").read_text())
        imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                    for alias in node.names}
        imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                     if isinstance(node, ast.ImportFrom) and node.module and not node.level}
        assert not imported & ours, (name, imported & ours)


@lab
def test_student_release_imports_collects_and_grades_zero_for_the_right_reason(release, solution, tmp_path):
    out, _ = release
    imported = run(["-c", f"import {', '.join(NOTEBOOK_MODULES)}"], out)
    assert imported.returncode == 0, imported.stderr
    results = grade(out, tmp_path / "grading.json")
    # The grader collects the whole suite: a module that failed to collect would be listed and its tests missing.
    assert "collection error" not in results["output"]
    shipped = [(test["name"], test["max_score"]) for test in solution["tests"] if test["visibility"] != "hidden"]
    assert [(test["name"], test["max_score"]) for test in results["tests"]] == shipped
    assert results["score"] == 0 and results["max_score"] > 0
    wrong = [(test["name"], test["output"]) for test in results["tests"]
             if f"NotImplementedError: Exercise {exercise_number(test)}: " not in test["output"]]
    assert wrong == []


# A plugin for the release's own `pytest` run: every test's outcome, phase, exercise marker and message.
OUTCOMES_PLUGIN = dedent('''
    import json
    import os

    import pytest

    OUTCOMES = []


    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(item, call):
        report = yield
        if report.when == "call" or not report.passed:
            marker = item.get_closest_marker("exercise")
            message = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longreprtext
            OUTCOMES.append({"nodeid": item.nodeid, "when": report.when, "outcome": report.outcome,
                             "exercise": marker.args[0] if marker else None, "message": message})
        return report


    def pytest_sessionfinish(session):
        with open(os.environ["OUTCOMES_FILE"], "w") as file:
            json.dump(OUTCOMES, file)
''')


@lab
def test_partly_solved_release_fails_only_the_unsolved_exercises_graded_tests(tmp_path):
    # Exercises 1 and 3 solved, 2 not: the suite fails exactly Exercise 2's graded tests, each with its
    # own NotImplementedError, and skips (naming Exercise 2) what builds on it; nothing else fails.
    out = tmp_path / "student"
    build_student_release(ROOT, out, keep_exercises=PARTIAL)
    (tmp_path / "outcomes_plugin.py").write_text(OUTCOMES_PLUGIN)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OUTCOMES_FILE": str(tmp_path / "out.json"),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))}
    process = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "outcomes_plugin"],
                             cwd=out, env=env, capture_output=True, text=True)
    tail = process.stdout[-3000:]
    outcomes = json.loads((tmp_path / "out.json").read_text())
    assert "error" not in process.stdout.splitlines()[-1], tail  # nothing errors: no collection or setup errors
    problems = [o for o in outcomes if o["outcome"] == "failed"]
    unsolved = set(EXERCISE_FUNCTIONS) - set(PARTIAL)
    assert [(o["nodeid"], o["when"]) for o in problems if o["exercise"] not in unsolved or o["when"] != "call"] == [], tail
    assert [o["nodeid"] for o in problems
            if f"NotImplementedError: Exercise {o['exercise']}: " not in o["message"]] == [], tail
    assert {o["exercise"] for o in problems} == unsolved
    waiting = [o for o in outcomes if o["outcome"] == "skipped" and "needs Exercise" in o["message"]]
    assert {int(re.match(r"Skipped: needs Exercise (\d+)", o["message"]).group(1)) for o in waiting} == unsolved, tail
    assert all(o["exercise"] is None for o in waiting)
    assert all(re.fullmatch(r"Skipped: needs Exercise \d+( \([\w.]+\))?, not solved yet", o["message"])
               for o in waiting)


@lab
def test_partially_solved_release_gets_exactly_the_points_of_its_solved_exercises(tmp_path):
    out = tmp_path / "student"
    summary = build_student_release(ROOT, out, keep_exercises=PARTIAL)
    assert {region.exercise for region in summary.regions if region.kept} == set(PARTIAL)
    results = grade(out, tmp_path / "grading.json")
    for test in results["tests"]:
        if exercise_number(test) in PARTIAL:
            assert test["score"] == test["max_score"], test
        else:
            assert test["score"] == 0 and f"Exercise {exercise_number(test)}: " in test["output"], test
    expected = sum(test["max_score"] for test in results["tests"] if exercise_number(test) in PARTIAL)
    assert expected == sum(POINTS[number] for number in PARTIAL)
    assert results["score"] == pytest.approx(expected, abs=1e-9) and 0 < expected < results["max_score"]
