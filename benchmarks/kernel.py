"""Kernel benchmark: the lab's int8 matmul against fp32, bitsandbytes and PyTorch's dynamic int8.

Measures `quantization.mixed_precision_forward` (and `QuantizedLinear`, the same kernel with its
weight quantized once) on the two feed-forward shapes of BERT-base, `(B*S, 768) @ (768, 3072)` and
`(B*S, 3072) @ (3072, 768)`, with no outlier columns and with 0.1% and 1% of them, against
- `torch.matmul` in fp32, the reference for time ratios and relative errors;
- bitsandbytes `Linear8bitLt(has_fp16_weights=False, threshold=6.0)` in eval mode, built from the
  same weight (its CPU path is reported in the table notes);
- `torch.ao.quantization.quantize_dynamic` int8 `nn.Linear` (CPU only; fbgemm/onednn kernels);
- the lab statement followed literally in Python loops (benchmarks/naive_reference.py), timed on
  fewer rows and extrapolated with a fitted per-row cost, to show what vectorisation buys.
On CUDA it also reports `torch._int_mm` int8 throughput against fp16/bf16/fp32 matmul.

Activations are N(0, 1) clamped to |x| < 5.5, so outlier columns are exactly the planted ones: a
planted column holds values of magnitude U(6, 12) with one random sign per column in every row, the
systematic outlier features that LLM.int8() describes. Weights are N(0, 0.02^2), BERT's init.

`int8_matmul` runs on the fastest exact path of the machine (`torch._int_mm` with int8 dot-product
instructions or on CUDA, fp32 K-chunks otherwise); `--int8-path fp32|int_mm` forces one, so one machine
shows both classes. The header and every table name the CPU capability and the path.

Run: `python benchmarks/kernel.py [--quick] [--device cpu|cuda] [--threads N] [--runs N] [--int8-path P]`.
"""
from __future__ import annotations

import copy
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the lab modules and `benchmarks` live there

from benchmarks.common import (Table, build_parser, header, int8_instructions, relative_error, report, setup,
                               time_call, time_calls, verdict)
from benchmarks.naive_reference import naive_mixed_precision_forward
from quantization import int8_matmul_path, mixed_precision_forward
from toolkit.layers import QuantizedLinear

THRESHOLD = 6.0
SHAPES = ((768, 3072), (3072, 768))  # (in_features, out_features) of BERT-base's FFN
ROWS = (128, 2048)  # B*S
OUTLIER_FRACTIONS = (0.0, 0.001, 0.01)

KERNEL_COLUMNS = ("shape", "rows", "outlier_cols", "method", "median_ms", "ratio_to_fp32", "rel_error")
NAIVE_COLUMNS = ("shape", "rows", "outlier_cols", "rows_timed", "naive_ms", "source", "vectorised_ms",
                 "speedup", "max_abs_diff")
TARGET_COLUMNS = ("target", "shape", "rows", "outlier_cols", "measured", "limit", "verdict")
INT_MM_COLUMNS = ("m", "k", "n", "dtype", "median_ms", "tera_ops_per_s", "ratio_to_fp16")


def make_activations(rows: int, features: int, outlier_fraction: float,
                     generator: torch.Generator) -> torch.Tensor:
    """(rows, features) float32 N(0, 1) clamped to |x| < 5.5, plus planted outlier columns.

    `round(outlier_fraction * features)` columns (at least one when the fraction is positive)
    hold |x| in U(6, 12) in every row, with one random sign per column.
    """
    if not 0.0 <= outlier_fraction <= 1.0:
        raise ValueError(f"outlier_fraction must be in [0, 1], got {outlier_fraction}")
    x = torch.randn(rows, features, generator=generator).clamp_(-5.5, 5.5)
    count = max(1, round(outlier_fraction * features)) if outlier_fraction > 0 else 0
    columns = torch.randperm(features, generator=generator)[:count]
    signs = torch.where(torch.rand(count, generator=generator) < 0.5, -1.0, 1.0)
    magnitudes = 6.0 + 6.0 * torch.rand(rows, count, generator=generator)
    x[:, columns] = magnitudes * signs
    return x


def outlier_columns(x: torch.Tensor) -> int:
    """How many columns of `x` hold a value with |x| >= THRESHOLD."""
    return int((x.abs() >= THRESHOLD).any(dim=0).sum())


def bnb_cpu_path() -> str:
    """Which int8 GEMM bitsandbytes uses on this CPU (a native kernel or its fp32 emulation)."""
    try:
        native = torch._C._dispatch_has_kernel_for_dispatch_key("bitsandbytes::int8_linear_matmul", "CPU")
    except RuntimeError:
        native = False
    return ("native CPU kernel (torch._int_mm, needs AVX-512)" if native
            else "default backend: the int8 codes multiplied as an fp32 matmul (no AVX-512 kernel on this CPU)")


def build_int8_layers(weight: torch.Tensor, device: torch.device) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """The weight-holding int8 baselines, each built once from the same (in, out) weight."""
    import bitsandbytes as bnb

    linear = nn.Linear(weight.shape[0], weight.shape[1], bias=False)
    with torch.no_grad():
        linear.weight.copy_(weight.t())
    layers: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}

    for name, threshold in (("lab QuantizedLinear int8 (t=6)", THRESHOLD), ("lab QuantizedLinear int8 (pure)", None)):
        layers[name] = QuantizedLinear.from_linear(copy.deepcopy(linear), "int8", threshold=threshold).to(device).eval()

    bnb_layer = bnb.nn.Linear8bitLt(weight.shape[0], weight.shape[1], bias=False,
                                    has_fp16_weights=False, threshold=THRESHOLD)
    bnb_layer.load_state_dict(linear.state_dict())
    layers["bnb Linear8bitLt (t=6)"] = bnb_layer.to(device).eval()  # .to() quantizes the weight

    if device.type == "cpu":
        with warnings.catch_warnings():  # torch.ao.quantization is deprecated in 2.13 but still works
            warnings.simplefilter("ignore")
            dynamic = torch.ao.quantization.quantize_dynamic(nn.Sequential(copy.deepcopy(linear)),
                                                             {nn.Linear}, dtype=torch.qint8)
        layers["torch quantize_dynamic int8"] = dynamic.eval()
    return layers


def benchmark_shape(weight: torch.Tensor, rows_list: Sequence[int], fractions: Sequence[float], *,
                    runs: int, warmup: int, device: torch.device, generator: torch.Generator,
                    table: Table, targets: Table) -> None:
    """Time every method on one weight for each (rows, outlier fraction); add rows and target checks."""
    shape = f"{weight.shape[0]}x{weight.shape[1]}"
    weight = weight.to(device)
    layers = build_int8_layers(weight, device)
    for rows in rows_list:
        for fraction in fractions:
            x = make_activations(rows, weight.shape[0], fraction, generator).to(device)
            outliers = outlier_columns(x)
            methods: dict[str, Callable[[], torch.Tensor]] = {
                "torch.matmul fp32": lambda: torch.matmul(x, weight),
                "lab mixed_precision_forward (t=6)": lambda: mixed_precision_forward(x, weight, THRESHOLD),
            }
            methods.update({name: (lambda layer=layer: layer(x)) for name, layer in layers.items()})
            with torch.inference_mode():
                reference = torch.matmul(x, weight)
                errors = {name: relative_error(fn().float(), reference) for name, fn in methods.items()}
            timings = time_calls(methods, runs=runs, warmup=warmup, device=device)
            medians = {name: timing.median for name, timing in timings.items()}
            for name, median in medians.items():
                table.add(shape=shape, rows=rows, outlier_cols=outliers, method=name, median_ms=median * 1e3,
                          ratio_to_fp32=median / medians["torch.matmul fp32"], rel_error=errors[name])
            add_targets(targets, medians, shape=shape, rows=rows, outliers=outliers, fraction=fraction,
                        fast_int8=int8_matmul_path(device) == "int_mm")


def add_targets(targets: Table, medians: dict[str, float], *, shape: str, rows: int, outliers: int,
                fraction: float, fast_int8: bool) -> None:
    """The lab's kernel targets for one configuration, on the int8 path in use.

    With a fast int8 GEMM (`fast_int8`): QuantizedLinear pure <= 0.5x fp32 (no outliers), LLM.int8
    <= 0.7x (up to 1% outlier columns), mixed_precision_forward with its float weight <= 0.9x. On
    the fp32 path: 1.5x without and 2x with up to 1% outliers, for both lab kernels. Always:
    QuantizedLinear (t=6) takes at most bnb Linear8bitLt's time.
    """
    where = dict(shape=shape, rows=rows, outlier_cols=outliers)
    fp32 = medians["torch.matmul fp32"]
    checks: list[tuple[str, str, float]] = []  # (subject, method, limit) against fp32
    if fraction <= 0.01:
        mpf, layer = "lab mixed_precision_forward (t=6)", "lab QuantizedLinear int8 (t=6)"
        if fast_int8:
            pure = fraction == 0
            checks.append(("QuantizedLinear int8 pure" if pure else "QuantizedLinear LLM.int8 (t=6)",
                           "lab QuantizedLinear int8 (pure)" if pure else layer, 0.5 if pure else 0.7))
            checks.append(("mixed_precision_forward (float weight)", mpf, 0.9))
        else:
            limit = 1.5 if fraction == 0 else 2.0
            checks += [("mixed_precision_forward", mpf, limit), ("QuantizedLinear LLM.int8 (t=6)", layer, limit)]
    for subject, method, limit in checks:
        ratio = medians[method] / fp32
        targets.add(target=f"{subject} / fp32 matmul", measured=ratio, limit=limit, verdict=verdict(ratio, limit),
                    **where)
    if "bnb Linear8bitLt (t=6)" in medians:
        ratio = medians["lab QuantizedLinear int8 (t=6)"] / medians["bnb Linear8bitLt (t=6)"]
        targets.add(target="QuantizedLinear LLM.int8 (t=6) / bnb int8", measured=ratio, limit=1.0,
                    verdict=verdict(ratio, 1.0), **where)


def benchmark_naive(weight: torch.Tensor, rows_list: Sequence[int], fraction: float, timed_rows: int, *,
                    runs: int, warmup: int, generator: torch.Generator, table: Table) -> None:
    """The literal Python-loop reference against the vectorised kernel, on CPU.

    The naive cost is fitted as fixed + per_row * rows from one timed call on 1 row and one on
    `timed_rows` rows (the column quantization is the fixed part); sizes above `timed_rows` are
    extrapolated from that fit and marked so.
    """
    shape = f"{weight.shape[0]}x{weight.shape[1]}"
    largest = max(rows_list)
    x = make_activations(largest, weight.shape[0], fraction, generator)
    timed_rows = min(timed_rows, largest)
    one = time_call(lambda: naive_mixed_precision_forward(x[:1], weight, THRESHOLD), runs=1, warmup=0).median
    with torch.inference_mode():  # one slow call, timed by hand to keep its output for the check
        start = time.perf_counter()
        naive_output = naive_mixed_precision_forward(x[:timed_rows], weight, THRESHOLD)
        many = time.perf_counter() - start
        difference = (naive_output - mixed_precision_forward(x[:timed_rows], weight, THRESHOLD)).abs().max().item()
    per_row = (many - one) / (timed_rows - 1) if timed_rows > 1 else one
    fixed = max(one - per_row, 0.0)
    for rows in rows_list:
        measured = rows == timed_rows
        naive = many if measured else fixed + per_row * rows
        rows_x = x[:rows]
        vectorised = time_call(lambda: mixed_precision_forward(rows_x, weight, THRESHOLD),
                               runs=runs, warmup=warmup).median
        table.add(shape=shape, rows=rows, outlier_cols=outlier_columns(rows_x), rows_timed=timed_rows,
                  naive_ms=naive * 1e3, source="measured" if measured else "extrapolated",
                  vectorised_ms=vectorised * 1e3, speedup=naive / vectorised, max_abs_diff=difference)


def benchmark_int_mm(sizes: Sequence[int], *, runs: int, warmup: int, device: torch.device, table: Table) -> None:
    """CUDA only: torch._int_mm (int8 x int8 -> int32) against fp16, bf16 and fp32 matmul, square sizes.

    `_int_mm` is timed with its second operand row-major and column-major (the same values):
    cuBLASLt's fast int8 path wants the column-major ("TN") layout.
    """
    for size in sizes:
        a8 = torch.randint(-127, 128, (size, size), dtype=torch.int8, device=device)
        b8 = torch.randint(-127, 128, (size, size), dtype=torch.int8, device=device)
        operands = {"int8 (_int_mm, B row-major)": (torch._int_mm, a8, b8),
                    "int8 (_int_mm, B column-major)": (torch._int_mm, a8, b8.t().contiguous().t())}
        for dtype in (torch.float16, torch.bfloat16, torch.float32):
            operands[str(dtype).removeprefix("torch.")] = (torch.matmul, a8.to(dtype), b8.to(dtype))
        calls = {name: (lambda fn=fn, a=a, b=b: fn(a, b)) for name, (fn, a, b) in operands.items()}
        medians = {name: timing.median
                   for name, timing in time_calls(calls, runs=runs, warmup=warmup, device=device).items()}
        for name, median in medians.items():
            table.add(m=size, k=size, n=size, dtype=name, median_ms=median * 1e3,
                      tera_ops_per_s=2 * size**3 / median / 1e12, ratio_to_fp16=median / medians["float16"])


def run(device: torch.device, *, shapes: Sequence[tuple[int, int]] = SHAPES, rows_list: Sequence[int] = ROWS,
        fractions: Sequence[float] = OUTLIER_FRACTIONS, runs: int = 10, warmup: int = 2,
        naive_rows: int = 128, int_mm_sizes: Sequence[int] = (2048, 4096, 8192)) -> list[Table]:
    """All kernel tables for the given problem sizes (the CLI passes the targets' sizes)."""
    import bitsandbytes as bnb

    generator = torch.Generator().manual_seed(0)
    kernel = Table("kernel", "mixed_precision_forward vs fp32 matmul and int8 libraries", KERNEL_COLUMNS)
    path = int8_matmul_path(device)
    targets = Table("kernel_targets", f"Kernel targets, int8_matmul path {path}", TARGET_COLUMNS)
    targets.notes.append(
        "limits for the path in use: with 'int_mm' (a fast int8 GEMM) QuantizedLinear pure <= 0.5x fp32, "
        "LLM.int8 (t=6) with outliers <= 0.7x, mixed_precision_forward (float weight, quantized per call) "
        "<= 0.9x; with 'fp32' (no int8 dot-product instructions) 1.5x / 2x (with outliers). "
        "Both: QuantizedLinear never slower than bnb. They are set at 2048 x 768 @ 768 x 3072; "
        "they are checked at every size.")
    naive = Table("kernel_naive", "Naive Python-loop reference vs the vectorised kernel (CPU)", NAIVE_COLUMNS)
    kernel.notes += [
        "ratio_to_fp32: median time / median torch.matmul fp32 time on the same data; rel_error: "
        "||y - y_fp32||_F / ||y_fp32||_F.",
        "mixed_precision_forward quantizes its weight on every call; QuantizedLinear, bnb and "
        "quantize_dynamic hold a weight quantized once.",
        f"bnb {bnb.__version__}: Linear8bitLt in eval mode runs MatMul8bitLt (inputs cast to fp16, outlier "
        "columns in fp16); its int8 GEMM here: "
        + (bnb_cpu_path() if device.type == "cpu" else "bitsandbytes' CUDA int8 kernels") + ".",
        "quantize_dynamic: torch.ao.quantization, deprecated in torch 2.13 but working; per-tensor "
        "activation scale, so planted outliers cost it accuracy. Not run on CUDA.",
    ]
    naive.notes += [
        "naive: benchmarks/naive_reference.py, one QuantizedVector per row and per column and one int32 "
        "dot per output element in Python loops, 1% outlier columns; timed once on 1 and on "
        f"{naive_rows} rows, larger sizes extrapolated as fixed + per_row * rows.",
        "max_abs_diff: largest |naive - mixed_precision_forward| on the timed rows. The int8 codes are "
        "identical; the two dequantize in a different order of float operations (and accumulate the fp16 "
        "part differently), hence float32 rounding differences.",
    ]
    for in_features, out_features in shapes:
        weight = torch.randn(in_features, out_features, generator=generator) * 0.02
        benchmark_shape(weight, rows_list, fractions, runs=runs, warmup=warmup, device=device,
                        generator=generator, table=kernel, targets=targets)
        benchmark_naive(weight, rows_list, 0.01, naive_rows, runs=runs, warmup=warmup,
                        generator=generator, table=naive)
    if device.type == "cuda":
        targets.notes.append("these targets are set for the CPU; on CUDA they are shown for information.")
    elif path == "fp32" and int8_instructions() != "none":
        targets.notes.append("int8_matmul forced onto the fp32 path on a CPU with int8 dot-product instructions: "
                             "the lab's ratios stand for a CPU without them, but bnb still runs its own int8 "
                             "kernel here, so the bnb comparisons are not that class's.")
    tables = [kernel, targets, naive]
    if device.type == "cuda":
        int_mm = Table("int_mm", "torch._int_mm int8 throughput vs float matmul (CUDA)", INT_MM_COLUMNS)
        int_mm.notes.append("tera_ops_per_s: 2*m*n*k / median time (TOPS for int8, TFLOPS otherwise); "
                            f"fp32 with TF32 {'on' if torch.backends.cuda.matmul.allow_tf32 else 'off'}.")
        benchmark_int_mm(int_mm_sizes, runs=runs, warmup=warmup, device=device, table=int_mm)
        tables.append(int_mm)
    return tables


def main(argv: Sequence[str] | None = None) -> list[Table]:
    parser = build_parser(__doc__.splitlines()[0])
    parser.add_argument("--naive-rows", type=int, default=None,
                        help="rows the naive reference is timed on (default 128, --quick 4)")
    args = parser.parse_args(argv)
    device = setup(args)
    quick = args.quick
    tables = run(device,
                 rows_list=(128,) if quick else ROWS,
                 fractions=(0.0, 0.01) if quick else OUTLIER_FRACTIONS,
                 runs=args.runs or (3 if quick else 10),
                 warmup=args.warmup if args.warmup is not None else (1 if quick else 2),
                 naive_rows=args.naive_rows or (4 if quick else 128),
                 int_mm_sizes=(2048,) if quick else (2048, 4096, 8192))
    report("kernel", header("Kernel benchmark: int8 matmul", device, args), tables, args.out, device)
    return tables


if __name__ == "__main__":
    main()
