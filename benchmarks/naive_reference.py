"""The lab statement of Exercise 2, followed literally: the slow baseline of benchmarks/kernel.py.

One `QuantizedVector` per input row and per weight column, built in Python loops, then one
int32 dot product per output element. It computes the same thing as
`quantization.mixed_precision_forward` (outlier columns with fp16-rounded operands and fp32
accumulation, the rest int8 absmax with int32 accumulation, dequantized by `cx * cw / 127**2`),
with the same int8 codes, so the two agree up to float32 rounding;
the benchmark shows what vectorisation alone buys.
It is a benchmark baseline, not library code: do not import it elsewhere.
"""
from __future__ import annotations

import torch

from quantization import QuantizedVector


def naive_mixed_precision_forward(input: torch.Tensor, weight: torch.Tensor,
                                  threshold: float = 6.0) -> torch.Tensor:
    """`input @ weight` the way the lab statement describes it, one vector at a time.

    Args:
        input: (rows, in_features) float activations.
        weight: (in_features, out_features) float weight.
        threshold: a column of `input` with any |value| >= threshold is an outlier column.

    Returns:
        (rows, out_features) float32.
    """
    if input.dim() != 2 or weight.dim() != 2 or input.shape[1] != weight.shape[0]:
        raise ValueError(f"need (rows, k) @ (k, n), got {tuple(input.shape)} @ {tuple(weight.shape)}")
    outliers = (input.abs() >= threshold).any(dim=0)
    result = input[:, outliers].half().float() @ weight[outliers].half().float()

    regular_input, regular_weight = input[:, ~outliers], weight[~outliers]
    if regular_input.shape[1] == 0:
        return result
    rows = [QuantizedVector(regular_input[i].float()) for i in range(regular_input.shape[0])]
    columns = [QuantizedVector(regular_weight[:, j].float()) for j in range(regular_weight.shape[1])]
    column_codes = [column.get_quantized().to(torch.int32) for column in columns]
    for i, row in enumerate(rows):
        row_codes = row.get_quantized().to(torch.int32)
        for j, column in enumerate(columns):
            accumulated = int(torch.dot(row_codes, column_codes[j]))
            # alpha = 127 / absmax, so accumulated / (alpha_row * alpha_col) = acc * cx * cw / 127**2.
            result[i, j] += accumulated / (float(row.alpha) * float(column.alpha))
    return result
