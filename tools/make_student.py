"""Build the student release of the lab from the solution repository.

    python tools/make_student.py [--root .] [--out dist/student] [--keep-exercises 1,3,4]

The repository is the solution. This script copies its files (`git ls-files
--cached --others --exclude-standard`, or a walk of the tree outside git) to
`--out` and, on the way, replaces every solution region

    # BEGIN SOLUTION (Exercise N)
    # TODO: ...
    ...solution code...
    # END SOLUTION

with the region's `# TODO` lines followed by
`raise NotImplementedError("Exercise N: <function>")` at the region's
indentation, `<function>` being the enclosing def qualified by its classes
(`QuantizedVector.quantize`). A TODO line keeps the comment lines right after it
that are indented inside the comment (`#     continued`).

Notebooks: code cells are stripped the same way (a region outside any def says
just "Exercise N"), markdown regions between `<!-- BEGIN SOLUTION -->` (or
`<!-- BEGIN SOLUTION (Exercise N) -->`, which `--keep-exercises N` keeps; the lab's
analysis answers are Exercise 4) and `<!-- END SOLUTION -->` become
`*Your answer here.*`, and the outputs and execution counts of all code cells are cleared.

Test functions and classes marked `@pytest.mark.exercise(..., visibility="hidden")`
are left out of the student release; the instructor grades with them.
The files in INSTRUCTOR_ONLY do not ship; the release's README.md is STUDENT_README (the
maintainers' README stays behind). Everything else is copied unchanged.

The release is built in a sibling folder and swapped in at the end, so a marker
error (open, nested, stray or malformed, reported with file and line) leaves the
previous release untouched. Re-running gives the identical tree.
`--keep-exercises` leaves the regions of the given exercises solved (markers
removed), which gives instructors partially solved copies for testing the grader.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path

# Paths (relative, posix) that belong to the instructor: the release tool itself,
# its tests (they grade the solution), and the contributor guide.
INSTRUCTOR_ONLY = frozenset({"tools/make_student.py", "tools/fairness.py", "tools/fairness_variants.py",
                             "tests/test_tooling.py", "tests/test_fairness.py", "CONTRIBUTING.md"})
# The release's README.md is this file (the exercises, the tests, self-grading), not the maintainers' one.
STUDENT_README = "tools/student_readme.md"
# Folders skipped when the root is not a git repository.
WALK_EXCLUDE = frozenset({".git", ".venv", "dist", "results", "__pycache__", ".pytest_cache", ".ipynb_checkpoints"})

CODE_BEGIN = re.compile(r"# BEGIN SOLUTION \(Exercise ([1-9][0-9]*)\)")
CODE_END = re.compile(r"# END SOLUTION")
CODE_MARKERS = "'# BEGIN SOLUTION (Exercise N)' and '# END SOLUTION'"
MARKDOWN_BEGIN = re.compile(r"<!-- BEGIN SOLUTION(?: \(Exercise ([1-9][0-9]*)\))? -->")
MARKDOWN_END = re.compile(r"<!-- END SOLUTION -->")
MARKDOWN_MARKERS = "'<!-- BEGIN SOLUTION -->' and '<!-- END SOLUTION -->'"
MARKDOWN_ANSWER = "*Your answer here.*"
TODO = re.compile(r"#\s*TODO\b")
TODO_CONTINUATION = re.compile(r"#\s{2,}\S")
HIDDEN_VISIBILITY = "hidden"


class SolutionMarkerError(ValueError):
    """A solution marker that is open, nested, stray, malformed or misplaced.

    The message starts with the location: `path:line:` for Python files,
    `path: cell C, line L:` for notebooks (C and L counted from 1).
    """


@dataclass(frozen=True)
class Region:
    """One solution region: `exercise` is None for an unnumbered markdown region."""

    path: str
    exercise: int | None
    function: str | None
    kept: bool


@dataclass
class ReleaseSummary:
    """What `build_student_release` wrote."""

    out: Path
    files: list[str] = field(default_factory=list)
    regions: list[Region] = field(default_factory=list)
    hidden_tests: list[str] = field(default_factory=list)

    def format(self) -> str:
        """The summary printed by the command line."""
        changed = {region.path for region in self.regions}
        lines = [f"student release written to {self.out}: {len(self.files)} files, "
                 f"{len(changed)} with solution regions"]
        by_exercise: dict[int | None, list[Region]] = {}
        for region in self.regions:
            by_exercise.setdefault(region.exercise, []).append(region)
        for exercise in sorted(by_exercise, key=lambda n: (n is None, n or 0)):
            regions = by_exercise[exercise]
            label = f"exercise {exercise}" if exercise is not None else "unnumbered"
            places = Counter(f"{r.path}:{r.function}" if r.function else r.path for r in regions)
            where = ", ".join(place + (f" x{count}" if count > 1 else "") for place, count in places.items())
            kept = " (kept solved)" if all(r.kept for r in regions) else ""
            lines.append(f"  {label}: {len(regions)} region{'s' * (len(regions) != 1)}{kept}  [{where}]")
        if self.hidden_tests:
            lines.append(f"  hidden tests left out: {', '.join(self.hidden_tests)}")
        return "\n".join(lines)


def _error(location: str, message: str) -> SolutionMarkerError:
    return SolutionMarkerError(f"{location}: {message}")


def _line_ending(line: str) -> str:
    return line[len(line.rstrip("\r\n")):]


def _indent(line: str) -> str:
    return line[: len(line) - len(line.lstrip())]


def _find_regions(lines: list[str], begin: re.Pattern, end: re.Pattern, leader: str, markers: str,
                  locate: Callable[[int], str]) -> list[tuple[int, int, int | None]]:
    """(begin index, end index, exercise) of every region; markers must be whole lines.

    A line that starts with the comment `leader` and mentions BEGIN/END SOLUTION
    without being an exact marker is an error, so a typo cannot leak a solution.
    """
    regions, opened = [], None
    for index, line in enumerate(lines):
        text = line.strip()
        if not text.startswith(leader) or ("BEGIN SOLUTION" not in text and "END SOLUTION" not in text):
            continue
        if match := begin.fullmatch(text):
            if opened is not None:
                raise _error(locate(index), f"BEGIN SOLUTION inside the region opened at line "
                                            f"{opened[0] + 1}; regions never nest")
            opened = (index, int(match.group(1)) if match.group(1) else None)
        elif end.fullmatch(text):
            if opened is None:
                raise _error(locate(index), "END SOLUTION without a BEGIN SOLUTION before it")
            if _indent(line) != _indent(lines[opened[0]]):
                raise _error(locate(index), f"END SOLUTION is not at the indentation of the "
                                            f"BEGIN SOLUTION at line {opened[0] + 1}")
            regions.append((opened[0], index, opened[1]))
            opened = None
        else:
            raise _error(locate(index), f"malformed solution marker {text!r}; the markers are {markers}")
    if opened is not None:
        raise _error(locate(opened[0]), "BEGIN SOLUTION is never closed by an END SOLUTION")
    return regions


def _functions(tree: ast.AST) -> list[tuple[int, int, str]]:
    """(first line, last line, qualified name) of every def, classes and outer defs joined by dots."""
    found = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = prefix + child.name
                if not isinstance(child, ast.ClassDef):
                    found.append((child.lineno, child.end_lineno, name))
                visit(child, name + ".")
            else:
                visit(child, prefix)

    visit(tree, "")
    return found


def _enclosing_function(functions: list[tuple[int, int, str]], line: int) -> str | None:
    """The innermost def whose body spans `line` (1-based), or None."""
    spans = [(first, name) for first, last, name in functions if first < line <= last]
    return max(spans)[1] if spans else None


def _dotted(node: ast.AST) -> str | None:
    """`name` for a Name, `name.attr` for an attribute of a Name (`self.alpha`), else None."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        return f"{node.value.id}.{node.attr}"
    return None


def _hidden_names(tree: ast.AST, first: int, last: int, todo: list[str]) -> list[str]:
    """Names the region between marker lines `first` and `last` (1-based) sets and that code after
    it in the same def reads, though the region's TODO lines never give them in those words."""
    spans = [node for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
             and node.lineno < first and last <= node.end_lineno]
    if not spans:
        return []
    function = max(spans, key=lambda node: node.lineno)
    stored, read = set(), set()
    for node in ast.walk(function):
        name = _dotted(node) if isinstance(node, (ast.Name, ast.Attribute)) else None
        if name is None:
            continue
        if isinstance(node.ctx, ast.Store) and first < node.lineno < last:
            stored.add(name)
        elif isinstance(node.ctx, ast.Load) and node.lineno > last:
            read.add(name)
    given = set(re.findall(r"[A-Za-z_][A-Za-z0-9_.]*[A-Za-z0-9_]", "".join(todo)))
    return sorted((stored & read) - given)


def _todo_lines(body: list[str]) -> list[str]:
    """The `# TODO` comment lines of a region body and their indented continuation lines."""
    kept, in_todo = [], False
    for line in body:
        text = line.strip()
        in_todo = bool(TODO.match(text)) or (in_todo and bool(TODO_CONTINUATION.match(text)))
        if in_todo:
            kept.append(line)
    return kept


def _strip_code(source: str, path: str, keep: Collection[int], locate: Callable[[int], str],
                require_function: bool) -> tuple[str, list[Region]]:
    """Replace the regions of Python code; `require_function` for modules (a region must sit in a def)."""
    lines = source.splitlines(keepends=True)
    found = _find_regions(lines, CODE_BEGIN, CODE_END, "#", CODE_MARKERS, locate)
    if not found:
        return source, []
    try:
        tree = ast.parse(source)
        functions = _functions(tree)
    except SyntaxError as error:
        if require_function:
            raise _error(locate((error.lineno or 1) - 1), f"not valid Python: {error.msg}") from error
        tree, functions = None, []  # a notebook cell with IPython syntax: no function names
    regions, pieces, start = [], [], 0
    for first, last, exercise in found:
        indent, body = _indent(lines[first]), lines[first + 1:last]
        for offset, line in enumerate(body, start=first + 1):
            if line.strip() and not line.startswith(indent):
                raise _error(locate(offset), f"line is indented less than the BEGIN SOLUTION at line {first + 1}")
        function = _enclosing_function(functions, first + 1)
        if function is None and require_function:
            raise _error(locate(first), "solution region outside any function; the student release could not import")
        if require_function and any(region.function == function for region in regions):
            raise _error(locate(first), f"a second solution region in {function}: each region is one exercise "
                                        "part, in a def of its own, so its NotImplementedError names it")
        hidden = _hidden_names(tree, first + 1, last + 1, _todo_lines(body)) if require_function else []
        if hidden:
            raise _error(locate(first), f"code after this region reads {', '.join(hidden)}, which the region sets "
                                        "but its TODO lines never name: a student who names it otherwise would "
                                        "get a NameError; name it in a TODO or end the region in a return")
        kept = exercise in keep
        if kept:
            replacement = body
        else:
            label = f"Exercise {exercise}: {function}" if function else f"Exercise {exercise}"
            replacement = _todo_lines(body) + [f'{indent}raise NotImplementedError("{label}")'
                                               f"{_line_ending(lines[last])}"]
        pieces += lines[start:first] + replacement
        start = last + 1
        regions.append(Region(path, exercise, function, kept))
    return "".join(pieces + lines[start:]), regions


def _strip_python(source: str, path: str, keep: Collection[int]) -> tuple[str, list[Region]]:
    stripped, regions = _strip_code(source, path, keep, lambda index: f"{path}:{index + 1}", True)
    if regions:
        try:
            ast.parse(stripped)
        except SyntaxError as error:  # a region that took a block's only statement with it
            raise _error(f"{path}:{error.lineno}", f"student release is not valid Python: {error.msg}") from error
    return stripped, regions


def strip_solutions(source: str, path: str | os.PathLike, keep_exercises: Collection[int] = ()) -> str:
    """The student version of one Python source file.

    Args:
        source: the text of the file (solution version).
        path: the file's name, used in error messages only.
        keep_exercises: exercise numbers whose regions stay solved (markers removed).

    Returns:
        The text with every region replaced by its TODO lines and a
        `raise NotImplementedError("Exercise N: <function>")`; unchanged without regions.

    Raises:
        SolutionMarkerError: a marker open, nested, stray, malformed, at the wrong
            indentation, or a region outside any function; the message names file and line.
    """
    return _strip_python(source, str(path), frozenset(keep_exercises))[0]


def _strip_markdown(source: str, path: str, keep: Collection[int],
                    locate: Callable[[int], str]) -> tuple[str, list[Region]]:
    lines = source.splitlines(keepends=True)
    pieces, regions, start = [], [], 0
    for first, last, exercise in _find_regions(lines, MARKDOWN_BEGIN, MARKDOWN_END, "<!--", MARKDOWN_MARKERS, locate):
        kept = exercise is not None and exercise in keep
        body = lines[first + 1:last] if kept else [MARKDOWN_ANSWER + _line_ending(lines[last])]
        pieces += lines[start:first] + body
        start = last + 1
        regions.append(Region(path, exercise, None, kept))
    return "".join(pieces + lines[start:]), regions


def _strip_notebook(text: str, path: str, keep: Collection[int]) -> tuple[str, list[Region]]:
    notebook = json.loads(text)
    regions = []
    for number, cell in enumerate(notebook.get("cells", []), start=1):
        source = cell.get("source", "")
        joined = "".join(source) if isinstance(source, list) else source

        def locate(index: int, number: int = number) -> str:
            return f"{path}: cell {number}, line {index + 1}"

        if cell.get("cell_type") == "code":
            stripped, found = _strip_code(joined, path, keep, locate, False)
            cell["outputs"], cell["execution_count"] = [], None
        elif cell.get("cell_type") == "markdown":
            stripped, found = _strip_markdown(joined, path, keep, locate)
        else:
            continue
        if found:
            cell["source"] = stripped.splitlines(keepends=True) if isinstance(source, list) else stripped
            regions += found
    # The layout nbformat and Jupyter write, so unchanged cells stay byte-identical.
    dumped = json.dumps(notebook, indent=1, sort_keys=True, separators=(",", ": "), ensure_ascii=False)
    return dumped + "\n", regions


def strip_notebook(text: str, path: str | os.PathLike, keep_exercises: Collection[int] = ()) -> str:
    """The student version of a notebook (its JSON text); see the module docstring.

    Raises:
        SolutionMarkerError: as `strip_solutions`, located by cell and line.
    """
    return _strip_notebook(text, str(path), frozenset(keep_exercises))[0]


def _is_hidden_marker(decorator: ast.expr) -> bool:
    """`@pytest.mark.exercise(..., visibility="hidden")` (any prefix before `.exercise`)."""
    return (isinstance(decorator, ast.Call) and isinstance(decorator.func, ast.Attribute)
            and decorator.func.attr == "exercise"
            and any(k.arg == "visibility" and isinstance(k.value, ast.Constant)
                    and k.value.value == HIDDEN_VISIBILITY for k in decorator.keywords))


def drop_hidden_tests(source: str, path: str | os.PathLike) -> tuple[str, list[str]]:
    """Remove the test functions and classes marked with visibility="hidden".

    Returns:
        The new source and the `path::name` of each test removed (empty: source unchanged).
    """
    marked = sorted((node.decorator_list[0].lineno, node.end_lineno, node.name)
                    for node in ast.walk(ast.parse(source, filename=str(path)))
                    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                    and any(map(_is_hidden_marker, node.decorator_list)))
    # A hidden method of a hidden class goes with its class.
    outermost = [span for span in marked if not any(o[0] <= span[0] and span[1] <= o[1] and o != span
                                                    for o in marked)]
    if not outermost:
        return source, []
    lines = source.splitlines(keepends=True)
    for first, last, _ in reversed(outermost):
        del lines[first - 1:last]
    return "".join(lines), [f"{path}::{name}" for _, _, name in outermost]


def release_files(root: Path) -> list[str]:
    """Relative posix paths of the files to release: git's view, or a walk outside git."""
    try:
        listing = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                                 cwd=root, capture_output=True, check=True).stdout.decode()
        names = [name for name in listing.split("\0") if name]
    except (OSError, subprocess.CalledProcessError):
        names = []
        for folder, subfolders, files in os.walk(root):
            subfolders[:] = [name for name in subfolders if name not in WALK_EXCLUDE]
            names += [Path(folder, name).relative_to(root).as_posix() for name in files]
    # Deleted-but-tracked files are gone from the tree; the instructor-only files never ship.
    return sorted(name for name in set(names) if (root / name).is_file()
                  and name not in INSTRUCTOR_ONLY and name != STUDENT_README)


def _transform(name: str, data: bytes, keep: Collection[int], summary: ReleaseSummary) -> bytes:
    """The student bytes of one file; regions and hidden tests are recorded in `summary`."""
    if name.endswith(".py"):
        text, regions = _strip_python(data.decode("utf-8"), name, keep)
        hidden = []
        if Path(name).name.startswith("test_"):
            text, hidden = drop_hidden_tests(text, name)
            summary.hidden_tests += hidden
        changed = bool(regions or hidden)
    elif name.endswith(".ipynb"):
        text, regions = _strip_notebook(data.decode("utf-8"), name, keep)
        changed = True  # outputs are cleared in every notebook
    else:
        return data
    summary.regions += regions
    return text.encode("utf-8") if changed else data


def build_student_release(root: str | os.PathLike, out: str | os.PathLike,
                          keep_exercises: Iterable[int] = ()) -> ReleaseSummary:
    """Write the student release of the repository at `root` to `out`, replacing `out` wholesale.

    Args:
        root: the solution repository.
        out: the release folder; built beside itself and swapped in when complete.
        keep_exercises: exercise numbers left solved.

    Returns:
        The summary: files written, regions per exercise, hidden tests left out.

    Raises:
        SolutionMarkerError: a bad marker (nothing is written then).
        ValueError: `out` is the root or one of its parent folders.
    """
    root, out, keep = Path(root).resolve(), Path(out).resolve(), frozenset(keep_exercises)
    if out == root or out in root.parents:
        raise ValueError(f"out={str(out)!r} would replace the repository {str(root)!r}")
    summary = ReleaseSummary(out)
    staging, previous = out.with_name(f".{out.name}.new"), out.with_name(f".{out.name}.old")
    for leftover in (staging, previous):  # from an interrupted run
        shutil.rmtree(leftover, ignore_errors=True)
    names = [name for name in release_files(root) if not (root / name).is_relative_to(out)]
    staging.mkdir(parents=True)
    try:
        for name in names:
            source, target = root / name, staging / name
            if name == "README.md" and (root / STUDENT_README).is_file():
                source = root / STUDENT_README
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(_transform(name, source.read_bytes(), keep, summary))
            shutil.copymode(source, target)
            summary.files.append(name)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if out.exists():
        out.rename(previous)
    staging.rename(out)
    shutil.rmtree(previous, ignore_errors=True)
    return summary


def _exercise_numbers(text: str) -> frozenset[int]:
    try:
        numbers = frozenset(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated exercise numbers, got {text!r}") from None
    if any(number < 1 for number in numbers):
        raise argparse.ArgumentTypeError(f"exercise numbers start at 1, got {text!r}")
    return numbers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent,
                        help="solution repository (default: the one holding this script)")
    parser.add_argument("--out", type=Path, default=None, help="release folder (default: ROOT/dist/student)")
    parser.add_argument("--keep-exercises", type=_exercise_numbers, default=frozenset(), metavar="N,M",
                        help="exercises whose regions stay solved, e.g. 1,3,4")
    args = parser.parse_args(argv)
    out = args.out if args.out is not None else args.root / "dist" / "student"
    try:
        summary = build_student_release(args.root, out, args.keep_exercises)
    except (SolutionMarkerError, ValueError) as error:
        print(f"make_student: error: {error}", file=sys.stderr)
        return 1
    print(summary.format())
    return 0


if __name__ == "__main__":
    sys.exit(main())
