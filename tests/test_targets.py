"""Tests of toolkit/targets.py: the skip rule (typos refused), linear_targets, submodule_at, model_device."""
import copy

import pytest
import torch
from torch import nn

from models import tiny_bert, toy
from toolkit.awq import awq_quantize
from toolkit.layers import QuantizedLinear, quantize_model
from toolkit.targets import is_skipped, linear_targets, model_device, skip_names, submodule_at
from toolkit.wanda import apply_magnitude_pruning, apply_wanda_pruning


def test_skip_names_matching_no_layer_are_refused():
    model = tiny_bert()
    with pytest.raises(ValueError, match=r"skip names no nn.Linear.*'lm_haed'"):
        skip_names(model, "lm_haed")
    with pytest.raises(ValueError, match="bert.encoder"):
        skip_names(model, ["decoder", "bert.encoder"])  # a module, but not a linear layer
    with pytest.raises(TypeError, match="strings"):
        skip_names(model, [3])
    assert skip_names(model, ["decoder", "bert.encoder.layer.0.attention.self.query"]) == {
        "decoder", "bert.encoder.layer.0.attention.self.query"}
    assert "cls.predictions.decoder" in skip_names(model, None)  # the default rule needs no match


@pytest.mark.parametrize("method", ["quantize", "wanda", "magnitude", "awq"])
def test_a_typo_in_skip_changes_no_weight(method):
    model = toy(64, 64, 8)
    before = copy.deepcopy(model.state_dict())
    batches = [torch.randn(4, 64)]
    with pytest.raises(ValueError, match="lm_haed"):
        if method == "quantize":
            quantize_model(model, "int8", skip="lm_haed", verbose=False)
        elif method == "wanda":
            apply_wanda_pruning(model, batches, 0.5, skip=["lm_haed"], progress=False)
        elif method == "magnitude":
            apply_magnitude_pruning(model, 0.5, skip="lm_haed")
        else:
            awq_quantize(model, batches, group_size=32, skip="lm_haed", verbose=False)
    assert all(isinstance(module, nn.Linear) for module in (model[0], model[2]))
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, before[name])


def test_linear_targets_and_is_skipped():
    model = toy(64, 64, 8)
    assert list(linear_targets(model, "2")) == ["0"]
    assert list(linear_targets(model, ())) == ["0", "2"]
    assert is_skipped("a.b.lm_head", {"lm_head"}) and not is_skipped("a.lm_head_x", {"lm_head"})


def test_submodule_at_and_model_device():
    model = tiny_bert()
    assert submodule_at(model, "bert.encoder.layer.0.attention.self.query", nn.Linear) is not None
    assert submodule_at(model, "bert.encoder.layer.0.attention", nn.Linear) is None
    assert submodule_at(model, "no.such.path") is None
    assert model_device(model) == torch.device("cpu")
    assert model_device(nn.ReLU()) == torch.device("cpu")  # no tensor at all
    buffers_only = nn.Sequential(QuantizedLinear.from_linear(nn.Linear(8, 8), "int8"))
    assert model_device(buffers_only.to("meta")) == torch.device("meta")  # buffers, no parameter
