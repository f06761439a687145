"""Tests of toolkit/shrink.py: FFN-neuron and attention-head removal on tiny BERT, DistilBERT and
Llama models, the head record, reloading, and the argument checks."""
import copy

import pytest
import torch
from safetensors.torch import save_file
from torch import nn
from transformers import BertConfig, BertForMaskedLM

from pruning_models import (
    HEAD_SIZE,
    HEADS,
    HIDDEN,
    LAYERS,
    WIDTH,
    assert_same_state,
    logits,
    mlp,
    n_params,
    tiny_bert,
    tiny_distilbert,
    tiny_llama,
)
from toolkit.shrink import load_pruned_model, prune_attention_heads, prune_ffn_neurons, remove_attention_heads


# ---------------------------------------------------------------------------------------------------------
# Argument checks shared with pruning.py
# ---------------------------------------------------------------------------------------------------------

SHRINKERS = {"prune_ffn_neurons": prune_ffn_neurons, "prune_attention_heads": prune_attention_heads}


@pytest.mark.parametrize("name", SHRINKERS)
def test_shrinkers_reject_a_percentage_outside_the_unit_interval_or_not_a_number(name):
    model = tiny_bert()
    before = copy.deepcopy(model.state_dict())
    for bad in (-0.1, 1.5, 40, float("nan"), float("inf")):
        with pytest.raises(ValueError, match=r"pruning_percentage must be a fraction in \[0, 1\]"):
            SHRINKERS[name](model, bad)
    for bad in ("0.5", True, None, torch.tensor(0.5)):
        with pytest.raises(TypeError, match="pruning_percentage must be a real number"):
            SHRINKERS[name](model, bad)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("shrink", [lambda m: prune_ffn_neurons(m, 0.5), lambda m: prune_attention_heads(m, 0.5),
                                    lambda m: remove_attention_heads(m, {})])
def test_shrinkers_reject_a_model_that_is_not_a_module(shrink):
    with pytest.raises(TypeError, match="model must be a torch.nn.Module, got dict"):
        shrink({"weight": torch.ones(2)})


# ---------------------------------------------------------------------------------------------------------
# prune_ffn_neurons
# ---------------------------------------------------------------------------------------------------------

# (model factory, config field of the FFN width, removed parameters per block for each removed neuron)
FFN_MODELS = {
    # input row (HIDDEN weights + 1 bias) and output column (HIDDEN weights)
    "bert": (tiny_bert, "intermediate_size", 2 * HIDDEN + 1),
    "distilbert": (tiny_distilbert, "hidden_dim", 2 * HIDDEN + 1),
    # gate and up rows, down column, no biases
    "llama": (tiny_llama, "intermediate_size", 3 * HIDDEN),
}


@pytest.mark.parametrize("arch", FFN_MODELS)
def test_ffn_pruning_removes_the_expected_parameters_and_reloads(arch, tmp_path):
    make, field, per_neuron = FFN_MODELS[arch]
    model = make()
    width = getattr(model.config, field)
    before = n_params(model)
    returned = prune_ffn_neurons(model, 0.25)
    removed = round(0.25 * width)
    assert returned is model
    assert getattr(model.config, field) == width - removed
    assert before - n_params(model) == LAYERS * removed * per_neuron
    out = logits(model)
    assert out.shape == (2, 9, 99) and torch.isfinite(out).all()
    model.save_pretrained(tmp_path)
    reloaded = type(model).from_pretrained(tmp_path)
    assert torch.equal(logits(reloaded), out)
    assert torch.equal(logits(load_pruned_model(type(model), tmp_path)), out)


def test_ffn_pruning_removes_the_neurons_of_smallest_weight_norm():
    model, original = tiny_bert(), tiny_bert()
    for copy_ in (model, original):
        # Neuron 0 has the smallest input row, neuron 1 the smallest output column; neither has a small
        # norm over all its weights, so both must survive.
        with torch.no_grad():
            layer = copy_.bert.encoder.layer[0]
            layer.intermediate.dense.weight[0] = 0.0
            layer.output.dense.weight[:, 0] = 10.0
            layer.intermediate.dense.weight[1] = 10.0
            layer.output.dense.weight[:, 1] = 0.0
    prune_ffn_neurons(model, 0.25)  # 10 of 40 per layer
    for i, (layer, reference) in enumerate(zip(model.bert.encoder.layer, original.bert.encoder.layer)):
        squares = reference.intermediate.dense.weight.pow(2).sum(1) + reference.output.dense.weight.pow(2).sum(0)
        kept = squares.argsort(descending=True)[:30].sort().values
        assert i > 0 or {0, 1} <= set(kept.tolist())
        assert torch.equal(layer.intermediate.dense.weight, reference.intermediate.dense.weight[kept])
        assert torch.equal(layer.intermediate.dense.bias, reference.intermediate.dense.bias[kept])
        assert torch.equal(layer.output.dense.weight, reference.output.dense.weight[:, kept])
        assert torch.equal(layer.output.dense.bias, reference.output.dense.bias)


def test_ffn_pruning_zero_percent_changes_nothing():
    model, original = tiny_bert(), tiny_bert()
    prune_ffn_neurons(model, 0.0)
    assert_same_state(model, original)
    assert model.config.intermediate_size == WIDTH
    assert torch.equal(logits(model), logits(original))


def test_ffn_pruning_removes_zeroed_neurons_without_changing_outputs():
    model = tiny_bert()
    dead = [3, 17, 22, 38]  # 10% of 40: these four become the least important neurons of every layer
    with torch.no_grad():
        for layer in model.bert.encoder.layer:
            layer.intermediate.dense.weight[dead] = 0.0
            layer.output.dense.weight[:, dead] = 0.0
    alive = [j for j in range(WIDTH) if j not in dead]
    expected_rows = [layer.intermediate.dense.weight[alive].clone() for layer in model.bert.encoder.layer]
    expected = logits(model)
    prune_ffn_neurons(model, 0.1)
    for layer, rows in zip(model.bert.encoder.layer, expected_rows):
        assert torch.equal(layer.intermediate.dense.weight, rows)
        assert layer.output.dense.in_features == WIDTH - 4
    # The removed terms were exact zeros; only the GEMM summation order can change: float32 rounding.
    torch.testing.assert_close(logits(model), expected)


def test_ffn_pruning_without_ffn_raises_value_error():
    with pytest.raises(ValueError, match="Sequential has no recognised feed-forward block"):
        prune_ffn_neurons(mlp(), 0.5)


@pytest.mark.parametrize("fraction", [1.0, 0.99])
def test_ffn_pruning_every_neuron_raises_value_error(fraction):
    with pytest.raises(ValueError, match=f"pruning_percentage={fraction} would remove all 40 neurons"):
        prune_ffn_neurons(tiny_bert(), fraction)


def test_ffn_pruning_blocks_of_different_widths_raises_value_error():
    model = tiny_bert()
    prune_ffn_neurons(model.bert.encoder.layer[0], 0.25)  # a lone layer: no config to update
    assert model.config.intermediate_size == WIDTH
    with pytest.raises(ValueError, match=r"FFN blocks of BertForMaskedLM differ in width \[30, 40\]"):
        prune_ffn_neurons(model, 0.25)


# ---------------------------------------------------------------------------------------------------------
# prune_attention_heads / remove_attention_heads / load_pruned_model
# ---------------------------------------------------------------------------------------------------------

def zero_head(model: BertForMaskedLM, layer: int, head: int) -> None:
    """Zero every weight of one head: its q/k/v rows and its output-projection columns."""
    block = model.bert.encoder.layer[layer].attention
    rows = slice(head * HEAD_SIZE, (head + 1) * HEAD_SIZE)
    with torch.no_grad():
        for projection in (block.self.query, block.self.key, block.self.value):
            projection.weight[rows] = 0.0
        block.output.dense.weight[:, rows] = 0.0


def test_head_pruning_removes_the_expected_parameters_and_keeps_bookkeeping():
    model = tiny_bert()
    before = n_params(model)
    returned = prune_attention_heads(model, 0.25)  # round(0.25 * 4) = 1 head per layer
    # q, k, v: HEAD_SIZE rows of HIDDEN weights + HEAD_SIZE biases each; output: HIDDEN x HEAD_SIZE columns.
    per_head = 3 * HEAD_SIZE * (HIDDEN + 1) + HIDDEN * HEAD_SIZE
    assert returned is model
    assert before - n_params(model) == LAYERS * per_head
    for layer in model.bert.encoder.layer:
        attention = layer.attention.self
        assert attention.num_attention_heads == HEADS - 1
        assert attention.all_head_size == (HEADS - 1) * HEAD_SIZE == attention.query.out_features
        assert attention.attention_head_size == HEAD_SIZE
        assert attention.scaling == HEAD_SIZE**-0.5
    record = model.config.pruned_heads
    assert sorted(record) == ["encoder.layer.0.attention", "encoder.layer.1.attention"]
    assert all(len(heads) == 1 for heads in record.values())
    assert model.config.num_attention_heads == HEADS


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_head_pruning_removes_zeroed_heads_without_changing_outputs(attn_implementation):
    model = tiny_bert()
    model.set_attn_implementation(attn_implementation)
    zero_head(model, layer=0, head=1)
    zero_head(model, layer=1, head=2)
    expected = logits(model)
    prune_attention_heads(model, 0.25)
    assert model.config.pruned_heads == {"encoder.layer.0.attention": [1], "encoder.layer.1.attention": [2]}
    # A zeroed head contributes exactly nothing (its output columns are zero); a wrong scaling or head
    # layout would change every logit. Only the summation order differs: float32 rounding.
    torch.testing.assert_close(logits(model), expected)


def test_head_pruned_model_agrees_between_sdpa_and_eager():
    model = prune_attention_heads(tiny_bert(), 0.5)
    sdpa = logits(model)
    model.set_attn_implementation("eager")
    torch.testing.assert_close(logits(model), sdpa)


def head_squares(block: nn.Module) -> torch.Tensor:
    """Squared L2 norm of each head's weights (q/k/v rows, output columns), computed with plain torch."""
    projections = (block.self.query, block.self.key, block.self.value)
    rows = sum(p.weight.view(HEADS, -1).pow(2).sum(1) for p in projections)
    return rows + block.output.dense.weight.view(HIDDEN, HEADS, HEAD_SIZE).pow(2).sum((0, 2))


def test_head_pruning_removes_the_heads_of_smallest_weight_norm():
    model, original = tiny_bert(), tiny_bert()
    for copy_ in (model, original):
        # Head 0 has the smallest q/k/v rows, head 3 the smallest output columns; neither has a small norm
        # over all its weights, so both must survive.
        block = copy_.bert.encoder.layer[0].attention
        with torch.no_grad():
            for projection in (block.self.query, block.self.key, block.self.value):
                projection.weight[:HEAD_SIZE] = 0.0
                projection.weight[3 * HEAD_SIZE:] = 1.0
            block.output.dense.weight[:, :HEAD_SIZE] = 1.0
            block.output.dense.weight[:, 3 * HEAD_SIZE:] = 0.0
    prune_attention_heads(model, 0.5)  # 2 of 4 per layer
    assert model.config.pruned_heads["encoder.layer.0.attention"] == [1, 2]
    for i, reference in enumerate(original.bert.encoder.layer):
        weakest = head_squares(reference.attention).argsort()[:2].sort().values.tolist()
        assert model.config.pruned_heads[f"encoder.layer.{i}.attention"] == weakest


def test_head_pruning_twice_records_original_head_numbers():
    once, twice = tiny_bert(), tiny_bert()
    prune_attention_heads(once, 0.5)  # 2 of 4 heads
    prune_attention_heads(prune_attention_heads(twice, 0.25), 0.34)  # 1 of 4, then round(0.34 * 3) = 1 of 3
    assert twice.config.pruned_heads == once.config.pruned_heads
    assert_same_state(twice, once)


def test_head_pruning_zero_percent_changes_nothing():
    model, original = tiny_bert(), tiny_bert()
    prune_attention_heads(model, 0.0)
    assert_same_state(model, original)
    assert not hasattr(model.config, "pruned_heads")
    assert torch.equal(logits(model), logits(original))


def test_head_and_ffn_pruned_model_saves_and_reloads(tmp_path):
    model = prune_ffn_neurons(prune_attention_heads(tiny_bert(), 0.5), 0.25)
    expected = logits(model)
    model.save_pretrained(tmp_path)
    assert torch.equal(logits(load_pruned_model(BertForMaskedLM, tmp_path)), expected)
    # The same recipe by hand, with a plain state dict: rebuild from the config, replay the record, load.
    config = BertConfig.from_pretrained(tmp_path)
    rebuilt = remove_attention_heads(BertForMaskedLM(config), config.pruned_heads).eval()
    rebuilt.load_state_dict(model.state_dict())
    assert torch.equal(logits(rebuilt), expected)


def test_remove_attention_heads_uses_original_numbering_and_is_idempotent():
    model, original = tiny_bert(), tiny_bert()
    name = "encoder.layer.0.attention"
    remove_attention_heads(model, {name: [1]})
    remove_attention_heads(model, {name: [1, 3]})  # head 1 is already gone: only head 3 is new
    remove_attention_heads(model, {name: [3]})
    block, reference = model.bert.encoder.layer[0].attention, original.bert.encoder.layer[0].attention
    kept_rows = torch.cat([torch.arange(0, 8), torch.arange(16, 24)])  # original heads 0 and 2
    assert block.self.num_attention_heads == 2
    assert torch.equal(block.self.key.weight, reference.self.key.weight[kept_rows])
    assert torch.equal(block.self.value.bias, reference.self.value.bias[kept_rows])
    assert torch.equal(block.output.dense.weight, reference.output.dense.weight[:, kept_rows])
    assert model.config.pruned_heads == {name: [1, 3]}
    assert model.bert.encoder.layer[1].attention.self.num_attention_heads == HEADS


def test_head_pruning_on_llama_raises_value_error():
    with pytest.raises(ValueError, match="LlamaForCausalLM has no BERT-style attention block"):
        prune_attention_heads(tiny_llama(), 0.25)


@pytest.mark.parametrize("fraction", [1.0, 0.9])
def test_head_pruning_every_head_raises_value_error(fraction):
    model = tiny_bert()
    with pytest.raises(ValueError, match="would leave encoder.layer.0.attention without attention heads"):
        prune_attention_heads(model, fraction)
    assert model.bert.encoder.layer[1].attention.self.num_attention_heads == HEADS  # nothing half-done


@pytest.mark.parametrize(
    "heads, message",
    [
        ({"encoder.layer.7.attention": [0]}, "no BERT-style attention block named 'encoder.layer.7.attention'"),
        ({"encoder.layer.0.attention": [4]}, r"must be ints in \[0, 4\), got \[4\]"),
        ({"encoder.layer.0.attention": [-1]}, r"must be ints in \[0, 4\), got \[-1\]"),
        ({"encoder.layer.0.attention": [True]}, r"must be ints in \[0, 4\)"),
        ({"encoder.layer.0.attention": [0, 1, 2, 3]}, "would leave encoder.layer.0.attention without"),
    ],
)
def test_remove_attention_heads_bad_record_raises_value_error(heads, message):
    model = tiny_bert()
    with pytest.raises(ValueError, match=message):
        remove_attention_heads(model, {"encoder.layer.1.attention": [0], **heads})
    assert model.bert.encoder.layer[1].attention.self.num_attention_heads == HEADS  # nothing half-done


def test_load_pruned_model_with_foreign_weights_raises_value_error(tmp_path):
    prune_attention_heads(tiny_bert(), 0.25).save_pretrained(tmp_path)
    save_file({"unknown.weight": torch.zeros(2)}, tmp_path / "extra.safetensors")
    message = r"state dict does not fit BertForMaskedLM: missing \[\], unexpected \['unknown.weight'\]"
    with pytest.raises(ValueError, match=message):
        load_pruned_model(BertForMaskedLM, tmp_path)
