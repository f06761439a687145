"""What every benchmark script shares: command line, environment header, timing, tables.

Each script reports ratios measured within one run (the median of repeated calls after
warm-up, with the thread count fixed and printed), so that numbers from a noisy or
different machine still compare variants fairly. Tables are printed and written to
`results/bench_<name>.csv` (full precision) and one `results/bench_<script>.md` per script
(header plus every table, rounded).

This module does not decide what to measure or which targets apply: the scripts do.
"""
from __future__ import annotations

import argparse
import csv
import logging
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from quantization import INT8_PATHS, int8_matmul_path, set_int8_matmul_path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "results"


def build_parser(description: str) -> argparse.ArgumentParser:
    """The options every script takes; scripts add their own to the returned parser."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true",
                        help="fast sanity pass: fewer sizes and runs (numbers are not for quoting)")
    parser.add_argument("--device", default="auto",
                        help="cpu, cuda, cuda:N, or auto (cuda when available; default)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads, fixed for the whole run (default: all cores)")
    parser.add_argument("--runs", type=int, default=None, help="timed calls per measurement")
    parser.add_argument("--warmup", type=int, default=None, help="untimed calls before timing")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the CSV and markdown files")
    parser.add_argument("--int8-path", choices=("auto", *INT8_PATHS), default="auto",
                        help="force quantization.int8_matmul's path (default auto: the fastest exact one "
                             "here); fp32 shows a CPU without int8 dot-product instructions")
    return parser


def resolve_device(name: str) -> torch.device:
    """`auto` -> cuda when available, else cpu; anything else is checked to exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name!r} asked for CUDA, but torch.cuda.is_available() is False")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device must be cpu, cuda[:N] or auto, got {name!r}")
    return device


def setup(args: argparse.Namespace) -> torch.device:
    """Fix threads and seeds from the parsed options; returns the device to run on.

    Also silences bitsandbytes' warning that it casts float32 inputs to float16, which its
    int8 matmul logs on every call.
    """
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    threads = (os.cpu_count() or 1) if args.threads is None else args.threads
    if threads < 1:
        raise ValueError(f"--threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    path = getattr(args, "int8_path", "auto")
    set_int8_matmul_path(None if path == "auto" else path)
    return resolve_device(args.device)


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (platform.processor() elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def environment(device: torch.device) -> dict[str, str]:
    """Versions, machine and thread count: what a reader needs to reproduce a table."""
    import bitsandbytes
    import transformers

    info = {
        "torch": torch.__version__,
        "bitsandbytes": bitsandbytes.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "cores": str(os.cpu_count()),
        "torch threads": str(torch.get_num_threads()),
        "cpu capability": torch.backends.cpu.get_cpu_capability(),
        "int8 dot-product instructions": int8_instructions(),
        "int8_matmul path": int8_matmul_path(device),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def int8_instructions() -> str:
    """The CPU int8 dot-product instruction sets torch reports ('none' on an AVX2 CPU without VNNI)."""
    flags = {"AVX-512 VNNI": "_is_vnni_supported", "AMX": "_is_amx_tile_supported"}
    found = [name for name, flag in flags.items() if getattr(torch.cpu, flag, lambda: False)()]
    return ", ".join(found) or "none"


def machine_class(device: torch.device) -> str:
    """One line naming what produced a table: CPU capability, int8 instructions and int8_matmul path."""
    line = (f"machine: cpu capability {torch.backends.cpu.get_cpu_capability()}, int8 dot-product "
            f"instructions: {int8_instructions()}, int8_matmul path: {int8_matmul_path(device)}")
    return line + (f", gpu {torch.cuda.get_device_name(device)}" if device.type == "cuda" else "")


def header(title: str, device: torch.device, args: argparse.Namespace) -> str:
    """A one-paragraph header printed above every script's tables."""
    env = environment(device)
    command = " ".join(["python", f"benchmarks/{Path(sys.argv[0]).name}", *sys.argv[1:]])
    lines = [f"# {title}", "", f"command: `{command}`" + ("  (--quick: sanity pass)" if args.quick else "")]
    lines.append(", ".join(f"{key}: {value}" for key, value in env.items()))
    return "\n".join(lines)


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work so that wall-clock time covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass(frozen=True)
class Timing:
    """Wall-clock times of repeated calls, in the unit the caller recorded (seconds in time_calls)."""

    samples: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def p90(self) -> float:
        """90th percentile, linear interpolation between order statistics (as evaluation.measure_latency)."""
        return float(np.percentile(self.samples, 90))


def time_calls(fns: Mapping[str, Callable[[], object]], *, runs: int, warmup: int,
               device: torch.device = torch.device("cpu")) -> dict[str, Timing]:
    """Time several calls interleaved, under `torch.inference_mode()`.

    Every function gets `warmup` untimed calls, then the timed calls go round-robin
    (f1, f2, ..., f1, f2, ...) so that a change in machine load during the run hits all
    of them alike and their ratios stay fair.

    Args:
        fns: name -> the work to time, inputs already prepared.
        runs: timed calls of each function (>= 1); warmup: untimed calls before (>= 0).
        device: synchronized after each call when it is a GPU.

    Returns:
        name -> Timing with one sample (seconds) per timed call.
    """
    if runs < 1 or warmup < 0:
        raise ValueError(f"need runs >= 1 and warmup >= 0, got runs={runs}, warmup={warmup}")
    samples: dict[str, list[float]] = {name: [] for name in fns}
    with torch.inference_mode():
        for fn in fns.values():
            for _ in range(warmup):
                fn()
        synchronize(device)
        for _ in range(runs):
            for name, fn in fns.items():
                start = time.perf_counter()
                fn()
                synchronize(device)
                samples[name].append(time.perf_counter() - start)
    return {name: Timing(tuple(values)) for name, values in samples.items()}


def time_call(fn: Callable[[], object], *, runs: int, warmup: int,
              device: torch.device = torch.device("cpu")) -> Timing:
    """`time_calls` for a single function."""
    return time_calls({"fn": fn}, runs=runs, warmup=warmup, device=device)["fn"]


def relative_error(y: torch.Tensor, reference: torch.Tensor) -> float:
    """||y - ref||_F / ||ref||_F, computed in float64."""
    y, reference = y.double(), reference.double()
    return float(torch.linalg.norm(y - reference) / torch.linalg.norm(reference))


def verdict(measured: float, limit: float, *, at_most: bool = True) -> str:
    """PASS when `measured <= limit` (or `>=` with at_most=False), else MISS; NaN is a MISS."""
    if math.isnan(measured):
        return "MISS"
    return "PASS" if (measured <= limit if at_most else measured >= limit) else "MISS"


def _format(value: object) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        return f"{value:.3g}" if abs(value) < 1e4 else f"{value:.0f}"
    return str(value)


@dataclass
class Table:
    """Rows of one result table; `name` is the file stem (results/bench_<name>.csv)."""

    name: str
    title: str
    columns: Sequence[str]
    rows: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, **row: object) -> None:
        """Append a row; its keys must be exactly the table's columns."""
        if set(row) != set(self.columns):
            raise ValueError(f"row keys {sorted(row)} differ from the columns {sorted(self.columns)} "
                             f"of table {self.name!r}")
        self.rows.append(row)

    def markdown(self) -> str:
        lines = [f"## {self.title}", "", "| " + " | ".join(self.columns) + " |",
                 "|" + "|".join("---" for _ in self.columns) + "|"]
        lines += ["| " + " | ".join(_format(row[c]) for c in self.columns) + " |" for row in self.rows]
        lines += [""] + [f"- {note}" for note in self.notes]
        return "\n".join(lines).rstrip() + "\n"

    def write_csv(self, folder: Path) -> Path:
        path = folder / f"bench_{self.name}.csv"
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(self.columns))
            writer.writeheader()
            writer.writerows(self.rows)
        return path


def report(script: str, head: str, tables: Sequence[Table], folder: Path,
           device: torch.device = torch.device("cpu")) -> list[Path]:
    """Print the header and tables, write each table's CSV and the script's markdown file.

    Every table gets a last note naming the machine class and int8 path (`machine_class`).
    """
    folder.mkdir(parents=True, exist_ok=True)
    for table in tables:
        table.notes.append(machine_class(device))
    text = head + "\n\n" + "\n".join(table.markdown() for table in tables)
    print(text, flush=True)
    markdown = folder / f"bench_{script}.md"
    markdown.write_text(text)
    return [table.write_csv(folder) for table in tables] + [markdown]
