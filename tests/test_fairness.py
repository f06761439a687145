"""The fairness check of the grading (tools/fairness.py), run as CI runs it: every correct student-style
implementation of every exercise region earns full points with no failing test, every mutant loses points.
Instructor-only: it needs the solution and tools/make_student.py."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_correct_variant_gets_full_marks_and_every_mutant_loses_points(capsys):
    process = subprocess.run([sys.executable, "tools/fairness.py"], cwd=ROOT, capture_output=True, text=True,
                             timeout=600)
    with capsys.disabled():  # the table, in the CI log
        print("\n" + process.stdout)
    assert process.returncode == 0, process.stdout[-6000:] + process.stderr[-3000:]
    table = [line for line in process.stdout.splitlines() if line.endswith((" ok", "UNFAIR"))]
    for part in {line.split()[0] for line in table}:  # at least three correct styles and two mutants a part
        rows = [line for line in table if line.split()[0] == part]
        assert sum(" correct " in row for row in rows) >= 3 and sum(" mutant " in row for row in rows) >= 2, part
