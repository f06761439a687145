"""Pytest plugin that grades the lab: points per test, a Gradescope results file, a table.

Registered by tests/conftest.py (`pytest_plugins = ["tools.grading"]`); elsewhere
load it with `-p tools.grading`. A graded test carries

    @pytest.mark.exercise(N, points=P, visibility="visible")

(`points` defaults to 1; `visibility` is Gradescope's: visible, hidden,
after_due_date, after_published). Options:

    --grade                 run only the graded tests, score each P if it passes and 0
                            otherwise (failed, error, skipped or not run), write the
                            results file and print a per-exercise table.
    --grade-output PATH     where --grade writes (default ROOTDIR/results/grading.json).
    --exercise N            run only the graded tests of exercise N (repeatable); the
                            exit status then says whether exercise N passes, which is
                            what GitHub Classroom scores.

Ungraded tests are deselected under --grade and --exercise: grading is about the
exercises, and `make test` runs everything. A test file that fails to import costs
its own tests only (collection continues; the error is in the report's output).
Without these options the plugin changes one thing only: an *ungraded* test that
stops on an unsolved exercise (a `NotImplementedError("Exercise N: <function>")`,
or a notebook's CellExecutionError whose traceback ends in one) is
skipped with the reason "needs Exercise N (<function>), not solved yet", so the
student release reports the toolkit's tests as waiting rather than failing. A
graded test is never skipped this way: it fails, and scores 0. In the solution
nothing raises such an error, so nothing is skipped there. The plugin does not
time individual tests or compare against a due date; Gradescope does that from
the visibility field.
"""
from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

VISIBILITIES = ("visible", "hidden", "after_due_date", "after_published")
OUTPUT_LINES, OUTPUT_CHARS = 12, 1000  # a failure summary, not a traceback


@dataclass(frozen=True)
class Exercise:
    """The arguments of an `exercise` marker."""

    number: int
    points: float = 1
    visibility: str = "visible"

    def __post_init__(self) -> None:
        if isinstance(self.number, bool) or not isinstance(self.number, int) or self.number < 1:
            raise ValueError(f"exercise number must be an int >= 1, got {self.number!r}")
        if (isinstance(self.points, bool) or not isinstance(self.points, (int, float))
                or not math.isfinite(self.points) or self.points < 0):
            raise ValueError(f"points must be a finite number >= 0, got {self.points!r}")
        if self.visibility not in VISIBILITIES:
            raise ValueError(f"visibility must be one of {VISIBILITIES}, got {self.visibility!r}")


def exercise_of(item: pytest.Item) -> Exercise | None:
    """The exercise marker of a test (the closest one), or None for an ungraded test.

    Raises:
        pytest.UsageError: the marker's arguments are invalid; the message names the test.
    """
    marker = item.get_closest_marker("exercise")
    if marker is None:
        return None
    try:
        return Exercise(*marker.args, **marker.kwargs)
    except (TypeError, ValueError) as error:
        raise pytest.UsageError(f"{item.nodeid}: bad @pytest.mark.exercise marker: {error}") from None


@dataclass
class Result:
    """The grade of one test; `status` is passed, failed, skipped or not run."""

    nodeid: str
    number: str
    exercise: Exercise
    status: str = "not run"
    output: str = ""

    @property
    def score(self) -> float:
        return self.exercise.points if self.status == "passed" else 0

    def record(self, report: pytest.TestReport, call: pytest.CallInfo) -> None:
        """Fold one phase (setup, call, teardown) into the result; the first problem stands."""
        if self.status not in ("not run", "passed"):
            return
        if report.passed:
            if report.when == "call":
                self.status = "passed"
        elif report.skipped and not hasattr(report, "wasxfail"):
            self.status, self.output = "skipped", _summary(call)
        else:  # failed, or an xfail: a graded test that is expected to fail earns nothing
            if report.skipped:
                where = "expected to fail: "
            else:
                where = "" if report.when == "call" else f"error in {report.when}: "
            self.status, self.output = "failed", where + _summary(call)


def _summary(call: pytest.CallInfo) -> str:
    """`ExceptionType: message`, a few lines at most."""
    text = call.excinfo.exconly() if call.excinfo is not None else ""
    lines = text.splitlines()
    text = "\n".join(lines[:OUTPUT_LINES]) + ("\n..." if len(lines) > OUTPUT_LINES else "")
    return text if len(text) <= OUTPUT_CHARS else text[:OUTPUT_CHARS] + "..."


def _number(value: float) -> float:
    """Points as JSON shows them: 3 rather than 3.0, no float noise."""
    return int(value) if float(value).is_integer() else round(value, 6)


class Grader:
    """The per-session state behind --grade and --exercise."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.grade = config.getoption("grade")
        self.only = frozenset(config.getoption("exercise") or ())
        self.results: dict[str, Result] = {}
        self.collection_errors: list[str] = []
        self.started = time.perf_counter()
        self.written: Path | None = None  # the results file, once written

    @pytest.hookimpl(trylast=True)  # after -k/-m have deselected, so numbers follow what runs
    def pytest_collection_modifyitems(self, config: pytest.Config, items: list[pytest.Item]) -> None:
        selected, deselected, counts = [], [], {}
        for item in items:
            exercise = exercise_of(item)
            if exercise is None or (self.only and exercise.number not in self.only):
                deselected.append(item)
                continue
            counts[exercise.number] = counts.get(exercise.number, 0) + 1
            self.results[item.nodeid] = Result(item.nodeid, f"{exercise.number}.{counts[exercise.number]}", exercise)
            selected.append(item)
        if deselected:
            config.hook.pytest_deselected(items=deselected)
            items[:] = selected

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed:
            error = re.sub(r"^E\s+", "", str(report.longrepr).strip().splitlines()[-1])
            self.collection_errors.append(f"{report.nodeid}: {error}")

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo):
        report = yield
        if item.nodeid in self.results:
            self.results[item.nodeid].record(report, call)
        return report

    def exercises(self) -> list[dict]:
        """Per exercise: number, passed, total, score, max_score."""
        rows: dict[int, dict] = {}
        for result in self.results.values():
            row = rows.setdefault(result.exercise.number, {"exercise": result.exercise.number, "passed": 0,
                                                           "total": 0, "score": 0, "max_score": 0})
            row["passed"] += result.status == "passed"
            row["total"] += 1
            row["score"] = _number(row["score"] + result.score)
            row["max_score"] = _number(row["max_score"] + result.exercise.points)
        return [rows[number] for number in sorted(rows)]

    def table(self) -> str:
        rows = self.exercises()
        total = {"exercise": "total", **{key: _number(math.fsum(row[key] for row in rows))
                                          for key in ("passed", "total", "score", "max_score")}}
        lines = [f"{'exercise':>8}  {'passed':>7}  {'points':>11}"]
        for row in rows + [total]:
            passed, points = f"{row['passed']}/{row['total']}", f"{row['score']:g}/{row['max_score']:g}"
            lines.append(f"{row['exercise']:>8}  {passed:>7}  {points:>11}")
        lines += [f"collection error: {error}" for error in self.collection_errors]
        return "\n".join(lines)

    def results_json(self) -> dict:
        """The Gradescope results file (https://gradescope-autograders.readthedocs.io)."""
        ordered = sorted(self.results.values(), key=lambda r: tuple(map(int, r.number.split("."))))
        tests = [{"name": r.nodeid, "number": r.number, "score": _number(r.score),
                  "max_score": _number(r.exercise.points), "status": "passed" if r.status == "passed" else "failed",
                  "output": r.output, "visibility": r.exercise.visibility} for r in ordered]
        return {
            "score": _number(math.fsum(r.score for r in ordered)),
            "max_score": _number(math.fsum(r.exercise.points for r in ordered)),
            "execution_time": round(time.perf_counter() - self.started, 2),
            "visibility": "visible",
            "stdout_visibility": "hidden",
            "output": self.table(),
            "tests": tests,
        }

    def output_path(self) -> Path:
        option = self.config.getoption("grade_output")
        return Path(option) if option else self.config.rootpath / "results" / "grading.json"

    def pytest_sessionfinish(self, exitstatus: int) -> None:
        # A bad marker (usage error) is the instructor's bug: no results rather than a zero.
        if self.grade and not self.config.option.collectonly and exitstatus != pytest.ExitCode.USAGE_ERROR:
            self.written = self.output_path()
            self.written.parent.mkdir(parents=True, exist_ok=True)
            self.written.write_text(json.dumps(self.results_json(), indent=2) + "\n", encoding="utf-8")

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if self.written is not None:
            terminalreporter.write_sep("=", "grading")
            for line in self.table().splitlines():
                terminalreporter.write_line(line)
            terminalreporter.write_line(f"results written to {self.written}")


# What a stripped solution region raises: NotImplementedError("Exercise N: <function>"), or
# NotImplementedError("Exercise N") in a notebook cell outside any function.
UNSOLVED_MESSAGE = re.compile(r"Exercise ([1-9][0-9]*)(?:: ([\w.]+))?")
# The same error in a notebook cell's traceback, as nbclient reports it (with terminal colours).
UNSOLVED_IN_CELL = re.compile(r"NotImplementedError\W*" + UNSOLVED_MESSAGE.pattern)
ANSI_COLOUR = re.compile(r"\x1b\[[0-9;]*m")


def unsolved_exercise(error: BaseException | None) -> tuple[int, str | None] | None:
    """(number, function or None) of the unsolved exercise that `error` stopped on, else None.

    Two errors count: a NotImplementedError whose message is an exercise's, and a notebook's
    CellExecutionError (by class name, as nbclient raises it) whose traceback ends in one. The
    error's chain is followed (`raise ... from`, or an error raised while handling another).
    Nothing else counts, not even an assertion whose message quotes such an error: in the
    solution a real failure must never turn into a skip.
    """
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, NotImplementedError):
            match = UNSOLVED_MESSAGE.fullmatch(str(error))
        elif type(error).__name__ == "CellExecutionError":
            match = UNSOLVED_IN_CELL.search(ANSI_COLOUR.sub("", str(error)))
        else:
            match = None
        if match:
            return int(match.group(1)), match.group(2)
        error = error.__cause__ or error.__context__
    return None


def _skip_if_unsolved(item: pytest.Item):
    """Hook-wrapper body: an ungraded test's unsolved-exercise error becomes a skip."""
    try:
        return (yield)
    except Exception as error:
        found = None if item.get_closest_marker("exercise") is not None else unsolved_exercise(error)
        if found is None:
            raise
        number, function = found
        pytest.skip(f"{WAITING}{number}{f' ({function})' if function else ''}, not solved yet")


WAITING = "needs Exercise "


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item):
    return (yield from _skip_if_unsolved(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    return (yield from _skip_if_unsolved(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Report a waiting test's skip at the test itself, not at the line of this plugin that raised it."""
    report = yield
    if (report.skipped and isinstance(report.longrepr, tuple)
            and report.longrepr[2].startswith(f"Skipped: {WAITING}")):
        path, line, _ = item.reportinfo()
        report.longrepr = (str(path), (line or 0) + 1, report.longrepr[2])
    return report


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("grading", "lab autograder (tools/grading.py)")
    group.addoption("--grade", action="store_true",
                    help="run the graded tests only, write the Gradescope results file, print points per exercise")
    group.addoption("--grade-output", metavar="PATH", default=None,
                    help="results file of --grade (default: ROOTDIR/results/grading.json)")
    group.addoption("--exercise", metavar="N", type=int, action="append", default=None,
                    help="run only the graded tests of exercise N (repeatable)")


@pytest.hookimpl(trylast=True)  # after tests/conftest.py, which registers the marker itself
def pytest_configure(config: pytest.Config) -> None:
    if not any(line.startswith("exercise") for line in config.getini("markers")):
        config.addinivalue_line("markers", "exercise(number, points=1, visibility='visible'): a graded test")
    if config.getoption("grade") or config.getoption("exercise"):
        # One test file that fails to import must not cost the other exercises their points.
        config.option.continue_on_collection_errors = True
        config.pluginmanager.register(Grader(config), "lab-grader")
