"""Model benchmark: latency and size of every compressed variant of a BERT-base-shaped encoder.

The encoder is `BertModel(BertConfig())` with random weights (speed and size do not depend on
training; biases and norm parameters get N(0, 0.02^2) noise so that, as in a trained model, no
tensor is all zeros), run on a batch of 8 x 128 random token ids. Variants: fp32, fp16,
bitsandbytes int8 (LLM.int8, threshold 6.0) / fp4 / nf4 loaded through `BitsAndBytesConfig`
from a `save_pretrained` copy, the lab's `quantize_model` int8 (pure) / LLM.int8 (6.0) / 1.58bit
/ 1bit, unstructured 40% (`apply_weight_pruning`; dense in memory, also stored as a sparse state
dict), `prune_ffn_neurons` 40%, `prune_attention_heads` 25%, and `make_student` with half the
layers (6 for BERT-base).

Latency is `evaluation.measure_latency` per batch, size `evaluation.model_size_mb`. Each variant is
timed in `measure_latency(..., runs=1)` calls alternating with the fp32 model (variant, fp32,
variant, ...) and its speedup is the ratio of the two medians, so a change in machine load
during the run does not bias it. The expected size ratio of each variant is computed from the
fp32 model's parameter counts and the storage rules (int8: 1 byte per weight, 1.58-bit: 2 bits,
1-bit: 1 bit, plus one fp32 scale per output channel; bnb 4-bit: 4 bits plus an fp32 absmax per
64 weights; fp16: 2 bytes; removed neurons, heads and layers: their parameters) and checked
against the measured ratio to 1%. Variants are built one at a time from the same fp32 model.

Run: `python benchmarks/models.py [--quick] [--device cpu|cuda] [--threads N] [--runs N]`.
"""
from __future__ import annotations

import copy
import math
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the lab modules and `benchmarks` live there

from benchmarks.common import Table, Timing, build_parser, header, report, setup, verdict
from toolkit.students import make_student
from toolkit.evaluation import MB, measure_latency, model_size_mb
from pruning import apply_weight_pruning
from toolkit.shrink import prune_attention_heads, prune_ffn_neurons
from toolkit.sparse import to_sparse_state_dict
from toolkit.layers import quantize_model

FFN_FRACTION, HEAD_FRACTION, UNSTRUCTURED_FRACTION = 0.4, 0.25, 0.4
SIZE_TOLERANCE = 0.01
SLOW_FP16 = 3  # on CPU, fp16 slower than this many times fp32 is estimated from one sequence (see run)
# Bytes a quantized weight of n elements occupies under the storage rules (scales counted apart).
WEIGHT_BYTES = {"int8": lambda n: n, "1.58bit": lambda n: math.ceil(n / 4), "1bit": lambda n: math.ceil(n / 8)}

COLUMNS = ("variant", "timed_on", "median_ms", "p90_ms", "speedup_vs_fp32", "size_mb", "size_ratio",
           "expected_size_ratio", "size_check")
TARGET_COLUMNS = ("target", "measured", "limit", "verdict")


@dataclass
class Variant:
    """A compressed model to build from the fp32 one, with the bytes its compression should save."""

    name: str
    build: Callable[[nn.Module], nn.Module]
    saved_bytes: Callable[[nn.Module, nn.Module], int]  # (fp32 model, variant) -> expected bytes saved


def _linear_numels(model: nn.Module, names: Sequence[str]) -> list[tuple[int, int]]:
    """(weight numel, out_features) of the named nn.Linear layers of the fp32 model."""
    return [(model.get_submodule(name).weight.numel(), model.get_submodule(name).out_features) for name in names]


def lab_quantized(fmt: str, threshold: float | None) -> Variant:
    """quantize_model(fmt): each replaced weight goes from 4 bytes per element to WEIGHT_BYTES(n) plus an
    fp32 scale per output row."""
    def saved(base: nn.Module, model: nn.Module) -> int:
        layers = _linear_numels(base, model.quantization_report["replaced"])
        return sum(4 * n - WEIGHT_BYTES[fmt](n) - 4 * out for n, out in layers)
    label = {"int8": "int8" if threshold is None else f"LLM.int8 (t={threshold:g})"}.get(fmt, fmt)
    return Variant(f"lab quantize_model {label}",
                   lambda base: quantize_model(copy.deepcopy(base), fmt, threshold, verbose=False), saved)


def bnb_quantized(kind: str, folder: Path, device: torch.device) -> Variant:
    """A bitsandbytes model loaded from `folder` (a save_pretrained copy of the fp32 model).

    Storage rules: int8 1 byte per weight plus an fp32 scale per row (`SCB`); 4-bit half a byte
    per weight plus one fp32 absmax per block of 64 weights.
    """
    import bitsandbytes as bnb
    from transformers import AutoModel, BitsAndBytesConfig

    configs = {
        "int8": BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=6.0),
        "fp4": BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="fp4", bnb_4bit_compute_dtype=torch.float32),
        "nf4": BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32),
    }

    def build(base: nn.Module) -> nn.Module:
        return AutoModel.from_pretrained(folder, quantization_config=configs[kind],
                                         device_map={"": str(device)}).eval()

    def saved(base: nn.Module, model: nn.Module) -> int:
        quantized = [name for name, module in model.named_modules()
                     if isinstance(module, (bnb.nn.Linear8bitLt, bnb.nn.Linear4bit))]
        layers = _linear_numels(base, quantized)
        if kind == "int8":
            return sum(4 * n - n - 4 * out for n, out in layers)
        return sum(4 * n - math.ceil(n / 2) - 4 * math.ceil(n / 64) for n, _ in layers)
    label = "LLM.int8 (t=6)" if kind == "int8" else kind
    return Variant(f"bnb {label}", build, saved)


def ffn_pruned(fraction: float) -> Variant:
    """Every layer loses round(fraction * I) neurons: a row and bias of the up-projection, a column of the down one."""
    def saved(base: nn.Module, model: nn.Module) -> int:
        config = base.config
        removed = round(fraction * config.intermediate_size)
        return 4 * config.num_hidden_layers * removed * (2 * config.hidden_size + 1)
    return Variant(f"prune_ffn_neurons {fraction:.0%}",
                   lambda base: prune_ffn_neurons(copy.deepcopy(base), fraction), saved)


def heads_pruned(fraction: float) -> Variant:
    """Every layer loses round(fraction * heads) heads: d rows (and biases) of q, k, v and d columns of the output."""
    def saved(base: nn.Module, model: nn.Module) -> int:
        config = base.config
        removed = round(fraction * config.num_attention_heads)
        d = config.hidden_size // config.num_attention_heads
        return 4 * config.num_hidden_layers * removed * (4 * d * config.hidden_size + 3 * d)
    return Variant(f"prune_attention_heads {fraction:.0%}",
                   lambda base: prune_attention_heads(copy.deepcopy(base), fraction), saved)


def student(layers: int) -> Variant:
    """The student drops (L - layers) encoder layers, each with the parameter count of layer 0."""
    def saved(base: nn.Module, model: nn.Module) -> int:
        per_layer = sum(p.numel() for p in base.encoder.layer[0].parameters())
        return 4 * (base.config.num_hidden_layers - layers) * per_layer
    return Variant(f"make_student ({layers} layers)", lambda base: make_student(base, layers), saved)


def unstructured(fraction: float) -> Variant:
    """Masked weights stay dense in memory: nothing saved (the sparse state dict row shows the stored size)."""
    return Variant(f"unstructured {fraction:.0%} (dense in memory)",
                   lambda base: apply_weight_pruning(copy.deepcopy(base), nn.Linear, fraction),
                   lambda base, model: 0)


def sparse_saved_bytes(base: nn.Module, fraction: float) -> int:
    """Values + bitmask storage of every pruned nn.Linear weight: (n - round(f n)) * 4 + ceil(n / 8) + 8 * ndim."""
    weights = [m.weight for m in base.modules() if isinstance(m, nn.Linear)]
    return sum(4 * w.numel() - (4 * (w.numel() - round(fraction * w.numel())) + math.ceil(w.numel() / 8) + 16)
               for w in weights)


def fp16_variant() -> Variant:
    """Every floating parameter and buffer goes from 4 to 2 bytes."""
    def saved(base: nn.Module, model: nn.Module) -> int:
        return sum(t.numel() * 2 for t in [*base.parameters(), *base.buffers()] if t.is_floating_point())
    return Variant("fp16", lambda base: copy.deepcopy(base).half(), saved)


def random_encoder(config) -> nn.Module:
    """`BertModel(config)` in eval mode, seeded, with noise on the 1-d parameters (biases, norms).

    A fresh BertModel has all-zero biases, which sparse storage would compress as if pruned.
    """
    from transformers import BertModel

    torch.manual_seed(0)
    model = BertModel(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() == 1:
                parameter.add_(torch.randn_like(parameter) * 0.02)
    return model


def make_inputs(config, batch: int, seq: int, device: torch.device, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random token ids (batch, seq) int64 and an all-ones attention mask, on `device`."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, config.vocab_size, (batch, seq), generator=generator)
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device)}


def paired_latency(model: nn.Module, base: nn.Module, inputs: dict, runs: int, warmup: int) -> tuple[Timing, Timing]:
    """Milliseconds per batch of `model` and of the fp32 `base`, timed alternately.

    Each sample is one `evaluation.measure_latency(..., runs=1)` call; alternating the two
    models makes a change in machine load hit both alike, so their ratio stays fair.
    """
    measure_latency(model, inputs, runs=1, warmup=warmup)
    variant, fp32 = [], []
    for _ in range(runs):
        variant.append(measure_latency(model, inputs, runs=1, warmup=0)["median_ms"])
        fp32.append(measure_latency(base, inputs, runs=1, warmup=0)["median_ms"])
    return Timing(tuple(variant)), Timing(tuple(fp32))


def run(device: torch.device, *, config=None, batch: int = 8, seq: int = 128, runs: int = 5, warmup: int = 1,
        fp16_cpu_batch: int = 1) -> list[Table]:
    """Build, time and size every variant; returns the variants table and the targets table.

    Args:
        device: where the models run.
        config: a BertConfig (default: BertConfig(), BERT-base).
        batch, seq: the timed batch.
        runs: timed batches of each variant, each followed by one of the fp32 model.
        warmup: untimed batches of each variant first.
        fp16_cpu_batch: on CPU, fp16 is first timed once on this many sequences of `seq` tokens.
            A CPU without a native fp16 GEMM (no AVX-512 FP16 / AMX) runs it at about 1 GFLOP/s,
            so a full batch would take minutes: when the time scaled linearly to `batch` (what
            a compute-bound model costs) is over SLOW_FP16 x fp32, that estimate is reported;
            otherwise fp16 is timed like every other variant.
    """
    from transformers import BertConfig

    config = config or BertConfig()
    base = random_encoder(config).to(device)
    inputs = make_inputs(config, batch, seq, device)
    shape = f"{batch}x{seq}"
    table = Table("models", f"BERT-base-shaped encoder ({config.num_hidden_layers} layers, hidden "
                  f"{config.hidden_size}): latency and size", COLUMNS)
    base_mb = model_size_mb(base)
    base_bytes = base_mb * MB

    def add(name: str, timed_on: str, median: float, p90: float, speedup: float, size_mb: float, ratio: float,
            expected: float) -> None:
        table.add(variant=name, timed_on=timed_on, median_ms=median, p90_ms=p90, speedup_vs_fp32=speedup,
                  size_mb=size_mb, size_ratio=ratio, expected_size_ratio=expected,
                  size_check=verdict(abs(ratio / expected - 1), SIZE_TOLERANCE))

    fp32 = measure_latency(base, inputs, runs=runs, warmup=warmup)
    fp32_median = fp32["median_ms"]
    add("fp32", shape, fp32_median, fp32["p90_ms"], 1.0, base_mb, 1.0, 1.0)
    speedups, fp32_medians = {}, [fp32_median]

    with tempfile.TemporaryDirectory() as folder:
        base.save_pretrained(folder)
        variants = [fp16_variant(),
                    *(bnb_quantized(kind, Path(folder), device) for kind in ("int8", "fp4", "nf4")),
                    lab_quantized("int8", None), lab_quantized("int8", 6.0),
                    lab_quantized("1.58bit", None), lab_quantized("1bit", None),
                    unstructured(UNSTRUCTURED_FRACTION), ffn_pruned(FFN_FRACTION), heads_pruned(HEAD_FRACTION),
                    student(config.num_hidden_layers // 2)]
        for variant in variants:
            model = variant.build(base)
            # Sized before it runs, as loaded: on CPUs with AVX-512 bf16, bitsandbytes' first
            # forward repacks 4-bit weights for its kernel (absmax in bf16), which the storage
            # rules below do not describe; model_size_mb counts whatever the layers hold.
            size_mb, expected = model_size_mb(model), 1 - variant.saved_bytes(base, model) / base_bytes
            scaled = None
            if variant.name == "fp16" and device.type == "cpu":
                small = make_inputs(config, fp16_cpu_batch, seq, device)
                scaled = measure_latency(model, small, runs=1, warmup=0)["median_ms"] * batch / fp16_cpu_batch
            if scaled is not None and scaled > SLOW_FP16 * fp32_median:
                median, p90, speedup = scaled, math.nan, fp32_median / scaled
                timed_on = f"{fp16_cpu_batch}x{seq}, x{batch / fp16_cpu_batch:g}"
                table.notes.append(
                    f"fp16 on this CPU: one batch of {fp16_cpu_batch}x{seq} timed once and scaled linearly to "
                    f"{batch} sequences (p90 n/a), because it is over {SLOW_FP16}x slower than fp32: without a "
                    "native fp16 GEMM (AVX-512 FP16 / AMX) its time grows with the rows, at about 1 GFLOP/s on "
                    "the 2-core AVX2 lab machine, and a full batch would take minutes.")
            else:
                timing, reference = paired_latency(model, base, inputs, runs, warmup)
                speedup, median, p90, timed_on = reference.median / timing.median, timing.median, timing.p90, shape
                fp32_medians.append(reference.median)
            speedups[variant.name] = speedup
            add(variant.name, timed_on, median, p90, speedup, size_mb, size_mb / base_mb, expected)
            if variant.name.startswith("unstructured"):
                # Sized against the dense state dict (non-persistent buffers are in neither).
                stored_mb, dense_mb = model_size_mb(to_sparse_state_dict(model)), model_size_mb(base.state_dict())
                add(f"unstructured {UNSTRUCTURED_FRACTION:.0%} (sparse state dict)", "-", math.nan, math.nan,
                    math.nan, stored_mb, stored_mb / dense_mb,
                    1 - sparse_saved_bytes(base, UNSTRUCTURED_FRACTION) / (dense_mb * MB))
            del model  # freed by reference counting: one variant in memory at a time

    table.notes[:0] = [  # before the fp16 note, if any
        "speedup_vs_fp32: median fp32 time / median variant time, both from batches timed alternately "
        "(variant, fp32, variant, ...), so machine drift cancels; size_ratio: evaluation.model_size_mb(variant) "
        "/ model_size_mb(fp32).",
        f"drift: the fp32 median per variant ranged from {min(fp32_medians):.4g} to {max(fp32_medians):.4g} ms "
        "over the run.",
        "expected_size_ratio: from the fp32 model's parameter counts and the storage rules; size_check: PASS "
        f"when the measured ratio is within {SIZE_TOLERANCE:.0%} of it.",
        "bnb rows: loaded with BitsAndBytesConfig from a save_pretrained copy of the same random model "
        "(compute dtype float32 for 4-bit); bnb skips no encoder layer.",
        "the sparse state dict row sizes pruning.to_sparse_state_dict (values + bitmask), not a model in memory.",
    ]
    targets = Table("models_targets", "Model-level targets", TARGET_COLUMNS)
    int8 = speedups["lab quantize_model int8"]
    checks = [
        ("quantize_model int8 latency / fp32", 1 / int8, 1.2, True),
        ("quantize_model int8 latency / bnb int8", speedups["bnb LLM.int8 (t=6)"] / int8, 1.0, True),
        (f"fp32 latency / prune_ffn_neurons {FFN_FRACTION:.0%}", speedups[f"prune_ffn_neurons {FFN_FRACTION:.0%}"],
         1.25, False),
    ]
    for name, measured, limit, at_most in checks:
        targets.add(target=name, measured=measured, limit=limit, verdict=verdict(measured, limit, at_most=at_most))
    if device.type == "cuda":
        targets.notes.append("the latency targets are set for the CPU; on CUDA they are shown for information.")
    failed_sizes = [row["variant"] for row in table.rows if row["size_check"] != "PASS"]
    targets.add(target="size ratios equal the storage rules (within 1%)", measured=float(len(failed_sizes)),
                limit=0.0, verdict="PASS" if not failed_sizes else "MISS")
    if failed_sizes:
        targets.notes.append("size ratio off the storage rule for: " + ", ".join(failed_sizes))
    return [table, targets]


def main(argv: Sequence[str] | None = None) -> list[Table]:
    parser = build_parser(__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    args = parser.parse_args(argv)
    device = setup(args)
    config = None
    if args.quick:  # a 4-layer, 256-wide BERT: the same variants and code paths in seconds
        from transformers import BertConfig
        config = BertConfig(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024)
    tables = run(device, config=config, batch=args.batch, seq=args.seq,
                 runs=args.runs or (3 if args.quick else 5),
                 warmup=args.warmup if args.warmup is not None else 1)
    report("models", header("Model benchmark: BERT-base-shaped encoder", device, args), tables, args.out, device)
    return tables


if __name__ == "__main__":
    main()
