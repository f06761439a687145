"""Quantization for the lab: one tensor, then the LLM.int8() matrix product.

- `QuantizedVector` (Exercise 1a): one tensor, one scale, four formats
  ('fp16', 'int8' absmax, '1.58bit' ternary, '1bit' sign).
- `absmax_quantize` and `mixed_precision_forward` (Exercise 1b): LLM.int8()
  (Dettmers et al., 2022). Input features with an outlier go through fp16, the
  rest through int8 x int8 -> int32 (`int8_matmul`, exact) and are dequantized
  with the row and column scales.
- `int8_matmul` (provided): the exact int32 GEMM, on the fastest exact path of the machine.

It does not: quantize layers or models (the toolkit's `toolkit.layers` does, through
`mixed_precision_forward`), or train quantized weights.
"""
from __future__ import annotations

import functools
import math
import os
import time

import torch

FORMATS = ("fp16", "int8", "1.58bit", "1bit")
# Formats whose codes carry no scale to dequantize with in QuantizedVector.
_NO_DEQUANTIZATION = ("1.58bit", "1bit")

# K-chunk of the exact fp32 GEMM in int8_matmul: 1024 * 128 * 128 == 2**24 (proof there).
_EXACT_FP32_CHUNK = 1024
# Largest reduction length whose int32 sum cannot overflow: K * 128 * 128 <= 2**31 - 1.
_MAX_INT8_K = (2**31 - 1) // (128 * 128)


def check_format(quantization_format: str, formats: tuple[str, ...] = FORMATS) -> None:
    if quantization_format not in formats:
        supported = ", ".join(repr(f) for f in formats)
        raise ValueError(f"Unsupported quantization format: {quantization_format}; supported formats: {supported}")


def check_threshold(threshold: float | None) -> None:
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float))
                                  or not threshold > 0):
        raise ValueError(f"threshold must be a positive number or None, got {threshold!r}")


# ---------------------------------------------------------------------------
# Exercise 1a: one tensor, one scale
# ---------------------------------------------------------------------------

class QuantizedVector:
    """A tensor quantized on construction, with one scale for the whole tensor.

    Formats:
        'fp16'    `quantized_vector` is `vector.half()`; `alpha` is 1.
        'int8'    absmax: `alpha = 127 / max|x|`, codes `round(x * alpha)` as int8
                  in [-127, 127]; `dequantize()` gives `codes / alpha`.
        '1.58bit' ternary int8 codes: with `t = mean|x|`, x > t -> 1, x < -t -> -1, else 0.
        '1bit'    sign int8 codes in {-1, +1}, zero counted as +1.

    `alpha` always maps values onto the code grid (codes ~ x * alpha). For
    '1.58bit' and '1bit' it is `1 / mean|x|`: the ternary rule is "code ±1 where
    |x * alpha| > 1", and `mean|x|` is the least-squares scale of sign codes.
    Those two formats keep no scale of their own, so `dequantize()` refuses them.
    An all-zero tensor gets `alpha = 1` (all codes 0, or +1 for '1bit').

    The arithmetic runs in float32 whatever the input dtype, except 'fp16',
    which rounds the original tensor directly. Guarantees: any input float32 holds,
    subnormal to 3.4e38, gets these codes in float32 with an unbounded exponent (tiny
    inputs reach ±127); 'fp16' overflows to ±inf beyond 65504; the rest raises.

    Args:
        vector: floating tensor of any non-empty shape with finite values.
        quantization_format: one of 'fp16', 'int8', '1.58bit', '1bit'.

    Attributes:
        original_vector: the tensor given.
        quantized_vector: float16 ('fp16') or int8 codes, same shape.
        alpha: Python float, see above.
        quantization_format: the format given.

    Raises:
        TypeError: `vector` is not a tensor.
        ValueError: empty, non-floating or non-finite `vector`, values float32 cannot
            hold (a float64 beyond ±3.4e38, or one so small it rounds to 0); unknown format.
    """

    def __init__(self, vector: torch.Tensor, quantization_format: str = "int8") -> None:
        if not isinstance(vector, torch.Tensor):
            raise TypeError(f"vector must be a torch.Tensor, got {type(vector).__name__}")
        check_format(quantization_format)
        if vector.numel() == 0:
            raise ValueError(f"vector must not be empty, got shape {tuple(vector.shape)}")
        if not vector.is_floating_point():
            raise ValueError(f"vector must be a floating-point tensor, got dtype {vector.dtype}")
        if not torch.isfinite(vector).all():
            raise ValueError("vector must contain only finite values (no NaN or inf)")
        x32 = vector.float()
        if not torch.isfinite(x32).all() or ((x32 == 0) & (vector != 0)).any():
            raise ValueError("vector holds values float32 cannot represent (beyond ±3.4e38, or nonzero "
                             "but rounding to 0); the quantization arithmetic runs in float32")
        self.original_vector = vector
        self.quantization_format = quantization_format
        self.quantized_vector: torch.Tensor | None = None
        self.alpha: float | None = None
        self.quantize()

    def quantize(self) -> torch.Tensor:
        """Set `quantized_vector` and `alpha` from `original_vector`; return `quantized_vector`."""
        x = self.original_vector.detach()
        # BEGIN SOLUTION (Exercise 1)
        # TODO: 'fp16': quantized_vector = x.half(), alpha = 1.0.
        # TODO: 'int8': alpha = 127 / max|x| (1.0 when max|x| is 0);
        #       quantized_vector = round(x * alpha) as torch.int8 (alpha overflows float32 for
        #       max|x| < 3.7e-37: there, multiply x by 2**64 and divide alpha by it, both exact).
        # TODO: '1.58bit': t = mean|x|; codes 1 where x > t, -1 where x < -t, else 0 (int8).
        # TODO: '1bit': codes -1 where x < 0, else +1 (int8).
        # TODO: for '1.58bit' and '1bit' set alpha = 1 / mean|x| (1.0 when mean|x| is 0);
        #       take the mean in float64 (the float32 sum of |x| can overflow).
        if self.quantization_format == "fp16":
            self.quantized_vector, self.alpha = x.half(), 1.0
            return self.quantized_vector
        x = x.float()
        if self.quantization_format == "int8":
            absmax = x.abs().max().item()
            self.alpha = 127.0 / absmax if absmax > 0 else 1.0
            s = 2.0**64 if self.alpha > torch.finfo(torch.float32).max else 1.0  # exact: same codes
            self.quantized_vector = torch.round(x * s * (self.alpha / s)).to(torch.int8)
            return self.quantized_vector
        absmean = x.abs().mean(dtype=torch.float64).item()
        self.alpha = 1.0 / absmean if absmean > 0 else 1.0
        if self.quantization_format == "1.58bit":
            codes = (x > absmean).to(torch.int8) - (x < -absmean).to(torch.int8)
        else:
            codes = torch.where(x < 0, -1, 1).to(torch.int8)
        self.quantized_vector = codes
        # END SOLUTION
        return self.quantized_vector

    def dequantize(self) -> torch.Tensor:
        """The float32 reconstruction, same shape as `original_vector`.

        Raises:
            ValueError: for '1.58bit' and '1bit' ("Unsupported dequantization format: <format>").
        """
        if self.quantization_format in _NO_DEQUANTIZATION:
            raise ValueError(f"Unsupported dequantization format: {self.quantization_format}")
        # BEGIN SOLUTION (Exercise 1)
        # TODO: 'fp16': the half values as float32.
        # TODO: 'int8': codes / alpha as float32 (divide in float64: alpha may exceed float32).
        if self.quantization_format == "fp16":
            return self.quantized_vector.float()
        return (self.quantized_vector.double() / self.alpha).float()
        # END SOLUTION

    def get_quantized(self) -> torch.Tensor:
        """Return `quantized_vector`."""
        return self.quantized_vector


# ---------------------------------------------------------------------------
# Exercise 1b: LLM.int8() mixed-precision matrix multiplication
# ---------------------------------------------------------------------------

INT8_PATHS = ("int_mm", "fp32")
_int8_path: dict[str, str] = {}  # 'forced' (set_int8_matmul_path, LAB_INT8_PATH) and 'cpu' (decided once)


def set_int8_matmul_path(path: str | None) -> None:
    """Force `int8_matmul` onto 'int_mm' or 'fp32' on every device, as LAB_INT8_PATH does; None decides again.

    Raises:
        ValueError: an unknown path, or 'int_mm' on a CPU where `torch._int_mm` is not exact.
    """
    if path is not None and path not in INT8_PATHS:
        raise ValueError(f"path must be one of {INT8_PATHS} or None, got {path!r}")
    if path == "int_mm" and not _int_mm_exact():
        raise ValueError("torch._int_mm is not exact on this CPU (no int8 dot-product instructions): use 'fp32'")
    _int8_path.clear()
    _int8_path.update({"forced": path} if path else {})


def int8_matmul_path(device: str | torch.device = "cpu") -> str:
    """The path `int8_matmul` takes on `device`: 'int_mm' (`torch._int_mm`) or 'fp32' (K-chunks).

    Unless forced: 'int_mm' on CUDA, and on CPUs where `_int_mm` is exact and fast: int8 dot-product
    instructions (AVX-512 VNNI or AMX per torch; else one timed product must find it faster); else 'fp32'.
    """
    if not _int8_path and os.environ.get("LAB_INT8_PATH"):
        set_int8_matmul_path(os.environ["LAB_INT8_PATH"])
    if "forced" in _int8_path or torch.device(device).type == "cuda":
        return _int8_path.get("forced", "int_mm")
    if "cpu" not in _int8_path:
        flags = ("_is_vnni_supported", "_is_amx_tile_supported")
        has_dot = any(getattr(torch.cpu, flag, lambda: False)() for flag in flags)
        _int8_path["cpu"] = "int_mm" if _int_mm_exact() and (has_dot or _int_mm_faster()) else "fp32"
    return _int8_path["cpu"]


def _probe_operands() -> tuple[torch.Tensor, torch.Tensor]:
    a = torch.randint(-128, 128, (128, 1024), dtype=torch.int8, generator=torch.Generator().manual_seed(0))
    a[0], a[1] = 127, -128  # int8 kernels that add pairs in int16 (no VNNI) saturate on these
    return a, a[:64].t()


@functools.cache
def _int_mm_exact() -> bool:
    """Is CPU `torch._int_mm` exact on extreme codes? (A torch build may have no CPU kernel for it.)"""
    try:
        return torch.equal(torch._int_mm(*_probe_operands()), _fp32_chunk_matmul(*_probe_operands()))
    except RuntimeError:
        return False


def _int_mm_faster() -> bool:
    """Is CPU `torch._int_mm` faster than the fp32 chunks (best of 3 on one small product)?"""
    (a, b), times = _probe_operands(), {path: math.inf for path in INT8_PATHS}
    for path in INT8_PATHS * 3:
        start = time.perf_counter()
        torch._int_mm(a, b) if path == "int_mm" else _fp32_chunk_matmul(a, b)
        times[path] = min(times[path], time.perf_counter() - start)
    return times["int_mm"] < times["fp32"]


def _fp32_chunk_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact: every product |a_ik * b_kj| <= 2**14, so every partial sum of a chunk of <= 1024 is an
    integer of magnitude <= 2**24, which fp32 holds exactly whatever the BLAS's order, blocking or FMA
    (and TF32/bf16 input rounding keeps the 8-bit codes exact). The int32 sum of chunks is exact
    while K * 2**14 < 2**31."""
    a32, b32, step = a.float(), b.float(), _EXACT_FP32_CHUNK
    out = torch.mm(a32[:, :step], b32[:step]).to(torch.int32)
    for k0 in range(step, a.shape[1], step):
        out += torch.mm(a32[:, k0:k0 + step], b32[k0:k0 + step]).to(torch.int32)
    return out


def int8_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact int8 x int8 matrix product with int32 accumulation, on the path `int8_matmul_path` names.

    'int_mm': `torch._int_mm` (on CUDA if M > 16 and K, N are multiples of 8), b column-major as
    cuBLASLt and oneDNN's VNNI kernels want. 'fp32': float32 GEMMs over K-chunks of <= 1024, exact
    (proof in `_fp32_chunk_matmul`).

    Args:
        a: int8 tensor (M, K), any strides.
        b: int8 tensor (K, N), any strides (column-major is fastest).

    Returns:
        int32 tensor (M, N), equal to the integer product.

    Raises:
        TypeError: `a` or `b` is not a tensor.
        ValueError: not int8, not 2-D, inner sizes differ, or K > 131071 (int32 overflow).
    """
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
        # b column-major (strides (1, >= K)), except at K = 1: CPU _int_mm misreads strides (1, 1)
        column_major = b.stride(0) == 1 and b.stride(1) >= k > 1
        return torch._int_mm(a, b if column_major else b.contiguous() if k == 1 else b.t().contiguous().t())
    return _fp32_chunk_matmul(a, b)


def absmax_quantize(x: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Int8 absmax quantization with one scale per slice along `dim`.

    The `QuantizedVector` int8 rule applied to every row (`dim=1`) or column
    (`dim=0`) at once: `codes = round(x * alpha)` with `alpha = 127 / absmax`
    computed first (the same float32 rounding as `QuantizedVector`). A slice of
    zeros gets absmax 0 and codes 0. Where `127 / absmax` overflows (absmax < 3.7e-37),
    x and absmax are first scaled by 2**64 (exact), so tiny slices get the right codes too.

    Args:
        x: floating tensor, e.g. (M, K), within float32's range.
        dim: the dimension reduced by the max: 1 gives one scale per row, 0 per column.

    Returns:
        codes: int8 tensor, shape of `x`, values in [-127, 127].
        absmax: float32 tensor, shape of `x` with `dim` of size 1 (e.g. (M, 1) for dim=1).

    Raises:
        ValueError: a float64 `x` with values beyond float32's range.
    """
    if x.dtype == torch.float64 and x.numel() and x.abs().max() > torch.finfo(torch.float32).max:
        raise ValueError("x has values beyond float32's range (3.4e38): they would quantize to inf")
    x = x.float()
    # BEGIN SOLUTION (Exercise 1)
    # TODO: absmax = max |x| along dim, in float32, keeping the dimension.
    # TODO: alpha = 127 / absmax where absmax > 0, else 1 (as in QuantizedVector).
    # TODO: where alpha overflows to inf (absmax < 3.7e-37), first scale x and absmax by 2**64 (exact).
    # TODO: codes = round(x * alpha) as torch.int8.
    absmax = x.abs().amax(dim=dim, keepdim=True)
    # A true float32 division, rounded once like QuantizedVector's: `127.0 / absmax`
    # runs as 127 * reciprocal(absmax), which is off by an ulp for about 1 scale in 4.
    alpha = torch.where(absmax > 0, torch.full_like(absmax, 127.0) / absmax, 1.0)
    tiny = alpha.isinf()
    if tiny.any():  # a power-of-two scale changes no digit of x, only its exponent
        x = torch.where(tiny, x * 2.0**64, x)
        alpha = torch.where(tiny, torch.full_like(absmax, 127.0) / (absmax * 2.0**64), alpha)
    codes = torch.mul(x, alpha).round_().to(torch.int8)
    # END SOLUTION
    return codes, absmax


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
    if weight_scale is None:
        if not weight.is_floating_point():
            raise ValueError(f"weight must be floating point, or int8 codes with weight_scale; got {weight.dtype}")
    else:
        if weight.dtype != torch.int8:
            raise ValueError(f"with weight_scale, weight must hold int8 codes, got {weight.dtype}")
        if weight_scale.shape != (weight.shape[1],) or not weight_scale.is_floating_point():
            raise ValueError(f"weight_scale must be a floating (out_features,)=({weight.shape[1]},) tensor, "
                             f"got {weight_scale.dtype} {tuple(weight_scale.shape)}")
    if input.device != weight.device:
        raise ValueError(f"input and weight must be on one device, got {input.device} and {weight.device}")


def mixed_precision_forward(
    input: torch.Tensor,
    weight: torch.Tensor,
    threshold: float | None = 6.0,
    *,
    weight_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """LLM.int8() matrix product `input @ weight` (Dettmers et al., 2022).

    Input features (columns of the flattened input) where any |x| >= threshold are outliers:
    those columns of the input and the matching rows of the weight are multiplied in fp16.
    Everything else is absmax-quantized to int8 (row-wise for the input, column-wise for the
    weight, outliers set to 0 first), multiplied exactly with int32 accumulation (`int8_matmul`)
    and dequantized with `outer(cx, cw) / 127**2`, cx the row absmaxes of the non-outlier input,
    cw the column absmaxes of the non-outlier weight rows. fp16 means operands rounded to float16
    and products accumulated in float32, as fp16 tensor-core GEMMs do (beyond 65504: overflow).

    A pre-quantized weight (as `QuantizedLinear` stores it) is given as int8 codes with
    `weight_scale`, the column absmaxes over all rows: its columns are used as they are, and the
    outlier rows for the fp16 part are dequantized from the codes, as bitsandbytes does.

    Args:
        input: floating tensor (..., in_features), fp16, bf16 or fp32; finite
            values (a NaN spreads to its row of the result).
        weight: (in_features, out_features) floating tensor, or int8 codes with `weight_scale`.
        threshold: outlier magnitude, > 0; None means no outliers (pure int8).
        weight_scale: float tensor (out_features,), the absmax of each column of
            the weight the codes came from; None for a float weight.

    Returns:
        float32 tensor (..., out_features).

    Raises:
        TypeError: `input`, `weight` or `weight_scale` is not a tensor.
        ValueError: bad dtypes or shapes, tensors on different devices, or a
            threshold that is not a positive number or None.
    """
    check_threshold(threshold)
    _check_kernel_args(input, weight, weight_scale)
    x = input.reshape(-1, input.shape[-1]).float()  # (M, K)
    if x.shape[0] == 0:  # no rows: nothing to quantize (max over an empty dim is undefined)
        return x.new_zeros(*input.shape[:-1], weight.shape[1])
    limit = math.inf if threshold is None else float(threshold)
    # BEGIN SOLUTION (Exercise 1)
    # TODO: outliers = indices of the columns where any |x| >= limit (none for threshold None);
    #       where a NaN makes a column's max NaN, take the max of its other values.
    # TODO: quantize x row-wise with absmax_quantize after zeroing its outlier columns.
    # TODO: without weight_scale, quantize the weight column-wise after zeroing its
    #       outlier rows; with weight_scale, weight already holds the codes (cw = weight_scale).
    # TODO: int8_matmul the codes, then scale by outer(cx, cw) / 127**2.
    # TODO: add the fp16 part: outlier columns of x times outlier rows of the weight
    #       (dequantized codes * cw / 127 when pre-quantized), both rounded with .half().
    column_max = x.abs().amax(dim=0) if threshold is not None else x.new_zeros(x.shape[1])
    if column_max.isnan().any():  # a NaN must not hide the other rows' outliers in its column
        column_max = x.abs().nan_to_num_(nan=0.0).amax(dim=0)
    outliers = (column_max >= limit).nonzero().squeeze(1)  # outlier column indices
    has_outliers = outliers.numel() > 0
    # The int8 part sees the outlier features as zeros (no copy when there are none).
    x_int = x.index_fill(1, outliers, 0.0) if has_outliers else x
    x_codes, cx = absmax_quantize(x_int, dim=1)  # (M, K) int8, (M, 1)
    if weight_scale is None:
        w = weight.float()
        w_int = w.index_fill(0, outliers, 0.0) if has_outliers else w
        w_codes, cw = absmax_quantize(w_int, dim=0)  # (K, N) int8, (1, N)
        w_outliers = w.index_select(0, outliers)
    else:
        w_codes, cw = weight, weight_scale.float()[None, :]
        w_outliers = weight.index_select(0, outliers).float() * (cw / 127)
    out = int8_matmul(x_codes, w_codes).float().mul_(cx / 127).mul_(cw / 127)  # (M, N)
    if has_outliers:
        x_outliers = x.index_select(1, outliers)
        out.addmm_(x_outliers.half().float(), w_outliers.half().float())
    # END SOLUTION
    return out.reshape(*input.shape[:-1], out.shape[-1])
