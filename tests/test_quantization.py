"""Tests of quantization.py, the lab's Exercise 1 (graded) and the provided code around it.

Graded tests compute their references with plain torch in float64 and accept every correct
implementation: integer codes are exact except where the exact value x * 127 / absmax lies within
float32 rounding of a half-integer (there either neighbour is right: `127 / absmax` and
`x / absmax * 127` round differently), and float results are checked against bounds derived from
the number of float32 roundings (unit roundoff 2**-24 per operation), in any order. The toolkit's
layers are tested in test_layers.py.
"""
import math

import pytest
import torch

from int8_reference import EPS32, reference_absmax
from quantization import FORMATS, QuantizedVector, absmax_quantize, int8_matmul, mixed_precision_forward

CONTRACT_VECTOR = [0.5, -0.75, 1.25, -1.5, 2.0]
EPS16 = 2.0**-11  # unit roundoff of float16
# x * (127 / absmax) takes at most 3 float32 roundings (the scale, the product, or x / absmax then * 127):
# the computed value is within 3 * 2**-24 * 127 < 3e-5 of the exact one, so its rounding is fixed
# unless the exact value lies that close to a half-integer.
TIE_BAND = 4 * EPS32 * 127


def exact_scaled(x: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """x * 127 / absmax in float64 (absmax over `dim`, or the whole tensor), 0 for a zero slice."""
    x = x.double()
    absmax = x.abs().amax() if dim is None else x.abs().amax(dim=dim, keepdim=True)
    return torch.where(absmax > 0, x * 127 / torch.where(absmax > 0, absmax, 1.0), 0.0)


def assert_int8_codes(codes: torch.Tensor, x: torch.Tensor, dim: int | None = None) -> None:
    """Codes equal round(x * 127 / absmax), either neighbour accepted inside the near-tie band."""
    assert codes.dtype == torch.int8 and codes.shape == x.shape
    exact = exact_scaled(x, dim)
    near_tie = ((exact - exact.floor()) - 0.5).abs() <= TIE_BAND
    ok = (codes.double() == exact.round()) | (near_tie & ((codes.double() - exact).abs() <= 0.5 + TIE_BAND))
    assert ok.all(), f"wrong codes at {(~ok).nonzero().tolist()[:5]}"


def assert_no_near_ties(x: torch.Tensor, dim: int) -> None:
    """The test's data: no code is ambiguous, so the int8 part has one right answer."""
    exact = exact_scaled(x, dim)
    assert (((exact - exact.floor()) - 0.5).abs() > TIE_BAND).all()


def reference_llm_int8(x: torch.Tensor, w: torch.Tensor, outliers: torch.Tensor):
    """LLM.int8 reference in float64 for x (M, K) @ w (K, N), `outliers` the (K,) bool mask of
    outlier columns: (expected, int8-part magnitude, fp16-part magnitude) for rounding bounds."""
    x, w = x.float(), w.float()
    x_int, w_int = x.masked_fill(outliers, 0.0), w.masked_fill(outliers[:, None], 0.0)
    assert_no_near_ties(x_int, 1), assert_no_near_ties(w_int, 0)
    x_codes, cx = reference_absmax(x_int, dim=1)
    w_codes, cw = reference_absmax(w_int, dim=0)
    int_part = (x_codes.long() @ w_codes.long()).double() * (cx.double() / 127) * (cw.double() / 127)
    x_o, w_o = x[:, outliers].half().double(), w[outliers].half().double()
    return int_part + x_o @ w_o, int_part.abs(), x_o.abs() @ w_o.abs()


def assert_llm_int8_close(out, x, w, outliers):
    """Within the rounding of any order of operations: the int8 part's dequantization, at most 6
    float32 roundings of its magnitude (int32 -> float32, the scale products, the division, the sum);
    the fp16 part, float16 products accumulated in float16 (K_o + 1 roundings) or wider."""
    expected, int_magnitude, fp16_magnitude = reference_llm_int8(x, w, outliers)
    bound = 6 * EPS32 * int_magnitude + (int(outliers.sum()) + 1) * EPS16 * fp16_magnitude + 1e-30
    assert out.dtype == torch.float32
    assert ((out.double() - expected).abs() <= bound).all()


# ---------------------------------------------------------------------------
# Exercise 1: QuantizedVector

@pytest.mark.exercise(1, points=2)
def test_int8_contract_codes_alpha_and_dequantized_values():
    q = QuantizedVector(torch.tensor(CONTRACT_VECTOR), "int8")
    assert q.quantized_vector.dtype == torch.int8
    assert q.quantized_vector.tolist() == [32, -48, 79, -95, 127]
    assert q.alpha == pytest.approx(127 / 2.0, rel=1e-6)
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
def test_ternary_codes_use_a_strict_mean_threshold():
    q = QuantizedVector(torch.tensor(CONTRACT_VECTOR), "1.58bit")
    assert q.quantized_vector.dtype == torch.int8
    assert q.quantized_vector.tolist() == [0, 0, 1, -1, 1]
    # mean|x| = 2 exactly in any summation order: |x| == t is not above the threshold.
    assert QuantizedVector(torch.tensor([2.0, -2.0, 1.0, 3.0, -3.0, 1.0]), "1.58bit").quantized_vector.tolist() \
        == [0, 0, 0, 1, -1, 0]
    x = torch.randn(4000, generator=torch.Generator().manual_seed(0))
    codes = QuantizedVector(x, "1.58bit").quantized_vector
    t = x.double().abs().mean()
    expected = (x.double() > t).to(torch.int8) - (x.double() < -t).to(torch.int8)
    # mean|x| in float32 may differ from the float64 one by n * 2**-24 relative (summation order).
    ambiguous = (x.double().abs() - t).abs() <= x.numel() * EPS32 * t
    assert (codes == expected)[~ambiguous].all()
    assert set(codes.unique().tolist()) == {-1, 0, 1}


@pytest.mark.exercise(1, points=1)
def test_one_bit_is_sign_with_zero_as_plus_one():
    x = torch.tensor([0.0, -0.0, 3.0, -2.5, 1e-6, -1e-6])
    q = QuantizedVector(x, "1bit")
    assert q.quantized_vector.dtype == torch.int8
    assert q.quantized_vector.tolist() == [1, 1, 1, -1, 1, -1]
    g = torch.randn(1000, generator=torch.Generator().manual_seed(1))
    assert torch.equal(QuantizedVector(g, "1bit").quantized_vector, torch.where(g < 0, -1, 1).to(torch.int8))


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
    absmax = x.abs().max().item()
    assert q.alpha == pytest.approx(127 / absmax, rel=1e-6)  # one scale for the whole tensor
    assert_int8_codes(q.quantized_vector, x)
    assert q.quantized_vector.abs().max().item() == 127
    # |x - round(x a) / a| <= 1 / (2a) = max|x| / 254, plus float32 rounding of a, x * a and / a.
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
        (torch.tensor([]), ValueError, r"non-empty floating-point tensor, got dtype torch.float32, shape \(0,\)"),
        (torch.tensor([1, 2, 3]), ValueError, "floating-point tensor, got dtype torch.int64"),
        (torch.tensor([1.0, float("nan")]), ValueError, "finite"),
        (torch.tensor([1.0, float("inf")]), ValueError, "finite"),
        (torch.tensor([1e-30, 0.0]), ValueError, r"outside \[2\*\*-60, 2\*\*60\]"),
        (torch.tensor([1e30]), ValueError, "not supported"),
    ],
)
def test_quantized_vector_rejects_bad_input(vector, error, message):
    with pytest.raises(error, match=message):
        QuantizedVector(vector)


@pytest.mark.parametrize("fmt", ["int4", "INT8", "", None])
def test_quantized_vector_unknown_format_names_it_and_the_supported_ones(fmt):
    # The course skeleton's text, then the supported formats.
    supported = ", ".join(repr(name) for name in FORMATS)
    with pytest.raises(ValueError) as info:
        QuantizedVector(torch.ones(3), fmt)
    assert str(info.value) == f"Unsupported quantization format: {fmt}; supported formats: {supported}"


def test_absmax_quantize_codes_agree_with_quantized_vector():
    rows = torch.randn(2000, 16, generator=torch.Generator().manual_seed(5))
    codes, absmax = absmax_quantize(rows, dim=1)
    assert absmax.shape == (2000, 1)
    assert_int8_codes(codes, rows, dim=1)
    per_row = torch.stack([QuantizedVector(row, "int8").quantized_vector for row in rows])
    assert ((codes.int() - per_row.int()).abs() <= 1).all()  # at most a near-tie apart


# ---------------------------------------------------------------------------
# Exercise 1: absmax_quantize and mixed_precision_forward

@pytest.mark.exercise(1, points=1)
def test_absmax_quantize_rows_and_columns():
    x = torch.randn(5, 9, generator=torch.Generator().manual_seed(4)) * 3
    x[2] = 0.0  # a zero row: codes 0, no NaN
    for dim, shape in ((1, (5, 1)), (0, (1, 9))):
        codes, absmax = absmax_quantize(x, dim=dim)
        assert absmax.dtype == torch.float32 and absmax.shape == shape
        assert torch.equal(absmax, x.abs().amax(dim=dim, keepdim=True))
        assert_int8_codes(codes, x, dim)
    assert torch.equal(absmax_quantize(x, dim=1)[0][2], torch.zeros(9, dtype=torch.int8))


@pytest.mark.exercise(1, points=2)
def test_int8_part_is_an_exact_integer_product():
    # Integer inputs whose every row of x and column of w reaches 127: the codes are the values
    # themselves and outer(cx, cw) / 127**2 == 1, so the result is the integer product up to the
    # dequantization's float32 roundings (6 * 2**-24 relative < 0.5 here: it rounds to the integer).
    g = torch.Generator().manual_seed(5)
    x = torch.randint(-127, 128, (24, 64), generator=g).float()
    w = torch.randint(-127, 128, (64, 40), generator=g).float()
    x[:, 0], w[0, :] = 127.0, -127.0
    out = mixed_precision_forward(x, w, threshold=200.0)
    exact = (x.long() @ w.long()).double()
    assert out.dtype == torch.float32
    assert ((out.double() - exact).abs() <= 6 * EPS32 * exact.abs()).all()
    assert torch.equal(out.double().round(), exact)


@pytest.mark.exercise(1, points=2)
def test_no_outliers_matches_llm_int8_reference():
    g = torch.Generator().manual_seed(6)
    x = torch.randn(8, 64, generator=g).clamp(-5, 5)
    w = torch.randn(64, 16, generator=g) * 0.1
    out = mixed_precision_forward(x, w)  # threshold 6.0, every |x| < 6
    assert_llm_int8_close(out, x, w, torch.zeros(64, dtype=torch.bool))


@pytest.mark.exercise(1, points=2)
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
    assert_llm_int8_close(out, x, w, outliers)
    # With '>' the two columns would be int8 and the result clearly different.
    strict, _, _ = reference_llm_int8(x, w, torch.zeros(32, dtype=torch.bool))
    assert (out.double() - strict).abs().max() > 1e-3
    # The outliers are rounded to fp16: 6 + 2**-10 is 6.0 in float16 (its spacing there is 2**-8), and
    # 6.0 * 0.5 is exact in any accumulation; the int8 part is 0 (its only weight row is an outlier).
    single = mixed_precision_forward(torch.tensor([[6.0 + 2**-10, 1.0]]), torch.tensor([[0.5], [0.0]]))
    assert single.tolist() == [[3.0]]


@pytest.mark.exercise(1, points=1)
def test_all_outlier_columns_is_the_fp16_product():
    g = torch.Generator().manual_seed(8)
    x = torch.randn(6, 16, generator=g)
    w = torch.randn(16, 10, generator=g)
    x[0] = 10.0  # every column has an outlier: the int8 part is all zeros (and no NaN)
    out = mixed_precision_forward(x, w, threshold=6.0)
    assert_llm_int8_close(out, x, w, torch.ones(16, dtype=torch.bool))


@pytest.mark.exercise(1, points=1)
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


@pytest.mark.exercise(1, points=1)
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
    # Through mixed_precision_forward: the dequantization's float32 roundings, 6 * 2**-24 relative.
    out = mixed_precision_forward(x.float(), w.float(), threshold=None).double()
    assert ((out - expected).abs() <= 6 * EPS32 * expected.abs()).all()


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
    assert_llm_int8_close(mixed_precision_forward(x, w, None), x, w, torch.zeros(16, dtype=torch.bool))


def test_nan_input_makes_its_row_nan_and_hides_no_outlier():
    g = torch.Generator().manual_seed(13)
    x = torch.randn(5, 8, generator=g).clamp(-5, 5)
    x[1, 3] = 9.0  # an outlier column...
    x[2, 3] = math.nan  # ...whose max a NaN would otherwise hide
    w = torch.randn(8, 4, generator=g)
    out = mixed_precision_forward(x, w)
    assert out[2].isnan().all() and not out[[0, 1, 3, 4]].isnan().any()
    clean = x.clone()
    clean[2] = 0.0
    assert torch.equal(out[[0, 1, 3, 4]], mixed_precision_forward(clean, w)[[0, 1, 3, 4]])


@pytest.mark.parametrize("value", [1e-20, 1e20])
def test_magnitudes_outside_the_supported_range_are_refused(value):
    x, w = torch.ones(2, 3), torch.ones(3, 2)
    x[1] = value  # a whole non-outlier row of tiny (or huge, below no threshold) values
    with pytest.raises(ValueError, match="input row has max.*not supported"):
        mixed_precision_forward(x, w, None)
    with pytest.raises(ValueError, match="weight column has max"):
        mixed_precision_forward(torch.ones(2, 3), w * value, None)
    with pytest.raises(ValueError, match="slice of x"):
        absmax_quantize(x, dim=1)


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
