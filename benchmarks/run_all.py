"""Run every benchmark script (what `make bench` does) and collect their markdown in results/bench_all.md.

Each script runs in its own process, so one's memory and allocator state do not touch the
next one's timings, and a failing script does not stop the others (the exit status is then 1).
Options are passed through to every script: --quick, --device, --threads, --out, --int8-path.
At the end it prints every target checked in this run, met or missed, and the machine class.

Run: `python benchmarks/run_all.py [--quick] [--device cpu|cuda] [--threads N] [--out DIR]`.
"""
from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the lab modules and `benchmarks` live there

from benchmarks.common import RESULTS
from quantization import INT8_PATHS

SCRIPTS = ("kernel", "models", "evaluation_throughput", "calibration", "qat")


def print_targets(folder: Path, scripts: Sequence[str]) -> None:
    """Every target row (results/bench_<script>_targets.csv) of the scripts run, with its verdict."""
    for script in scripts:
        path = folder / f"bench_{script}_targets.csv"
        if not path.exists():
            continue
        rows = list(csv.DictReader(path.open()))
        met = sum(row["verdict"] == "PASS" for row in rows)
        print(f"\ntargets of {script}: {met} met, {len(rows) - met} missed")
        for row in rows:
            label = " ".join([row["target"]] + [f"{key}={row[key]}" for key in ("shape", "rows", "outlier_cols")
                                                 if key in row])
            print(f"  {'met   ' if row['verdict'] == 'PASS' else 'MISSED'} {label}: "
                  f"{float(row['measured']):.3g} (limit {float(row['limit']):.3g})")
    machine = next((line for script in scripts if (folder / f"bench_{script}.md").exists()
                    for line in (folder / f"bench_{script}.md").read_text().splitlines()
                    if line.startswith("- machine: ")), None)
    if machine:
        print(machine.removeprefix("- "))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fast sanity pass of every script")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, or auto (default), for every script")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads of every script (default: all)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the CSV and markdown files")
    parser.add_argument("--only", nargs="+", choices=SCRIPTS, default=SCRIPTS, help="run these scripts only")
    parser.add_argument("--int8-path", choices=("auto", *INT8_PATHS), default="auto",
                        help="force quantization.int8_matmul's path in every script (default: auto)")
    args = parser.parse_args(argv)

    passed = ["--device", args.device, "--out", str(args.out)] + (["--quick"] if args.quick else [])
    if args.threads is not None:
        passed += ["--threads", str(args.threads)]
    passed += ["--int8-path", args.int8_path]
    folder = Path(__file__).resolve().parent
    failed, sections, start = [], [], time.perf_counter()
    for script in args.only:
        began = time.perf_counter()
        print(f"\n=== benchmarks/{script}.py {' '.join(passed)}", flush=True)
        status = subprocess.run([sys.executable, str(folder / f"{script}.py"), *passed]).returncode
        elapsed = time.perf_counter() - began
        print(f"=== {script}: {'ok' if status == 0 else f'FAILED (exit {status})'} in {elapsed:.0f} s", flush=True)
        markdown = args.out / f"bench_{script}.md"
        if status == 0 and markdown.exists():
            sections.append(markdown.read_text())
        else:
            failed.append(script)
    total = time.perf_counter() - start
    summary = f"make bench: {len(args.only) - len(failed)}/{len(args.only)} scripts ok in {total:.0f} s"
    if failed:
        summary += f"; failed: {', '.join(failed)}"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_all.md").write_text("\n\n".join(sections) + f"\n\n{summary}\n")
    print(f"\n{summary}; tables in {args.out}/bench_*.md and .csv")
    print_targets(args.out, [script for script in args.only if script not in failed])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
