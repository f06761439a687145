"""Pruning: zero the least important weights of a model, in place.

- `apply_weight_pruning` (Exercise 2): unstructured magnitude pruning, layer by layer.
- `apply_structured_pruning`: whole rows or columns by Ln norm, through `torch.nn.utils.prune`.
- `sparsity`: the fraction of zero weights.

It does not: use one global (cross-layer) threshold, rank by gradients, fine-tune after
pruning, or make anything faster: a masked weight costs the same compute as a dense one.
The toolkit removes neurons and heads physically (`toolkit.shrink`) and stores sparse
weights compactly (`toolkit.sparse`).
"""
import numbers

import torch
from torch import nn
from torch.nn.utils import prune

# Exercise 2: magnitude pruning

def apply_weight_pruning(model: nn.Module, layer_type: type, pruning_percentage: float) -> nn.Module:
    """Unstructured magnitude pruning: zero the smallest-|w| weights of every `layer_type` layer, in place.

    Each layer is pruned on its own (not with one global threshold): a layer of n weights loses exactly
    `round(pruning_percentage * n)` of them (Python's round, half to even: 2.5 -> 2), the ones of smallest
    absolute value, as `torch.nn.utils.prune.l1_unstructured(layer, "weight", amount=pruning_percentage)`
    followed by `prune.remove(layer, "weight")` does (among equal magnitudes, which ones go is not
    specified). Biases are kept. Each layer keeps its weight Parameter object (the provided code puts
    it back if the exercise replaced it), so ties and optimizers holding it keep working.

    A weight tied to another tensor is pruned for both: the decoder of `BertForMaskedLM` shares its
    weight with the word embeddings, so pass `model.base_model.encoder` to prune the encoder alone.

    Args:
        model: any module; it is modified in place.
        layer_type: the class of the layers to prune, e.g. `nn.Linear`.
        pruning_percentage: fraction of each layer's weights to zero, in [0, 1] (0.4 means 40%).

    Returns:
        `model` itself, its matching weights now containing zeros (same shapes and dtypes).

    Raises:
        TypeError: `pruning_percentage` is not a real number (a bool included), `layer_type` is not an
            nn.Module subclass, or `model` is not an nn.Module.
        ValueError: `pruning_percentage` is outside [0, 1], no module of `model` is a `layer_type`, or a
            matching module has no weight.
    """
    check_fraction(pruning_percentage)
    pruning_percentage = float(pruning_percentage)  # torch.nn.utils.prune reads an int amount as a count
    layers = _layers_of_type(model, layer_type)
    originals = [layer.weight for layer in layers]
    # BEGIN SOLUTION (Exercise 2)
    # TODO: for each layer in layers, with n = layer.weight.numel() weights, zero (in place, under
    #       torch.no_grad()) exactly round(pruning_percentage * n) of them: those of smallest |w|.
    #       torch.topk(..., largest=False) on the flattened |weight| finds them.
    with torch.no_grad():
        for layer in layers:
            weight = layer.weight
            n_pruned = round(pruning_percentage * weight.numel())
            smallest = torch.topk(weight.abs().flatten(), n_pruned, largest=False).indices
            weight.view(-1)[smallest] = 0
    # END SOLUTION
    _keep_parameters(layers, originals)
    return model


# ==================== Provided code: argument checks, structured pruning, sparsity ====================

def check_fraction(pruning_percentage: float) -> None:
    """Raise unless `pruning_percentage` is a real number (not a bool) in [0, 1]."""
    if isinstance(pruning_percentage, bool) or not isinstance(pruning_percentage, numbers.Real):
        raise TypeError(
            f"pruning_percentage must be a real number in [0, 1], got {pruning_percentage!r} "
            f"({type(pruning_percentage).__name__})"
        )
    if not 0 <= pruning_percentage <= 1:
        raise ValueError(
            f"pruning_percentage must be a fraction in [0, 1] (0.4 means 40%), got {pruning_percentage!r}"
        )


def check_model(model: nn.Module) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")


def _layers_of_type(model: nn.Module, layer_type: type) -> list[nn.Module]:
    """The modules of `model` that are instances of `layer_type`, each with a tensor `weight`."""
    check_model(model)
    if not (isinstance(layer_type, type) and issubclass(layer_type, nn.Module)):
        raise TypeError(f"layer_type must be an nn.Module subclass such as nn.Linear, got {layer_type!r}")
    layers = [module for module in model.modules() if isinstance(module, layer_type)]
    if not layers:
        raise ValueError(f"{type(model).__name__} has no {layer_type.__name__} layer to prune")
    for layer in layers:
        if not isinstance(getattr(layer, "weight", None), torch.Tensor):
            raise ValueError(f"{layer_type.__name__} layer {layer} has no weight tensor to prune")
    return layers


def _keep_parameters(layers: list[nn.Module], originals: list[torch.Tensor]) -> None:
    """Put each layer's original weight object back, holding the pruned values, where pruning replaced it
    (`prune.remove` registers a new Parameter, which would untie a shared weight)."""
    with torch.no_grad():
        for layer, original in zip(layers, originals):
            if layer.weight is not original:
                original.copy_(layer.weight)
                setattr(layer, "weight", original)


def apply_structured_pruning(
    model: nn.Module, layer_type: type, pruning_percentage: float, norm: float = 2, dim: int = 0
) -> nn.Module:
    """Structured pruning: zero whole rows or columns of smallest Ln norm in every `layer_type` layer, in place.

    For `nn.Linear`, `dim=0` removes output neurons (rows of the `(out, in)` weight) and `dim=1` input
    features (columns). Each layer loses `round(pruning_percentage * weight.shape[dim])` slices, exactly
    as `torch.nn.utils.prune.ln_structured(layer, "weight", amount, n=norm, dim=dim)` + `prune.remove`,
    which this function calls. The zeroed slices are still stored: use `prune_ffn_neurons` or
    `prune_attention_heads` to remove them physically. `prune.remove` replaces the weight parameter, which
    unties a tied weight (the `BertForMaskedLM` decoder): prune `model.base_model.encoder` there.

    Args:
        model: any module; it is modified in place.
        layer_type: the class of the layers to prune, e.g. `nn.Linear`.
        pruning_percentage: fraction of slices to zero per layer, in [0, 1].
        norm: the n of the Ln norm ranking the slices, a positive number or `float("inf")`.
        dim: the weight dimension indexing the slices (0: rows, 1: columns for a linear layer).

    Returns:
        `model` itself.

    Raises:
        TypeError, ValueError: as `apply_weight_pruning`; ValueError also for a `norm` that is not a positive
            number, or a `dim` that is not a dimension of every matching weight.
    """
    check_fraction(pruning_percentage)
    layers = _layers_of_type(model, layer_type)
    if isinstance(norm, bool) or not isinstance(norm, numbers.Real) or not norm > 0:
        raise ValueError(f"norm must be a positive number (or float('inf')), got {norm!r}")
    for layer in layers:
        ndim = layer.weight.dim()
        if isinstance(dim, bool) or not isinstance(dim, int) or not -ndim <= dim < ndim:
            raise ValueError(f"dim must be an int indexing a {ndim}-d weight of {layer}, got {dim!r}")
    for layer in layers:
        # float(): torch reads an int amount as a count of slices, ours is always a fraction.
        prune.ln_structured(layer, "weight", amount=float(pruning_percentage), n=norm, dim=dim)
        prune.remove(layer, "weight")
    return model


def sparsity(model: nn.Module, layer_type: type = nn.Linear) -> float:
    """The fraction of zero weights over all `layer_type` layers of `model` (biases not counted).

    Args:
        model: any module.
        layer_type: the class of the layers to count, `nn.Linear` by default.

    Returns:
        zeros / total as a Python float in [0, 1].

    Raises:
        TypeError, ValueError: for a bad `model` or `layer_type`, as `apply_weight_pruning`.
    """
    weights = [layer.weight for layer in _layers_of_type(model, layer_type)]
    zeros = sum(int((weight == 0).sum()) for weight in weights)
    return zeros / sum(weight.numel() for weight in weights)
