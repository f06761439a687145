"""Tests of toolkit/layers.py: QuantizedLinear and quantize_model, built on quantization.py.

Ungraded: most of these tests compute through the lab's Exercise 1 (`absmax_quantize`,
`mixed_precision_forward`), so in the student release they are skipped until it is solved.
Tolerances come from each format's quantization step and float32 rounding.
"""
import copy
import io
import math
from collections import OrderedDict

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from int8_reference import EPS32, reference_absmax
from models import tiny_bert, tiny_llama
from quantization import FORMATS
from toolkit.layers import QuantizedLinear, is_skipped, linear_targets, quantize_model


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
    with pytest.raises(ValueError, match="^Unsupported quantization format: 3bit; supported formats: 'fp16', "):
        QuantizedLinear.from_linear(make_linear(), "3bit")
    for threshold in (0, -1.0):
        with pytest.raises(ValueError, match=f"positive number or None, got {threshold}"):
            QuantizedLinear.from_linear(make_linear(), "int8", threshold)
    with pytest.raises(TypeError, match="must be an nn.Linear, got Conv1d"):
        QuantizedLinear.from_linear(nn.Conv1d(2, 2, 1), "int8")


# ---------------------------------------------------------------------------
# quantize_model on tiny Hugging Face models
# ---------------------------------------------------------------------------

# (builder, layers replaced by default, the head kept in float)
MODELS = {"bert": (lambda: tiny_bert(vocab_size=100, intermediate_size=64), 13, "cls.predictions.decoder"),
          "llama": (lambda: tiny_llama(vocab_size=100, intermediate_size=64, max_position_embeddings=64), 14, "lm_head")}


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


def test_linear_targets_read_a_string_skip_as_one_name(float_models):
    model = nn.Sequential(OrderedDict(c=nn.Linear(4, 4), classifier=nn.Linear(4, 2), score=nn.Linear(4, 1)))
    assert list(linear_targets(model, "classifier")) == ["c", "score"]  # not the letters c, l, a, s, ...
    assert list(linear_targets(model)) == ["c"]  # None: the default heads stay out
    assert list(linear_targets(model, ())) == ["c", "classifier", "score"]
    assert is_skipped("bert.pooler.classifier", "classifier") and not is_skipped("classifier", "class")
    assert "cls.predictions.decoder" not in linear_targets(float_models["bert"])  # the output embeddings
    assert "cls.predictions.decoder" in linear_targets(float_models["bert"], ())


def test_quantize_model_rejects_bad_arguments(float_models):
    with pytest.raises(ValueError, match="no nn.Linear left to replace in Sequential"):
        quantize_model(nn.Sequential(OrderedDict(classifier=nn.Linear(4, 2))), "int8")
    with pytest.raises(ValueError, match="no nn.Linear left to replace"):
        quantize_model(nn.Sequential(nn.ReLU()), "int8")
    with pytest.raises(ValueError, match="QuantizedLinear.from_linear"):
        quantize_model(nn.Linear(4, 2), "int8")
    with pytest.raises(ValueError, match="^Unsupported quantization format: 2bit; supported formats: 'fp16', "):
        quantize_model(copy.deepcopy(float_models["bert"]), "2bit")
    with pytest.raises(ValueError, match="positive number or None, got -1"):
        quantize_model(copy.deepcopy(float_models["bert"]), "int8", threshold=-1)
    already = quantize_model(copy.deepcopy(float_models["llama"]), "fp16", verbose=False)
    with pytest.raises(ValueError, match=r"kept in float by skip: \['lm_head'\]"):
        quantize_model(already, "fp16")
