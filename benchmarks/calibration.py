"""Calibration-aware compression benchmark: int4 (round-to-nearest, activation-aware), nf4, magnitude vs Wanda.

One model, one run, one calibration pass shared by AWQ (and Wanda with `--wanda-one-pass`): perplexity
of fp32 and of each variant, as a ratio to fp32.

- int4 RTN: `quantize_model(model, "int4", group_size=G)`, round-to-nearest, asymmetric, group G.
- int4 AWQ: the same with `calibration=` (activation-aware scales folded into the previous op, and
  clipping search; `toolkit.awq`).
- bnb nf4: bitsandbytes 4-bit NormalFloat, block 64, loaded through `BitsAndBytesConfig` from a
  `save_pretrained` copy (compute dtype float32; bnb also keeps the output head in float).
- magnitude 50%: each row of each layer loses its 50% smallest |w| (`toolkit.wanda.apply_magnitude_pruning`);
  "magnitude 50% (lab, per layer)" is the lab's `apply_weight_pruning` on each layer.
- Wanda 50% / 2:4 and magnitude 2:4 (`toolkit.wanda`); Wanda prunes block by block from the calibration
  batches (its default), or from the shared one-pass statistics with `--wanda-one-pass`.

Every variant keeps the output head in float. Calibration: `--calibration-samples` windows of `--seq-len`
tokens of the train split; scoring: `toolkit.evaluation.perplexity` on the test split (windows of
`--seq-len`). The targets (AWQ int4 <= 1.18x fp32 and below nf4 and RTN; Wanda 50% <= 2.5x fp32
and <= 0.3x the lab's per-layer magnitude 50%; Wanda 2:4 <= 6x fp32) are meant for real pretrained
models. The default offline model is a small Llama (hidden 128, 4 layers) pretrained here on the
shipped corpus (`pretrain_small_llama`: 300 steps of 16 windows of 128 tokens, about two minutes on
one core, test perplexity about 2); `--quick` uses the shipped tiny Llama (`trained_tiny_model("causal")`).
Such small models have no outlier channels, so the methods differ little on them: the verdicts show the
code path, not the methods' worth.

Run: `python benchmarks/calibration.py [--model PATH] [--quick] [--wanda-one-pass] [--device cpu|cuda] [--threads N]`.
"""
from __future__ import annotations

import copy
import math
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the lab modules and `benchmarks` live there

from benchmarks.common import Table, build_parser, header, report, setup, verdict
from pruning import apply_weight_pruning
from toolkit.calibration import calibration_batches, collect_linear_inputs
from toolkit.evaluation import (hub_available, load_model, load_texts, model_kind, perplexity, tiny_model, tiny_tokenizer,
                                trained_tiny_model)
from toolkit.layers import linear_targets, quantize_model
from toolkit.wanda import apply_magnitude_pruning, apply_wanda_pruning, is_nm_sparse

COLUMNS = ("method", "perplexity", "ratio_to_fp32", "seconds")
TARGET_COLUMNS = ("target", "measured", "limit", "verdict")


def pretrain_small_llama(steps: int = 300, seed: int = 0) -> tuple[nn.Module, object]:
    """A LlamaForCausalLM (hidden 128, 4 layers, 4 heads, FFN 512) trained on the shipped train split.

    Next-token loss on random windows of 128 tokens of the joined split, batches of 16, AdamW (lr 2e-3,
    weight decay 0.1, 50 warm-up steps, cosine decay to 0), gradient clipping at 1. Seeded.

    Returns:
        (model in eval mode, `tiny_tokenizer()`).
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tiny_tokenizer()
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=4, intermediate_size=512, max_position_embeddings=512,
            pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id))
    ids = tokenizer("\n\n".join(load_texts("train", source="local")), add_special_tokens=False,
                    return_tensors="pt", verbose=False)["input_ids"][0]
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.1)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / 50) * 0.5 * (1 + math.cos(math.pi * step / steps)))
    model.train()
    for _ in range(steps):
        starts = torch.randint(len(ids) - 129, (16,), generator=generator)
        batch = torch.stack([ids[start:start + 128] for start in starts])
        model(input_ids=batch, labels=batch).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
    return model.eval(), tokenizer


def _lab_magnitude(model: nn.Module) -> nn.Module:
    for layer in linear_targets(model).values():
        apply_weight_pruning(layer, nn.Linear, 0.5)
    return model


def _bnb_nf4(folder: Path, kind: str, device: torch.device) -> nn.Module:
    from transformers import BitsAndBytesConfig

    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
    model, _ = load_model(folder, kind, quantization_config=config, device_map={"": str(device)})
    return model


def run(model: nn.Module, tokenizer, eval_texts: Sequence[str], calib_texts: Sequence[str], device: torch.device,
        *, group_size: int, samples: int, seq_len: int, bnb_folder: Path | None,
        wanda_sequential: bool = True, progress: bool = False) -> list[Table]:
    """Build every variant from `model` (fp32, on `device`) and score it; returns the result and target tables.

    `wanda_sequential`: Wanda prunes block by block from the batches (False: from the shared one-pass statistics).
    """
    kind = model_kind(model)
    model = model.float().to(device).eval()
    batches = calibration_batches(tokenizer, calib_texts, n_samples=samples, seq_len=seq_len, batch_size=4, kind=kind)
    score = lambda m: perplexity(m, tokenizer, eval_texts, max_length=seq_len, progress=progress)  # noqa: E731
    began = time.perf_counter()
    stats = collect_linear_inputs(model, batches, layers=list(linear_targets(model)), sample=True, progress=progress)
    calibration_s = time.perf_counter() - began
    base = score(model)
    shared = "AWQ" if wanda_sequential else "AWQ and Wanda"
    table = Table("calibration", f"Perplexity relative to fp32 (one calibration pass shared by {shared})", COLUMNS)
    wanda_calibration = batches if wanda_sequential else stats
    table.add(method="fp32", perplexity=base, ratio_to_fp32=1.0, seconds=0.0)
    builds: dict[str, Callable[[], nn.Module]] = {
        f"int4 g{group_size} RTN": lambda: quantize_model(copy.deepcopy(model), "int4", group_size=group_size,
                                                         verbose=False),
        f"int4 g{group_size} AWQ": lambda: quantize_model(copy.deepcopy(model), "int4", group_size=group_size,
                                                         calibration=stats, verbose=False),
        "bnb nf4 (block 64)": (lambda: _bnb_nf4(bnb_folder, kind, device)) if bnb_folder else None,
        "magnitude 50% (per row)": lambda: apply_magnitude_pruning(copy.deepcopy(model), 0.5),
        "magnitude 50% (lab, per layer)": lambda: _lab_magnitude(copy.deepcopy(model)),
        "Wanda 50%": lambda: apply_wanda_pruning(copy.deepcopy(model), wanda_calibration, 0.5, progress=progress),
        "magnitude 2:4": lambda: apply_magnitude_pruning(copy.deepcopy(model), None, "2:4"),
        "Wanda 2:4": lambda: apply_wanda_pruning(copy.deepcopy(model), wanda_calibration, None, "2:4",
                                                 progress=progress),
    }
    ratios, exact_24 = {}, False
    for name, build in builds.items():
        if build is None:
            table.add(method=name, perplexity=float("nan"), ratio_to_fp32=float("nan"), seconds=float("nan"))
            continue
        began = time.perf_counter()
        variant = build()
        uses_stats = "AWQ" in name or ("Wanda" in name and not wanda_sequential)
        seconds = time.perf_counter() - began + (calibration_s if uses_stats else 0.0)
        value = score(variant)
        ratios[name] = value / base
        table.add(method=name, perplexity=value, ratio_to_fp32=value / base, seconds=seconds)
        if name == "Wanda 2:4":
            exact_24 = all(is_nm_sparse(layer.weight) and int((layer.weight == 0).sum()) * 2 == layer.weight.numel()
                           for layer in linear_targets(variant).values())
        del variant
    table.notes += [
        f"calibration: {samples} windows of {seq_len} tokens, {sum(s.tokens for s in stats.values()) // len(stats)} "
        f"tokens per layer, {calibration_s:.1f} s (counted in the {shared} seconds)",
        "seconds: time to build the variant (compression), not inference",
    ]
    awq, rtn = ratios.get(f"int4 g{group_size} AWQ", float("nan")), ratios.get(f"int4 g{group_size} RTN", float("nan"))
    nf4 = ratios.get("bnb nf4 (block 64)", float("nan"))
    targets = Table("calibration_targets", "Targets: measured ratio <= limit (meant for real pretrained models)",
                    TARGET_COLUMNS)
    for label, measured, limit in (("AWQ int4 / fp32", awq, 1.18), ("AWQ int4 / RTN int4", awq / rtn, 1.0),
                                   ("AWQ int4 / bnb nf4", awq / nf4, 1.0), ("Wanda 50% / fp32", ratios["Wanda 50%"], 2.5),
                                   ("Wanda 50% / lab magnitude 50%",
                                    ratios["Wanda 50%"] / ratios["magnitude 50% (lab, per layer)"], 0.3),
                                   ("Wanda 2:4 / fp32", ratios["Wanda 2:4"], 6.0)):
        targets.add(target=label, measured=measured, limit=limit, verdict=verdict(measured, limit))
    targets.add(target="Wanda 2:4: exactly 2 zeros in every 4", measured=float(exact_24), limit=1.0,
                verdict="PASS" if exact_24 else "MISS")
    return [table, targets]


def causal_model(args) -> tuple[nn.Module, object, str, str]:
    """The benchmark's causal LM from `--model` (hub or path), else a tiny Llama pretrained on the shipped
    corpus: `(model, tokenizer, description, texts source)`."""
    source = "auto" if args.model is not None and hub_available() else "local"
    if args.model is not None:
        model, tokenizer = load_model(args.model)
        return model, tokenizer, f"model: {args.model}", source
    if args.quick and args.pretrain_steps is None:
        model, tokenizer = trained_tiny_model("causal")
        return model, tokenizer, "model: trained_tiny_model('causal'), data/models/tiny-llama (offline sanity pass)", source
    steps = args.pretrain_steps if args.pretrain_steps is not None else 300
    if args.quick:
        model, tokenizer = tiny_model("causal", pretrain_steps=steps)
        return model, tokenizer, f"model: tiny_model('causal', pretrain_steps={steps}) (offline sanity pass)", source
    model, tokenizer = pretrain_small_llama(steps)
    return model, tokenizer, (f"model: pretrain_small_llama({steps}), a hidden-128 Llama trained on the shipped "
                              "corpus (offline; small models have no outlier channels)"), source


def main(argv: Sequence[str] | None = None) -> list[Table]:
    parser = build_parser(__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None,
                        help="a local save_pretrained folder (BERT- or Llama-family LM); default: a tiny Llama "
                             "pretrained on the shipped corpus")
    parser.add_argument("--texts", type=int, default=None, help="test texts to score (default all; --quick 40)")
    parser.add_argument("--calibration-samples", type=int, default=None, help="calibration windows (default 32)")
    parser.add_argument("--seq-len", type=int, default=128, help="tokens per calibration and scoring window")
    parser.add_argument("--group-size", type=int, default=64, help="int4 group size")
    parser.add_argument("--pretrain-steps", type=int, default=None,
                        help="steps of the default model's pretraining (default 300; --quick: the shipped tiny Llama)")
    parser.add_argument("--no-bnb", action="store_true", help="skip the bitsandbytes nf4 row")
    parser.add_argument("--wanda-one-pass", action="store_true",
                        help="Wanda from the one-pass statistics shared with AWQ (default: block by block)")
    args = parser.parse_args(argv)
    device = setup(args)
    model, tokenizer, described, source = causal_model(args)
    eval_texts = load_texts("test", source=source, limit=args.texts or (40 if args.quick else None))
    calib_texts = load_texts("train", source=source)
    samples = args.calibration_samples or (8 if args.quick else 32)
    with tempfile.TemporaryDirectory() as folder:
        bnb_folder = None
        if not args.no_bnb:
            if args.model is not None:
                bnb_folder = args.model
            else:
                model.save_pretrained(folder)
                tokenizer.save_pretrained(folder)
                bnb_folder = Path(folder)
        tables = run(model, tokenizer, eval_texts, calib_texts, device, group_size=args.group_size, samples=samples,
                     seq_len=args.seq_len, bnb_folder=bnb_folder, wanda_sequential=not args.wanda_one_pass)
    tables[0].notes.insert(0, f"{described}; texts: load_texts(..., source={source!r})")
    report("calibration", header("Calibration-aware compression", device, args), tables, args.out)
    return tables


if __name__ == "__main__":
    main()
