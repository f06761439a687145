"""Tests of quantization.py: the exercise contract (graded) and the layers built on it.

Graded tests (Exercise 1: QuantizedVector, Exercise 2: absmax_quantize and
mixed_precision_forward) compute their references with plain torch only.
Tolerances come from the maths: half a quantization step, or float32 rounding
(2**-24 relative per operation, K * 2**-24 for a length-K float32 dot product).
"""
import copy
import io
import math
from collections import OrderedDict

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import BertConfig, BertForMaskedLM, LlamaConfig, LlamaForCausalLM

from quantization import FORMATS, QuantizedVector, absmax_quantize, int8_matmul, mixed_precision_forward
from toolkit.layers import QuantizedLinear, quantize_model

EPS32 = 2.0**-24  # unit roundoff of float32
CONTRACT_VECTOR = [0.5, -0.75, 1.25, -1.5, 2.0]


# ---------------------------------------------------------------------------
# Plain-torch references
# ---------------------------------------------------------------------------

def reference_absmax(x: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The contract's int8 rule: alpha = 127 / max|x| along dim (1 for a zero slice), round(x * alpha)."""
    x = x.float()
    absmax = x.abs().amax(dim=dim, keepdim=True)
    alpha = torch.where(absmax > 0, 127.0 / absmax, torch.ones_like(absmax))
    return torch.round(x * alpha).to(torch.int8), absmax


def reference_llm_int8(x: torch.Tensor, w: torch.Tensor, outliers: torch.Tensor):
    """LLM.int8 reference in float64: (expected, scale) for x (M, K) @ w (K, N).

    `outliers` is the (K,) bool mask of outlier columns. `scale` bounds the
    magnitude of what was summed (for rounding tolerances).
    """
    x, w = x.float(), w.float()
    x_codes, cx = reference_absmax(x.masked_fill(outliers, 0.0), dim=1)
    w_codes, cw = reference_absmax(w.masked_fill(outliers[:, None], 0.0), dim=0)
    acc = x_codes.long() @ w_codes.long()
    int_part = acc.double() * (cx.double() / 127) * (cw.double() / 127)
    x_o = x[:, outliers].half().double()
    w_o = w[outliers].half().double()
    fp16_part = x_o @ w_o
    scale = int_part.abs() + x_o.abs() @ w_o.abs()
    return int_part + fp16_part, scale


# ---------------------------------------------------------------------------
# Exercise 1: QuantizedVector
# ---------------------------------------------------------------------------

@pytest.mark.exercise(1, points=2)
def test_int8_contract_codes_alpha_and_dequantized_values():
    q = QuantizedVector(torch.tensor(CONTRACT_VECTOR), "int8")
    assert q.quantized_vector.dtype == torch.int8
    assert q.quantized_vector.tolist() == [32, -48, 79, -95, 127]
    assert q.alpha == pytest.approx(127 / 2.0)
    assert q.get_quantized() is q.quantized_vector
    deq = q.dequantize()
    assert deq.dtype == torch.float32
    torch.testing.assert_close(deq, torch.tensor([0.5039, -0.7559, 1.2441, -1.4961, 2.0]), atol=1e-3, rtol=0)


@pytest.mark.exercise(1, points=1)
def test_fp16_keeps_half_values_and_dequantizes_to_float32():
    v = torch.tensor(CONTRACT_VECTOR + [1 / 3])
    q = QuantizedVector(v, "fp16")
    assert q.quantized_vector.dtype == torch.float16
    assert torch.equal(q.quantized_vector, v.half())
    deq = q.dequantize()
    assert deq.dtype == torch.float32
    assert torch.equal(deq, v.half().float())
    assert q.quantization_format == "fp16" and q.original_vector is v


@pytest.mark.exercise(1, points=1)
def test_ternary_contract_vector_and_gaussian_codes():
    q = QuantizedVector(torch.tensor(CONTRACT_VECTOR), "1.58bit")
    assert q.quantized_vector.dtype == torch.int8
    assert q.quantized_vector.tolist() == [0, 0, 1, -1, 1]

    x = torch.randn(4000, generator=torch.Generator().manual_seed(0))
    codes = QuantizedVector(x, "1.58bit").quantized_vector
    t = x.abs().mean()
    expected = torch.zeros_like(x, dtype=torch.int8)
    expected[x > t] = 1
    expected[x < -t] = -1
    assert torch.equal(codes, expected)
    assert set(codes.unique().tolist()) == {-1, 0, 1}


@pytest.mark.exercise(1, points=1)
def test_one_bit_is_sign_with_zero_as_plus_one():
    x = torch.tensor([0.0, -0.0, 3.0, -2.5, 1e-6, -1e-6])
    q = QuantizedVector(x, "1bit")
    assert q.quantized_vector.dtype == torch.int8
    assert q.quantized_vector.tolist() == [1, 1, 1, -1, 1, -1]
    g = torch.randn(1000, generator=torch.Generator().manual_seed(1))
    assert set(QuantizedVector(g, "1bit").quantized_vector.unique().tolist()) == {-1, 1}


@pytest.mark.exercise(1, points=1)
@pytest.mark.parametrize("fmt", ["1bit", "1.58bit"])
def test_dequantize_refuses_one_bit_and_ternary(fmt):
    q = QuantizedVector(torch.tensor(CONTRACT_VECTOR), fmt)
    with pytest.raises(ValueError, match=f"^Unsupported dequantization format: {fmt}$"):
        q.dequantize()


@pytest.mark.exercise(1, points=2)
def test_int8_round_trip_error_is_at_most_half_a_step_on_any_shape():
    x = torch.randn(3, 5, 7, generator=torch.Generator().manual_seed(2)) * 4
    q = QuantizedVector(x, "int8")
    assert q.quantized_vector.shape == x.shape
    absmax = x.abs().max().item()
    assert q.alpha == pytest.approx(127 / absmax, rel=1e-12)  # one scale for the whole tensor
    assert q.quantized_vector.abs().max().item() == 127
    # |x - round(x a) / a| <= 1 / (2a) = max|x| / 254, plus float32 rounding of x * a and / a.
    err = (q.dequantize() - x).abs().max().item()
    assert err <= absmax / 254 + 4 * EPS32 * absmax


@pytest.mark.exercise(1, points=1)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_input_dtypes_dequantize_to_float32(dtype):
    x = torch.tensor(CONTRACT_VECTOR, dtype=dtype)
    for fmt in ("int8", "fp16"):
        deq = QuantizedVector(x, fmt).dequantize()
        assert deq.dtype == torch.float32
        assert (deq - x.float()).abs().max().item() <= 2.0 / 254 + 1e-6
    assert QuantizedVector(x, "int8").quantized_vector.tolist() == [32, -48, 79, -95, 127]


@pytest.mark.exercise(1, points=1)
@pytest.mark.parametrize("fmt", FORMATS)
def test_all_zero_vector_gives_no_nan(fmt):
    q = QuantizedVector(torch.zeros(2, 3), fmt)
    assert math.isfinite(q.alpha)
    codes = q.quantized_vector.float()
    assert torch.isfinite(codes).all()
    if fmt == "1bit":
        assert torch.equal(codes, torch.ones(2, 3))
    else:
        assert torch.equal(codes, torch.zeros(2, 3))
        if fmt in ("int8", "fp16"):
            assert torch.equal(q.dequantize(), torch.zeros(2, 3))


# Validation runs in the constructor before quantize(): ungraded (it passes in the student release too).
@pytest.mark.parametrize(
    "vector, error, message",
    [
        ([0.5, 1.0], TypeError, "vector must be a torch.Tensor, got list"),
        (torch.tensor([]), ValueError, "vector must not be empty"),
        (torch.tensor([1, 2, 3]), ValueError, "floating-point tensor, got dtype torch.int64"),
        (torch.tensor([1.0, float("nan")]), ValueError, "finite"),
        (torch.tensor([1.0, float("inf")]), ValueError, "finite"),
    ],
)
def test_quantized_vector_rejects_bad_input(vector, error, message):
    with pytest.raises(error, match=message):
        QuantizedVector(vector)


@pytest.mark.parametrize("fmt", ["int4", "INT8", "", None])
def test_quantized_vector_unknown_format_names_it_and_the_supported_ones(fmt):
    with pytest.raises(ValueError) as info:
        QuantizedVector(torch.ones(3), fmt)
    assert repr(fmt) in str(info.value)
    for supported in FORMATS:
        assert repr(supported) in str(info.value)


def test_absmax_quantize_scale_is_rounded_like_quantized_vector():
    # 0.0101625... * alpha lies within an ulp of 0.5: a scale computed as 127 * (1 / absmax)
    # instead of 127 / absmax rounds it to 0 instead of 1.
    x = torch.tensor([2.5812828540802, 0.010162531398236752])
    assert QuantizedVector(x, "int8").quantized_vector.tolist() == [127, 1]
    assert absmax_quantize(x[None], dim=1)[0].tolist() == [[127, 1]]
    rows = torch.randn(2000, 16, generator=torch.Generator().manual_seed(5))
    codes, absmax = absmax_quantize(rows, dim=1)
    assert torch.equal(codes, torch.stack([QuantizedVector(row, "int8").quantized_vector for row in rows]))
    assert absmax.shape == (2000, 1)


# ---------------------------------------------------------------------------
# Exercise 2: absmax_quantize and mixed_precision_forward
# ---------------------------------------------------------------------------

@pytest.mark.exercise(2, points=1)
def test_absmax_quantize_rows_and_columns():
    x = torch.randn(5, 9, generator=torch.Generator().manual_seed(4)) * 3
    x[2] = 0.0  # a zero row: codes 0, no NaN
    for dim, shape in ((1, (5, 1)), (0, (1, 9))):
        codes, absmax = absmax_quantize(x, dim=dim)
        ref_codes, ref_absmax = reference_absmax(x, dim)
        assert codes.dtype == torch.int8 and absmax.dtype == torch.float32
        assert absmax.shape == shape
        assert torch.equal(codes, ref_codes)
        assert torch.equal(absmax, ref_absmax)
    assert torch.equal(absmax_quantize(x, dim=1)[0][2], torch.zeros(9, dtype=torch.int8))


@pytest.mark.exercise(2, points=2)
def test_int8_part_is_an_exact_integer_product():
    # Integer inputs whose every row of x and column of w reaches 127: the codes are
    # the values themselves and outer(cx, cw) / 127**2 == 1, so the result must be the
    # integer product exactly (|x @ w| <= 64 * 127**2 < 2**24 fits float32).
    g = torch.Generator().manual_seed(5)
    x = torch.randint(-127, 128, (24, 64), generator=g).float()
    w = torch.randint(-127, 128, (64, 40), generator=g).float()
    x[:, 0], w[0, :] = 127.0, -127.0
    out = mixed_precision_forward(x, w, threshold=200.0)
    assert out.dtype == torch.float32
    assert torch.equal(out, (x.long() @ w.long()).float())


@pytest.mark.exercise(2, points=2)
def test_no_outliers_matches_llm_int8_reference():
    g = torch.Generator().manual_seed(6)
    x = torch.randn(8, 64, generator=g).clamp(-5, 5)
    w = torch.randn(64, 16, generator=g) * 0.1
    out = mixed_precision_forward(x, w)  # threshold 6.0, every |x| < 6
    expected, scale = reference_llm_int8(x, w, torch.zeros(64, dtype=torch.bool))
    # float32 dequantization: four roundings, each 2**-24 relative.
    assert ((out.double() - expected).abs() <= 4 * EPS32 * scale + 1e-30).all()


@pytest.mark.exercise(2, points=2)
def test_outlier_columns_use_greater_or_equal_and_go_through_fp16():
    g = torch.Generator().manual_seed(7)
    x = torch.randn(8, 32, generator=g).clamp(-5, 5)
    w = torch.randn(32, 12, generator=g) * 0.1
    x[3, 5], x[6, 17] = 6.0, -6.0  # exactly the threshold: outliers
    x[1, 9] = 5.999  # just below: stays int8
    w[5] = 1.0  # the weight's largest values sit in an outlier row: cw must leave them out
    outliers = torch.zeros(32, dtype=torch.bool)
    outliers[[5, 17]] = True
    out = mixed_precision_forward(x, w, threshold=6.0)
    expected, scale = reference_llm_int8(x, w, outliers)
    # int part: four roundings; fp16 part: products of halves are exact in float32,
    # then two float32 additions; 8 * 2**-24 of the summed magnitudes covers both.
    assert ((out.double() - expected).abs() <= 8 * EPS32 * scale + 1e-30).all()
    # With '>' the two columns would be int8 and the result clearly different.
    strict, _ = reference_llm_int8(x, w, torch.zeros(32, dtype=torch.bool))
    assert (out.double() - strict).abs().max() > 1e-3


@pytest.mark.exercise(2, points=1)
def test_all_outlier_columns_is_the_fp16_product():
    g = torch.Generator().manual_seed(8)
    x = torch.randn(6, 16, generator=g)
    w = torch.randn(16, 10, generator=g)
    x[0] = 10.0  # every column has an outlier: the int8 part is all zeros (and no NaN)
    out = mixed_precision_forward(x, w, threshold=6.0)
    x16, w16 = x.half().double(), w.half().double()
    assert ((out.double() - x16 @ w16).abs() <= 16 * EPS32 * (x16.abs() @ w16.abs())).all()


@pytest.mark.exercise(2, points=1)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_leading_dimensions_and_input_dtypes(dtype):
    g = torch.Generator().manual_seed(9)
    x = (torch.randn(2, 3, 32, generator=g) * 2).to(dtype)
    x[1, 2, 4] = 7.0
    w = torch.randn(32, 8, generator=g)
    out = mixed_precision_forward(x, w)
    assert out.shape == (2, 3, 8) and out.dtype == torch.float32
    flat = mixed_precision_forward(x.reshape(6, 32).float(), w)
    assert torch.equal(out.reshape(6, 8), flat)
    vector = mixed_precision_forward(x[1, 2], w)  # one row: its own outliers and scale
    assert vector.shape == (8,) and torch.equal(vector, mixed_precision_forward(x[1, 2][None].float(), w)[0])


@pytest.mark.exercise(2, points=1)
def test_result_is_within_the_quantization_error_bound_of_the_float_product():
    g = torch.Generator().manual_seed(10)
    x = torch.randn(16, 96, generator=g).clamp(-5.9, 5.9)
    w = torch.randn(96, 24, generator=g) * 0.05
    out = mixed_precision_forward(x, w).double()
    x64, w64 = x.double(), w.double()
    cx = x64.abs().amax(dim=1, keepdim=True)
    cw = w64.abs().amax(dim=0, keepdim=True)
    # x_hat w_hat - x w = (x_hat - x) w_hat + x (w_hat - w), |x_hat - x| <= cx / 254,
    # |w_hat - w| <= cw / 254, |w_hat| <= |w| + cw / 254; plus float32 rounding.
    bound = (cx / 254) * (w64.abs() + cw / 254).sum(dim=0, keepdim=True) + x64.abs().sum(dim=1, keepdim=True) * cw / 254
    bound += 8 * EPS32 * (x64.abs() @ w64.abs())
    assert ((out - x64 @ w64).abs() <= bound).all()


# ---------------------------------------------------------------------------
# The exact int8 GEMM and the kernel's arguments (scaffolding: ungraded)
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("m, k, n", [(5, 1, 3), (7, 1024, 9), (9, 1025, 6), (33, 3072, 24)])
def test_int8_matmul_equals_integer_reference(m, k, n):
    g = torch.Generator().manual_seed(k)
    a = torch.randint(-128, 128, (m, k), generator=g, dtype=torch.int8)
    b = torch.randint(-128, 128, (k, n), generator=g, dtype=torch.int8)
    out = int8_matmul(a, b)
    assert out.dtype == torch.int32
    assert torch.equal(out.long(), a.long() @ b.long())
    assert torch.equal(int8_matmul(a, b.t().contiguous().t()), out)  # any strides


@pytest.mark.parametrize("k, n", [(768, 3072), (3072, 768)])
def test_transformer_sized_int8_part_equals_the_integer_reference(k, n):
    # A (2048, K) @ (K, N) FFN product. Integer inputs whose every row of x and column
    # of w reaches 127 are their own codes with outer(cx, cw) / 127**2 == 1, so the
    # int8 part is the integer product itself; float64 holds it exactly.
    g = torch.Generator().manual_seed(k)
    x = torch.randint(-127, 128, (2048, k), generator=g, dtype=torch.int8)
    w = torch.randint(-127, 128, (k, n), generator=g, dtype=torch.int8)
    x[:, 0], w[0, :] = 127, -127
    expected = x.double() @ w.double()
    assert torch.equal(int8_matmul(x, w).double(), expected)
    if k * 127**2 < 2**24:  # the float32 result of the whole kernel is exact too
        assert torch.equal(mixed_precision_forward(x.float(), w.float(), threshold=None).double(), expected)


def test_int8_matmul_worst_case_beyond_float32_integers():
    # Codes of one sign at full magnitude: sums up to 3071 * 127**2 > 2**24, odd
    # values float32 cannot hold, so the int32 result must come from exact chunks.
    k = 3071
    a = torch.full((17, k), 127, dtype=torch.int8)
    a[1] = -127
    a[2, ::2] = -128
    b = torch.full((k, 8), 127, dtype=torch.int8)
    b[:, 1] = -128
    b[1::3, 2] = 1
    ref = a.long() @ b.long()
    assert ref.abs().max() > 2**24 and (ref % 2 == 1).any()
    assert torch.equal(int8_matmul(a, b).long(), ref)


@pytest.mark.parametrize(
    "a, b, error, message",
    [
        ([[1]], torch.ones(1, 1, dtype=torch.int8), TypeError, "must be torch.Tensor"),
        (torch.ones(2, 3), torch.ones(3, 2, dtype=torch.int8), ValueError, "must be int8"),
        (torch.ones(2, 3, dtype=torch.int8), torch.ones(2, 3, dtype=torch.int8), ValueError, r"\(M, K\) @ \(K, N\)"),
        (torch.ones(1, 131072, dtype=torch.int8), torch.ones(131072, 1, dtype=torch.int8), ValueError, "overflow"),
    ],
)
def test_int8_matmul_rejects_bad_arguments(a, b, error, message):
    with pytest.raises(error, match=message):
        int8_matmul(a, b)


def test_pre_quantized_weight_matches_reference_with_outliers():
    g = torch.Generator().manual_seed(11)
    x = torch.randn(10, 48, generator=g).clamp(-5, 5)
    x[2, 7], x[8, 30] = 9.0, -6.5
    w = torch.randn(48, 20, generator=g) * 0.1
    codes, cw = reference_absmax(w, dim=0)  # column absmax over all rows
    out = mixed_precision_forward(x, codes, 6.0, weight_scale=cw.squeeze(0))
    outliers = torch.zeros(48, dtype=torch.bool)
    outliers[[7, 30]] = True
    x_codes, cx = reference_absmax(x.masked_fill(outliers, 0.0), dim=1)
    int_part = (x_codes.long() @ codes.long()).double() * (cx.double() / 127) * (cw.double() / 127)
    w_o = (codes[outliers].float() * (cw / 127)).half().double()  # outlier rows dequantized from codes
    x_o = x[:, outliers].half().double()
    expected = int_part + x_o @ w_o
    scale = int_part.abs() + x_o.abs() @ w_o.abs()
    assert ((out.double() - expected).abs() <= 8 * EPS32 * scale + 1e-30).all()


def test_empty_batch_gives_an_empty_result():
    out = mixed_precision_forward(torch.empty(0, 3, 4), torch.ones(4, 5))
    assert out.shape == (0, 3, 5) and out.dtype == torch.float32


def test_threshold_none_is_pure_int8():
    g = torch.Generator().manual_seed(12)
    x = torch.randn(6, 16, generator=g) * 5
    x[0, 0] = 100.0
    w = torch.randn(16, 4, generator=g)
    expected, scale = reference_llm_int8(x, w, torch.zeros(16, dtype=torch.bool))
    out = mixed_precision_forward(x, w, None)
    assert ((out.double() - expected).abs() <= 4 * EPS32 * scale + 1e-30).all()


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(input=[[1.0]]), TypeError, "input must be a torch.Tensor, got list"),
        (dict(weight=None), TypeError, "weight must be a torch.Tensor, got NoneType"),
        (dict(input=torch.ones(2, 4, dtype=torch.long)), ValueError, "input must be floating point"),
        (dict(input=torch.ones(2, 5)), ValueError, "in_features=4"),
        (dict(input=torch.tensor(1.0)), ValueError, "in_features=4"),
        (dict(weight=torch.ones(4)), ValueError, "non-empty \\(in_features, out_features\\)"),
        (dict(weight=torch.ones(4, 3, dtype=torch.int8)), ValueError, "int8 codes with weight_scale"),
        (dict(weight_scale=torch.ones(3)), ValueError, "weight must hold int8 codes"),
        (dict(weight=torch.ones(4, 3, dtype=torch.int8), weight_scale=torch.ones(4)), ValueError, r"\(out_features,\)"),
        (dict(threshold=0.0), ValueError, "positive number or None, got 0.0"),
        (dict(threshold=-6.0), ValueError, "positive number or None, got -6.0"),
        (dict(threshold=float("nan")), ValueError, "positive number or None, got nan"),
        (dict(threshold="6"), ValueError, "positive number or None, got '6'"),
    ],
)
def test_mixed_precision_forward_rejects_bad_arguments(kwargs, error, message):
    args = dict(input=torch.ones(2, 4), weight=torch.ones(4, 3), threshold=6.0, weight_scale=None) | kwargs
    with pytest.raises(error, match=message):
        mixed_precision_forward(args["input"], args["weight"], args["threshold"], weight_scale=args["weight_scale"])


# ---------------------------------------------------------------------------
# QuantizedLinear
# ---------------------------------------------------------------------------

def make_linear(in_features=40, out_features=12, bias=True, seed=13, dtype=torch.float32) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(in_features, out_features, bias=bias, dtype=dtype)


def weight_error_bound(w: torch.Tensor, fmt: str) -> torch.Tensor:
    """Elementwise bound on |w_hat - w| (w: (out, in) float32) from each format's step, shape of w."""
    row_absmax = w.abs().amax(dim=1, keepdim=True)
    row_absmean = w.abs().mean(dim=1, keepdim=True)
    slack = 4 * EPS32 * row_absmax  # float32 rounding of scale and product
    if fmt == "fp16":
        bound = w.abs() * 2.0**-11 + 2.0**-25  # half a float16 ulp (2**-25: subnormal range)
    elif fmt == "int8":
        bound = row_absmax / 254 + slack  # half of the step absmax / 127
    elif fmt == "1.58bit":
        # Codes round(w / gamma) within [-1.5, 1.5] are off by <= gamma / 2; clipped ones by |w| - gamma.
        bound = torch.maximum(row_absmean / 2, row_absmax - row_absmean) + slack
    else:
        bound = torch.maximum(row_absmean, row_absmax - row_absmean) + slack  # ||w| - mean|w||
    return bound.expand_as(w)


@pytest.mark.parametrize("fmt", FORMATS)
def test_from_linear_codes_follow_the_documented_rule(fmt):
    linear = make_linear()
    w = linear.weight.detach()
    layer = QuantizedLinear.from_linear(linear, fmt)
    if fmt == "fp16":
        assert torch.equal(layer.weight, w.half())
        with pytest.raises(ValueError, match="stores float16 weights"):
            layer.weight_codes()
        return
    codes = layer.weight_codes()
    assert codes.shape == w.shape and codes.dtype == torch.int8
    if fmt == "int8":
        expected, scale = reference_absmax(w, dim=1)
    elif fmt == "1.58bit":
        scale = w.abs().mean(dim=1, keepdim=True)
        expected = (w / scale).round().clamp(-1, 1).to(torch.int8)
    else:
        scale = w.abs().mean(dim=1, keepdim=True)
        expected = torch.where(w < 0, -1, 1).to(torch.int8)
    assert torch.equal(codes, expected)
    torch.testing.assert_close(layer.weight_scale, scale.squeeze(1), rtol=2 * EPS32, atol=0)


@pytest.mark.parametrize("fmt", FORMATS)
def test_dequantized_weight_is_within_the_step_bound(fmt):
    linear = make_linear(64, 24)
    w = linear.weight.detach()
    w_hat = QuantizedLinear.from_linear(linear, fmt).dequantized_weight()
    assert w_hat.dtype == torch.float32
    assert ((w_hat - w).abs() <= weight_error_bound(w, fmt)).all()


@pytest.mark.parametrize("fmt", ["fp16", "1.58bit", "1bit"])
def test_weight_only_formats_compute_with_the_dequantized_weight(fmt):
    linear = make_linear(64, 24)
    layer = QuantizedLinear.from_linear(linear, fmt)
    x = torch.randn(5, 64)
    w_hat = layer.dequantized_weight().double()
    expected = F.linear(x.double(), w_hat, linear.bias.detach().double())
    # A float32 dot product of length K is within K * 2**-24 of the sum of magnitudes.
    tol = 66 * EPS32 * (x.double().abs() @ w_hat.abs().t() + linear.bias.detach().double().abs())
    with torch.no_grad():
        assert ((layer(x).double() - expected).abs() <= tol).all()
        # and so within |x| @ bound^T of the float layer
        bound = x.double().abs() @ weight_error_bound(linear.weight.detach(), fmt).double().t() + tol
        assert ((layer(x).double() - linear(x).double()).abs() <= bound).all()


def test_pure_int8_layer_equals_the_integer_reference():
    linear = make_linear(64, 24, bias=False)
    layer = QuantizedLinear.from_linear(linear, "int8", threshold=None)
    x = torch.randn(7, 64) * 3
    x[0, 0] = 50.0  # no outlier path with threshold=None
    x_codes, cx = reference_absmax(x, dim=1)
    acc = x_codes.long() @ layer.weight.long().t()
    expected = acc.double() * (cx.double() / 127) * (layer.weight_scale.double() / 127)
    with torch.no_grad():
        out = layer(x).double()
    # Four float32 roundings (2**-24 each). |acc| <= 64 * 127**2 < 2**22, so an integer off
    # by one would move the result by >= 1 / 2**22 relative: more than 4 * 2**-24.
    assert ((out - expected).abs() <= 4 * EPS32 * expected.abs()).all()


def test_int8_threshold_sends_outlier_features_through_fp16():
    linear = make_linear(64, 24)
    x = torch.randn(16, 64)
    x[:, 3] = 60.0  # one outlier feature in every row, as in LLM.int8's observation
    with torch.no_grad():
        ref = linear(x)
        err_mixed = (QuantizedLinear.from_linear(linear, "int8", 6.0)(x) - ref).abs().max()
        err_pure = (QuantizedLinear.from_linear(linear, "int8", None)(x) - ref).abs().max()
    # Pure int8: the 60.0 sets every row's step to 60/127 and the normal features
    # (|x| ~ 1) lose most of their bits; with the threshold they keep their own scale.
    assert err_mixed * 5 < err_pure


@pytest.mark.parametrize(
    "fmt, weight_bytes",
    [("fp16", 2 * 35), ("int8", 35), ("1.58bit", math.ceil(35 / 4)), ("1bit", math.ceil(35 / 8))],
)
def test_buffers_hold_the_compressed_bytes(fmt, weight_bytes):
    layer = QuantizedLinear.from_linear(make_linear(7, 5), fmt)  # n = 35 weights
    buffers = dict(layer.named_buffers())
    assert not list(layer.parameters())
    weight = buffers["weight_packed" if fmt in ("1.58bit", "1bit") else "weight"]
    assert weight.numel() * weight.element_size() == weight_bytes
    scale_bytes = 0 if fmt == "fp16" else 5 * 4
    assert sum(b.numel() * b.element_size() for name, b in buffers.items() if name != "bias") == weight_bytes + scale_bytes
    assert set(layer.state_dict()) == set(buffers)


@pytest.mark.parametrize("fmt, packed", [("1.58bit", [146, 133, 2]), ("1bit", [189, 1])])
def test_packed_bit_layout(fmt, packed):
    # Codes [1, -1, 0, 1, 0, 0, -1, 1, 1] (1bit: 0 -> +1); the first code in the lowest bits.
    # 1.58bit fields are code + 1 in 2 bits: 2|0<<2|1<<4|2<<6 = 146, 1|1<<2|0<<4|2<<6 = 133, 2.
    # 1bit fields are 1 for +1: bits 1,0,1,1,1,1,0,1 = 189, then 1.
    linear = nn.Linear(9, 1, bias=False)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([[2.0, -2.0, 0.0, 2.0, 0.0, 0.0, -2.0, 2.0, 2.0]]))
    layer = QuantizedLinear.from_linear(linear, fmt)
    assert layer.weight_packed.dtype == torch.uint8
    assert layer.weight_packed.tolist() == packed


@pytest.mark.parametrize("fmt", ["1.58bit", "1bit"])
def test_pack_round_trip_on_random_codes(fmt):
    linear = make_linear(13, 11)  # 143 codes: a partial last byte
    layer = QuantizedLinear.from_linear(linear, fmt)
    w = linear.weight.detach()
    gamma = w.abs().mean(dim=1, keepdim=True)
    expected = (w / gamma).round().clamp(-1, 1) if fmt == "1.58bit" else torch.where(w < 0, -1.0, 1.0)
    assert torch.equal(layer.weight_codes(), expected.to(torch.int8))


@pytest.mark.parametrize("fmt, threshold", [("fp16", 6.0), ("int8", 6.0), ("int8", None), ("1.58bit", 6.0), ("1bit", 6.0)])
def test_state_dict_round_trip_is_bit_identical(fmt, threshold):
    layer = QuantizedLinear.from_linear(make_linear(), fmt, threshold)
    buffer = io.BytesIO()
    torch.save(layer.state_dict(), buffer)
    buffer.seek(0)
    fresh = QuantizedLinear(40, 12, fmt, threshold)
    fresh.load_state_dict(torch.load(buffer))
    x = torch.randn(4, 40)
    x[1, 2] = 20.0  # an outlier for the int8 path
    with torch.no_grad():
        assert torch.equal(fresh(x), layer(x))


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_output_has_the_input_dtype_and_bias_keeps_its_precision(fmt, dtype):
    linear = make_linear(16, 8, dtype=torch.bfloat16)
    layer = QuantizedLinear.from_linear(linear, fmt)
    assert layer.bias.dtype == torch.bfloat16 and torch.equal(layer.bias, linear.bias.detach())
    with torch.no_grad():
        out = layer(torch.randn(3, 16, dtype=dtype))
    assert out.dtype == dtype and out.shape == (3, 8) and torch.isfinite(out).all()


def test_quantized_linear_rejects_bad_arguments():
    with pytest.raises(ValueError, match="Unknown quantization format 'int4'"):
        QuantizedLinear.from_linear(make_linear(), "int4")
    for threshold in (0, -1.0):
        with pytest.raises(ValueError, match=f"positive number or None, got {threshold}"):
            QuantizedLinear.from_linear(make_linear(), "int8", threshold)
    with pytest.raises(TypeError, match="must be an nn.Linear, got Conv1d"):
        QuantizedLinear.from_linear(nn.Conv1d(2, 2, 1), "int8")


# ---------------------------------------------------------------------------
# quantize_model on tiny Hugging Face models
# ---------------------------------------------------------------------------

def tiny_bert() -> BertForMaskedLM:
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=32)
    return BertForMaskedLM(config).eval()


def tiny_llama() -> LlamaForCausalLM:
    config = LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(config).eval()


# (builder, layers replaced by default, the head kept in float)
MODELS = {"bert": (tiny_bert, 13, "cls.predictions.decoder"), "llama": (tiny_llama, 14, "lm_head")}


@pytest.fixture(scope="module")
def float_models():
    torch.manual_seed(14)
    return {name: builder() for name, (builder, _, _) in MODELS.items()}


def logits(model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=input_ids).logits


INPUT_IDS = torch.randint(0, 100, (2, 12), generator=torch.Generator().manual_seed(15))


@pytest.mark.parametrize("name", MODELS)
def test_quantize_model_replaces_all_but_the_head_and_reports_it(name, float_models, capsys):
    _, n_replaced, head = MODELS[name]
    model = quantize_model(copy.deepcopy(float_models[name]), "1bit")
    assert f"replaced {n_replaced} nn.Linear layers with 1bit QuantizedLinear" in capsys.readouterr().out
    report = model.quantization_report
    assert len(report["replaced"]) == n_replaced and report["skipped"] == [head]
    assert report["format"] == "1bit" and report["threshold"] == 6.0
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    assert linears == [head]
    assert sum(isinstance(m, QuantizedLinear) for m in model.modules()) == n_replaced


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_quantized_model_weights_are_within_the_step_bound(name, fmt, float_models):
    original = float_models[name]
    model = quantize_model(copy.deepcopy(original), fmt, verbose=False)
    for layer_name in model.quantization_report["replaced"]:
        w = original.get_submodule(layer_name).weight.detach()
        w_hat = model.get_submodule(layer_name).dequantized_weight()
        assert ((w_hat - w).abs() <= weight_error_bound(w, fmt)).all(), layer_name


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("fmt, per_layer", [("fp16", 2.0**-11), ("int8", math.sqrt(2) * 4 / (127 * math.sqrt(12)))])
def test_quantized_logits_are_close_to_float(name, fmt, per_layer, float_models):
    # Per layer: fp16 rounds each weight by at most 2**-11 relative. int8 rounds x and w
    # with RMS error step / sqrt(12), step = absmax / 127, and absmax <= 4 RMS for these
    # sizes: sqrt(2) * 4 / (127 sqrt(12)) relative. Independent layer errors add in
    # quadrature (LayerNorm/RMSNorm keep the scale): sqrt(L) * per_layer for L layers.
    _, n_replaced, _ = MODELS[name]
    ref = logits(float_models[name], INPUT_IDS)
    out = logits(quantize_model(copy.deepcopy(float_models[name]), fmt, verbose=False), INPUT_IDS)
    assert ((out - ref).norm() / ref.norm()).item() <= math.sqrt(n_replaced) * per_layer


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_quantized_model_state_dict_round_trip(name, fmt, float_models):
    builder, _, _ = MODELS[name]
    model = quantize_model(copy.deepcopy(float_models[name]), fmt, verbose=False)
    out = logits(model, INPUT_IDS)
    assert torch.isfinite(out).all() and out.shape == (2, 12, 100)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    torch.manual_seed(16)  # different random weights, overwritten by the load
    fresh = quantize_model(builder(), fmt, verbose=False)
    fresh.load_state_dict(torch.load(buffer))
    assert torch.equal(logits(fresh, INPUT_IDS), out)


def test_quantized_model_buffers_hold_the_packed_bytes(float_models):
    original = float_models["bert"]
    model = quantize_model(copy.deepcopy(original), "1.58bit", verbose=False)
    names = model.quantization_report["replaced"]
    packed = sum(model.get_submodule(n).weight_packed.numel() for n in names)
    assert packed == sum(math.ceil(original.get_submodule(n).weight.numel() / 4) for n in names)


def test_skip_selects_the_float_layers(float_models):
    model = quantize_model(copy.deepcopy(float_models["bert"]), "fp16", skip=(), verbose=False)
    assert len(model.quantization_report["replaced"]) == 14 and model.quantization_report["skipped"] == []
    model = quantize_model(copy.deepcopy(float_models["bert"]), "fp16", skip=["dense", "cls.predictions.decoder"],
                           verbose=False)
    assert all(not n.endswith("dense") for n in model.quantization_report["replaced"])
    assert len(model.quantization_report["replaced"]) == 6  # query, key, value of two layers


def test_classifier_and_score_heads_are_skipped_by_default():
    model = nn.Sequential(OrderedDict(body=nn.Linear(4, 4), classifier=nn.Linear(4, 2), score=nn.Linear(4, 1)))
    quantize_model(model, "fp16", verbose=False)
    assert model.quantization_report["replaced"] == ["body"]
    assert model.quantization_report["skipped"] == ["classifier", "score"]


def test_quantize_model_rejects_bad_arguments(float_models):
    with pytest.raises(ValueError, match="no nn.Linear left to replace in Sequential"):
        quantize_model(nn.Sequential(OrderedDict(classifier=nn.Linear(4, 2))), "int8")
    with pytest.raises(ValueError, match="no nn.Linear left to replace"):
        quantize_model(nn.Sequential(nn.ReLU()), "int8")
    with pytest.raises(ValueError, match="QuantizedLinear.from_linear"):
        quantize_model(nn.Linear(4, 2), "int8")
    with pytest.raises(ValueError, match="Unknown quantization format '2bit'"):
        quantize_model(copy.deepcopy(float_models["bert"]), "2bit")
    with pytest.raises(ValueError, match="positive number or None, got -1"):
        quantize_model(copy.deepcopy(float_models["bert"]), "int8", threshold=-1)
    already = quantize_model(copy.deepcopy(float_models["llama"]), "fp16", verbose=False)
    with pytest.raises(ValueError, match=r"kept in float by skip: \['lm_head'\]"):
        quantize_model(already, "fp16")
