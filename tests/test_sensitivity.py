"""Tests of toolkit/sensitivity.py: layer kinds, one probe at a time, the model restored, the plot."""
import copy

import pytest
import torch
from matplotlib.figure import Figure

from toolkit.calibration import collect_linear_inputs
from toolkit.evaluation import load_texts, perplexity, tiny_model
from toolkit.sensitivity import COLUMNS, LAYER_KINDS, layer_kind, plot_sensitivity, sensitivity_scan
from toolkit.wanda import row_mask


@pytest.mark.parametrize("name, kind", [
    ("bert.encoder.layer.0.attention.self.query", "query"),
    ("bert.encoder.layer.0.attention.self.key", "key"),
    ("bert.encoder.layer.0.attention.self.value", "value"),
    ("bert.encoder.layer.0.attention.output.dense", "attention output"),
    ("bert.encoder.layer.0.intermediate.dense", "ffn in"),
    ("bert.encoder.layer.0.output.dense", "ffn out"),
    ("model.layers.3.self_attn.q_proj", "query"),
    ("model.layers.3.self_attn.k_proj", "key"),
    ("model.layers.3.self_attn.v_proj", "value"),
    ("model.layers.3.self_attn.o_proj", "attention output"),
    ("model.layers.3.mlp.gate_proj", "ffn in"),
    ("model.layers.3.mlp.up_proj", "ffn in"),
    ("model.layers.3.mlp.down_proj", "ffn out"),
    ("lm_head", None),
    ("cls.predictions.transform.dense", None),
])
def test_layer_kind(name, kind):
    assert layer_kind(name) == kind


@pytest.mark.parametrize("kind", ["causal", "masked"])
def test_scan_by_kind_restores_the_model(kind):
    model, tokenizer = tiny_model(kind, num_layers=2)
    before = {key: value.clone() for key, value in model.state_dict().items()}
    texts = load_texts("test", source="local")[:4]
    table = sensitivity_scan(model, tokenizer, texts, prune=(0.5,), quantize=("int4",),
                             calibration=[torch.randint(5, 1000, (2, 16))], progress=False, max_length=32)
    assert list(table.columns) == list(COLUMNS)
    assert len(table) == 1 + len(LAYER_KINDS) * 3
    assert table.loc[0, "method"] == "baseline" and table.loc[0, "ratio"] == 1.0
    assert set(table["method"]) == {"baseline", "magnitude", "wanda", "quantize"}
    counts = table[table["method"] == "quantize"].set_index("target")["layers"]
    assert counts["ffn in"] == (4 if kind == "causal" else 2) and counts["query"] == 2
    assert (table["perplexity"] > 0).all()
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], v) for k, v in before.items())
    figure = plot_sensitivity(table)
    assert isinstance(figure, Figure) and len(figure.axes) == 3


def test_scan_by_layer_without_calibration():
    model, tokenizer = tiny_model("causal", num_layers=1)
    table = sensitivity_scan(model, tokenizer, load_texts("test", source="local")[:2], by="layer",
                             layers=["model.layers.0.mlp.down_proj"], prune=(0.9,), quantize=(),
                             progress=False, max_length=32)
    assert table["target"].tolist() == ["none", "model.layers.0.mlp.down_proj"]
    assert table["method"].tolist() == ["baseline", "magnitude"]


def _bits(model) -> dict:
    """The state dict as raw bits (float32 viewed as int32), for bit-for-bit comparisons."""
    return {key: value.view(torch.int32) if value.dtype == torch.float32 else value.clone()
            for key, value in model.state_dict().items()}


def test_heavy_magnitude_probe_prunes_each_row_and_restores_the_weights():
    model, tokenizer = tiny_model("causal", num_layers=1)
    texts = load_texts("test", source="local")[:2]
    before = {key: value.clone() for key, value in _bits(model).items()}
    table = sensitivity_scan(model, tokenizer, texts, layers=["ffn in"], prune=(0.9,), quantize=(),
                             progress=False, max_length=32)
    baseline, probe = table["perplexity"].tolist()
    assert probe != baseline
    # The probe is per-row magnitude pruning (as Wanda's masks): the same model pruned by hand scores the same.
    reference = copy.deepcopy(model)
    with torch.no_grad():
        for name in ("model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj"):
            weight = reference.get_submodule(name).weight
            weight.mul_(row_mask(weight.abs(), 0.9))
    assert probe == perplexity(reference, tokenizer, texts, max_length=32, progress=False)
    after = _bits(model)
    assert after.keys() == before.keys() and all(torch.equal(after[k], v) for k, v in before.items())


def test_statistics_missing_a_scanned_layer_are_refused():
    model, tokenizer = tiny_model("causal", num_layers=1)
    stats = collect_linear_inputs(model, [torch.randint(5, 1000, (1, 8))], layers=["model.layers.0.mlp.up_proj"],
                                  progress=False)
    with pytest.raises(ValueError, match="lack"):
        sensitivity_scan(model, tokenizer, ["some text"], layers=["ffn in"], calibration=stats, progress=False)


@pytest.mark.parametrize("kwargs, message", [
    (dict(by="head"), "by must be"),
    (dict(by="layer", layers=["ffn in"]), "by='layer'"),
    (dict(layers=["ffn middle"]), "not a layer kind"),
    (dict(prune=(1.5,)), "prune fractions"),
    (dict(quantize=("int3",)), "Unsupported quantization format"),
])
def test_bad_arguments(kwargs, message):
    model, tokenizer = tiny_model("causal", num_layers=1)
    with pytest.raises(ValueError, match=message):
        sensitivity_scan(model, tokenizer, ["some text"], progress=False, **kwargs)


def test_layer_kind_names_no_cross_attention_layer_after_a_self_attention_or_ffn_kind():
    assert layer_kind("bert.encoder.layer.3.output.dense") == "ffn out"
    assert layer_kind("bert.encoder.layer.3.intermediate.dense") == "ffn in"
    assert layer_kind("bert.encoder.layer.3.attention.output.dense") == "attention output"
    for cross in ("bert.encoder.layer.3.crossattention.output.dense", "bert.encoder.layer.3.crossattention.self.query",
                  "bert.encoder.layer.3.crossattention.self.value"):
        assert layer_kind(cross) is None, cross
