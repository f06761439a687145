"""Group-wise asymmetric 4-bit weight codes: quantize a weight matrix to int4 codes per group, and back.

`int4_quantize` cuts each row into groups of consecutive input weights and gives every group its own
float16 scale and 4-bit zero point; `int4_dequantize` inverts it. `toolkit.layers.QuantizedLinear`
stores these codes ('int4' format) and `toolkit.awq` searches the scales and clipping ratios fed to them.

It does not pack the codes (`toolkit.packing` does), search scales or clipping ratios (`toolkit.awq`),
or quantize activations.
"""
from __future__ import annotations

import math

import torch

INT4_LEVELS = 15  # codes 0..15


def check_group_size(in_features: int, group_size: int) -> None:
    """Check that `group_size` is a positive int dividing `in_features`.

    Args:
        in_features: the width of the rows to cut into groups.
        group_size: weights per group.

    Raises:
        ValueError: `group_size` is not a positive int, or does not divide `in_features`.
    """
    if not isinstance(group_size, int) or isinstance(group_size, bool) or group_size < 1:
        raise ValueError(f"group_size must be a positive int, got {group_size!r}")
    if in_features % group_size:
        raise ValueError(f"group_size {group_size} does not divide in_features {in_features}: int4 groups run "
                         f"along the input features, so pick a divisor of {in_features} (e.g. 32, 64 or 128)")


def _check_clip_ratio(clip_ratio: torch.Tensor, groups: tuple[int, int]) -> None:
    """Check that `clip_ratio` is a tensor of shape `groups` with every value in (0, 1].

    Raises:
        ValueError: wrong shape, or a value outside (0, 1] (NaN included).
    """
    if not isinstance(clip_ratio, torch.Tensor) or tuple(clip_ratio.shape) != groups:
        shape = tuple(clip_ratio.shape) if isinstance(clip_ratio, torch.Tensor) else type(clip_ratio).__name__
        raise ValueError(f"clip_ratio must be a tensor of shape {groups} (out_features, in_features // group_size), "
                         f"got {shape}")
    ratio = clip_ratio.float()
    if not bool(((ratio > 0) & (ratio <= 1)).all()):
        raise ValueError("clip_ratio values must lie in (0, 1]")


def int4_quantize(
    weight: torch.Tensor, group_size: int = 64, clip_ratio: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Group-wise asymmetric 4-bit round-to-nearest quantization along the input features.

    Each row of `weight` is cut into groups of `group_size` consecutive input weights. A group's
    range [lo, hi] is its [min, max] widened to hold 0 (then shrunk by `clip_ratio`, if given);
    scale = (hi - lo) / 15 is rounded to float16 *upwards*, zero = round(-lo / scale) in [0, 15],
    codes = clamp(round(w / scale) + zero, 0, 15), and w ~ (code - zero) * scale. Every weight inside
    [lo, hi] is thus within scale / 2 of its dequantized value, and 0 is represented exactly.

    Args:
        weight: float tensor (out_features, in_features).
        group_size: weights per group; must divide in_features.
        clip_ratio: optional float tensor (out_features, in_features // group_size) of factors in
            (0, 1] applied to lo and hi (weights outside the shrunk range are clipped).

    Returns:
        (codes uint8 (out, in) in [0, 15], scale float16 (out, in // group_size),
        zero uint8 (out, in // group_size)).

    Raises:
        ValueError: `weight` is not 2-d or not floating, holds NaN or inf (or values float32 cannot hold),
            has a group whose range needs a scale beyond float16 (max - min > 15 * 65504, about 9.8e5),
            `group_size` is not a positive divisor of in_features, or `clip_ratio` has another shape or a
            value outside (0, 1]. Like `quantization.QuantizedVector`, it refuses rather than returning
            codes that dequantize to NaN or zero a group.
    """
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-d (out_features, in_features), got shape {tuple(weight.shape)}")
    out_features, in_features = weight.shape
    check_group_size(in_features, group_size)
    if not weight.is_floating_point():
        raise ValueError(f"weight must be a floating-point tensor, got dtype {weight.dtype}")
    w = weight.detach().float().view(out_features, in_features // group_size, group_size)
    if not bool(torch.isfinite(w).all()):
        raise ValueError("weight must contain only finite values (no NaN or inf, nothing beyond float32's range)")
    lo = w.amin(dim=2).clamp(max=0)
    hi = w.amax(dim=2).clamp(min=0)
    if clip_ratio is not None:
        _check_clip_ratio(clip_ratio, (out_features, in_features // group_size))
        ratio = clip_ratio.float().to(w.device)
        lo, hi = lo * ratio, hi * ratio
    exact = (hi - lo) / INT4_LEVELS
    scale = exact.half()
    scale = torch.where(scale.float() < exact, torch.nextafter(scale, torch.full_like(scale, math.inf)), scale)
    if not bool(torch.isfinite(scale).all()):
        raise ValueError(f"a group's range (max - min = {float((hi - lo).max()):.4g}) needs a scale beyond float16's "
                         f"{torch.finfo(torch.float16).max:g}: rescale the weight or keep the layer in float")
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero group: any scale, codes = zero
    step = scale.float()
    zero = (-lo / step).round_().clamp_(0, INT4_LEVELS)
    codes = (w / step[..., None]).round_().add_(zero[..., None]).clamp_(0, INT4_LEVELS)
    return codes.view(out_features, in_features).to(torch.uint8), scale, zero.to(torch.uint8)


def int4_dequantize(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(codes - zero) * scale per group: the inverse of `int4_quantize`, as `dtype` (out, in).

    Args:
        codes: uint8 (out, in) in [0, 15].
        scale: float16 (out, groups).
        zero: uint8 (out, groups).
        dtype: the floating dtype of the result (the arithmetic is float32, then cast).

    Returns:
        the weight `dtype` (out, in) the codes represent.
    """
    out_features, in_features = codes.shape
    groups = scale.shape[1]
    grouped = codes.view(out_features, groups, in_features // groups).float()
    weight = (grouped - zero.float()[..., None]) * scale.float()[..., None]
    return weight.view(out_features, in_features).to(dtype)
