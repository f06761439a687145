"""Execute a notebook headless and save the executed copy.

    python tools/run_notebook.py NOTEBOOK [--smoke] [--timeout S] [--results-dir DIR]

The kernel is the interpreter running this script (a kernelspec written to a
temporary folder points at `sys.executable`), so `make report` uses the project's
virtual environment whatever other kernels are installed. The kernel starts in the
notebook's folder and inherits the environment; `--smoke` sets `SMOKE=1` and
`--results-dir` sets `RESULTS_DIR` for it. The executed notebook is written to
`RESULTS_DIR/<name>.ipynb` (without the option: `$RESULTS_DIR` when set, else `results/`
next to the notebook), also when a cell fails; a failing cell prints its error and the
exit status is 1.

The notebooks themselves write their tables and figures; this script only runs them.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from jupyter_client import KernelManager
from jupyter_client.kernelspec import KernelSpecManager
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

KERNEL_NAME = "lab-python"


def write_kernelspec(folder: Path) -> Path:
    """Write a kernelspec named KERNEL_NAME that runs ipykernel in this interpreter.

    Args:
        folder: an existing directory; the spec goes to `folder/KERNEL_NAME/kernel.json`.

    Returns:
        The directory holding the kernelspec folders (pass it as a kernel dir).
    """
    spec_dir = folder / KERNEL_NAME
    spec_dir.mkdir(parents=True, exist_ok=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": f"Python ({sys.executable})",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    return folder


def run_notebook(path: Path, results_dir: Path, timeout: int | None) -> tuple[Path, str | None]:
    """Execute every cell of a notebook in a fresh kernel.

    Args:
        path: the notebook (.ipynb).
        results_dir: where the executed copy is written (created if needed).
        timeout: seconds allowed per cell; None for no limit.

    Returns:
        (path of the executed copy, None on success or the failing cell's error text).
    """
    nb = nbformat.read(path, as_version=4)
    results_dir.mkdir(parents=True, exist_ok=True)
    out_path = results_dir / path.name
    error = None
    with tempfile.TemporaryDirectory() as kernels:
        # Local IPC sockets in the temporary folder: no TCP ports, no plain-text warning.
        km = KernelManager(
            kernel_name=KERNEL_NAME,
            transport="ipc",
            ip=str(Path(kernels) / "kernel"),
            kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(write_kernelspec(Path(kernels)))]),
        )
        client = NotebookClient(
            nb,
            km=km,
            timeout=timeout,
            resources={"metadata": {"path": str(path.parent)}},
        )
        try:
            client.execute(cleanup_kc=True)
        except (CellExecutionError, CellTimeoutError, DeadKernelError) as exc:
            error = str(exc)
    nbformat.write(nb, out_path)
    return out_path, error


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebook", type=Path, help="the .ipynb to execute")
    parser.add_argument("--smoke", action="store_true", help="set SMOKE=1: tiny offline models, minutes not hours")
    parser.add_argument("--timeout", type=int, default=None, metavar="S",
                        help="seconds allowed per cell (default: no limit)")
    parser.add_argument("--results-dir", type=Path, default=None, metavar="DIR",
                        help="output folder, passed to the notebook as RESULTS_DIR "
                             "(default: $RESULTS_DIR, else results/ next to the notebook)")
    args = parser.parse_args(argv)

    path = args.notebook.resolve()
    if not path.is_file():
        parser.error(f"no such notebook: {args.notebook}")
    if args.timeout is not None and args.timeout <= 0:
        parser.error(f"--timeout must be a positive number of seconds, got {args.timeout}")
    if args.smoke:
        os.environ["SMOKE"] = "1"
    if args.results_dir is not None:
        os.environ["RESULTS_DIR"] = str(args.results_dir)
    # The kernel starts in the notebook's folder: hand it an absolute path.
    results_dir = Path(os.environ.get("RESULTS_DIR", path.parent / "results")).resolve()
    os.environ["RESULTS_DIR"] = str(results_dir)

    start = time.perf_counter()
    out_path, error = run_notebook(path, results_dir, args.timeout)
    elapsed = time.perf_counter() - start
    if error is not None:
        print(error, file=sys.stderr)
        print(f"FAILED {path.name} after {elapsed:.1f} s; partial run saved to {out_path}", file=sys.stderr)
        return 1
    print(f"executed {path.name} in {elapsed:.1f} s -> {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
