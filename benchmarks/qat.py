"""Quantization-aware distillation benchmark: fp32, post-training and QAT perplexity, and the step time.

One model, one run:

- fp32: the model as loaded; it is also the frozen teacher.
- post-training: `quantize_model(copy, F)` (the packed layers, head in float).
- QAT: `prepare_qat(copy, F)` with its defaults, then `distill_model(teacher, student, batches, 1.0, 1.0, 1,
  --lr)` on N batches of `--batch-size` x `--seq-len` tokens of the train split (`toolkit.qat.qat_batches`),
  then `convert_qat`; scored packed (the fake-quantized model's score is in the notes).

Scoring: `toolkit.evaluation.perplexity` on the test split. Step time: the median over alternated runs of
one `distill_model` step of the fake-quantized student (teacher forward, student forward and backward,
Adam) against one plain fp32 forward plus backward of the float student, on the same batch; the full pass
times a BERT-base-sized BertForMaskedLM (random weights: the time does not depend on them), `--quick` the
benchmarked model. Targets (meant for a ~135M pretrained LM; a tiny model shows the code path): 1.58-bit
QAT <= 25x fp32 and <= 1e-4 of post-training; 1-bit QAT <= post-training / 100; int4 QAT recovers >= half
of round-to-nearest's gap to fp32; step <= 3.5x the fp32 forward plus backward.

Run: `python benchmarks/qat.py [--model PATH] [--format 1.58bit|1bit|int4|int8] [--steps N] [--quick]`.
"""
from __future__ import annotations

import copy
import math
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the lab modules and `benchmarks` live there

from benchmarks.calibration import causal_model
from benchmarks.common import Table, build_parser, header, report, setup, synchronize, verdict
from distillation import distill_model
from toolkit.evaluation import load_texts, model_kind, perplexity
from toolkit.layers import quantize_model
from toolkit.qat import QAT_FORMATS, convert_qat, prepare_qat, qat_batches

COLUMNS = ("method", "perplexity", "ratio_to_fp32", "seconds_per_step")
TIME_COLUMNS = ("model", "fp32_forward_backward_s", "qat_step_s", "ratio")
TARGET_COLUMNS = ("target", "measured", "limit", "verdict")


def step_times(model: nn.Module, batch: dict, fmt: str, *, runs: int, warmup: int,
               device: torch.device) -> tuple[float, float]:
    """Median seconds of one QAT step (`distill_model` on one batch) and of one fp32 forward + backward, alternated."""
    teacher = model.to(device).eval()
    float_student = copy.deepcopy(model).train()
    qat_student = prepare_qat(copy.deepcopy(model), fmt, verbose=False)
    batch = {key: value.to(device) for key, value in batch.items()}

    def fp32_step() -> None:
        float_student.zero_grad()
        float_student(**batch).loss.backward()

    def qat_step() -> None:
        distill_model(teacher, qat_student, [batch], 1.0, 1.0, 1, 3e-4, progress=False)

    samples: dict[str, list[float]] = {"fp32": [], "qat": []}
    for _ in range(warmup):
        fp32_step(), qat_step()
    for _ in range(runs):
        for name, fn in (("fp32", fp32_step), ("qat", qat_step)):
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            samples[name].append(time.perf_counter() - start)
    return statistics.median(samples["fp32"]), statistics.median(samples["qat"])


def bert_base_sized() -> tuple[nn.Module, dict]:
    """A BertForMaskedLM with bert-base-uncased's shape (12 x 768, 110M parameters), random weights, and one
    batch of 2 x 128 random token ids with every position labelled."""
    from transformers import BertConfig, BertForMaskedLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = BertForMaskedLM(BertConfig())
        ids = torch.randint(1000, 30000, (2, 128))
    return model, {"input_ids": ids, "labels": ids}


def run(model: nn.Module, tokenizer, eval_texts: Sequence[str], train_texts: Sequence[str], device: torch.device,
        *, fmt: str, steps: int, lr: float, batch_size: int, seq_len: int, timing: tuple[str, nn.Module, dict],
        runs: int, warmup: int) -> list[Table]:
    """Score fp32, post-training and QAT `fmt`; time the QAT step on `timing` = (label, model, batch)."""
    kind = model_kind(model)
    model = model.float().to(device).eval()
    score = lambda m: perplexity(m, tokenizer, eval_texts, max_length=seq_len, progress=False)  # noqa: E731
    base = score(model)
    ptq = score(quantize_model(copy.deepcopy(model), fmt, None if fmt == "int8" else 6.0, verbose=False))
    batches = qat_batches(tokenizer, list(train_texts), steps, batch_size=batch_size, seq_len=seq_len, kind=kind)
    student = prepare_qat(copy.deepcopy(model), fmt, verbose=False)
    began = time.perf_counter()
    distill_model(model, student, batches, 1.0, 1.0, 1, lr, progress=True)
    per_step = (time.perf_counter() - began) / steps
    fake = score(student)
    qat = score(convert_qat(student, verbose=False))
    table = Table("qat", f"Perplexity relative to fp32: {fmt} post-training vs quantization-aware distillation",
                  COLUMNS)
    table.add(method="fp32", perplexity=base, ratio_to_fp32=1.0, seconds_per_step=0.0)
    table.add(method=f"{fmt} post-training", perplexity=ptq, ratio_to_fp32=ptq / base, seconds_per_step=0.0)
    table.add(method=f"{fmt} QAT {steps} steps", perplexity=qat, ratio_to_fp32=qat / base, seconds_per_step=per_step)
    table.notes += [f"QAT: prepare_qat defaults, distill_model(T=1, alpha=1, lr={lr}) on {steps} batches of "
                    f"{batch_size} x {seq_len} tokens; scored after convert_qat (fake-quantized: {fake:.4g})"]
    label, timed_model, timed_batch = timing
    fp32_s, qat_s = step_times(timed_model, timed_batch, fmt, runs=runs, warmup=warmup, device=device)
    times = Table("qat_time", "QAT step time vs one fp32 forward + backward of the student (medians, alternated)",
                  TIME_COLUMNS)
    times.add(model=label, fp32_forward_backward_s=fp32_s, qat_step_s=qat_s, ratio=qat_s / fp32_s)
    times.notes.append(f"{runs} timed runs after {warmup} warm-up; the QAT step includes the teacher's forward "
                       "and the Adam update; code path: FakeQuantLinear (F.linear on Q(w)), float32")
    targets = Table("qat_targets", "Targets (meant for a ~135M pretrained LM)", TARGET_COLUMNS)
    checks = [(f"{fmt} QAT step / fp32 forward+backward", qat_s / fp32_s, 3.5)]
    if fmt == "1.58bit":
        checks += [("1.58bit QAT / fp32", qat / base, 25.0), ("1.58bit QAT / post-training", qat / ptq, 1e-4)]
    elif fmt == "1bit":
        checks += [("1bit QAT / post-training", qat / ptq, 0.01)]
    elif fmt == "int4":
        gap = ptq - base
        recovered = (ptq - qat) / gap if gap > 0 else math.nan
        targets.add(target="int4 QAT: share of RTN's gap to fp32 recovered", measured=recovered, limit=0.5,
                    verdict=verdict(recovered, 0.5, at_most=False))
    for label, measured, limit in checks:
        targets.add(target=label, measured=measured, limit=limit, verdict=verdict(measured, limit))
    return [table, times, targets]


def main(argv: Sequence[str] | None = None) -> list[Table]:
    parser = build_parser(__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None,
                        help="a local save_pretrained folder (BERT- or Llama-family LM); default: a tiny Llama "
                             "pretrained on the shipped corpus")
    parser.add_argument("--format", choices=QAT_FORMATS, default="1.58bit", help="weight format (default 1.58bit)")
    parser.add_argument("--steps", type=int, default=None, help="QAT steps (default 120; --quick 10)")
    parser.add_argument("--lr", type=float, default=3e-4, help="distill_model learning rate (default 3e-4)")
    parser.add_argument("--batch-size", type=int, default=2, help="sequences per QAT batch")
    parser.add_argument("--seq-len", type=int, default=128, help="tokens per QAT and scoring window")
    parser.add_argument("--texts", type=int, default=None, help="test texts to score (default all; --quick 30)")
    parser.add_argument("--pretrain-steps", type=int, default=None,
                        help="steps of the default model's pretraining (default 300; --quick: the shipped tiny Llama)")
    args = parser.parse_args(argv)
    device = setup(args)
    model, tokenizer, described, source = causal_model(args)
    steps = args.steps if args.steps is not None else (10 if args.quick else 120)
    timing = (("benchmarked model (--quick)", model, qat_batches(tokenizer, load_texts("train", source="local"), 1,
                                                              batch_size=args.batch_size, seq_len=args.seq_len,
                                                              kind=model_kind(model))[0])
              if args.quick else ("BERT-base-sized BertForMaskedLM, 2 x 128 tokens", *bert_base_sized()))
    tables = run(model, tokenizer, load_texts("test", source=source, limit=args.texts or (30 if args.quick else None)),
                 load_texts("train", source=source), device, fmt=args.format, steps=steps, lr=args.lr,
                 batch_size=args.batch_size, seq_len=args.seq_len, timing=timing,
                 runs=args.runs or (3 if args.quick else 5), warmup=args.warmup if args.warmup is not None else 1)
    tables[0].notes.insert(0, f"{described}; texts: load_texts(..., source={source!r})")
    report("qat", header("Quantization-aware distillation", device, args), tables, args.out)
    return tables


if __name__ == "__main__":
    main()
