"""Property-based tests (hypothesis): the kernels, the distillation loss and the packing hold their
guarantees for random shapes (0-d and empty included), dtypes and magnitudes from the smallest
subnormal to the float32 limit, checked against independent references written here in numpy.

Example counts stay small (the suite runs under 10 minutes on 2 cores); the int8 kernel's
properties are in test_int8_paths.py.
"""
import copy
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from torch.nn.utils import prune

from distillation import compute_distillation_loss
from pruning import apply_weight_pruning
from quantization import FORMATS, QuantizedVector
from toolkit.layers import QuantizedLinear
from toolkit.packing import pack_bits, unpack_bits

PROPERTY = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
NOT_FLOATS = (torch.bool, torch.uint8, torch.int8, torch.int32, torch.int64)
# Exponents e of the common scale 2**e that keep m * 2**e (|m| <= 1) finite in each dtype,
# from the smallest subnormal up to the largest power of two below the dtype's limit.
# (float64 starts at 2**-148: its smallest values then round to a float32 subnormal, not to 0.)
EXPONENTS = {torch.float16: (-24, 15), torch.bfloat16: (-133, 127), torch.float32: (-149, 127),
             torch.float64: (-148, 127)}
# Mantissas of either sign in [0.5, 1], or 0: the exponent alone sets the magnitude.
MANTISSAS = st.one_of(st.just(0.0), st.floats(0.5, 1.0), st.floats(-1.0, -0.5))


def scaled(data, shape, dtype, exponents=None) -> torch.Tensor:
    """A tensor of `shape` and `dtype`: values m * 2**e (see MANTISSAS), one e for all (so a whole
    tensor can be tiny or huge) or, with probability 1/2, each element its own e."""
    low, high = exponents or EXPONENTS[dtype]
    m = data.draw(hnp.arrays(np.float64, shape, elements=MANTISSAS))
    if data.draw(st.booleans()):
        e = data.draw(st.integers(low, high))
    else:
        e = data.draw(hnp.arrays(np.int64, shape, elements=st.integers(low, high)))
    return torch.from_numpy(np.asarray(np.ldexp(m, e))).to(dtype)


def round_to_float32_bits(v: np.ndarray) -> np.ndarray:
    """Round float64 values to 24 significant bits (float32's precision, half to even) with an
    unbounded exponent: exact float64 arithmetic."""
    mantissa, exponent = np.frexp(v)
    return np.ldexp(np.rint(mantissa * 2.0**24) / 2.0**24, exponent)


# ---------------------------------------------------------------------------
# QuantizedVector: codes equal a numpy reference for every format

def reference_codes(x: np.ndarray, fmt: str) -> tuple[np.ndarray, float]:
    """The documented rules on the float32 values `x` (as float64): (codes, alpha)."""
    if fmt == "int8":
        absmax = np.abs(x).max()
        if absmax == 0:
            return np.zeros_like(x), 1.0
        alpha = 127.0 / absmax
        # round(x * alpha) in float32: alpha rounded to float32, the product rounded once.
        return np.rint(round_to_float32_bits(x * round_to_float32_bits(alpha))), alpha
    absmean = np.abs(x).mean()
    alpha = 1.0 / absmean if absmean > 0 else 1.0
    if fmt == "1bit":
        return np.where(x < 0, -1.0, 1.0), alpha
    threshold = np.float32(absmean)  # the comparisons run in float32
    return (x > threshold).astype(np.float64) - (x < -threshold), alpha


# The magnitudes the plain float32 formulas handle: absmax 0 or within [2**-60, 2**60].
SUPPORTED = {torch.float16: (-24, 15), torch.bfloat16: (-59, 60), torch.float32: (-59, 60), torch.float64: (-59, 60)}


@PROPERTY
@given(data=st.data(), shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=1, max_side=6),
       dtype=st.sampled_from(FLOATS), fmt=st.sampled_from(FORMATS))
def test_quantized_vector_codes_equal_a_numpy_reference(data, shape, dtype, fmt):
    vector = scaled(data, shape, dtype, SUPPORTED[dtype] if fmt != "fp16" else None)
    if fmt != "fp16" and 0 < vector.float().abs().max() < 2.0**-60:  # per-element exponents can go below
        return
    q = QuantizedVector(vector, fmt)
    assert q.quantized_vector.shape == vector.shape
    if fmt == "fp16":
        # torch rounds float64 to float16 through float32 (exact for the other dtypes); beyond 65504: inf.
        with np.errstate(over="ignore"):
            expected = vector.double().numpy().astype(np.float32).astype(np.float16)
        np.testing.assert_array_equal(q.quantized_vector.numpy(), expected)
        assert q.alpha == 1.0
        return
    x = vector.float().double().numpy()
    codes, alpha = reference_codes(x, fmt)
    got = q.quantized_vector.double().numpy()
    assert q.quantized_vector.dtype == torch.int8
    # Either neighbour where the exact value sits within float32 rounding of the decision point: a
    # half-integer for int8 (3 roundings of x * 127 / absmax), the threshold mean|x| for ternary (a
    # float32 sum of n terms is off by n * 2**-24 relative).
    if fmt == "int8" and np.abs(x).max() > 0:
        exact = x * 127 / np.abs(x).max()
        near = np.abs(exact - np.floor(exact) - 0.5) <= 4 * 2.0**-24 * 127
    elif fmt == "1.58bit":
        t = np.abs(x).mean()
        near = np.abs(np.abs(x) - t) <= (x.size + 2) * 2.0**-24 * t
    else:
        near = np.zeros(x.shape, dtype=bool)
    assert ((got == codes) | (near & (np.abs(got - codes) <= 1))).all()
    assert q.alpha == pytest.approx(alpha, rel=1e-6)
    if fmt == "int8":
        # |x - code / alpha| <= half a step (max|x| / 254), plus float32 rounding of x, alpha and the result.
        step_error = np.abs(q.dequantize().double().numpy() - x).max()
        absmax = float(np.abs(x).max())
        assert step_error <= absmax / 254 * (1 + 1e-6) + 4 * 2.0**-24 * absmax


@PROPERTY
@given(data=st.data(), shape=hnp.array_shapes(min_dims=0, max_dims=2, min_side=1, max_side=5),
       fmt=st.sampled_from(FORMATS))
def test_quantized_vector_refuses_exactly_what_float32_cannot_represent(data, shape, fmt):
    vector = scaled(data, shape, torch.float64, exponents=(-1100, 1000))
    as_float32 = vector.numpy().astype(np.float32) if np.abs(vector.numpy()).max() < 1e39 else None
    representable = as_float32 is not None and np.isfinite(as_float32).all() and not (
        (as_float32 == 0) & (vector.numpy() != 0)).any()
    absmax = np.abs(as_float32).max() if representable else 0.0
    supported = fmt == "fp16" or absmax == 0 or 2.0**-60 <= absmax <= 2.0**60
    if representable and supported:
        QuantizedVector(vector, fmt)
    else:
        with pytest.raises(ValueError, match="float32 can represent" if not representable else "not supported"):
            QuantizedVector(vector, fmt)


@PROPERTY
@given(shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4),
       dtype=st.sampled_from(NOT_FLOATS + FLOATS), fmt=st.sampled_from(FORMATS))
def test_quantized_vector_refuses_empty_and_non_floating_vectors(shape, dtype, fmt):
    vector = torch.zeros(shape, dtype=dtype)
    if vector.numel() and dtype.is_floating_point:
        QuantizedVector(vector, fmt)
    else:
        with pytest.raises(ValueError, match="non-empty floating-point tensor"):
            QuantizedVector(vector, fmt)


# ---------------------------------------------------------------------------
# Packing: exact round trips and a bitwise reference

def reference_pack(fields: np.ndarray, bits: int) -> bytes:
    """Field i goes to byte i * bits // 8, at bit (i * bits) % 8: the first field in the lowest bits."""
    out = bytearray(math.ceil(fields.size * bits / 8))
    for i, field in enumerate(fields.reshape(-1).tolist()):
        out[i * bits // 8] |= int(field) << (i * bits % 8)
    return bytes(out)


@PROPERTY
@given(data=st.data(), bits=st.sampled_from([1, 2, 4]),
       shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=7),
       dtype=st.sampled_from(NOT_FLOATS))
def test_packing_round_trips_and_matches_a_bitwise_reference(data, bits, shape, dtype):
    high = 1 if dtype == torch.bool else 2**bits - 1
    fields = data.draw(hnp.arrays(np.int64, shape, elements=st.integers(0, high)))
    tensor = torch.from_numpy(fields).to(dtype)
    packed = pack_bits(tensor, bits)
    assert packed.dtype == torch.uint8 and packed.shape == (math.ceil(fields.size * bits / 8),)
    assert bytes(packed.tolist()) == reference_pack(fields, bits)
    if bits == 1:
        assert bytes(packed.tolist()) == np.packbits(fields.reshape(-1).astype(bool), bitorder="little").tobytes()
    unpacked = unpack_bits(packed, bits, fields.size)
    assert unpacked.dtype == torch.uint8
    np.testing.assert_array_equal(unpacked.numpy(), fields.reshape(-1))
    # Any shorter prefix comes back too; more fields than were packed do not.
    n = data.draw(st.integers(0, fields.size))
    np.testing.assert_array_equal(unpack_bits(packed, bits, n).numpy(), fields.reshape(-1)[:n])
    with pytest.raises(ValueError, match="numel must be an int"):
        unpack_bits(packed, bits, packed.numel() * 8 // bits + 1)


@PROPERTY
@given(data=st.data(), bits=st.sampled_from([1, 2, 4]),
       shape=hnp.array_shapes(min_dims=1, max_dims=2, min_side=1, max_side=6))
def test_packing_refuses_every_field_out_of_range(data, bits, shape):
    fields = data.draw(hnp.arrays(np.int64, shape, elements=st.integers(-3, 2**bits + 3)))
    if ((fields < 0) | (fields >= 2**bits)).any():
        with pytest.raises(ValueError, match="fields must lie in"):
            pack_bits(torch.from_numpy(fields), bits)
    else:
        pack_bits(torch.from_numpy(fields), bits)
    with pytest.raises(TypeError, match="bool or integer tensor"):
        pack_bits(torch.from_numpy(fields).float(), bits)


# ---------------------------------------------------------------------------
# Distillation loss: >= 0, exactly 0 for equal logits, equal to a float64 KL reference

def reference_kd(student: np.ndarray, teacher: np.ndarray, temperature: float) -> tuple[float, float]:
    """(KL(softmax(t / T) || softmax(s / T)) averaged over rows * T**2, in float64; the sum of
    |p (log p - log q)| averaged over rows, for the rounding tolerance)."""
    classes = student.shape[-1]
    s, t = student.reshape(-1, classes) / temperature, teacher.reshape(-1, classes) / temperature

    def log_softmax(z):
        top = z.max(axis=1, keepdims=True)
        return z - top - np.log(np.exp(z - top).sum(axis=1, keepdims=True))

    log_p, log_q = log_softmax(t), log_softmax(s)
    p = np.exp(log_p)
    with np.errstate(invalid="ignore"):  # 0 * (-inf - -inf) where both are masked: counted as 0
        terms = np.where(p > 0, p * (log_p - log_q), 0.0)
    return terms.sum(axis=1).mean() * temperature**2, np.abs(terms).sum(axis=1).mean()


def kd_tolerance(student, teacher, temperature, dtype, abs_terms) -> float:
    """Rounding bound of the loss in `dtype`: each log-probability is off by at most
    delta = 4 eps (max|logit / T| + log(classes) + 2) (the division, the max shift and the
    log-sum-exp); a row's KL by 2 delta (the p sum to 1) plus (delta + (classes + 4) eps) times
    its sum of |terms| (the rounding of p and of the sum); times T**2."""
    eps, classes = torch.finfo(dtype).eps, student.shape[-1]
    finite = np.concatenate([np.abs(a[np.isfinite(a)]).ravel() for a in (student, teacher)] + [np.zeros(1)])
    delta = 4 * eps * (finite.max() / temperature + math.log(classes) + 2)
    return temperature**2 * (2 * delta + (delta + (classes + 4) * eps) * abs_terms)


LOGIT_SHAPES = hnp.array_shapes(min_dims=2, max_dims=3, min_side=1, max_side=6)


# Logits up to 2**4: with T >= 0.5, |z| <= 32 and no probability underflows to 0 in float32, where the
# PyTorch tutorial's p * (p.log() - log q) would give 0 * -inf (logits are finite by contract).
LOGITS = (-149, 4)


@PROPERTY
@given(data=st.data(), shape=LOGIT_SHAPES, dtype=st.sampled_from([torch.float32, torch.float64]),
       temperature=st.floats(0.5, 10.0))
def test_kd_loss_equals_a_float64_reference_and_is_non_negative(data, shape, dtype, temperature):
    student, teacher = scaled(data, shape, dtype, LOGITS), scaled(data, shape, dtype, LOGITS)
    loss = compute_distillation_loss(student, teacher, temperature)
    assert loss.dim() == 0 and loss.dtype == dtype
    expected, abs_terms = reference_kd(student.double().numpy(), teacher.double().numpy(), temperature)
    tolerance = kd_tolerance(student.double().numpy(), teacher.double().numpy(), temperature, dtype, abs_terms)
    assert math.isfinite(loss.item())
    assert abs(loss.item() - expected) <= tolerance
    assert loss.item() >= -tolerance


@PROPERTY
@given(data=st.data(), shape=LOGIT_SHAPES, dtype=st.sampled_from(FLOATS), temperature=st.floats(0.5, 100.0))
def test_kd_loss_is_zero_up_to_rounding_for_equal_logits(data, shape, dtype, temperature):
    logits = scaled(data, shape, dtype, LOGITS if dtype != torch.float16 else (-24, 4))
    # Equal logits: the exact KL is 0, so the reference is 0 and kd_tolerance's bound (with the
    # sum of |terms| at most the row's rounding) applies; terms are 0 in exact arithmetic.
    tolerance = kd_tolerance(logits.double().numpy(), logits.double().numpy(), temperature, dtype, 0.0)
    assert abs(compute_distillation_loss(logits, logits.clone(), temperature).item()) <= 2 * tolerance


@PROPERTY
@given(shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4),
       dtype=st.sampled_from(NOT_FLOATS + FLOATS))
def test_kd_loss_refuses_empty_non_floating_or_0d_1d_logits(shape, dtype):
    logits = torch.zeros(shape, dtype=dtype)
    if not dtype.is_floating_point:
        with pytest.raises(TypeError, match="floating-point tensor"):
            compute_distillation_loss(logits, logits, 1.0)
    elif len(shape) < 2 or logits.numel() == 0:
        with pytest.raises(ValueError, match="non-empty .* at least 2 dims"):
            compute_distillation_loss(logits, logits, 1.0)
    else:  # uniform rows: 0 up to the rounding of log(1 / C) two ways
        assert abs(compute_distillation_loss(logits, logits, 1.0).item()) <= 8 * torch.finfo(dtype).eps * math.log(
            logits.shape[-1] + 1)


# ---------------------------------------------------------------------------
# Pruning: exactly round(p * n) weights per layer, as torch.nn.utils.prune.l1_unstructured

@PROPERTY
@given(data=st.data(), sizes=st.lists(st.tuples(st.integers(1, 6), st.integers(1, 6)), min_size=1, max_size=3),
       p=st.floats(0, 1), dtype=st.sampled_from([torch.bfloat16, torch.float32, torch.float64]))
def test_weight_pruning_zeroes_round_p_n_weights_like_l1_unstructured(data, sizes, p, dtype):
    model = nn.Sequential(*(nn.Linear(i, o) for i, o in sizes)).to(dtype)
    with torch.no_grad():
        for layer in model:
            # Few distinct magnitudes, so ties are common; no zeros, so every zero is a pruned weight.
            values = data.draw(hnp.arrays(np.float64, tuple(layer.weight.shape),
                                          elements=st.sampled_from([-2.0, -0.5, 0.5, 1.0, 2.0, 3e-39, 1e38])))
            layer.weight.copy_(torch.from_numpy(values))
    expected = copy.deepcopy(model)
    for layer in expected:
        prune.l1_unstructured(layer, "weight", amount=p)
        prune.remove(layer, "weight")
    apply_weight_pruning(model, nn.Linear, p)
    for layer, reference in zip(model, expected):
        assert int((layer.weight == 0).sum()) == round(p * layer.weight.numel())
        assert torch.equal(layer.weight, reference.weight) and torch.equal(layer.bias, reference.bias)


# ---------------------------------------------------------------------------
# QuantizedLinear: x @ dequantized_weight().T + bias, within the rounding the maths allows

# Exponents of inputs and weights that keep every product and sum finite in each compute dtype.
LINEAR_EXPONENTS = {torch.float16: ((-24, 4), (-10, 2)), torch.bfloat16: ((-133, 60), (-60, 60)),
                    torch.float32: ((-149, 60), (-60, 60)), torch.float64: ((-149, 60), (-60, 60))}


@PROPERTY
@given(data=st.data(), fmt=st.sampled_from(["1bit", "1.58bit", "fp16"]), in_features=st.integers(1, 8),
       out_features=st.integers(1, 5), lead=hnp.array_shapes(min_dims=0, max_dims=2, min_side=0, max_side=3),
       dtype=st.sampled_from(FLOATS), bias=st.booleans())
def test_quantized_linear_equals_x_times_its_dequantized_weight(data, fmt, in_features, out_features, lead,
                                                                 dtype, bias):
    x_exponents, w_exponents = LINEAR_EXPONENTS[dtype]
    if fmt == "fp16":  # float16 storage: weights beyond 65504 would be inf
        w_exponents = (w_exponents[0], min(w_exponents[1], 14))
    linear = nn.Linear(in_features, out_features, bias=bias)
    with torch.no_grad():
        linear.weight.copy_(scaled(data, (out_features, in_features), torch.float32, w_exponents))
        if bias:
            linear.bias.copy_(scaled(data, (out_features,), torch.float32, w_exponents))
    layer = QuantizedLinear.from_linear(linear, fmt)
    x = scaled(data, (*lead, in_features), dtype, x_exponents)
    out = layer(x)
    assert out.dtype == dtype and out.shape == (*lead, out_features)
    weight = layer.dequantized_weight().double()
    b = layer.bias.double() if bias else torch.zeros(out_features, dtype=torch.float64)
    expected = x.double() @ weight.T + b
    # F.linear in the compute dtype (the input's; fp16 weights: fp16 or wider): a dot product of K terms
    # is off by at most (K + 1) eps times the sum of |terms|; the packed formats round their scale to the
    # compute dtype (eps, or its subnormal spacing); the bias and the cast to the input's dtype, eps each
    # (or, below the input dtype's normal range, its subnormal spacing: the cast rounds to that grid).
    compute = torch.promote_types(dtype, torch.float16) if fmt == "fp16" else dtype
    eps, spacing = torch.finfo(compute).eps, torch.finfo(compute).smallest_normal * torch.finfo(compute).eps
    out_spacing = torch.finfo(dtype).smallest_normal * torch.finfo(dtype).eps
    magnitude = x.double().abs() @ weight.abs().T + b.abs()
    codes = x.double().abs().sum(-1, keepdim=True)  # |x| @ |codes|.T <= sum |x|
    tolerance = ((in_features + 4) * eps * magnitude + codes * spacing + (in_features + 4) * spacing
                 + 2 * (torch.finfo(dtype).eps * expected.abs() + out_spacing))
    assert ((out.double() - expected).abs() <= tolerance).all()


@PROPERTY
@given(fmt=st.sampled_from(FORMATS), dtype=st.sampled_from(NOT_FLOATS + FLOATS),
       shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4))
def test_quantized_linear_refuses_non_floating_or_misshaped_inputs(fmt, dtype, shape):
    layer = QuantizedLinear.from_linear(nn.Linear(3, 2), fmt)
    x = torch.zeros(shape, dtype=dtype)
    if not dtype.is_floating_point:
        with pytest.raises(ValueError, match="input must be floating point"):
            layer(x)
    elif len(shape) == 0 or shape[-1] != 3:
        with pytest.raises(ValueError, match="last dimension must be in_features=3"):
            layer(x)
    else:
        assert layer(x).shape == (*shape[:-1], 2)
