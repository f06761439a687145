"""The fairness check: every correct student implementation earns full marks, every mutant loses points.

    python tools/fairness.py [--root .] [--workers 2] [--part quantization.py:absmax_quantize]

It builds the student release (`tools/make_student.py`) in a temporary folder and, for each variant
of `tools/fairness_variants.py`, writes the lab file with that variant spliced into its region and
the solution in every other region, then runs the region's exercise: its graded tests and the lab
file's own test file (`tests/test_<module>.py`), in-process, one pytest session per variant. It
prints a table (part, variant, kind, points, failures) and exits 1 unless every correct variant
scores full points with no failing test and every mutant loses at least one point.

It does not run the toolkit's tests (they build on the lab through the same functions) or the
notebooks; `make test` does.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fairness_variants import VARIANTS  # noqa: E402
from make_student import CODE_BEGIN, CODE_END, build_student_release  # noqa: E402

EXERCISE = {"quantization.py": 1, "pruning.py": 2, "distillation.py": 3}


def splice(solution: str, function: str, code: str) -> str:
    """`solution` with the markers removed, the region inside `function` replaced by `code`."""
    lines, out, region, index = solution.splitlines(keepends=True), [], None, 0
    while index < len(lines):
        line = lines[index]
        if CODE_BEGIN.fullmatch(line.strip()):
            end = next(i for i in range(index, len(lines)) if CODE_END.fullmatch(lines[i].strip()))
            if _enclosing(lines, index) == function:
                region = textwrap.indent(textwrap.dedent(code).strip("\n") + "\n", line[: len(line) - len(line.lstrip())])
                out.append(region)
            else:
                out += lines[index + 1:end]
            index = end + 1
            continue
        out.append(line)
        index += 1
    if region is None:
        raise ValueError(f"no solution region in {function}")
    return "".join(out)


def _solved(solution: str) -> str:
    """`solution` with its region markers removed."""
    return "".join(line for line in solution.splitlines(keepends=True)
                   if not (CODE_BEGIN.fullmatch(line.strip()) or CODE_END.fullmatch(line.strip())))


def _enclosing(lines: list[str], index: int) -> str:
    """The qualified name of the def (and class) around line `index`, read from the indentation."""
    names, depth = [], len(lines[index]) - len(lines[index].lstrip())
    for line in reversed(lines[:index]):
        stripped, indent = line.lstrip(), len(line) - len(line.lstrip())
        if indent < depth and stripped.startswith(("def ", "class ")):
            names.insert(0, stripped.split()[1].split("(")[0].rstrip(":"))
            depth = indent
    return ".".join(names)


class Score:
    """A pytest plugin that adds up the points of the graded tests of one exercise and counts failures."""

    def __init__(self, exercise: int) -> None:
        self.exercise, self.points, self.possible, self.failed = exercise, 0.0, 0.0, []
        self._points: dict[str, float] = {}

    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        for item in items:
            marker = item.get_closest_marker("exercise")
            if marker and marker.args[0] == self.exercise:
                self._points[item.nodeid] = marker.kwargs.get("points", 1)
        self.possible = sum(self._points.values())

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.failed:
            self.failed.append(f"{report.nodeid}: {str(report.longrepr).strip().splitlines()[-1][:200]}")
        elif report.when == "call" and report.passed:
            self.points += self._points.get(report.nodeid, 0)


def run_variant(release: Path, solutions: dict[str, str], part: tuple[str, str], code: str) -> tuple[float, float, list[str]]:
    """(points, possible, failing test ids) of the release with `code` in `part`'s region and the
    solution in every other region of the three lab files."""
    for filename, text in solutions.items():
        (release / filename).write_text(splice(text, part[1], code) if filename == part[0] else _solved(text))
    filename = part[0]
    for name, module in list(sys.modules.items()):  # a fresh import of the lab and the tests each time
        if str(getattr(module, "__file__", "") or "").startswith(str(release)):
            del sys.modules[name]
    score = Score(EXERCISE[filename])
    own = f"tests/test_{filename[:-3]}.py"
    marker = f"@pytest.mark.exercise({EXERCISE[filename]}"
    graded = sorted(str(path.relative_to(release)) for path in (release / "tests").glob("test_*.py")
                    if marker in path.read_text())
    cwd = os.getcwd()
    os.chdir(release)
    try:
        pytest.main(["-q", "-p", "no:cacheprovider", "--no-header", "--rootdir", str(release),
                     "--basetemp", str(release / ".pytest-tmp"),  # workers must not clean each other's
                     *sorted({own, *graded})], plugins=[score])
    finally:
        os.chdir(cwd)
    return score.points, score.possible, score.failed


def _run_share(root: str, out: str, variants: list[tuple]) -> list[tuple]:
    """Grade a share of the variants in a release of its own (so processes never share a file)."""
    build_student_release(root, out)
    release, results = Path(out), []
    solutions = {name: (Path(root) / name).read_text() for name in EXERCISE}
    with open(os.devnull, "w") as quiet:
        for part, name, correct, code in variants:
            stdout, sys.stdout = sys.stdout, quiet
            try:
                points, possible, failed = run_variant(release, solutions, part, code)
            finally:
                sys.stdout = stdout
            results.append((part, name, correct, points, possible, failed))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=str(Path(__file__).resolve().parent.parent))
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--part", action="append", help="FILE:FUNCTION, e.g. pruning.py:apply_weight_pruning")
    parser.add_argument("--shard", help=argparse.SUPPRESS)  # K/N: grade every N-th variant from K, print JSON
    args = parser.parse_args(argv)
    chosen = [tuple(p.split(":", 1)) for p in args.part] if args.part else list(VARIANTS)
    variants = [(part, name, correct, code) for part in chosen for name, correct, code in VARIANTS[part]]
    if args.shard:
        index, count = map(int, args.shard.split("/"))
        with tempfile.TemporaryDirectory() as tmp:
            print(json.dumps(_run_share(args.root, f"{tmp}/release", variants[index::count])))
        return 0
    # Each share in a process of its own: a main process, as transformers' seeded collators require.
    parts = [arg for part in chosen for arg in ("--part", ":".join(part))]
    shards = [subprocess.Popen([sys.executable, __file__, "--root", args.root, *parts, "--shard", f"{i}/{args.workers}"],
                               stdout=subprocess.PIPE, text=True) for i in range(args.workers)]
    results = []
    for shard in shards:
        output, _ = shard.communicate()
        if shard.returncode:
            print(f"a grading process failed (exit {shard.returncode})")
            return 1
        results += [(tuple(part), *rest) for part, *rest in json.loads(output.splitlines()[-1])]
    return report(sorted(results, key=lambda row: (list(VARIANTS).index(row[0]), not row[2], row[1])))


def report(results: list[tuple]) -> int:
    """Print the table; 0 when every correct variant has full points and no failure, every mutant lost points."""
    bad = 0
    print(f"{'part':44} {'variant':52} {'kind':8} {'points':>9} {'failing':>7}  verdict")
    for (filename, function), name, correct, points, possible, failed in results:
        fair = (points == possible and not failed) if correct else points < possible
        bad += not fair
        print(f"{filename + ':' + function:44} {name:52} {'correct' if correct else 'mutant':8} "
              f"{points:>4g}/{possible:<4g} {len(failed):>7}  {'ok' if fair else 'UNFAIR'}")
        if not fair and correct:
            for nodeid in failed[:6]:
                print(f"    failed: {nodeid}")
    print(f"{len(results) - bad}/{len(results)} variants graded as they should be")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
