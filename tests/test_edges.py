"""Regression tests of issue 12: one test per defect found at the edges of the public API.

Each test is named after its defect and fails on the code before the fix. The properties
behind them (every shape, dtype and magnitude) are in test_properties.py.
"""
import copy
import math

import pytest
import torch
import torch.nn as nn

from models import tiny_bert, tiny_llama
from distillation import compute_distillation_loss, distillation_objective
from quantization import FORMATS, QuantizedVector
from toolkit.evaluation import parameter_count, perplexity, tiny_tokenizer
from toolkit.layers import QuantizedLinear, quantize_model
from toolkit.packing import pack_bits, unpack_bits
from toolkit.shrink import remove_attention_heads


def small_bert(max_positions: int = 32) -> nn.Module:
    """A BERT on the smoke tokenizer's vocabulary, from the test factory."""
    return tiny_bert(vocab_size=len(tiny_tokenizer()), hidden_size=16, num_attention_heads=2, intermediate_size=32,
                     max_position_embeddings=max_positions)


# ---------------------------------------------------------------------------
# 1. Tiny or huge magnitudes quantize to nothing (QuantizedVector)

@pytest.mark.parametrize("fmt", ["int8", "1.58bit", "1bit"])
@pytest.mark.parametrize("values", [[1e-38, -1e-38, 5e-39], [1.4e-45, 0.0], [3e38, 1e38, -3e38]])
def test_magnitudes_the_plain_formulas_cannot_handle_are_refused(fmt, values):
    # alpha = 127 / max|x| overflows float32 below 3.7e-37, and a float32 sum of |x| overflows near
    # 3.4e38: rather than codes that depend on how a student wrote the formula, a clear error.
    with pytest.raises(ValueError, match=r"outside \[2\*\*-60, 2\*\*60\].*not supported"):
        QuantizedVector(torch.tensor(values), fmt)


@pytest.mark.parametrize("fmt", FORMATS)
def test_the_supported_range_ends_are_quantized(fmt):
    for absmax in (2.0**-60, 2.0**60):
        x = torch.tensor([absmax, -absmax / 2, 0.0])
        q = QuantizedVector(x, fmt)
        if fmt == "int8":
            assert q.quantized_vector.tolist() == [127, -64, 0]  # -63.5 rounds half to even
            assert q.alpha == pytest.approx(127 / absmax, rel=1e-6)


@pytest.mark.parametrize("value", [1e300, -1e39, 1e-300, -1e-50])
@pytest.mark.parametrize("fmt", FORMATS)
def test_float64_beyond_float32_is_refused(value, fmt):
    with pytest.raises(ValueError, match="float32 can represent"):
        QuantizedVector(torch.tensor([1.0, value], dtype=torch.float64), fmt)


# ---------------------------------------------------------------------------
# 2. Integer and bool inputs are accepted by QuantizedLinear

@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8, torch.bool])
@pytest.mark.parametrize("fmt", FORMATS)
def test_quantized_linear_refuses_integer_and_bool_inputs(fmt, dtype):
    layer = QuantizedLinear.from_linear(nn.Linear(4, 2), fmt)
    with pytest.raises(ValueError, match=rf"^input must be floating point \(fp16, bf16 or fp32\), got {dtype}$"):
        layer(torch.ones(1, 4, dtype=dtype))


# ---------------------------------------------------------------------------
# 3. A single string for `skip` is read character by character

def test_single_string_skip_is_one_name():
    model = nn.Sequential()
    model.add_module("body", nn.Linear(4, 4))
    model.add_module("classifier", nn.Linear(4, 2))
    model.add_module("c", nn.Linear(2, 2))  # one character of "classifier": must be quantized
    quantize_model(model, "int8", skip="classifier", verbose=False)
    assert type(model.classifier) is nn.Linear
    assert isinstance(model.body, QuantizedLinear) and isinstance(model.c, QuantizedLinear)
    assert model.quantization_report["skipped"] == ["classifier"]


# ---------------------------------------------------------------------------
# 4. nn.MultiheadAttention breaks

@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("fmt", FORMATS)
def test_multihead_attention_out_proj_stays_float_and_forward_works(fmt, batch_first):
    torch.manual_seed(0)
    model = nn.Sequential(nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=batch_first),
                          nn.Linear(8, 8))
    x = torch.randn(3, 2, 8)
    quantize_model(model, fmt, verbose=False)
    report = model.quantization_report
    assert type(model[0].self_attn.out_proj) is nn.modules.linear.NonDynamicallyQuantizableLinear
    assert "0.self_attn.out_proj" in report["skipped"]
    assert "MultiheadAttention" in report["skip_reasons"]["0.self_attn.out_proj"]
    if batch_first:  # the encoder layer's inference fast path reads linear1/linear2.weight too
        assert {"0.linear1", "0.linear2"} <= set(report["skip_reasons"])
    else:
        assert isinstance(model[0].linear1, QuantizedLinear)
    for training in (True, False):
        model.train(training)
        for grad in (True, False):
            with torch.set_grad_enabled(grad):
                assert torch.isfinite(model(x)).all()


# ---------------------------------------------------------------------------
# 5. A layer registered under two names is half replaced

def test_layer_under_two_names_becomes_one_quantized_layer():
    shared = nn.Linear(4, 4)
    model = nn.Sequential()
    model.add_module("first", shared)
    model.add_module("second", shared)
    quantize_model(model, "1bit", skip=(), verbose=False)
    assert isinstance(model.first, QuantizedLinear) and model.first is model.second
    assert model.quantization_report["replaced"] == ["first", "second"]


# ---------------------------------------------------------------------------
# 6. parameter_count changes after quantization

@pytest.mark.parametrize("fmt", FORMATS)
def test_parameter_count_is_unchanged_by_quantize_model(fmt):
    model = small_bert()
    before = parameter_count(model)
    assert before == sum(p.numel() for p in model.parameters())
    assert parameter_count(quantize_model(copy.deepcopy(model), fmt, verbose=False)) == before


# ---------------------------------------------------------------------------
# 7. Casting re-encodes the stored weights

@pytest.mark.parametrize("fmt", FORMATS)
def test_casting_keeps_the_storage_dtypes(fmt):
    torch.manual_seed(0)
    layer = QuantizedLinear.from_linear(nn.Linear(8, 4), fmt)
    stored = {name: buf.clone() for name, buf in layer.named_buffers() if name != "bias"}
    x = torch.randn(2, 8)
    expected, bias = layer(x), layer.bias.clone()
    model = nn.Sequential(layer)
    for cast in (lambda m: m.to(torch.bfloat16), lambda m: m.half(), lambda m: m.double(), lambda m: m.float()):
        cast(model)
        for name, buf in layer.named_buffers():
            if name != "bias":
                assert buf.dtype == stored[name].dtype and torch.equal(buf, stored[name]), name
    assert layer.bias.dtype == torch.float32  # the bias follows the last cast
    # The stored weight is unchanged, so only the bias moved: rounded once to bfloat16 (8 significant bits,
    # relative error <= 2**-8; bf16 -> fp16 -> fp64 -> fp32 is then exact for |bias| >= 2**-14), and the
    # float32 addition of the bias rounds once more (<= eps * |output|).
    bound = bias.abs() * 2**-8 + torch.finfo(torch.float32).eps * expected.abs()
    assert ((layer(x) - expected).abs() <= bound).all()
    model.to(torch.bfloat16)
    assert layer(x.bfloat16()).dtype == torch.bfloat16 and layer(x).dtype == torch.float32


# ---------------------------------------------------------------------------
# 9. Empty logits are not refused

@pytest.mark.parametrize("shape", [(0, 5), (3, 0), (2, 0, 4)])
def test_distillation_loss_refuses_empty_logits(shape):
    with pytest.raises(ValueError, match="must be a non-empty"):
        compute_distillation_loss(torch.empty(shape), torch.empty(shape), 2.0)


# ---------------------------------------------------------------------------
# 10. Non-finite logits: outside the contract, except that a NaN gives a NaN loss
# (a teacher -inf is 0 * log 0 for F.kl_div but NaN for p * (p.log() - log q): correct students differ there)

def test_nan_logit_gives_a_nan_loss():
    student = torch.tensor([[1.0, math.nan, 0.5], [0.0, -1.0, 3.0]])
    assert math.isnan(compute_distillation_loss(student, torch.zeros(2, 3), 2.0).item())


# ---------------------------------------------------------------------------
# 11. max_length can exceed the model's positions

@pytest.mark.parametrize("dtype", [torch.int32, torch.uint8, torch.int16])
def test_objective_takes_labels_of_any_integer_dtype(dtype):
    torch.manual_seed(0)
    student, teacher = torch.randn(6, 3), torch.randn(6, 3)
    labels = torch.tensor([0, 2, 1, 1, 0, 2])
    expected, _ = distillation_objective(student, teacher, labels, 2.0, 0.5)
    loss, _ = distillation_objective(student, teacher, labels.to(dtype), 2.0, 0.5)
    assert torch.equal(loss, expected)


@pytest.mark.parametrize("labels", [torch.zeros(4), torch.zeros(4, dtype=torch.bool)])
def test_objective_refuses_labels_that_are_not_class_indices(labels):
    with pytest.raises(TypeError, match="labels must be integer class indices"):
        distillation_objective(torch.randn(4, 3), torch.randn(4, 3), labels, 2.0, 0.5)


def test_masked_perplexity_refuses_max_length_beyond_positions():
    with pytest.raises(ValueError, match=r"max_length=128 exceeds the model's 32 positions"):
        perplexity(small_bert(max_positions=32), tiny_tokenizer(), ["a short text"], progress=False)


def test_causal_perplexity_refuses_max_length_beyond_positions():
    tokenizer = tiny_tokenizer()
    model = tiny_llama(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                       num_attention_heads=2, max_position_embeddings=16)
    with pytest.raises(ValueError, match=r"max_length=32 exceeds the model's 16 positions"):
        perplexity(model, tokenizer, ["a short text " * 20], max_length=32, progress=False)
    assert math.isfinite(perplexity(model, tokenizer, ["a short text " * 20], max_length=16, progress=False))


# ---------------------------------------------------------------------------
# 12. Whitespace-only texts get a score

def test_causal_perplexity_of_whitespace_only_texts_has_no_token_to_score():
    tokenizer = tiny_tokenizer()
    model = tiny_llama(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                       num_attention_heads=2, max_position_embeddings=64)
    with pytest.raises(ValueError, match="the texts hold no token to score"):
        perplexity(model, tokenizer, ["   ", ""], max_length=32, progress=False)


# ---------------------------------------------------------------------------
# 13. bitpack checks nothing

@pytest.mark.parametrize("bits, fields", [(1, [0, 2]), (2, [4]), (4, [16]), (2, [-1]), (4, [255])])
def test_pack_bits_refuses_fields_out_of_range(bits, fields):
    with pytest.raises(ValueError, match=rf"fields must lie in \[0, {2**bits}\)"):
        pack_bits(torch.tensor(fields), bits)


@pytest.mark.parametrize("fields", [torch.tensor([1.0, 0.0]), torch.tensor([0.7]), [1, 0]])
def test_pack_bits_refuses_float_or_non_tensor_fields(fields):
    with pytest.raises(TypeError, match="fields must be a bool or integer tensor"):
        pack_bits(fields, 1)


@pytest.mark.parametrize("bits", [True, 2.0, None, "2"])
def test_pack_bits_refuses_bits_that_are_not_an_int_width(bits):
    with pytest.raises(ValueError, match="bits must be one of"):
        pack_bits(torch.tensor([1]), bits)
    with pytest.raises(ValueError, match="bits must be one of"):
        unpack_bits(torch.tensor([1], dtype=torch.uint8), bits, 1)


@pytest.mark.parametrize("numel", [9, -1, 2.0, True])
def test_unpack_bits_refuses_more_fields_than_packed(numel):
    with pytest.raises(ValueError, match=r"numel must be an int in \[0, 8\]"):
        unpack_bits(pack_bits(torch.tensor([1, 0, 1]), 1), 1, numel)


@pytest.mark.parametrize("packed", [torch.tensor([1]), torch.tensor([1], dtype=torch.int8),
                                    torch.tensor(1, dtype=torch.uint8), [1]])
def test_unpack_bits_refuses_packed_that_is_not_1d_uint8(packed):
    with pytest.raises(ValueError, match="packed must be a 1-d uint8 tensor"):
        unpack_bits(packed, 1, 1)


# ---------------------------------------------------------------------------
# 14. remove_attention_heads with a list

def test_remove_attention_heads_with_a_list_asks_for_a_mapping():
    model = small_bert()
    with pytest.raises(TypeError, match=r"heads must be a mapping \{block name: head indices\}.*got list"):
        remove_attention_heads(model, [0, 1])
