"""One-shot pruning by weight and activation (Wanda, Sun et al., 2023), N:M patterns, compact 2:4 storage.

- `apply_wanda_pruning`: score S_ij = |W_ij| * ||X_j||_2 (X_j: input channel j over the calibration
  tokens, from `toolkit.calibration`) and, within each output row, zero the lowest-scored weights:
  exactly round(sparsity * in_features) per row, or N:M (keep the N best of every M consecutive input
  weights of each row, e.g. 2:4). No weight update.
- `apply_magnitude_pruning`: the same masks from S_ij = |W_ij| (the baseline Wanda is compared with).
- `nm_mask` / `row_mask`: the masks themselves, for any score matrix.
- N:M storage (`to_nm_state_dict` / `from_nm_state_dict`, `is_nm_sparse`, `parse_pattern`) lives in
  `toolkit.sparse`, and the block list (`find_blocks`) in `toolkit.blocks`; both are re-exported here.
- `to_semi_structured`: on CUDA, where torch's semi-structured sparse tensors exist, swap the 2:4
  weights for them (sparse tensor-core kernels). CPUs keep dense weights and dense kernels.

By default the output head stays dense, as in `toolkit.layers.quantize_model`.

Statistics are taken block by block by default (`sequential=True`), as in the paper's reference
implementation: the inputs of each transformer block are computed with the blocks before it already
pruned (`toolkit.blocks.calibrate_block_by_block`: the model runs once up to its first block, then each
block runs on the cached hidden states, once for its statistics and once, pruned, for the next block).
Layers outside the block list (e.g. BERT's MLM head transform) are pruned last, from one more full pass;
a model without such a list (e.g. an `nn.Sequential`) is thus pruned from a single pass.
`sequential=False`, or statistics passed in as a dict, prune every layer from one pass over the dense
model. It does not fine-tune after pruning or implement SparseGPT's weight reconstruction.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import nn

from pruning import check_fraction
from toolkit.blocks import calibrate_block_by_block, find_blocks  # noqa: F401 (find_blocks re-exported)
from toolkit.calibration import Batch, LinearInputStats, as_batches, check_statistics, collect_linear_inputs, is_statistics
from toolkit.sparse import from_nm_state_dict, is_nm_sparse, parse_pattern, to_nm_state_dict  # noqa: F401 (re-exported)
from toolkit.targets import linear_targets, skip_names

def _check_sparsity(sparsity: float | None, pattern: str | None) -> tuple[float | None, tuple[int, int] | None]:
    if pattern is None:
        if sparsity is None:
            raise ValueError("give a sparsity in [0, 1] or an N:M pattern such as '2:4'")
        check_fraction(sparsity)  # the lab's rule: TypeError for a non-number, ValueError outside [0, 1]
        return float(sparsity), None
    n, m = parse_pattern(pattern)
    if sparsity is not None and not math.isclose(sparsity, (m - n) / m):
        raise ValueError(f"pattern {pattern!r} means sparsity {(m - n) / m:g}; got sparsity={sparsity!r} "
                         "(pass None or that value)")
    return (m - n) / m, (n, m)


def row_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep-mask zeroing exactly round(sparsity * in) lowest scores of each row.

    Args:
        scores: float (out, in); sparsity: fraction in [0, 1].

    Returns:
        bool (out, in), True where the weight is kept.
    """
    pruned = round(sparsity * scores.shape[1])
    keep = torch.ones_like(scores, dtype=torch.bool)
    if pruned:
        lowest = torch.topk(scores, pruned, dim=1, largest=False).indices
        keep.scatter_(1, lowest, False)
    return keep


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep-mask holding the n highest scores of every m consecutive entries of each row.

    Args:
        scores: float (out, in) with in % m == 0; n, m: the pattern (0 < n < m).

    Returns:
        bool (out, in): exactly n True in every block of m.

    Raises:
        ValueError: in_features not divisible by m.
    """
    out_features, in_features = scores.shape
    if in_features % m:
        raise ValueError(f"an {n}:{m} pattern needs in_features divisible by {m}, got {in_features}")
    blocks = scores.reshape(out_features, in_features // m, m)
    best = torch.topk(blocks, n, dim=2).indices
    keep = torch.zeros_like(blocks, dtype=torch.bool).scatter_(2, best, True)
    return keep.view(out_features, in_features)


def _targets(model: nn.Module, skip: str | Iterable[str] | None) -> dict[str, nn.Linear]:
    """The layers to prune: `toolkit.layers.linear_targets(model, skip)`, refusing a lone layer or none.

    Raises:
        ValueError: `model` is an `nn.Linear`, or no `nn.Linear` is left to prune.
    """
    if isinstance(model, nn.Linear):
        raise ValueError("pass the model holding the layers, not a lone nn.Linear")
    targets = linear_targets(model, skip)
    if not targets:
        raise ValueError(f"no nn.Linear to prune in {type(model).__name__} (skip={sorted(skip_names(model, skip))})")
    return targets


def _check_divisible(layers: Mapping[str, nn.Linear], nm: tuple[int, int] | None) -> None:
    """Raise ValueError naming the first layer whose in_features the pattern's M does not divide."""
    for name, layer in layers.items():
        if nm is not None and layer.in_features % nm[1]:
            raise ValueError(f"layer {name!r}: an {nm[0]}:{nm[1]} pattern needs in_features divisible by "
                             f"{nm[1]}, got {layer.in_features}")


@torch.no_grad()
def prune_layers(layers: Mapping[str, nn.Linear], norms: Mapping[str, torch.Tensor] | None,
                 sparsity: float, nm: tuple[int, int] | None = None) -> None:
    """Zero, in place, the lowest-scored weights of each row of each layer: Wanda, or magnitude without norms.

    The score is |W_ij| * ||X_j||_2 with `norms`, |W_ij| without; the masks are `row_mask` (exactly
    round(sparsity * in_features) zeros per row) or, with `nm`, `nm_mask`.

    Args:
        layers: the layers to prune, by name.
        norms: name -> float (in_features,) input-channel norms ||X_j||_2 (e.g. `LinearInputStats.norm`)
            for every layer, or None for magnitude pruning.
        sparsity: fraction of each row to zero (ignored with `nm`).
        nm: (N, M) to keep N of every M consecutive input weights, or None (unstructured).

    Raises:
        ValueError: (N:M) a layer whose in_features M does not divide (from `nm_mask`).
    """
    for name, layer in layers.items():
        scores = layer.weight.detach().abs().float()
        if norms is not None:
            scores = scores * norms[name].to(scores.device)[None, :]
        keep = nm_mask(scores, *nm) if nm is not None else row_mask(scores, sparsity)
        layer.weight.mul_(keep)


def _prune_sequentially(model: nn.Module, batches: Sequence[Batch], layers: Mapping[str, nn.Linear],
                        sparsity: float, nm: tuple[int, int] | None, progress: bool) -> None:
    """The paper's procedure: each block pruned from its inputs with the blocks before it pruned, then the rest."""
    def prune(inside: Mapping[str, nn.Linear], stats: Mapping[str, LinearInputStats]) -> None:
        prune_layers(inside, {name: stats[name].norm for name in inside}, sparsity, nm)

    calibrate_block_by_block(model, batches, layers, prune, progress=progress, desc="Wanda")


def apply_wanda_pruning(
    model: nn.Module,
    calibration: Iterable | Mapping[str, LinearInputStats],
    sparsity: float | None,
    pattern: str | None = None,
    *,
    skip: Iterable[str] | None = None,
    sequential: bool = True,
    progress: bool = True,
) -> nn.Module:
    """Wanda: zero the weights of lowest |W_ij| * ||X_j||_2 within each output row, in place.

    Args:
        model: a model whose `nn.Linear` layers are pruned (weights zeroed in place, same dtype/shape).
        calibration: calibration batches (tensors of input ids (B, L) or dicts of model inputs, see
            `toolkit.calibration.collect_linear_inputs`) or the statistics dict it returned (then
            `sequential` is ignored: every layer is pruned from those statistics).
        sparsity: fraction of each row's weights to zero (exactly round(sparsity * in_features) per
            row); with a pattern, None or (M - N) / M.
        pattern: None (unstructured) or 'N:M', e.g. '2:4': N kept in every M consecutive input weights.
        skip: names (full or last part) of layers kept dense, a single string being one name; None: the
            output head (as quantize_model).
        sequential: True: prune block by block, each block's statistics taken with the blocks before
            it pruned (the paper's procedure, see the module docstring); False: one calibration pass
            over the dense model for every layer.
        progress: show a progress bar (over the blocks, or over the batches of the one pass).

    Returns:
        `model` itself.

    Raises:
        ValueError: bad sparsity or pattern, a layer whose in_features is not divisible by M, no layer
            to prune, statistics missing a layer, no batch, or (sequential) a block list that the
            model's forward does not call with its hidden states.
        TypeError: a sparsity that is not a real number (as in the lab's pruning), or a batch that is neither a
            tensor nor a mapping.

    >>> import torch
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> model = apply_wanda_pruning(model, [torch.randn(4, 8)], 0.5, skip=(), progress=False)
    >>> (model[0].weight == 0).sum(dim=1).tolist()  # exactly half of every row
    [4, 4, 4, 4, 4, 4, 4, 4]
    """
    sparsity, nm = _check_sparsity(sparsity, pattern)
    layers = _targets(model, skip)
    _check_divisible(layers, nm)  # fail before the calibration pass
    if is_statistics(calibration):
        stats = calibration
    else:
        if sequential:
            _prune_sequentially(model, as_batches(calibration), layers, sparsity, nm, progress)
            return model
        stats = collect_linear_inputs(model, calibration, layers=list(layers), progress=progress)
    check_statistics(stats, layers)
    prune_layers(layers, {name: stats[name].norm for name in layers}, sparsity, nm)
    return model


def apply_magnitude_pruning(
    model: nn.Module, sparsity: float | None, pattern: str | None = None, *, skip: Iterable[str] | None = None
) -> nn.Module:
    """The magnitude baseline of `apply_wanda_pruning`: the same per-row or N:M masks from |W_ij| alone.

    Args and Raises: as `apply_wanda_pruning`, without calibration.

    Returns:
        `model` itself, pruned in place.
    """
    sparsity, nm = _check_sparsity(sparsity, pattern)
    layers = _targets(model, skip)
    _check_divisible(layers, nm)
    prune_layers(layers, None, sparsity, nm)
    return model


def to_semi_structured(model: nn.Module, *, skip: Iterable[str] | None = None) -> list[str]:
    """On CUDA, replace the 2:4 weights of fp16/bf16 linear layers by torch's semi-structured sparse tensors.

    A no-op on CPU or where `torch.sparse.to_sparse_semi_structured` is missing (dense kernels are
    then used); layers whose shape or dtype the sparse kernels refuse stay dense.

    Args:
        model: after 2:4 pruning, on its final device and dtype.
        skip: as `apply_wanda_pruning`.

    Returns:
        the names of the converted layers (empty on CPU).
    """
    converter = getattr(torch.sparse, "to_sparse_semi_structured", None)
    converted = []
    if converter is None or not torch.cuda.is_available():
        return converted
    for name, layer in _targets(model, skip).items():
        weight = layer.weight
        if weight.device.type != "cuda" or weight.dtype not in (torch.float16, torch.bfloat16) \
                or not is_nm_sparse(weight, 2, 4):
            continue
        try:
            layer.weight = nn.Parameter(converter(weight.detach()), requires_grad=False)
        except (RuntimeError, ValueError):
            continue
        converted.append(name)
    return converted
