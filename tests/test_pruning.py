"""Tests of pruning.py: the Exercise 2 contract against torch.nn.utils.prune (graded), argument checks,
structured pruning and sparsity. Physical removal and sparse checkpoints: test_shrink.py, test_sparse.py."""
import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from pruning import apply_structured_pruning, apply_weight_pruning, sparsity
from pruning_models import assert_same_state, mlp, tiny_bert, torch_l1


# ---------------------------------------------------------------------------------------------------------
# Exercise 2: apply_weight_pruning (graded)
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.exercise(2, points=3)
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


@pytest.mark.exercise(2, points=1)
@pytest.mark.parametrize("fraction, n_zeros", [(0.25, 2), (0.75, 8), (0.3, 3)])
def test_weight_pruning_counts_with_python_round(fraction, n_zeros):
    # 10 weights of distinct magnitudes: 0.25 * 10 = 2.5 rounds (half to even) to 2, 7.5 to 8.
    layer = nn.Linear(5, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.arange(1.0, 11.0).view(2, 5) * torch.tensor([1.0, -1.0] * 5).view(2, 5))
    apply_weight_pruning(layer, nn.Linear, fraction)
    magnitudes = layer.weight.abs().flatten()
    assert torch.equal(magnitudes == 0, torch.arange(1, 11) <= n_zeros)


def assert_magnitude_pruned(pruned: torch.Tensor, original: torch.Tensor, fraction: float) -> None:
    """Exactly round(p * n) zeros (counting weights that were zero already first, as every
    smallest-|w| selection does), kept weights unchanged, and every pruned |w| <= every kept |w|.
    Among equal magnitudes any choice is right: the statement fixes no tie order."""
    n_pruned = round(fraction * original.numel())
    assert int((pruned == 0).sum()) == max(n_pruned, int((original == 0).sum()))
    kept = pruned != 0
    assert torch.equal(pruned[kept], original[kept])
    if kept.any() and (~kept).any():
        assert original[~kept].abs().max() <= original[kept].abs().min()


@pytest.mark.exercise(2, points=1)
@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.37, 0.5, 0.9, 1.0])
def test_weight_pruning_equals_torch_l1_unstructured_on_independent_copies(fraction):
    original = mlp()  # continuous random weights: no ties, one right answer
    ours, reference = copy.deepcopy(original), copy.deepcopy(original)
    apply_weight_pruning(ours, nn.Linear, fraction)
    torch_l1(reference, nn.Linear, fraction)
    assert_same_state(ours, reference)
    before = dict(original.named_parameters())
    changed = any(not torch.equal(value, before[name]) for name, value in ours.named_parameters())
    assert changed == (fraction > 0)


@pytest.mark.exercise(2, points=2)
def test_weight_pruning_with_tied_magnitudes_prunes_exactly_the_count():
    for seed in range(5):
        original = mlp(seed)
        with torch.no_grad():  # integer weights in [-2, 2]: many equal magnitudes at every threshold
            for module in original.modules():
                if isinstance(module, nn.Linear):
                    module.weight.copy_(torch.randint(-2, 3, module.weight.shape).float())
        ours = apply_weight_pruning(copy.deepcopy(original), nn.Linear, 0.45)
        for layer, reference in zip(ours[::2], original[::2]):
            assert_magnitude_pruned(layer.weight, reference.weight, 0.45)
            assert torch.equal(layer.bias, reference.bias)


@pytest.mark.exercise(2, points=2)
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


@pytest.mark.exercise(2, points=2)
def test_weight_pruning_zero_and_one():
    original = mlp()
    untouched = apply_weight_pruning(copy.deepcopy(original), nn.Linear, 0.0)
    assert_same_state(untouched, original)
    emptied = apply_weight_pruning(copy.deepcopy(original), nn.Linear, 1)
    for layer, reference in zip(emptied[::2], original[::2]):
        assert torch.count_nonzero(layer.weight) == 0
        assert torch.equal(layer.bias, reference.bias)


@pytest.mark.exercise(2, points=1)
def test_weight_pruning_touches_only_layer_type():
    torch.manual_seed(0)
    original = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(16, 5))
    ours, reference = copy.deepcopy(original), copy.deepcopy(original)
    apply_weight_pruning(ours, nn.Conv2d, 0.3)
    torch_l1(reference, nn.Conv2d, 0.3)
    assert_same_state(ours, reference)
    assert torch.equal(ours[2].weight, original[2].weight)
    assert torch.count_nonzero(ours[0].weight) == 108 - round(0.3 * 108)


@pytest.mark.exercise(2, points=1)
def test_weight_pruning_equals_torch_on_tiny_bert():
    original = tiny_bert()  # its decoder weight is tied to the word embeddings: pruned once, tie kept
    ours, reference = copy.deepcopy(original), copy.deepcopy(original)
    apply_weight_pruning(ours, nn.Linear, 0.4)
    torch_l1(reference, nn.Linear, 0.4)
    assert_same_state(ours, reference)
    assert ours.cls.predictions.decoder.weight is ours.bert.embeddings.word_embeddings.weight


# ---------------------------------------------------------------------------------------------------------
# Argument validation shared by every function of pruning.py
# ---------------------------------------------------------------------------------------------------------

PERCENTAGE_FUNCTIONS = {
    "apply_weight_pruning": lambda model, p: apply_weight_pruning(model, nn.Linear, p),
    "apply_structured_pruning": lambda model, p: apply_structured_pruning(model, nn.Linear, p),
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
