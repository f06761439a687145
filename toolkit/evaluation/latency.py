"""Latency: wall-clock time of forward passes on an already tokenized batch.

`measure_latency` times a model; `latency_batch` builds the fixed batch every variant is timed on. It
does not compare variants (`toolkit.evaluation.report` does) or pin CPU frequencies.
"""
from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from toolkit.evaluation.scoring import check_positive_int, check_texts, evaluating, joined_ids
from toolkit.targets import model_device


def measure_latency(
    model: nn.Module,
    inputs: Mapping[str, torch.Tensor] | torch.Tensor,
    *,
    runs: int = 20,
    warmup: int = 3,
    num_threads: int | None = None,
) -> dict[str, float]:
    """Wall-clock time of one forward pass on an already tokenized batch.

    Tokenization is excluded: `inputs` are moved to the model's device once, before timing.
    The model runs in eval and inference mode with `torch.set_num_threads(num_threads)`
    (restored afterwards); each run is timed with time.perf_counter, with CUDA synchronised
    before and after on a GPU.

    Args:
        model: the model.
        inputs: keyword inputs (e.g. a tokenizer's output with return_tensors="pt") or an
            input_ids tensor (B, L).
        runs: timed runs.
        warmup: untimed runs first.
        num_threads: CPU threads during the measurement; None keeps the current setting.

    Returns:
        median_ms, p90_ms (linear interpolation), mean_ms per batch; runs and threads.
    """
    check_positive_int("runs", runs)
    if not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be a non-negative int, got {warmup!r}")
    if num_threads is not None:
        check_positive_int("num_threads", num_threads)
    if isinstance(inputs, torch.Tensor):
        inputs = {"input_ids": inputs}
    elif not isinstance(inputs, Mapping):
        raise TypeError(f"inputs must be a tensor or a mapping of tensors, got {type(inputs).__name__}")
    device = model_device(model)
    kwargs = {key: value.to(device) if isinstance(value, torch.Tensor) else value for key, value in inputs.items()}

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    previous_threads = torch.get_num_threads()
    threads = num_threads or previous_threads
    times = []
    torch.set_num_threads(threads)
    try:
        with evaluating(model):
            for _ in range(warmup):
                model(**kwargs)
            for _ in range(runs):
                sync()
                start = time.perf_counter()
                model(**kwargs)
                sync()
                times.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous_threads)
    ms = np.array(times) * 1e3
    return {"median_ms": float(np.median(ms)), "p90_ms": float(np.percentile(ms, 90)), "mean_ms": float(ms.mean()),
            "runs": runs, "threads": threads}


def latency_batch(tokenizer, texts: Sequence[str], *, batch_size: int = 16, max_length: int = 128) -> dict:
    """A fixed batch for latency: up to `batch_size` rows of `max_length` tokens of the joined texts.

    The texts are joined with blank lines, tokenized once and cut into full rows, so every
    variant is timed on the same shape whatever its tokenizer's padding (one shorter row when
    the texts hold fewer than `max_length` tokens).

    Returns:
        input_ids (B, L) int64 and attention_mask (B, L) int64 of ones.
    """
    texts = check_texts(texts)
    check_positive_int("batch_size", batch_size)
    check_positive_int("max_length", max_length)
    ids = joined_ids(tokenizer, texts)
    rows = max(1, min(batch_size, len(ids) // max_length))
    ids = ids[: rows * max_length].reshape(rows, -1)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


