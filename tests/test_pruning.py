"""Tests of pruning.py: the Exercise 3 contract against torch.nn.utils.prune, structured pruning, sparsity,
FFN-neuron and head removal on tiny models built from configs, and the sparse state dict."""
import copy
import math

import pytest
import torch
from safetensors.torch import load_file, save_file, save_model
from torch import nn
from torch.nn.utils import prune
from transformers import (
    BertConfig,
    BertForMaskedLM,
    DistilBertConfig,
    DistilBertForMaskedLM,
    LlamaConfig,
    LlamaForCausalLM,
)

from pruning import apply_structured_pruning, apply_weight_pruning, sparsity
from toolkit.shrink import load_pruned_model, prune_attention_heads, prune_ffn_neurons, remove_attention_heads
from toolkit.sparse import from_sparse_state_dict, to_sparse_state_dict

HIDDEN, HEADS, HEAD_SIZE, WIDTH, LAYERS = 32, 4, 8, 40, 2


def tiny_bert(seed: int = 0) -> BertForMaskedLM:
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=99, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
        intermediate_size=WIDTH, max_position_embeddings=32,
    )
    return BertForMaskedLM(config).eval()


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=99, hidden_size=HIDDEN, intermediate_size=48, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=2, max_position_embeddings=32,
    )
    return LlamaForCausalLM(config).eval()


def tiny_distilbert(seed: int = 0) -> DistilBertForMaskedLM:
    torch.manual_seed(seed)
    config = DistilBertConfig(
        vocab_size=99, dim=HIDDEN, n_layers=LAYERS, n_heads=HEADS, hidden_dim=WIDTH, max_position_embeddings=32
    )
    return DistilBertForMaskedLM(config).eval()


def batch() -> dict[str, torch.Tensor]:
    """Two sequences, the second padded, so the attention mask matters."""
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(1, 99, (2, 9), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 6:] = 0
    return {"input_ids": input_ids, "attention_mask": attention_mask}


@torch.no_grad()
def logits(model: nn.Module) -> torch.Tensor:
    return model(**batch()).logits


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def torch_l1(model: nn.Module, layer_type: type, amount: float) -> nn.Module:
    """Reference: torch's unstructured L1 pruning of every `layer_type` weight, made permanent."""
    for module in model.modules():
        if isinstance(module, layer_type):
            prune.l1_unstructured(module, "weight", amount=amount)
            prune.remove(module, "weight")
    return model


def assert_same_state(a: nn.Module, b: nn.Module) -> None:
    """Same names, same values (compared by name: prune.remove re-registers `weight` after `bias`)."""
    state_a, state_b = a.state_dict(), b.state_dict()
    assert state_a.keys() == state_b.keys()
    for name in state_a:
        assert torch.equal(state_a[name], state_b[name]), name


def mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(13, 11), nn.ReLU(), nn.Linear(11, 7), nn.ReLU(), nn.Linear(7, 3))


# ---------------------------------------------------------------------------------------------------------
# Exercise 3: apply_weight_pruning (graded)
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.exercise(3, points=3)
def test_weight_pruning_zeroes_the_smallest_magnitudes_of_a_hand_made_layer():
    layer = nn.Linear(4, 3)
    weight = torch.tensor([[0.9, -0.1, 0.5, -0.7], [0.2, -1.2, 0.05, 0.6], [-0.3, 0.8, -0.4, 1.0]])
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.copy_(torch.tensor([0.01, -0.02, 0.03]))
    model = nn.Sequential(layer)
    # 12 weights, 50% -> the 6 smallest |w|: 0.05, 0.1, 0.2, 0.3, 0.4, 0.5.
    returned = apply_weight_pruning(model, nn.Linear, 0.5)
    expected = torch.tensor([[0.9, 0.0, 0.0, -0.7], [0.0, -1.2, 0.0, 0.6], [0.0, 0.8, 0.0, 1.0]])
    assert returned is model and model[0] is layer
    assert torch.equal(layer.weight, expected)
    assert torch.equal(layer.bias, torch.tensor([0.01, -0.02, 0.03]))


@pytest.mark.exercise(3, points=1)
@pytest.mark.parametrize("fraction, n_zeros", [(0.25, 2), (0.75, 8), (0.3, 3)])
def test_weight_pruning_counts_with_python_round(fraction, n_zeros):
    # 10 weights of distinct magnitudes: 0.25 * 10 = 2.5 rounds (half to even) to 2, 7.5 to 8.
    layer = nn.Linear(5, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.arange(1.0, 11.0).view(2, 5) * torch.tensor([1.0, -1.0] * 5).view(2, 5))
    apply_weight_pruning(layer, nn.Linear, fraction)
    magnitudes = layer.weight.abs().flatten()
    assert torch.equal(magnitudes == 0, torch.arange(1, 11) <= n_zeros)


@pytest.mark.exercise(3, points=1)
@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.37, 0.5, 0.9, 1.0])
def test_weight_pruning_equals_torch_l1_unstructured_on_independent_copies(fraction):
    original = mlp()
    ours, reference = copy.deepcopy(original), copy.deepcopy(original)
    apply_weight_pruning(ours, nn.Linear, fraction)
    torch_l1(reference, nn.Linear, fraction)
    assert_same_state(ours, reference)
    changed = any(not torch.equal(a, b) for a, b in zip(ours.parameters(), original.parameters()))
    assert changed == (fraction > 0)


@pytest.mark.exercise(3, points=2)
def test_weight_pruning_breaks_ties_like_torch():
    for seed in range(5):
        original = mlp(seed)
        with torch.no_grad():  # integer weights in [-2, 2]: many equal magnitudes at every threshold
            for module in original.modules():
                if isinstance(module, nn.Linear):
                    module.weight.copy_(torch.randint(-2, 3, module.weight.shape).float())
        ours, reference = copy.deepcopy(original), copy.deepcopy(original)
        apply_weight_pruning(ours, nn.Linear, 0.45)
        torch_l1(reference, nn.Linear, 0.45)
        assert_same_state(ours, reference)


@pytest.mark.exercise(3, points=2)
def test_weight_pruning_is_per_layer_not_global():
    model = nn.Sequential(nn.Linear(4, 4, bias=False), nn.Linear(4, 4, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.arange(1.0, 17.0).view(4, 4) * 100)  # all larger than any weight of layer 1
        model[1].weight.copy_(torch.arange(1.0, 17.0).view(4, 4))
    apply_weight_pruning(model, nn.Linear, 0.5)
    # A global threshold would zero all of layer 1 and none of layer 0; per layer, each loses its 8 smallest.
    for scale, layer in zip((100, 1), model):
        expected = torch.arange(1.0, 17.0).view(4, 4) * scale
        expected[:2] = 0
        assert torch.equal(layer.weight, expected)


@pytest.mark.exercise(3, points=2)
def test_weight_pruning_zero_and_one():
    original = mlp()
    untouched = apply_weight_pruning(copy.deepcopy(original), nn.Linear, 0.0)
    assert_same_state(untouched, original)
    emptied = apply_weight_pruning(copy.deepcopy(original), nn.Linear, 1)
    for layer, reference in zip(emptied[::2], original[::2]):
        assert torch.count_nonzero(layer.weight) == 0
        assert torch.equal(layer.bias, reference.bias)


@pytest.mark.exercise(3, points=1)
def test_weight_pruning_touches_only_layer_type():
    torch.manual_seed(0)
    original = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(16, 5))
    ours, reference = copy.deepcopy(original), copy.deepcopy(original)
    apply_weight_pruning(ours, nn.Conv2d, 0.3)
    torch_l1(reference, nn.Conv2d, 0.3)
    assert_same_state(ours, reference)
    assert torch.equal(ours[2].weight, original[2].weight)
    assert torch.count_nonzero(ours[0].weight) == 108 - round(0.3 * 108)


@pytest.mark.exercise(3, points=1)
def test_weight_pruning_equals_torch_on_tiny_bert():
    original = tiny_bert()  # its decoder weight is tied to the word embeddings: pruned once, tie kept
    ours, reference = copy.deepcopy(original), copy.deepcopy(original)
    apply_weight_pruning(ours, nn.Linear, 0.4)
    torch_l1(reference, nn.Linear, 0.4)
    assert_same_state(ours, reference)
    assert ours.cls.predictions.decoder.weight is ours.bert.embeddings.word_embeddings.weight


# ---------------------------------------------------------------------------------------------------------
# Argument validation shared by every function
# ---------------------------------------------------------------------------------------------------------

PERCENTAGE_FUNCTIONS = {
    "apply_weight_pruning": lambda model, p: apply_weight_pruning(model, nn.Linear, p),
    "apply_structured_pruning": lambda model, p: apply_structured_pruning(model, nn.Linear, p),
    "prune_ffn_neurons": prune_ffn_neurons,
    "prune_attention_heads": prune_attention_heads,
}


@pytest.mark.parametrize("name", PERCENTAGE_FUNCTIONS)
@pytest.mark.parametrize("bad", [-0.1, 1.5, 40, float("nan"), float("inf")])
def test_percentage_outside_unit_interval_raises_value_error(name, bad):
    model = tiny_bert()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=r"pruning_percentage must be a fraction in \[0, 1\]"):
        PERCENTAGE_FUNCTIONS[name](model, bad)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("name", PERCENTAGE_FUNCTIONS)
@pytest.mark.parametrize("bad", ["0.5", True, None, torch.tensor(0.5)])
def test_percentage_that_is_not_a_number_raises_type_error(name, bad):
    with pytest.raises(TypeError, match="pruning_percentage must be a real number"):
        PERCENTAGE_FUNCTIONS[name](tiny_bert(), bad)


LAYER_FUNCTIONS = {
    "apply_weight_pruning": lambda model, layer_type: apply_weight_pruning(model, layer_type, 0.5),
    "apply_structured_pruning": lambda model, layer_type: apply_structured_pruning(model, layer_type, 0.5),
    "sparsity": sparsity,
}


@pytest.mark.parametrize("name", LAYER_FUNCTIONS)
def test_layer_type_matching_nothing_raises_value_error(name):
    with pytest.raises(ValueError, match="Sequential has no Conv2d layer to prune"):
        LAYER_FUNCTIONS[name](mlp(), nn.Conv2d)


@pytest.mark.parametrize("name", LAYER_FUNCTIONS)
def test_layer_type_without_weight_raises_value_error(name):
    with pytest.raises(ValueError, match="ReLU layer ReLU\\(\\) has no weight"):
        LAYER_FUNCTIONS[name](mlp(), nn.ReLU)


@pytest.mark.parametrize("name", LAYER_FUNCTIONS)
@pytest.mark.parametrize("bad", ["Linear", nn.Linear(2, 2), int])
def test_layer_type_that_is_not_a_module_class_raises_type_error(name, bad):
    with pytest.raises(TypeError, match="layer_type must be an nn.Module subclass"):
        LAYER_FUNCTIONS[name](mlp(), bad)


@pytest.mark.parametrize(
    "call",
    [
        lambda: apply_weight_pruning({"weight": torch.ones(2)}, nn.Linear, 0.5),
        lambda: apply_structured_pruning({"weight": torch.ones(2)}, nn.Linear, 0.5),
        lambda: sparsity({"weight": torch.ones(2)}),
        lambda: prune_ffn_neurons({"weight": torch.ones(2)}, 0.5),
        lambda: prune_attention_heads({"weight": torch.ones(2)}, 0.5),
        lambda: remove_attention_heads({"weight": torch.ones(2)}, {}),
    ],
)
def test_model_that_is_not_a_module_raises_type_error(call):
    with pytest.raises(TypeError, match="model must be a torch.nn.Module, got dict"):
        call()


# ---------------------------------------------------------------------------------------------------------
# Structured pruning and sparsity
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dim", [0, 1])
@pytest.mark.parametrize("norm", [1, 2, float("inf")])
@pytest.mark.parametrize("fraction", [0.3, 0.5])
def test_structured_pruning_equals_ln_structured_on_independent_copies(dim, norm, fraction):
    original = mlp()
    ours, reference = copy.deepcopy(original), copy.deepcopy(original)
    apply_structured_pruning(ours, nn.Linear, fraction, norm=norm, dim=dim)
    for module in reference.modules():
        if isinstance(module, nn.Linear):
            prune.ln_structured(module, "weight", amount=fraction, n=norm, dim=dim)
            prune.remove(module, "weight")
    assert_same_state(ours, reference)
    assert not torch.equal(ours[0].weight, original[0].weight)


@pytest.mark.parametrize("dim", [0, 1])
def test_structured_pruning_zeroes_the_weakest_rows_or_columns(dim):
    layer = nn.Linear(8, 8, bias=False)
    scales = torch.tensor([5.0, 1.0, 7.0, 3.0, 8.0, 2.0, 6.0, 4.0])  # slices 1 and 5 have the smallest norms
    with torch.no_grad():
        layer.weight.copy_(scales[:, None] * torch.ones(8, 8) if dim == 0 else torch.ones(8, 8) * scales)
    expected = layer.weight.detach().clone()
    expected.index_fill_(dim, torch.tensor([1, 5]), 0.0)
    apply_structured_pruning(layer, nn.Linear, 0.25, dim=dim)  # round(0.25 * 8) = 2 slices
    assert torch.equal(layer.weight, expected)


def test_structured_pruning_reads_an_int_percentage_as_a_fraction():
    model = apply_structured_pruning(mlp(), nn.Linear, 1)  # 100% of the rows, not one row (torch's int)
    assert sparsity(model) == 1.0


@pytest.mark.parametrize("norm", [0, -1, "fro", True, None])
def test_structured_pruning_bad_norm_raises_value_error(norm):
    with pytest.raises(ValueError, match="norm must be a positive number"):
        apply_structured_pruning(mlp(), nn.Linear, 0.5, norm=norm)


@pytest.mark.parametrize("dim", [2, -3, 0.0, True])
def test_structured_pruning_bad_dim_raises_value_error(dim):
    with pytest.raises(ValueError, match="dim must be an int indexing a 2-d weight"):
        apply_structured_pruning(mlp(), nn.Linear, 0.5, dim=dim)


def test_sparsity_is_exact_on_known_masks():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Conv1d(2, 2, 3), nn.Linear(2, 5))
    with torch.no_grad():
        model[0].weight.view(-1)[[0, 3, 4, 9, 11, 12, 19]] = 0.0  # 7 of 20
        model[2].weight.view(-1)[[1, 2, 8]] = 0.0  # 3 of 10
        model[0].bias.zero_()  # biases do not count
        model[1].weight.zero_()  # not a Linear
    assert sparsity(model) == 10 / 30
    assert sparsity(model, nn.Conv1d) == 1.0
    assert sparsity(mlp()) == 0.0


def test_sparsity_after_l1_pruning_counts_each_layer_rounding():
    model = torch_l1(mlp(), nn.Linear, 0.35)
    sizes = [13 * 11, 11 * 7, 7 * 3]
    assert sparsity(model) == sum(round(0.35 * n) for n in sizes) / sum(sizes)


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


# ---------------------------------------------------------------------------------------------------------
# Sparse state dict
# ---------------------------------------------------------------------------------------------------------

def test_sparse_state_dict_layout_on_a_hand_made_layer():
    layer = nn.Linear(5, 2)
    weight = torch.tensor([[1.5, 0.0, -2.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 3.0]])
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.copy_(torch.tensor([0.5, -0.5]))
    sparse = to_sparse_state_dict(layer)
    # 3 non-zeros of 10: 3 * 4 + 2 mask bytes + 16 shape bytes = 30 < 40 bytes dense. The bias (8 bytes) stays.
    assert sorted(sparse) == ["bias", "weight.sparse_mask", "weight.sparse_shape", "weight.sparse_values"]
    assert torch.equal(sparse["weight.sparse_values"], torch.tensor([1.5, -2.0, 3.0]))
    # non-zero positions 0, 2 and 9: byte 0 = 2**0 + 2**2 = 5, byte 1 = 2**(9 - 8) = 2
    assert torch.equal(sparse["weight.sparse_mask"], torch.tensor([5, 2], dtype=torch.uint8))
    assert torch.equal(sparse["weight.sparse_shape"], torch.tensor([2, 5]))
    assert torch.equal(sparse["bias"], layer.bias.detach())
    restored = from_sparse_state_dict(nn.Linear(5, 2), sparse)
    assert torch.equal(restored.weight, weight) and torch.equal(restored.bias, layer.bias)


def test_sparse_state_dict_of_a_40_percent_pruned_bert_is_smaller_and_reloads_identically(tmp_path):
    model = torch_l1(tiny_bert(), nn.Linear, 0.4)
    sparse = to_sparse_state_dict(model)
    weight = model.bert.encoder.layer[0].intermediate.dense.weight
    mask = sparse["bert.encoder.layer.0.intermediate.dense.weight.sparse_mask"]
    assert mask.dtype == torch.uint8 and mask.numel() == math.ceil(weight.numel() / 8)
    assert "cls.predictions.decoder.weight.sparse_values" not in sparse  # tied to the word embeddings
    assert "bert.embeddings.position_embeddings.weight" in sparse  # not pruned: stays dense

    save_file(sparse, tmp_path / "sparse.safetensors")
    save_model(model, str(tmp_path / "dense.safetensors"))
    torch.save(sparse, tmp_path / "sparse.pt")
    torch.save(model.state_dict(), tmp_path / "dense.pt")
    assert (tmp_path / "sparse.safetensors").stat().st_size < (tmp_path / "dense.safetensors").stat().st_size
    assert (tmp_path / "sparse.pt").stat().st_size < (tmp_path / "dense.pt").stat().st_size

    for stored in (load_file(tmp_path / "sparse.safetensors"), torch.load(tmp_path / "sparse.pt")):
        fresh = tiny_bert(seed=1)
        returned = from_sparse_state_dict(fresh, stored)
        assert returned is fresh
        assert_same_state(fresh, model)
        assert fresh.cls.predictions.decoder.weight is fresh.bert.embeddings.word_embeddings.weight
        assert torch.equal(logits(fresh), logits(model))


def test_sparse_state_dict_restores_negative_zero_as_positive_zero():
    layer = nn.Linear(8, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[-0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 2.0]]))
    restored = from_sparse_state_dict(nn.Linear(8, 1, bias=False), to_sparse_state_dict(layer))
    assert torch.equal(restored.weight, layer.weight)
    assert not torch.signbit(restored.weight).any()


def test_from_sparse_state_dict_without_mask_raises_value_error():
    sparse = to_sparse_state_dict(torch_l1(mlp(), nn.Linear, 0.5))
    del sparse["0.weight.sparse_mask"]
    with pytest.raises(ValueError, match="sparse entry '0.weight' needs '0.weight.sparse_mask'"):
        from_sparse_state_dict(mlp(), sparse)


def test_from_sparse_state_dict_with_wrong_names_raises_value_error():
    sparse = to_sparse_state_dict(torch_l1(mlp(), nn.Linear, 0.5))
    sparse["extra"] = sparse.pop("0.bias")
    with pytest.raises(ValueError, match=r"missing \['0.bias'\], unexpected \['extra'\]"):
        from_sparse_state_dict(mlp(), sparse)
