"""Sparse checkpoints: a mostly-zero weight stored as its non-zero values plus a packed bitmask.

`to_sparse_state_dict` / `from_sparse_state_dict` let a model pruned with the lab's
`apply_weight_pruning` take less disk space. It does not run sparse kernels: in memory
a masked weight stays dense.
"""
from collections.abc import Callable, Mapping

import torch
from torch import nn

from toolkit.packing import pack_bits, unpack_bits

# Key suffixes of a weight stored sparse by to_sparse_state_dict.
_VALUES, _MASK, _SHAPE = ".sparse_values", ".sparse_mask", ".sparse_shape"


# ---------------------------------------------------------------------------------------------------------
# Storage: values + packed bitmask
# ---------------------------------------------------------------------------------------------------------

def _unique_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """`model.state_dict()` without tied aliases: a tensor reachable under several names (BERT's decoder
    weight is its word embedding) is kept under its first name only, as `save_pretrained` does."""
    unique, seen = {}, set()
    for name, tensor in model.state_dict().items():
        key = (tensor.data_ptr(), tensor.dtype, tensor.shape, tensor.stride())
        if tensor.numel() > 0 and key in seen:
            continue
        seen.add(key)
        unique[name] = tensor
    return unique


def _load_unique_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Load `state` into `model`, requiring every non-alias entry of its state dict and no unknown name."""
    missing = _unique_state_dict(model).keys() - state.keys()
    unexpected = state.keys() - model.state_dict().keys()
    if missing or unexpected:
        raise ValueError(
            f"state dict does not fit {type(model).__name__}: "
            f"missing {sorted(missing)}, unexpected {sorted(unexpected)}"
        )
    model.load_state_dict(state, strict=False)  # tied aliases are filled through the tensor they share


def _load_encoded_state_dict(
    model: nn.Module,
    state: Mapping[str, torch.Tensor],
    label: str,
    suffix: str,
    companions: tuple[str, ...],
    decode: Callable[[Mapping[str, torch.Tensor], str], torch.Tensor],
) -> None:
    """Decode the encoded entries of `state`, then load the dense dict into `model` (`_load_unique_state_dict`).

    An entry `base + suffix` and its companions `base + c` for c in `companions` become one dense
    entry `base`, `decode(state, base)`; every other entry is loaded as it is.

    Args:
        model: the model to load into, in place.
        state: the encoded dict (e.g. from `to_sparse_state_dict` or `toolkit.wanda.to_nm_state_dict`).
        label: names the encoding in error messages ('sparse', 'N:M').
        suffix: the key suffix marking an encoded entry (its values).
        companions: the other key suffixes every encoded entry needs.
        decode: returns the dense tensor of the encoded entry `base`.

    Raises:
        ValueError: an encoded entry without a companion, or names that do not fit the model.
    """
    dense = {}
    for name, tensor in state.items():
        if name.endswith(suffix):
            base = name.removesuffix(suffix)
            needed = [base + companion for companion in companions]
            if any(key not in state for key in needed):
                raise ValueError(f"{label} entry {base!r} needs {' and '.join(map(repr, needed))}")
            dense[base] = decode(state, base)
        elif not name.endswith(companions):
            dense[name] = tensor
    _load_unique_state_dict(model, dense)


def _decode_sparse(state: Mapping[str, torch.Tensor], base: str) -> torch.Tensor:
    """The dense tensor of the sparse entry `base` of a `to_sparse_state_dict` dict."""
    values = state[base + _VALUES]
    shape = torch.Size(state[base + _SHAPE].tolist())
    nonzero = unpack_bits(state[base + _MASK], 1, shape.numel()).bool()
    restored = torch.zeros(shape.numel(), dtype=values.dtype, device=values.device)
    restored[nonzero] = values
    return restored.view(shape)


def to_sparse_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights with every mostly-zero floating tensor stored as values + packed bitmask.

    A tensor `name` of n elements, nnz of them non-zero, goes sparse exactly when that takes fewer bytes,
    nnz * itemsize + ceil(n / 8) + 8 * ndim < n * itemsize (for float32: above about 3% zeros), as three
    entries: `name.sparse_values` (the non-zeros in row-major order, original dtype), `name.sparse_mask`
    (torch.uint8, bit i of byte b set when element 8b + i is non-zero) and `name.sparse_shape` (int64).
    Every other tensor is kept under its own name. Tied aliases are stored once, under their first name.
    The result is a flat dict of contiguous, non-overlapping tensors: `safetensors.torch.save_file` and
    `torch.save` both write it. Dense entries share memory with the model, like `state_dict()`.

    Args:
        model: any module, typically after `apply_weight_pruning`.

    Returns:
        dict from names to tensors, to pass to `from_sparse_state_dict`.
    """
    sparse = {}
    for name, tensor in _unique_state_dict(model).items():
        tensor = tensor.detach()
        nonzero = tensor != 0
        if tensor.is_floating_point() and (
            int(nonzero.sum()) * tensor.element_size() + -(-tensor.numel() // 8) + 8 * tensor.dim()
            < tensor.numel() * tensor.element_size()
        ):
            sparse[name + _VALUES] = tensor[nonzero]
            sparse[name + _MASK] = pack_bits(nonzero, 1)
            sparse[name + _SHAPE] = torch.tensor(tensor.shape, dtype=torch.int64)
        else:
            sparse[name] = tensor.contiguous()
    return sparse


def from_sparse_state_dict(model: nn.Module, sparse_state_dict: Mapping[str, torch.Tensor]) -> nn.Module:
    """Load a dict made by `to_sparse_state_dict` into `model` (same architecture), in place.

    The weights come back identical, except that a zero is restored as +0.0 (a -0.0 weight, which
    `torch.nn.utils.prune` leaves behind for negative weights, returns as +0.0: equal in value, same
    products up to the sign of zero).

    Args:
        model: a model of the architecture the dict was made from.
        sparse_state_dict: the dict, e.g. from `safetensors.torch.load_file`.

    Returns:
        `model` itself.

    Raises:
        ValueError: a sparse entry lacks its mask or shape, or the names do not match the model's state
            dict (a missing weight or an unknown name). A shape mismatch raises torch's RuntimeError.
    """
    _load_encoded_state_dict(model, sparse_state_dict, "sparse", _VALUES, (_MASK, _SHAPE), _decode_sparse)
    return model
