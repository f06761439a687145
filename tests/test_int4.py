"""Tests of the int4 codes (toolkit/int4.py) and the 'int4' format of toolkit/layers.py (AWQ: tests/test_awq.py).

Bounds from the maths: a group's scale is (hi - lo) / 15 rounded up to float16 and its zero point is an
integer, so every weight is within half a step (scale / 2) of its dequantized value; 0 is exact.
"""
import io
import math

import pytest
import torch
from torch import nn

from toolkit.int4 import int4_dequantize, int4_quantize
from toolkit.evaluation import tiny_model
from toolkit.layers import QuantizedLinear, quantize_model


def _linear(out_features=48, in_features=256, seed=0, bias=True) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(in_features, out_features, bias=bias)


def test_storage_bytes_and_bits_per_weight():
    layer = QuantizedLinear.from_linear(_linear(48, 256), "int4", group_size=64)
    buffers = dict(layer.named_buffers())
    assert buffers["weight_packed"].dtype == torch.uint8 and buffers["weight_packed"].numel() == 48 * 256 // 2
    assert buffers["weight_scale"].dtype == torch.float16 and buffers["weight_scale"].shape == (48, 4)
    assert buffers["weight_zero"].dtype == torch.uint8 and buffers["weight_zero"].shape == (48, 4)
    weight_bytes = sum(buffers[k].numel() * buffers[k].element_size()
                       for k in ("weight_packed", "weight_scale", "weight_zero"))
    assert weight_bytes == 6144 + 384 + 192
    bits = 8 * weight_bytes / (48 * 256)
    assert bits == 4 + (16 + 8) / 64 == 4.375 <= 4.6


def test_dequantization_within_half_a_step():
    weight = torch.randn(32, 128) * torch.logspace(-3, 1, 32)[:, None]
    weight[0, :5] = 0.0
    codes, scale, zero = int4_quantize(weight, 32)
    assert codes.dtype == torch.uint8 and int(codes.max()) <= 15
    restored = int4_dequantize(codes, scale, zero)
    step = scale.float().repeat_interleave(32, dim=1)
    assert ((restored - weight).abs() <= step / 2 * (1 + 2**-20) + 1e-30).all()
    assert (restored[0, :5] == 0).all()
    # The step is the group's range over 15, rounded up to float16 (relative error <= 2**-10).
    lo = weight.view(32, 4, 32).amin(2).clamp(max=0)
    hi = weight.view(32, 4, 32).amax(2).clamp(min=0)
    exact = (hi - lo) / 15
    assert (scale.float() >= exact).all() and (scale.float() <= exact * (1 + 2**-9)).all()


def test_save_and_reload_bit_identical():
    layer = QuantizedLinear.from_linear(_linear(), "int4", group_size=32)
    buffer = io.BytesIO()
    torch.save(layer.state_dict(), buffer)
    buffer.seek(0)
    fresh = QuantizedLinear(256, 48, "int4", group_size=32)
    fresh.load_state_dict(torch.load(buffer))
    for (name, a), (_, b) in zip(layer.state_dict().items(), fresh.state_dict().items()):
        assert a.dtype == b.dtype and torch.equal(a, b), name
    x = torch.randn(5, 256)
    assert torch.equal(layer(x), fresh(x))


def test_forward_is_dequantized_linear_in_the_input_dtype():
    linear = _linear()
    layer = QuantizedLinear.from_linear(linear, "int4")
    x = torch.randn(2, 3, 256)
    expected = x @ layer.dequantized_weight().T + linear.bias
    torch.testing.assert_close(layer(x), expected)
    assert layer(x.bfloat16()).dtype == torch.bfloat16
    assert not any(b.is_floating_point() and b.shape == (48, 256) for b in layer.buffers())


def test_group_size_must_divide_in_features():
    with pytest.raises(ValueError, match="does not divide in_features 100"):
        QuantizedLinear.from_linear(_linear(8, 100), "int4", group_size=64)
    with pytest.raises(ValueError, match="positive int"):
        QuantizedLinear(64, 8, "int4", group_size=0)
    model = nn.Sequential(nn.Linear(96, 8), nn.Linear(8, 8))
    with pytest.raises(ValueError, match="does not divide"):
        quantize_model(model, "int4", verbose=False)


@pytest.mark.parametrize("clip_ratio, message", [
    (torch.ones(8, 3), r"shape \(8, 2\)"),
    (torch.ones(16), r"shape \(8, 2\)"),
    (torch.tensor([[0.5, 0.0]] * 8), r"\(0, 1\]"),
    (torch.tensor([[0.5, 1.5]] * 8), r"\(0, 1\]"),
    (torch.tensor([[0.5, math.nan]] * 8), r"\(0, 1\]"),
])
def test_clip_ratio_is_validated(clip_ratio, message):
    weight = _linear(8, 64).weight
    with pytest.raises(ValueError, match=message):
        int4_quantize(weight, 32, clip_ratio)
    with pytest.raises(ValueError, match=message):
        QuantizedLinear.from_linear(_linear(8, 64), "int4", group_size=32, clip_ratio=clip_ratio)


def test_calibration_is_for_int4_only():
    with pytest.raises(ValueError, match="int4"):
        quantize_model(nn.Sequential(nn.Linear(64, 8)), "int8", calibration=[torch.randn(2, 64)], verbose=False)


def test_rtn_quantize_model_keeps_head_and_reports():
    model, _ = tiny_model("causal")
    quantize_model(model, "int4", group_size=32, verbose=False)
    report = model.quantization_report
    assert report["skipped"] == ["lm_head"] and not report["activation_aware"] and report["group_size"] == 32
    assert isinstance(model.lm_head, nn.Linear)
    assert model.model.layers[0].mlp.down_proj.weight_scale.shape == (64, 256 // 32)


@pytest.mark.parametrize("bad, message", [
    (float("nan"), "finite"), (float("inf"), "finite"), (-float("inf"), "finite"),
    (1e6, "beyond float16"),  # a range of 1e6 needs a scale of 6.7e4 > 65504
])
def test_non_finite_or_huge_weights_are_refused(bad, message):
    weight = torch.randn(4, 64)
    weight[1, 5] = bad
    with pytest.raises(ValueError, match=message):
        int4_quantize(weight, 32)
    with pytest.raises(ValueError, match=message):
        quantize_model(nn.Sequential(_with_weight(weight)), "int4", group_size=32, skip=(), verbose=False)


def test_the_largest_range_float16_scales_hold_is_accepted():
    weight = torch.zeros(1, 32)
    weight[0, 0], weight[0, 1] = 15 * 32768.0, -15 * 32768.0  # range 15 * 65536 > 15 * 65504: refused
    with pytest.raises(ValueError, match="beyond float16"):
        int4_quantize(weight, 32)
    weight[0, 0], weight[0, 1] = 15 * 32000.0, -15 * 32000.0  # scale 64000 <= 65504
    codes, scale, zero = int4_quantize(weight, 32)
    assert torch.isfinite(int4_dequantize(codes, scale, zero)).all() and float(scale) >= 64000


def _with_weight(weight: torch.Tensor) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        layer.weight.copy_(weight)
    return layer
