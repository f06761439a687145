"""Quantization for the lab (Exercise 1): one tensor, then the LLM.int8() matrix product.

- `QuantizedVector`: one tensor, one scale, four formats ('fp16', 'int8' absmax, '1.58bit', '1bit').
- `absmax_quantize` and `mixed_precision_forward`: LLM.int8() (Dettmers et al., 2022). Input features
  with an outlier go through fp16, the rest through int8 x int8 -> int32 and the row and column scales.
- Provided after the exercises: checks, edge cases (NaN, tiny and huge values), the pre-quantized
  weight path of the toolkit, and `int8_matmul`, the exact int32 GEMM on the machine's fastest exact path.

It does not quantize layers or models (`toolkit.layers` does, through `mixed_precision_forward`).
"""
from __future__ import annotations

import functools
import math
import os

import torch

FORMATS = ("fp16", "int8", "1.58bit", "1bit")
_SAFE_LOW, _SAFE_HIGH = 2.0**-60, 2.0**60  # the magnitudes plain float32 absmax formulas handle


# Exercise 1: QuantizedVector, absmax_quantize, mixed_precision_forward

class QuantizedVector:
    """A tensor quantized on construction, with one scale `alpha` for the whole tensor.

    'fp16': `x.half()` (beyond ±65504: ±inf), alpha 1. 'int8': absmax, `alpha = 127 / max|x|`, codes
    `round(x * alpha)` in [-127, 127], `dequantize()` gives `codes / alpha`. '1.58bit': ternary
    codes, with `t = mean|x|`: x > t -> 1, x < -t -> -1, else 0. '1bit': sign codes, 0 -> +1. For
    those two alpha is `1 / mean|x|` (codes ~ x * alpha) and `dequantize()` refuses them. An
    all-zero tensor gets alpha 1. The arithmetic runs in float32 ('fp16' rounds the tensor given).

    Args:
        vector: non-empty floating tensor, finite; unless 'fp16', max|x| is 0 or in [2**-60, 2**60].
        quantization_format: one of 'fp16', 'int8', '1.58bit', '1bit'.

    Attributes: `original_vector`, `quantization_format` (as given), `quantized_vector` (float16
    or int8 codes, the shape of `vector`), `alpha` (Python float).

    Raises:
        TypeError: not a tensor. ValueError: empty, non-floating, non-finite or out-of-range
            `vector`; an unknown format ("Unsupported quantization format: ...").
    """

    def quantize(self) -> torch.Tensor:
        """Set `quantized_vector` and `alpha` from `original_vector`; return `quantized_vector`."""
        fp16 = self.quantization_format == "fp16"
        x = self.original_vector.detach() if fp16 else self.original_vector.detach().float()
        # BEGIN SOLUTION (Exercise 1)
        # TODO: x is the tensor to quantize (float32, or the original tensor for 'fp16').
        #       Set self.quantized_vector for each format, and self.alpha for 'int8':
        # TODO: 'fp16': x.half().
        # TODO: 'int8': self.alpha = 127 / max|x| (1.0 when max|x| is 0); codes round(x * alpha) as torch.int8.
        # TODO: '1.58bit': t = mean|x|; codes 1 where x > t, -1 where x < -t, else 0 (torch.int8).
        # TODO: '1bit': codes -1 where x < 0, else +1 (torch.int8).
        if self.quantization_format == "fp16":
            self.quantized_vector = x.half()
        elif self.quantization_format == "int8":
            absmax = x.abs().max().item()
            self.alpha = 127.0 / absmax if absmax > 0 else 1.0
            self.quantized_vector = torch.round(x * self.alpha).to(torch.int8)
        elif self.quantization_format == "1.58bit":
            t = x.abs().mean()
            self.quantized_vector = (x > t).to(torch.int8) - (x < -t).to(torch.int8)
        else:
            self.quantized_vector = torch.where(x < 0, -1, 1).to(torch.int8)
        # END SOLUTION
        if self.quantization_format in ("1.58bit", "1bit"):
            absmean = x.abs().mean().item()
            self.alpha = 1.0 / absmean if absmean > 0 else 1.0
        self.alpha = float(self.alpha)
        return self.quantized_vector

    def dequantize(self) -> torch.Tensor:
        """The float32 reconstruction; ValueError "Unsupported dequantization format: <f>" below 2 bits."""
        if self.quantization_format in ("1.58bit", "1bit"):
            raise ValueError(f"Unsupported dequantization format: {self.quantization_format}")
        # BEGIN SOLUTION (Exercise 1)
        # TODO: return the float32 reconstruction: 'fp16': the half values as float32;
        #       'int8': quantized_vector / alpha as float32.
        if self.quantization_format == "fp16":
            return self.quantized_vector.float()
        return self.quantized_vector / self.alpha
        # END SOLUTION

    def __init__(self, vector: torch.Tensor, quantization_format: str = "int8") -> None:
        check_format(quantization_format)
        _check_vector(vector, quantization_format)
        self.original_vector = vector
        self.quantization_format = quantization_format
        self.quantized_vector: torch.Tensor | None = None
        self.alpha: float = 1.0
        self.quantize()

    def get_quantized(self) -> torch.Tensor:
        """Return `quantized_vector`."""
        return self.quantized_vector


def absmax_quantize(x: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Int8 absmax quantization, one scale per slice: the `QuantizedVector` rule on every row (`dim=1`)
    or column (`dim=0`) of a floating `x` (each slice's absmax 0 or in [2**-60, 2**60], else ValueError).

    Returns:
        `(codes, absmax)`: int8 codes in [-127, 127] shaped like `x` (a zero slice: codes 0), and the
        float32 absmaxes, shaped like `x` with `dim` of size 1 (e.g. (M, 1) for dim=1).
    """
    x = x.float()
    _check_range(x.abs().amax(dim=dim) if x.numel() else x, "a slice of x")
    # BEGIN SOLUTION (Exercise 1)
    # TODO: absmax = max |x| along dim, keeping the dimension (x is float32).
    # TODO: alpha = 127 / absmax where absmax > 0, else 1 (as in QuantizedVector).
    # TODO: codes = round(x * alpha) as torch.int8.
    absmax = x.abs().amax(dim=dim, keepdim=True)
    alpha = torch.where(absmax > 0, 127.0 / absmax, 1.0)
    codes = torch.round(x * alpha).to(torch.int8)
    # END SOLUTION
    return codes, absmax


def mixed_precision_forward(
    input: torch.Tensor, weight: torch.Tensor, threshold: float | None = 6.0, *,
    weight_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """LLM.int8() matrix product `input @ weight` (Dettmers et al., 2022).

    Input features (columns of the flattened input) where any |x| >= threshold are outliers: those
    columns and the matching weight rows are multiplied in fp16. The rest is absmax-quantized to int8
    (row-wise for the input, column-wise for the weight, outliers zeroed first), multiplied exactly
    in int32 (`int8_matmul`) and dequantized with `outer(cx, cw) / 127**2`.

    Provided: a NaN input makes its row of the result NaN and hides no outlier; a non-outlier input
    row or weight column with absmax outside [2**-60, 2**60] raises; int8 weight codes with
    `weight_scale` (`QuantizedLinear`'s) are used as they are, outlier rows dequantized (as bitsandbytes).

    Args:
        input: floating tensor (..., in_features), fp16, bf16 or fp32.
        weight: (in_features, out_features) floating tensor, or int8 codes with `weight_scale`.
        threshold: outlier magnitude > 0; None means no outliers (pure int8).
        weight_scale: float (out_features,), the column absmaxes the codes came from; else None.

    Returns:
        float32 tensor (..., out_features). Raises TypeError for a non-tensor argument, ValueError
        for bad dtypes, shapes or devices, a threshold neither > 0 nor None, out-of-range magnitudes.
    """
    check_threshold(threshold)
    _check_kernel_args(input, weight, weight_scale)
    x = input.reshape(-1, input.shape[-1]).float()  # (M, K)
    limit = math.inf if threshold is None else float(threshold)
    nan_rows = x.isnan().any(dim=1)
    x = x.nan_to_num(nan=0.0) if nan_rows.any() else x
    if x.shape[0] == 0:
        out = x.new_zeros(0, weight.shape[1])
    elif weight_scale is not None:
        out = _prequantized_forward(x, weight, weight_scale.float(), limit)
    else:
        w = weight.float()  # (K, N)
        _check_magnitudes(x, w, limit)
        # BEGIN SOLUTION (Exercise 1)
        # TODO: outliers: the columns of x (M, K) where any |x| >= limit.
        # TODO: int8 part: zero the outlier columns of x and the outlier rows of w (K, N);
        #       absmax_quantize x row-wise (dim=1) and w column-wise (dim=0); multiply the codes
        #       with int8_matmul (exact int32) and scale the float32 result by outer(cx, cw) / 127**2.
        # TODO: fp16 part: the outlier columns of x times the outlier rows of w, both rounded with .half().
        # TODO: out = int8 part + fp16 part, a float32 (M, N) tensor.
        outliers = (x.abs() >= limit).any(dim=0)
        x_codes, cx = absmax_quantize(x.masked_fill(outliers, 0.0), dim=1)
        w_codes, cw = absmax_quantize(w.masked_fill(outliers[:, None], 0.0), dim=0)
        int_part = int8_matmul(x_codes, w_codes).float() * (cx / 127) * (cw / 127)
        out = int_part + x[:, outliers].half().float() @ w[outliers].half().float()  # fp16 values, fp32 sums
        # END SOLUTION
    out[nan_rows] = math.nan
    return out.reshape(*input.shape[:-1], weight.shape[1])


# ==================== Provided code: checks, edge cases, the pre-quantized path, the exact int8 GEMM ====================

def check_format(quantization_format: str, formats: tuple[str, ...] = FORMATS) -> None:
    """Raise the course skeleton's ValueError unless `quantization_format` is one of `formats`."""
    if quantization_format not in formats:
        supported = ", ".join(repr(f) for f in formats)
        raise ValueError(f"Unsupported quantization format: {quantization_format}; supported formats: {supported}")


def check_threshold(threshold: float | None) -> None:
    """Raise ValueError unless `threshold` is a positive number (not a bool) or None."""
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float))
                                  or not threshold > 0):
        raise ValueError(f"threshold must be a positive number or None, got {threshold!r}")


def _check_vector(vector: torch.Tensor, quantization_format: str) -> None:
    if not isinstance(vector, torch.Tensor):
        raise TypeError(f"vector must be a torch.Tensor, got {type(vector).__name__}")
    if vector.numel() == 0 or not vector.is_floating_point():
        raise ValueError(f"vector must be a non-empty floating-point tensor, got dtype {vector.dtype}, "
                         f"shape {tuple(vector.shape)}")
    x32 = vector.float()
    if not torch.isfinite(x32).all() or ((x32 == 0) & (vector != 0)).any():
        raise ValueError("vector must hold finite values float32 can represent (no NaN or inf, nothing "
                         "beyond ±3.4e38 or rounding to 0)")
    if quantization_format != "fp16":
        _check_range(x32.abs().max(), "vector")


def _check_range(absmax: torch.Tensor, name: str) -> None:
    """Refuse absmaxes that are NaN, or nonzero and outside [2**-60, 2**60]."""
    if ((absmax != 0) & ~((absmax >= _SAFE_LOW) & (absmax <= _SAFE_HIGH))).any():
        raise ValueError(f"{name} has max|x| outside [2**-60, 2**60] (8.7e-19 to 1.2e18), or NaN: "
                         "magnitudes this small or large are not supported")


def _check_magnitudes(x: torch.Tensor, w: torch.Tensor, limit: float) -> None:
    """Refuse non-outlier rows of x or columns of w whose absmax is outside the supported range."""
    outliers = (x.abs() >= limit).any(dim=0)
    _check_range(x.abs().masked_fill(outliers, 0.0).amax(dim=1), "an input row")
    _check_range(w.abs().masked_fill(outliers[:, None], 0.0).amax(dim=0), "a weight column")


def _prequantized_forward(x: torch.Tensor, codes: torch.Tensor, cw: torch.Tensor, limit: float) -> torch.Tensor:
    """LLM.int8 with int8 weight codes and their column absmaxes (the toolkit's `QuantizedLinear`)."""
    outliers = (x.abs() >= limit).any(dim=0).nonzero().squeeze(1)
    x_int = x.index_fill(1, outliers, 0.0) if outliers.numel() else x
    x_codes, cx = absmax_quantize(x_int, dim=1)
    out = int8_matmul(x_codes, codes).float().mul_(cx / 127).mul_(cw / 127)
    if outliers.numel():
        w_outliers = codes.index_select(0, outliers).float() * (cw / 127)
        out.addmm_(x.index_select(1, outliers).half().float(), w_outliers.half().float())
    return out


def _check_kernel_args(input: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor | None) -> None:
    for name, value in (("input", input), ("weight", weight), ("weight_scale", weight_scale)):
        if not (isinstance(value, torch.Tensor) or (name == "weight_scale" and value is None)):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if not input.is_floating_point():
        raise ValueError(f"input must be floating point (fp16, bf16 or fp32), got {input.dtype}")
    if weight.dim() != 2 or weight.numel() == 0:
        raise ValueError(f"weight must be a non-empty (in_features, out_features) matrix, got {tuple(weight.shape)}")
    if input.dim() == 0 or input.shape[-1] != weight.shape[0]:
        raise ValueError(f"input's last dimension must be in_features={weight.shape[0]}, got shape {tuple(input.shape)}")
    if weight_scale is None and not weight.is_floating_point():
        raise ValueError(f"weight must be floating point, or int8 codes with weight_scale; got {weight.dtype}")
    if weight_scale is not None and weight.dtype != torch.int8:
        raise ValueError(f"with weight_scale, weight must hold int8 codes, got {weight.dtype}")
    if weight_scale is not None and (weight_scale.shape != weight.shape[1:] or not weight_scale.is_floating_point()):
        raise ValueError(f"weight_scale must be a floating (out_features,)=({weight.shape[1]},) tensor, "
                         f"got {weight_scale.dtype} {tuple(weight_scale.shape)}")
    if input.device != weight.device:
        raise ValueError(f"input and weight must be on one device, got {input.device} and {weight.device}")


INT8_PATHS = ("int_mm", "fp32")
_EXACT_FP32_CHUNK = 1024  # 1024 * 128 * 128 == 2**24: proof in _fp32_chunk_matmul
_MAX_INT8_K = (2**31 - 1) // (128 * 128)  # longest reduction whose int32 sum cannot overflow
_int8_path: dict[str, str] = {}  # 'forced' (set_int8_matmul_path, LAB_INT8_PATH) and 'cpu' (decided once)


def set_int8_matmul_path(path: str | None) -> None:
    """Force `int8_matmul` onto 'int_mm' or 'fp32' (as LAB_INT8_PATH does); None decides again.
    Raises ValueError for an unknown path, or 'int_mm' on a CPU where `torch._int_mm` is not exact."""
    if path is not None and path not in INT8_PATHS:
        raise ValueError(f"path must be one of {INT8_PATHS} or None, got {path!r}")
    if path == "int_mm" and not _int_mm_exact():
        raise ValueError("torch._int_mm is not exact on this CPU (no int8 dot-product instructions): use 'fp32'")
    _int8_path.clear()
    _int8_path.update({"forced": path} if path else {})


def int8_matmul_path(device: str | torch.device = "cpu") -> str:
    """The path `int8_matmul` takes on `device`: 'int_mm' (`torch._int_mm`) or 'fp32' (K-chunks).
    Unless forced: 'int_mm' on CUDA, and on CPUs with int8 dot-product instructions (AVX-512 VNNI,
    AMX) where `_int_mm` is exact; else 'fp32'."""
    if not _int8_path and os.environ.get("LAB_INT8_PATH"):
        set_int8_matmul_path(os.environ["LAB_INT8_PATH"])
    if "forced" in _int8_path or torch.device(device).type == "cuda":
        return _int8_path.get("forced", "int_mm")
    if "cpu" not in _int8_path:
        flags = ("_is_vnni_supported", "_is_amx_tile_supported")
        has_dot = any(getattr(torch.cpu, flag, lambda: False)() for flag in flags)
        _int8_path["cpu"] = "int_mm" if has_dot and _int_mm_exact() else "fp32"
    return _int8_path["cpu"]


@functools.cache
def _int_mm_exact() -> bool:
    """Is CPU `torch._int_mm` exact on extreme codes? (A torch build may have no CPU kernel for it.)"""
    a = torch.randint(-128, 128, (128, 1024), dtype=torch.int8, generator=torch.Generator().manual_seed(0))
    a[0], a[1] = 127, -128  # int8 kernels that add pairs in int16 (no VNNI) saturate on these
    try:
        return torch.equal(torch._int_mm(a, a[:64].t()), _fp32_chunk_matmul(a, a[:64].t()))
    except RuntimeError:
        return False


def _fp32_chunk_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact: each |a_ik * b_kj| <= 2**14, so every partial sum of a chunk of <= 1024 is an integer of
    magnitude <= 2**24, which fp32 holds exactly in any summation order; int32 sums the chunks."""
    a32, b32, step = a.float(), b.float(), _EXACT_FP32_CHUNK
    out = torch.mm(a32[:, :step], b32[:step]).to(torch.int32)
    for k0 in range(step, a.shape[1], step):
        out += torch.mm(a32[:, k0:k0 + step], b32[k0:k0 + step]).to(torch.int32)
    return out


def int8_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact int8 x int8 matrix product `a (M, K) @ b (K, N)` -> int32 (M, N), on `int8_matmul_path`'s
    path; any strides (b column-major is fastest). Raises TypeError for non-tensors, ValueError unless
    both are 2-D int8 with matching inner sizes and K <= 131071 (int32 overflow)."""
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor):
        raise TypeError(f"a and b must be torch.Tensor, got {type(a).__name__} and {type(b).__name__}")
    if a.dtype != torch.int8 or b.dtype != torch.int8:
        raise ValueError(f"a and b must be int8, got {a.dtype} and {b.dtype}")
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"expected (M, K) @ (K, N) matrices, got {tuple(a.shape)} @ {tuple(b.shape)}")
    (m, k), n = a.shape, b.shape[1]
    if k > _MAX_INT8_K:
        raise ValueError(f"K={k} could overflow the int32 accumulator (at most {_MAX_INT8_K})")
    if int8_matmul_path(a.device) == "int_mm" and (not a.is_cuda or (m > 16 and k % 8 == 0 and n % 8 == 0)):
        # b column-major (strides (1, >= K)), as cuBLASLt and oneDNN's VNNI kernels want, except at
        # K = 1: CPU _int_mm misreads strides (1, 1)
        column_major = b.stride(0) == 1 and b.stride(1) >= k > 1
        return torch._int_mm(a, b if column_major else b.contiguous() if k == 1 else b.t().contiguous().t())
    return _fp32_chunk_matmul(a, b)
