"""Tests of toolkit/awq.py: the scale search against direct error computation, folding that keeps the float
function, the activation-aware model beating round-to-nearest on a planted model, the clipping search, and the
edges (calibration without a token, statistics of another width) refused before any weight changes."""
import copy
import math

import pytest
import torch
from torch import nn

from models import tiny_llama
from toolkit.awq import ALPHA_GRID, awq_quantize, fold_scales, scale_groups, search_scale, unscaled_blocks
from toolkit.calibration import collect_linear_inputs
from toolkit.evaluation import tiny_model
from toolkit.int4 import int4_dequantize, int4_quantize
from toolkit.layers import QuantizedLinear, quantize_model


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
    groups = scale_groups(tiny_llama(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=1))
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


def test_quantize_model_with_calibration_is_the_awq_shortcut():
    model, _ = tiny_model("causal", num_layers=1)
    calibration = [torch.randint(5, 1000, (2, 16))]
    direct = awq_quantize(copy.deepcopy(model), calibration, group_size=32, verbose=False)
    shortcut = quantize_model(copy.deepcopy(model), "int4", group_size=32, calibration=calibration, verbose=False)
    assert direct.quantization_report == shortcut.quantization_report
    assert direct.quantization_report["activation_aware"] and direct.quantization_report["scaled"]
    for name, tensor in direct.state_dict().items():
        assert torch.equal(tensor, shortcut.state_dict()[name]), name


def _unchanged(model: nn.Module, before: dict) -> bool:
    return not any(isinstance(module, QuantizedLinear) for module in model.modules()) \
        and all(torch.equal(tensor, before[name]) for name, tensor in model.state_dict().items())


def test_calibration_without_a_token_is_refused_before_any_weight_changes():
    model, _ = tiny_model("masked", num_layers=1)
    before = copy.deepcopy(model.state_dict())
    padding = {"input_ids": torch.randint(5, 1000, (2, 8)), "attention_mask": torch.zeros(2, 8, dtype=torch.long)}
    with pytest.raises(ValueError, match="no token"):
        awq_quantize(model, [padding], group_size=32, verbose=False)
    with pytest.raises(ValueError, match="no token"):
        awq_quantize(model, [torch.zeros(1, 0, dtype=torch.long)], group_size=32, verbose=False)
    assert _unchanged(model, before) and not hasattr(model, "quantization_report")


def test_statistics_of_another_width_are_refused_before_any_weight_changes():
    narrow, _ = tiny_model("causal", num_layers=1, intermediate_size=128)
    wide, _ = tiny_model("causal", num_layers=1)
    stats = collect_linear_inputs(narrow, [torch.randint(5, 1000, (2, 16))], sample=True, progress=False)
    before = copy.deepcopy(wide.state_dict())
    with pytest.raises(ValueError, match=r"do not fit the model.*down_proj \(128 != 256\)"):
        awq_quantize(wide, stats, group_size=32, verbose=False)
    assert _unchanged(wide, before)
