"""Tests of the int4 codes (toolkit/int4.py), the 'int4' format of toolkit/layers.py and the activation-aware
search (toolkit/awq.py).

Bounds from the maths: a group's scale is (hi - lo) / 15 rounded up to float16 and its zero point is an
integer, so every weight is within half a step (scale / 2) of its dequantized value; 0 is exact.
"""
import copy
import io
import math

import pytest
import torch
from torch import nn

from toolkit.awq import ALPHA_GRID, fold_scales, scale_groups, search_scale, unscaled_blocks
from toolkit.int4 import int4_dequantize, int4_quantize
from toolkit.layers import QuantizedLinear, quantize_model
from toolkit.evaluation import tiny_model


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


def _salient_input(n=512, in_features=256, channels=(3, 77, 150, 201), factor=50.0, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, in_features, generator=generator)
    x[:, list(channels)] *= factor
    return x


def test_scale_search_beats_round_to_nearest_on_salient_channels():
    x = _salient_input()
    weight = torch.randn(64, 256, generator=torch.Generator().manual_seed(1))
    s, alpha, error, rtn_error = search_scale(x, x.abs().mean(0), weight, 64)
    assert alpha in ALPHA_GRID and alpha > 0
    assert error < 0.7 * rtn_error
    # The reported errors are the output errors of the two quantized weights.
    approx = int4_dequantize(*int4_quantize(weight * s, 64)) / s
    assert math.isclose(float((x @ (approx - weight).T).double().pow(2).sum()), error, rel_tol=1e-6)


def _planted_llama(factor=50.0):
    """A tiny Llama whose q/k/v and gate/up inputs have a few channels `factor` times larger (same function)."""
    model, _ = tiny_model("causal", seed=1)
    salient = torch.tensor([5, 17, 40])
    with torch.no_grad():
        for layer in model.model.layers:
            for norm, linears in ((layer.input_layernorm, (layer.self_attn.q_proj, layer.self_attn.k_proj,
                                                            layer.self_attn.v_proj)),
                                  (layer.post_attention_layernorm, (layer.mlp.gate_proj, layer.mlp.up_proj))):
                norm.weight[salient] *= factor
                for linear in linears:
                    linear.weight[:, salient] /= factor
    return model


def test_activation_aware_int4_beats_rtn_on_planted_model():
    model = _planted_llama()
    generator = torch.Generator().manual_seed(0)
    calibration = [torch.randint(5, 1000, (4, 32), generator=generator) for _ in range(2)]
    test = torch.randint(5, 1000, (4, 32), generator=generator)
    with torch.no_grad():
        reference = model(test).logits
        rtn = quantize_model(copy.deepcopy(model), "int4", group_size=32, verbose=False)
        awq = quantize_model(copy.deepcopy(model), "int4", group_size=32, calibration=calibration, verbose=False)
        rtn_error = (rtn(test).logits - reference).pow(2).mean()
        awq_error = (awq(test).logits - reference).pow(2).mean()
    assert awq.quantization_report["activation_aware"]
    assert any(group["alpha"] > 0 for group in awq.quantization_report["scaled"])
    assert awq_error < 0.5 * rtn_error


@pytest.mark.parametrize("kind", ["causal", "masked"])
def test_folding_preserves_the_float_function(kind):
    model, _ = tiny_model(kind)
    groups = scale_groups(model)
    per_layer = 4 if kind == "causal" else 1
    assert len(groups) == per_layer * model.config.num_hidden_layers
    x = torch.randint(5, 1000, (2, 16))
    folded = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(0)
    for group in groups:
        width = folded.get_submodule(group.layers[0]).in_features
        fold_scales(folded, group, torch.rand(width, generator=generator) * 4 + 0.25)
    with torch.no_grad():
        reference = model(x).logits
        drift = (folded(x).logits - reference).abs().max()
    # Exact in real arithmetic; in float32 each folded weight carries two more roundings (u = eps / 2 each)
    # and each dot product of length K <= intermediate_size accumulates at most K * u relative to the sum
    # of its |terms| (the gamma_K bound), so K * eps * max|logits| bounds the drift of the logits.
    assert drift <= model.config.intermediate_size * torch.finfo(torch.float32).eps * reference.abs().max()
    changed = folded.get_submodule(groups[0].layers[0]).weight
    assert not torch.equal(changed, model.get_submodule(groups[0].layers[0]).weight)


@pytest.mark.parametrize("kind", ["causal", "masked"])
def test_activation_aware_quantize_model_runs_on_bert_and_llama(kind):
    model, tokenizer = tiny_model(kind)
    calibration = [torch.randint(5, 1000, (2, 32))]
    quantized = quantize_model(copy.deepcopy(model), "int4", calibration=calibration, verbose=False)
    with torch.no_grad():
        logits = quantized(torch.randint(5, 1000, (1, 16))).logits
    assert torch.isfinite(logits).all()
    assert quantized.get_output_embeddings().__class__ is nn.Linear
    assert len(quantized.quantization_report["scaled"]) == len(scale_groups(model))


def test_gqa_skips_the_value_to_output_fold():
    from transformers import LlamaConfig, LlamaForCausalLM
    config = LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2)
    groups = scale_groups(LlamaForCausalLM(config))
    assert [g.previous.rsplit(".", 1)[-1] for g in groups] == ["input_layernorm", "post_attention_layernorm",
                                                               "up_proj"]


def test_gemma_norm_takes_no_folded_scale():
    # Gemma's RMSNorm computes x * (1 + w): dividing w by s would change the model, so no group is folded.
    transformers = pytest.importorskip("transformers")
    if not hasattr(transformers, "GemmaConfig"):
        pytest.skip("this transformers has no Gemma")
    torch.manual_seed(0)
    config = transformers.GemmaConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                      num_attention_heads=4, num_key_value_heads=4, head_dim=16)
    model = transformers.GemmaForCausalLM(config).eval()
    assert scale_groups(model) == []
    assert list(unscaled_blocks(model)) == ["model.layers.0"]
    assert "GemmaRMSNorm" in unscaled_blocks(model)["model.layers.0"]
    generator = torch.Generator().manual_seed(0)
    calibration = [torch.randint(0, 64, (2, 32), generator=generator)]
    x = torch.randint(0, 64, (1, 16), generator=generator)
    rtn = quantize_model(copy.deepcopy(model), "int4", group_size=32, verbose=False)
    awq = quantize_model(copy.deepcopy(model), "int4", group_size=32, calibration=calibration, clip=False,
                         verbose=False)
    assert awq.quantization_report["scaled"] == []
    assert list(awq.quantization_report["unscaled"]) == ["model.layers.0"]
    with torch.no_grad():  # no scale folded and no clipping: the same codes as round-to-nearest
        assert torch.equal(awq(x).logits, rtn(x).logits)
    assert torch.equal(awq.model.norm.weight, model.model.norm.weight)
    assert torch.equal(awq.model.layers[0].input_layernorm.weight, model.model.layers[0].input_layernorm.weight)


def test_search_clip_picks_the_ratio_of_least_output_error_per_group():
    from toolkit.awq import CLIP_GRID, search_clip
    from toolkit.int4 import int4_dequantize, int4_quantize

    torch.manual_seed(0)
    x, weight = torch.randn(64, 32), torch.randn(3, 32)
    weight[0, 3] = 8.0  # an outlier widens its group's range
    ratios = search_clip(x, weight, group_size=16)
    grid = torch.tensor(CLIP_GRID)
    assert ratios.shape == (3, 2) and all((grid == r).any() for r in ratios.flatten())  # float32 grid values
    # Independent reference: the output error of each group at every ratio, by direct products.
    for row in range(3):
        for group in range(2):
            cols = slice(16 * group, 16 * group + 16)
            errors = []
            for ratio in CLIP_GRID:
                approx = int4_dequantize(*int4_quantize(weight, 16, torch.full((3, 2), ratio)))
                errors.append(float((x[:, cols] @ (approx[row, cols] - weight[row, cols])).double().pow(2).sum()))
            chosen = int((grid == ratios[row, group]).nonzero())
            # The search sums the same products through a Gram matrix in float32: equal up to its rounding
            # (relative 2**-16 is far above float32's eps times the 64-term sums, far below the gaps here).
            assert errors[chosen] <= min(errors) * (1 + 2**-16)
