"""Sparse checkpoints: a mostly-zero weight stored as its non-zero values plus a packed bitmask, or an
N:M sparse weight as its kept values plus their packed positions.

- `to_sparse_state_dict` / `from_sparse_state_dict` let a model pruned with the lab's
  `apply_weight_pruning` take less disk space.
- `to_nm_state_dict` / `from_nm_state_dict`: every N:M weight (e.g. after
  `toolkit.wanda.apply_wanda_pruning(..., pattern="2:4")`) as its kept values (out, in * N / M) plus
  their positions in each block of M, packed (2 bits each for 2:4): a 2:4 float32 weight takes 17/32
  of its dense bytes, bit-identical on reload. `parse_pattern` and `is_nm_sparse` read the pattern.
- `unique_state_dict` / `load_unique_state_dict`: a state dict without tied aliases, and its strict
  loading (also used by `toolkit.shrink.load_pruned_model`).

It does not run sparse kernels: in memory a masked weight stays dense.
"""
import math
from collections.abc import Callable, Mapping

import torch
from torch import nn

from toolkit.packing import pack_bits, unpack_bits

# Key suffixes of a weight stored sparse by to_sparse_state_dict, and of an N:M weight stored by to_nm_state_dict.
_VALUES, _MASK, _SHAPE = ".sparse_values", ".sparse_mask", ".sparse_shape"
_NM_VALUES, _NM_INDEX, _NM_SHAPE = ".nm_values", ".nm_index", ".nm_shape"


# ---------------------------------------------------------------------------------------------------------
# Storage: values + packed bitmask
# ---------------------------------------------------------------------------------------------------------

def unique_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
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


def load_unique_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Load `state` into `model`, requiring every non-alias entry of its state dict and no unknown name."""
    missing = unique_state_dict(model).keys() - state.keys()
    unexpected = state.keys() - model.state_dict().keys()
    if missing or unexpected:
        raise ValueError(
            f"state dict does not fit {type(model).__name__}: "
            f"missing {sorted(missing)}, unexpected {sorted(unexpected)}"
        )
    model.load_state_dict(state, strict=False)  # tied aliases are filled through the tensor they share


def load_encoded_state_dict(
    model: nn.Module,
    state: Mapping[str, torch.Tensor],
    label: str,
    suffix: str,
    companions: tuple[str, ...],
    decode: Callable[[Mapping[str, torch.Tensor], str], torch.Tensor],
) -> None:
    """Decode the encoded entries of `state`, then load the dense dict into `model` (`load_unique_state_dict`).

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
    load_unique_state_dict(model, dense)


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
    for name, tensor in unique_state_dict(model).items():
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
    load_encoded_state_dict(model, sparse_state_dict, "sparse", _VALUES, (_MASK, _SHAPE), _decode_sparse)
    return model


# ---------------------------------------------------------------------------------------------------------
# N:M storage: kept values + packed positions in each block of M
# ---------------------------------------------------------------------------------------------------------

def parse_pattern(pattern: str) -> tuple[int, int]:
    """'N:M' -> (N, M) with 0 < N < M; e.g. '2:4' -> (2, 4).

    Raises:
        ValueError: not of the form 'N:M' with integers 0 < N < M.
    """
    try:
        n, m = (int(part) for part in str(pattern).split(":"))
    except ValueError:
        raise ValueError(f"pattern must look like 'N:M' (e.g. '2:4'), got {pattern!r}") from None
    if not 0 < n < m:
        raise ValueError(f"pattern {pattern!r} needs 0 < N < M")
    return n, m


def is_nm_sparse(weight: torch.Tensor, n: int = 2, m: int = 4) -> bool:
    """Whether every block of m consecutive entries of each row of `weight` (out, in) has <= n non-zeros."""
    if weight.dim() != 2 or weight.shape[1] % m:
        return False
    return bool(((weight != 0).view(weight.shape[0], -1, m).sum(dim=2) <= n).all())


def to_nm_state_dict(model: nn.Module, pattern: str = "2:4") -> dict[str, torch.Tensor]:
    """The model's state dict with every N:M sparse 2-d weight stored compactly.

    A weight `name` (out, in) with at most N non-zeros in every block of M becomes
    `name.nm_values` (out, in * N / M, original dtype: the kept entries of each block in order),
    `name.nm_index` (uint8, their positions 0..M-1 in the block, packed with `pack_bits` at
    ceil(log2 M) bits) and `name.nm_shape` (int64). Other tensors are kept as they are. For 2:4 and
    float32: 2 values and 2 two-bit positions per block of 4, 68 bits instead of 128. Tied aliases
    (BERT's MLM decoder weight is its word embedding) are stored once, under their first name, so the
    tensors share no memory.

    Args:
        model: e.g. after `apply_wanda_pruning(..., pattern="2:4")`.
        pattern: 'N:M' with ceil(log2 M) in (1, 2, 4).

    Returns:
        dict from names to tensors (`safetensors.torch.save_file` writes it).

    Raises:
        ValueError: bad pattern.
    """
    n, m = parse_pattern(pattern)
    bits = max(1, math.ceil(math.log2(m)))
    if bits not in (1, 2, 4):
        raise ValueError(f"pattern {pattern!r}: block positions need {bits} bits; 1, 2 or 4 are supported")
    compact = {}
    for name, tensor in unique_state_dict(model).items():
        tensor = tensor.detach()
        if name.endswith("weight") and tensor.is_floating_point() and is_nm_sparse(tensor, n, m):
            out_features, in_features = tensor.shape
            blocks = tensor.reshape(out_features, in_features // m, m)
            # The positions of the non-zeros first (stable), padded with zero entries, then in order.
            order = torch.sort((blocks == 0).to(torch.uint8), dim=2, stable=True).indices[..., :n]
            index = order.sort(dim=2).values
            compact[name + _NM_VALUES] = torch.gather(blocks, 2, index).reshape(out_features, -1).contiguous()
            compact[name + _NM_INDEX] = pack_bits(index, bits)
            compact[name + _NM_SHAPE] = torch.tensor([out_features, in_features, n, m], dtype=torch.int64)
        else:
            compact[name] = tensor.contiguous()
    return compact


def _decode_nm(state: Mapping[str, torch.Tensor], base: str) -> torch.Tensor:
    """The dense weight (out, in) of the N:M entry `base` of a `to_nm_state_dict` dict."""
    values = state[base + _NM_VALUES]
    out_features, in_features, n, m = state[base + _NM_SHAPE].tolist()
    bits = max(1, math.ceil(math.log2(m)))
    index = unpack_bits(state[base + _NM_INDEX], bits, out_features * in_features // m * n)
    index = index.view(out_features, in_features // m, n).long()
    blocks = torch.zeros(out_features, in_features // m, m, dtype=values.dtype, device=values.device)
    blocks.scatter_(2, index.to(values.device), values.view(out_features, -1, n))
    return blocks.view(out_features, in_features)


def from_nm_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor]) -> nn.Module:
    """Load a dict from `to_nm_state_dict` into `model` (same architecture), in place.

    Every value comes back identical (a -0.0 pruned weight returns as +0.0); tied aliases are filled
    through the tensor they share.

    Args:
        model: a model of the architecture the dict was made from.
        state: the dict, e.g. from `safetensors.torch.load_file`.

    Returns:
        `model` itself.

    Raises:
        ValueError: an N:M entry without its index or shape, or names that do not match the model's
            state dict (a missing weight or an unknown name).
    """
    load_encoded_state_dict(model, state, "N:M", _NM_VALUES, (_NM_INDEX, _NM_SHAPE), _decode_nm)
    return model
