"""Shrinking: remove FFN neurons and attention heads by building smaller layers.

`prune_ffn_neurons` removes intermediate feed-forward neurons and `prune_attention_heads` /
`remove_attention_heads` remove attention heads, both by building smaller `nn.Linear` layers and
updating the model's config, so the model really is smaller and faster; `load_pruned_model` reloads
such a model from `save_pretrained`.

It does not: rank by gradients (movement or Taylor scores), fine-tune after pruning, or handle
Llama-style grouped key/value heads (heads) -- the lab's `pruning.py` holds the masking functions.

Guarantees: `remove_attention_heads` changes nothing unless every entry is valid, and takes only a
mapping {block name: head indices} (anything else, e.g. a list of heads, raises TypeError).
"""
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn
from torch.nn.utils import skip_init

from pruning import check_fraction, check_model
from toolkit.sparse import load_unique_state_dict
from toolkit.targets import submodule_at

# Feed-forward blocks prune_ffn_neurons recognises: (input projections, output projection, config field of
# their width). Neuron j of a block is row j of every input projection and column j of the output one.
_FFN_PATTERNS = (
    (("intermediate.dense",), "output.dense", "intermediate_size"),  # BERT, RoBERTa, ELECTRA, ...
    (("gate_proj", "up_proj"), "down_proj", "intermediate_size"),  # Llama, Mistral, Qwen2, ...
    (("lin1",), "lin2", "hidden_dim"),  # DistilBERT
)

# Projections of a BERT-style attention block (BertAttention and its copies in RoBERTa, ELECTRA, ...):
# `self.query/key/value` produce the heads (rows grouped by head), `output.dense` mixes them (columns).
_QKV = ("query", "key", "value")
_HEAD_COLUMNS = "output.dense"

# ---------------------------------------------------------------------------------------------------------
# Shrinking: remove neurons and heads by building smaller layers
# ---------------------------------------------------------------------------------------------------------

def _select_linear(linear: nn.Linear, index: torch.Tensor, dim: int) -> nn.Linear:
    """A new nn.Linear keeping the output features (dim=0) or input features (dim=1) of `linear` in `index`.

    `index` is a 1-d int64 tensor; the bias follows the output features and is kept whole for dim=1.
    """
    weight = linear.weight.detach().index_select(dim, index)
    bias = linear.bias
    out_features, in_features = weight.shape
    smaller = skip_init(
        nn.Linear, in_features, out_features, bias=bias is not None, device=weight.device, dtype=weight.dtype
    )
    with torch.no_grad():
        smaller.weight.copy_(weight)
        if bias is not None:
            smaller.bias.copy_(bias[index] if dim == 0 else bias)
    smaller.requires_grad_(linear.weight.requires_grad)
    return smaller.train(linear.training)


def _find_ffns(model: nn.Module) -> list[tuple[nn.Module, tuple[str, ...], str, str]]:
    """(block, input paths, output path, config field) of every recognised FFN block in `model`.

    The paths are relative to the block.
    """
    found = []
    for module in model.modules():
        for inputs, output, field in _FFN_PATTERNS:
            if all(submodule_at(module, path, nn.Linear) is not None for path in (*inputs, output)):
                found.append((module, inputs, output, field))
    return found


def prune_ffn_neurons(model: nn.Module, pruning_percentage: float) -> nn.Module:
    """Remove the least important intermediate neurons of every feed-forward block, shrinking its layers.

    Recognised blocks: BERT-family layers (`intermediate.dense` -> `output.dense`), Llama-style gated MLPs
    (`gate_proj`, `up_proj` -> `down_proj`) and DistilBERT's `FFN` (`lin1` -> `lin2`). The importance of
    neuron j is the L2 norm of all its weights: row j of every input projection concatenated with column j
    of the output projection (biases not counted). Every block loses the same number of neurons,
    `round(pruning_percentage * width)`, so the config's width field (`intermediate_size`, `hidden_dim` for
    DistilBERT) is updated to the new width and `from_pretrained` reloads a `save_pretrained` copy directly.

    Args:
        model: a model containing recognised FFN blocks, modified in place.
        pruning_percentage: fraction of each block's neurons to remove, in [0, 1).

    Returns:
        `model` itself with smaller `nn.Linear` layers (same dtype and device). 0% leaves it untouched.

    Raises:
        TypeError: `pruning_percentage` is not a real number, or `model` is not an nn.Module.
        ValueError: `pruning_percentage` is outside [0, 1] or would remove every neuron, `model` has no
            recognised FFN block, or its blocks differ in width.
    """
    check_fraction(pruning_percentage)
    check_model(model)
    ffns = _find_ffns(model)
    if not ffns:
        raise ValueError(
            f"{type(model).__name__} has no recognised feed-forward block "
            "(intermediate.dense/output.dense, gate_proj/up_proj/down_proj, or lin1/lin2)"
        )
    widths = {block.get_submodule(output).in_features for block, _, output, _ in ffns}
    if len(widths) > 1:
        raise ValueError(
            f"FFN blocks of {type(model).__name__} differ in width {sorted(widths)}; cannot shrink them alike"
        )
    width = widths.pop()
    n_removed = round(pruning_percentage * width)
    if n_removed == width:
        raise ValueError(
            f"pruning_percentage={pruning_percentage} would remove all {width} neurons of each FFN block"
        )
    if n_removed == 0:
        return model
    for block, inputs, output, field in ffns:
        # Squared L2 norm of each neuron's weights: it ranks the neurons exactly as the norm does.
        importance = block.get_submodule(output).weight.detach().float().pow(2).sum(0)
        for path in inputs:
            importance += block.get_submodule(path).weight.detach().float().pow(2).sum(1)
        keep = torch.topk(importance, width - n_removed).indices.sort().values
        for path in inputs:
            block.set_submodule(path, _select_linear(block.get_submodule(path), keep, dim=0))
        block.set_submodule(output, _select_linear(block.get_submodule(output), keep, dim=1))
        if hasattr(block, field):  # LlamaMLP keeps its own copy of intermediate_size
            setattr(block, field, width - n_removed)
    config = getattr(model, "config", None)
    for field in {field for *_, field in ffns}:
        if hasattr(config, field):
            setattr(config, field, width - n_removed)
    return model


def _find_attention_blocks(model: nn.Module) -> dict[str, nn.Module]:
    """BERT-style attention blocks of `model`, by name without the base-model prefix.

    Without the prefix ("bert."), `BertModel` and `BertForMaskedLM` give their blocks the same names
    ("encoder.layer.0.attention"), so a record taken on one applies to the other.
    """
    prefix = getattr(model, "base_model_prefix", "") + "."
    return {
        name.removeprefix(prefix): module
        for name, module in model.named_modules()
        if all(submodule_at(module, path, nn.Linear) is not None
               for path in (*(f"self.{p}" for p in _QKV), _HEAD_COLUMNS))
        and hasattr(module.self, "num_attention_heads")
    }


def _original_heads(block: nn.Module) -> list[int]:
    """The original index of each current head of a BERT-style attention block."""
    pruned = getattr(block, "pruned_heads", set())
    return [h for h in range(block.self.num_attention_heads + len(pruned)) if h not in pruned]


def _shrink_attention(block: nn.Module, keep: list[int]) -> None:
    """Keep only the heads `keep` (current indices) of a BERT-style attention block, fixing its bookkeeping."""
    attention = block.self
    head_size = attention.attention_head_size
    kept = torch.tensor(keep, device=attention.query.weight.device)
    rows = (kept[:, None] * head_size + torch.arange(head_size, device=kept.device)).flatten()
    for path in _QKV:
        setattr(attention, path, _select_linear(getattr(attention, path), rows, dim=0))
    block.output.dense = _select_linear(block.output.dense, rows, dim=1)
    # forward() reshapes with -1 heads and the stored head size; `scaling` stays 1/sqrt(head_size) as
    # every kept head keeps its size. These two counts keep the module's description true.
    attention.num_attention_heads = len(keep)
    attention.all_head_size = len(keep) * head_size


def remove_attention_heads(model: nn.Module, heads: Mapping[str, Iterable[int]]) -> nn.Module:
    """Remove the given heads from BERT-style attention blocks, shrinking q/k/v and the output projection.

    Head indices are the block's original numbering (before any pruning); heads already removed are
    skipped, so applying a record twice changes nothing. Each block remembers its removed heads in a
    `pruned_heads` attribute, and the model's config gets the record `config.pruned_heads`
    (`{block name: sorted original indices}`, JSON-safe, saved by `save_pretrained`). A freshly built
    model given `remove_attention_heads(model, config.pruned_heads)` has the pruned shapes again: this is
    how `load_pruned_model` reloads. Nothing is changed unless every entry is valid.

    Args:
        model: a model with BERT-style attention blocks (`self.query/key/value`, `output.dense`), in place.
        heads: block name (as in `config.pruned_heads`, e.g. "encoder.layer.0.attention") -> head indices.

    Returns:
        `model` itself.

    Raises:
        TypeError: `model` is not an nn.Module, or `heads` is not a mapping.
        ValueError: a name matches no attention block, an index is not a head of its block, or a block
            would be left without heads.
    """
    check_model(model)
    if not isinstance(heads, Mapping):
        raise TypeError(f"heads must be a mapping {{block name: head indices}}, as config.pruned_heads is, "
                        f"got {type(heads).__name__}")
    blocks = _find_attention_blocks(model)
    plans = {}
    for name, indices in heads.items():
        if name not in blocks:
            raise ValueError(f"no BERT-style attention block named {name!r} in {type(model).__name__}")
        block = blocks[name]
        pruned = getattr(block, "pruned_heads", set())
        total = block.self.num_attention_heads + len(pruned)
        indices = set(indices)
        if not all(isinstance(h, int) and not isinstance(h, bool) and 0 <= h < total for h in indices):
            raise ValueError(
                f"head indices of {name} must be ints in [0, {total}), got {sorted(indices, key=str)}"
            )
        keep = [i for i, h in enumerate(_original_heads(block)) if h not in indices]
        if not keep:
            raise ValueError(f"removing heads {sorted(indices)} would leave {name} without attention heads")
        if len(keep) < block.self.num_attention_heads:
            plans[name] = (keep, pruned | indices)
    for name, (keep, pruned) in plans.items():
        _shrink_attention(blocks[name], keep)
        blocks[name].pruned_heads = pruned
    config = getattr(model, "config", None)
    if plans and config is not None:
        config.pruned_heads = {
            name: sorted(block.pruned_heads)
            for name, block in blocks.items()
            if getattr(block, "pruned_heads", None)
        }
    return model


def prune_attention_heads(model: nn.Module, pruning_percentage: float) -> nn.Module:
    """Remove the least important attention heads of every BERT-style attention block.

    Supported: BERT-family encoders whose attention block has `self.query/key/value` and `output.dense`
    (BERT, RoBERTa, ELECTRA, ...). Llama-style attention (grouped key/value heads) and DistilBERT are not.
    The importance of a head is the L2 norm of all its weights: its rows of the query, key and value
    weights and its columns of the output projection. Every block loses `round(pruning_percentage *
    heads)` heads, found by importance, removed with `remove_attention_heads` (see there for the
    record kept in `config.pruned_heads` and for reloading).

    Args:
        model: a model with BERT-style attention, modified in place.
        pruning_percentage: fraction of each block's heads to remove, in [0, 1).

    Returns:
        `model` itself; it runs with the sdpa and eager attention implementations. 0% leaves it untouched.

    Raises:
        TypeError: `pruning_percentage` is not a real number, or `model` is not an nn.Module.
        ValueError: `pruning_percentage` is outside [0, 1] or would remove every head of a block, or
            `model` has no BERT-style attention block.
    """
    check_fraction(pruning_percentage)
    check_model(model)
    blocks = _find_attention_blocks(model)
    if not blocks:
        raise ValueError(
            f"{type(model).__name__} has no BERT-style attention block (self.query/key/value + output.dense); "
            "prune_attention_heads supports BERT-family encoders only"
        )
    heads = {}
    for name, block in blocks.items():
        attention = block.self
        n_heads, head_size = attention.num_attention_heads, attention.attention_head_size
        # Squared L2 norm of each head's weights: it ranks the heads exactly as the norm does.
        importance = block.output.dense.weight.detach().float().reshape(-1, n_heads, head_size).pow(2).sum((0, 2))
        for path in _QKV:
            weight = getattr(attention, path).weight.detach().float()
            importance += weight.reshape(n_heads, head_size, -1).pow(2).sum((1, 2))
        weakest = torch.topk(importance, round(pruning_percentage * n_heads), largest=False).indices
        original = _original_heads(block)
        heads[name] = [original[i] for i in weakest.tolist()]
    return remove_attention_heads(model, heads)


def load_pruned_model(model_class: type[nn.Module], path: str | os.PathLike) -> nn.Module:
    """Reload a model that `prune_ffn_neurons` / `prune_attention_heads` shrank and `save_pretrained` saved.

    The saved config already has the new FFN width; its `pruned_heads` record (if any) is replayed with
    `remove_attention_heads` on the freshly built model before the saved weights are loaded. A model
    without pruned heads also reloads with plain `model_class.from_pretrained(path)`.

    Args:
        model_class: the Hugging Face model class, e.g. `BertForMaskedLM`.
        path: the directory written by `save_pretrained` (`config.json` and `*.safetensors`).

    Returns:
        the model, in eval mode like `from_pretrained` returns it.

    Raises:
        ValueError: the saved weights do not match the rebuilt model's state dict (a missing weight or an
            unknown name).
    """
    config = model_class.config_class.from_pretrained(path)
    model = model_class(config)
    remove_attention_heads(model, getattr(config, "pruned_heads", {}))
    state = {}
    for file in sorted(Path(path).glob("*.safetensors")):
        state.update(load_file(file))
    load_unique_state_dict(model, state)
    return model.eval()


