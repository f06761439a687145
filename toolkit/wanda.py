"""One-shot pruning by weight and activation (Wanda, Sun et al., 2023), N:M patterns, compact 2:4 storage.

- `apply_wanda_pruning`: score S_ij = |W_ij| * ||X_j||_2 (X_j: input channel j over the calibration
  tokens, from `toolkit.calibration`) and, within each output row, zero the lowest-scored weights:
  exactly round(sparsity * in_features) per row, or N:M (keep the N best of every M consecutive input
  weights of each row, e.g. 2:4). No weight update.
- `apply_magnitude_pruning`: the same masks from S_ij = |W_ij| (the baseline Wanda is compared with).
- `nm_mask` / `row_mask`: the masks themselves, for any score matrix.
- `find_blocks`: the model's list of transformer blocks, which sequential Wanda prunes in order.
- `to_nm_state_dict` / `from_nm_state_dict`: a state dict where every N:M weight is stored as its kept
  values (out, in * N / M) plus their positions in each block of M, packed (2 bits each for 2:4):
  a 2:4 float32 weight takes 17/32 of its dense bytes (16 bits of values and 1 bit of index per
  weight, against 32), bit-identical on reload.
- `to_semi_structured`: on CUDA, where torch's semi-structured sparse tensors exist, swap the 2:4
  weights for them (sparse tensor-core kernels). CPUs keep dense weights and dense kernels.

By default the output head stays dense, as in `toolkit.layers.quantize_model`.

Statistics are taken block by block by default (`sequential=True`), as in the paper's reference
implementation: the inputs of each transformer block are computed with the blocks before it already
pruned. The model runs once, up to its first block, on every calibration batch (a forward pre-hook
records the block's arguments, then aborts the forward); each block then runs on the cached hidden
states twice, once to accumulate its layers' statistics (`toolkit.calibration.record_linear_inputs`,
padding left out by the batch's `attention_mask`) before they are pruned, once more, pruned, to give
the next block its inputs. The other block arguments (attention mask, position embeddings) are reused
as they are; KV caches are dropped. The block list is the longest outermost `nn.ModuleList` whose
items hold layers to prune (`find_blocks`: `bert.encoder.layer`, `model.layers` of Llama); its items
must run one after the other, each on the hidden states of the one before. Layers outside it (e.g.
BERT's MLM head transform) are pruned last, from one more full pass over the model with its blocks
pruned; a model without such a list (e.g. an `nn.Sequential`) is thus pruned from a single pass.
Memory: the hidden states of all calibration tokens, twice (inputs and outputs of a block).
`sequential=False`, or statistics passed in as a dict, prune every layer from one pass over the dense
model. It does not fine-tune after pruning or implement SparseGPT's weight reconstruction.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from toolkit.calibration import (Batch, LinearInputStats, as_batches, batch_inputs, collect_linear_inputs,
                                 is_statistics, model_device, record_linear_inputs)
from toolkit.layers import linear_targets, skip_names
from toolkit.packing import pack_bits, unpack_bits
from toolkit.sparse import _load_encoded_state_dict, _unique_state_dict

# Key suffixes of an N:M weight stored by to_nm_state_dict.
_NM_VALUES, _NM_INDEX, _NM_SHAPE = ".nm_values", ".nm_index", ".nm_shape"


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


def _check_sparsity(sparsity: float | None, pattern: str | None) -> tuple[float | None, tuple[int, int] | None]:
    if pattern is None:
        if sparsity is None:
            raise ValueError("give a sparsity in [0, 1] or an N:M pattern such as '2:4'")
        if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0 <= sparsity <= 1:
            raise ValueError(f"sparsity must be a number in [0, 1], got {sparsity!r}")
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


class _BlockInputsCaptured(Exception):
    """Raised by the first block's pre-hook once its arguments are recorded, to skip the rest of the forward."""


@dataclass
class _BlockCall:
    """The arguments of a block on one calibration batch, replayed on every block in turn.

    Attributes:
        args, kwargs: the block's arguments; its hidden states (float (B, L, hidden)) are `args[0]`,
            or `kwargs["hidden_states"]` when there is no positional argument.
        mask: the batch's attention mask (B, L), 0 at padding tokens, or None (every token counts).
    """

    args: tuple
    kwargs: dict
    mask: torch.Tensor | None

    def with_hidden(self, hidden: torch.Tensor) -> _BlockCall:
        """The same call on other hidden states (float (B, L, hidden))."""
        if self.args:
            return _BlockCall((hidden, *self.args[1:]), self.kwargs, self.mask)
        return _BlockCall(self.args, {**self.kwargs, "hidden_states": hidden}, self.mask)


def find_blocks(model: nn.Module, layers: Iterable[str]) -> tuple[str, nn.ModuleList] | None:
    """The model's list of transformer blocks: the longest outermost `nn.ModuleList` holding some of `layers`.

    Lists inside the items of such a list (e.g. the experts of a mixture-of-experts block) and lists
    of bare `nn.Linear` (parallel heads) are not blocks. Ties go to the first list in module order.

    Args:
        model: e.g. a BertForMaskedLM ('bert.encoder.layer') or a LlamaForCausalLM ('model.layers').
        layers: names (as in `model.named_modules()`) of the layers to prune.

    Returns:
        (the list's name, the list), or None when no list holds any of `layers`.
    """
    names = list(layers)
    found: list[tuple[str, nn.ModuleList]] = []
    for name, module in model.named_modules():  # parents come before their children
        if not name or not isinstance(module, nn.ModuleList) or any(isinstance(item, nn.Linear) for item in module):
            continue
        nested = any(name.startswith(f"{outer}.") for outer, _ in found)
        if not nested and any(layer.startswith(f"{name}.") for layer in names):
            found.append((name, module))
    return max(found, key=lambda entry: len(entry[1]), default=None)


def _without_caches(kwargs: dict) -> dict:
    """`kwargs` with Hugging Face KV caches replaced by None and `use_cache` by False, so a block can be rerun."""
    if not kwargs:
        return kwargs
    from transformers.cache_utils import Cache  # only models that pass keyword arguments to their blocks

    return {key: None if isinstance(value, Cache) else False if key == "use_cache" else value
            for key, value in kwargs.items()}


def _capture_block_inputs(model: nn.Module, block: nn.Module, batches: Sequence[Batch]) -> list[_BlockCall]:
    """Run `model` up to `block` on every batch and return the block's arguments, one call per batch.

    Args:
        model: the whole model, in eval mode.
        block: its first block; a pre-hook records the block's arguments and aborts the forward.
        batches: as `toolkit.calibration.batch_inputs` takes them.

    Returns:
        one `_BlockCall` per batch, in order (hidden states float (B, L, hidden) on the model's device).

    Raises:
        ValueError: no batch, a forward that never calls `block`, or a block called without hidden states.
        TypeError: a batch that is neither a tensor nor a mapping.
    """
    device, seen, calls = model_device(model), [], []

    def record(module: nn.Module, args: tuple, kwargs: dict) -> None:
        seen.append((args, _without_caches(kwargs)))
        raise _BlockInputsCaptured

    handle = block.register_forward_pre_hook(record, with_kwargs=True)
    try:
        for batch in batches:
            args, kwargs = batch_inputs(batch, device)
            try:
                model(*args, **kwargs)
            except _BlockInputsCaptured:
                pass
            if len(seen) != len(calls) + 1:
                raise ValueError(f"{type(model).__name__} ran without calling its first block "
                                 f"({type(block).__name__}): pass sequential=False")
            block_args, block_kwargs = seen[-1]
            if not block_args and "hidden_states" not in block_kwargs:
                raise ValueError(f"{type(block).__name__} is called without positional arguments or "
                                 "hidden_states=: pass sequential=False")
            calls.append(_BlockCall(block_args, block_kwargs, kwargs.get("attention_mask")))
    finally:
        handle.remove()
    if not calls:
        raise ValueError("batches is empty: calibration needs at least one batch")
    return calls


def _block_stats(block: nn.Module, layers: Mapping[str, nn.Linear],
                 calls: Sequence[_BlockCall]) -> dict[str, LinearInputStats]:
    """Run `block` on every cached call and return what its `layers` read.

    Args:
        block: one block of the model; layers: its linear layers to watch, by full name;
        calls: the block's inputs, one per calibration batch.

    Returns:
        dict from name to `LinearInputStats` (float64 sums), padding tokens left out by each call's mask.
    """
    current_mask: list = [None]
    with record_linear_inputs(layers, current_mask) as stats:
        for call in calls:
            current_mask[0] = call.mask
            block(*call.args, **call.kwargs)
    return stats


def _block_outputs(block: nn.Module, calls: Sequence[_BlockCall]) -> list[_BlockCall]:
    """The inputs of the next block: `calls` with their hidden states replaced by `block`'s outputs.

    Args:
        block: a block returning its hidden states (float (B, L, hidden)) or a tuple that starts with them.
        calls: its inputs, one per calibration batch.

    Returns:
        one `_BlockCall` per call, the other arguments unchanged.
    """
    outputs = []
    for call in calls:
        output = block(*call.args, **call.kwargs)
        outputs.append(call.with_hidden(output if isinstance(output, torch.Tensor) else output[0]))
    return outputs


@torch.no_grad()
def _prune_sequentially(model: nn.Module, batches: Sequence[Batch], layers: Mapping[str, nn.Linear],
                        sparsity: float, nm: tuple[int, int] | None, progress: bool) -> None:
    """Prune the blocks of `model` in order, each from its inputs with the blocks before it pruned, then the rest.

    The model runs in eval mode; its training flag is restored and every hook removed, even on error.

    Args:
        model: the model, pruned in place; batches: the calibration batches (read twice when some
            layers lie outside the blocks); layers: the layers to prune, by name; sparsity, nm: as
            `_check_sparsity` returns them; progress: show a bar over the blocks.

    Raises:
        ValueError, TypeError: as `_capture_block_inputs` and `collect_linear_inputs`.
    """
    found = find_blocks(model, layers)
    in_blocks = set()
    was_training = model.training
    model.eval()
    try:
        if found is not None:
            list_name, blocks = found
            calls = _capture_block_inputs(model, blocks[0], batches)
            for index, block in enumerate(tqdm(blocks, desc="Wanda", unit="block", disable=not progress)):
                inside = {name: layer for name, layer in layers.items() if name.startswith(f"{list_name}.{index}.")}
                if inside:
                    norms = {name: stats.norm for name, stats in _block_stats(block, inside, calls).items()}
                    prune_layers(inside, norms, sparsity, nm)
                if index + 1 < len(blocks):
                    calls = _block_outputs(block, calls)
                in_blocks.update(inside)
        rest = {name: layer for name, layer in layers.items() if name not in in_blocks}
        if rest:
            stats = collect_linear_inputs(model, batches, layers=list(rest), progress=False)
            prune_layers(rest, {name: stats[name].norm for name in rest}, sparsity, nm)
    finally:
        model.train(was_training)


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
        TypeError: a batch that is neither a tensor nor a mapping.
    """
    sparsity, nm = _check_sparsity(sparsity, pattern)
    layers = _targets(model, skip)
    _check_divisible(layers, nm)  # fail before the calibration pass
    if is_statistics(calibration):
        missing = sorted(set(layers) - set(calibration))
        if missing:
            raise ValueError(f"the calibration statistics lack {missing[:3]}")
        stats = calibration
    else:
        if sequential:
            _prune_sequentially(model, as_batches(calibration), layers, sparsity, nm, progress)
            return model
        stats = collect_linear_inputs(model, calibration, layers=list(layers), progress=progress)
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
    for name, tensor in _unique_state_dict(model).items():
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
    _load_encoded_state_dict(model, state, "N:M", _NM_VALUES, (_NM_INDEX, _NM_SHAPE), _decode_nm)
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
