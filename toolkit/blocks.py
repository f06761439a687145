"""Calibration block by block: run a model one transformer block at a time on cached hidden states.

Methods that change a model layer by layer (sequential Wanda, in the style of the paper's reference
implementation) need each block's statistics with the blocks before it already changed:

- `find_blocks`: the model's list of transformer blocks, the longest outermost `nn.ModuleList` whose
  items hold layers to change (`bert.encoder.layer`, `model.layers` of Llama).
- `capture_block_inputs`: the model runs once, up to its first block, on every calibration batch (a
  forward pre-hook records the block's arguments, then aborts the forward).
- `block_statistics` / `block_outputs`: a block runs on the cached calls to accumulate its layers'
  statistics (`toolkit.calibration.record_linear_inputs`, padding left out by the batch's
  `attention_mask`), and once more to give the next block its inputs. The other block arguments
  (attention mask, position embeddings) are reused as they are; KV caches are dropped.
- `calibrate_block_by_block`: the loop, with a callback that changes each block's layers; layers
  outside the block list (BERT's MLM head transform) are calibrated last, from one full pass.

Memory: the hidden states of all calibration tokens, twice (inputs and outputs of a block). It does
not change the model itself (the callback does), and it needs blocks that run one after the other,
each on the hidden states of the one before.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from toolkit.calibration import (Batch, LinearInputStats, batch_inputs, check_statistics, collect_linear_inputs,
                                 record_linear_inputs)
from toolkit.targets import model_device


class _BlockInputsCaptured(Exception):
    """Raised by the first block's pre-hook once its arguments are recorded, to skip the rest of the forward."""


@dataclass
class BlockCall:
    """The arguments of a block on one calibration batch, replayed on every block in turn.

    Attributes:
        args, kwargs: the block's arguments; its hidden states (float (B, L, hidden)) are `args[0]`,
            or `kwargs["hidden_states"]` when there is no positional argument.
        mask: the batch's attention mask (B, L), 0 at padding tokens, or None (every token counts).
    """

    args: tuple
    kwargs: dict
    mask: torch.Tensor | None

    def with_hidden(self, hidden: torch.Tensor) -> BlockCall:
        """The same call on other hidden states (float (B, L, hidden))."""
        if self.args:
            return BlockCall((hidden, *self.args[1:]), self.kwargs, self.mask)
        return BlockCall(self.args, {**self.kwargs, "hidden_states": hidden}, self.mask)


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


def capture_block_inputs(model: nn.Module, block: nn.Module, batches: Sequence[Batch]) -> list[BlockCall]:
    """Run `model` up to `block` on every batch and return the block's arguments, one call per batch.

    Args:
        model: the whole model, in eval mode.
        block: its first block; a pre-hook records the block's arguments and aborts the forward.
        batches: as `toolkit.calibration.batch_inputs` takes them.

    Returns:
        one `BlockCall` per batch, in order (hidden states float (B, L, hidden) on the model's device).

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
                                 f"({type(block).__name__}): calibrate in one pass (apply_wanda_pruning: sequential=False)")
            block_args, block_kwargs = seen[-1]
            if not block_args and "hidden_states" not in block_kwargs:
                raise ValueError(f"{type(block).__name__} is called without positional arguments or "
                                 "hidden_states=: calibrate in one pass (apply_wanda_pruning: sequential=False)")
            calls.append(BlockCall(block_args, block_kwargs, kwargs.get("attention_mask")))
    finally:
        handle.remove()
    if not calls:
        raise ValueError("batches is empty: calibration needs at least one batch")
    return calls


def block_statistics(block: nn.Module, layers: Mapping[str, nn.Linear],
                 calls: Sequence[BlockCall]) -> dict[str, LinearInputStats]:
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


def block_outputs(block: nn.Module, calls: Sequence[BlockCall]) -> list[BlockCall]:
    """The inputs of the next block: `calls` with their hidden states replaced by `block`'s outputs.

    Args:
        block: a block returning its hidden states (float (B, L, hidden)) or a tuple that starts with them.
        calls: its inputs, one per calibration batch.

    Returns:
        one `BlockCall` per call, the other arguments unchanged.
    """
    outputs = []
    for call in calls:
        output = block(*call.args, **call.kwargs)
        outputs.append(call.with_hidden(output if isinstance(output, torch.Tensor) else output[0]))
    return outputs


@torch.no_grad()
def calibrate_block_by_block(
    model: nn.Module,
    batches: Sequence[Batch],
    layers: Mapping[str, nn.Linear],
    update: Callable[[Mapping[str, nn.Linear], Mapping[str, LinearInputStats]], None],
    *,
    progress: bool = True,
    desc: str = "blocks",
) -> None:
    """Calibrate the blocks of `model` in order, each on its inputs with the blocks before it updated, then the rest.

    For each block of `find_blocks(model, layers)`: its layers' statistics are taken on the cached block
    inputs, `update(block_layers, stats)` changes them (e.g. prunes), and the block runs again, updated,
    to give the next block its inputs. The layers outside the blocks get one more full pass over the
    model, then `update`. The model runs in eval mode; its training flag is restored and every hook
    removed, even on error.

    Args:
        model: the model; batches: the calibration batches (read twice when some layers lie outside the
            blocks); layers: the layers to update, by name; update: called once per group of layers,
            with their statistics (checked by `toolkit.calibration.check_statistics` first);
        progress: show a bar over the blocks, labelled `desc`.

    Raises:
        ValueError, TypeError: as `capture_block_inputs`, `collect_linear_inputs` and `check_statistics`
            (a block whose layers saw no token fails before `update` changes them).
    """
    found = find_blocks(model, layers)
    in_blocks = set()
    was_training = model.training
    model.eval()
    try:
        if found is not None:
            list_name, blocks = found
            calls = capture_block_inputs(model, blocks[0], batches)
            for index, block in enumerate(tqdm(blocks, desc=desc, unit="block", disable=not progress)):
                inside = {name: layer for name, layer in layers.items() if name.startswith(f"{list_name}.{index}.")}
                if inside:
                    stats = block_statistics(block, inside, calls)
                    check_statistics(stats, inside)
                    update(inside, stats)
                if index + 1 < len(blocks):
                    calls = block_outputs(block, calls)
                in_blocks.update(inside)
        rest = {name: layer for name, layer in layers.items() if name not in in_blocks}
        if rest:
            stats = collect_linear_inputs(model, batches, layers=list(rest), progress=False)
            check_statistics(stats, rest)
            update(rest, stats)
    finally:
        model.train(was_training)
