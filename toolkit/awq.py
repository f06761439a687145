"""Activation-aware int4 weight quantization, after AWQ (Lin et al., 2023), with folded scales.

A few input channels of a linear layer carry much larger activations than the rest; their weights
matter most. AWQ multiplies column j of W by s_j > 1 before quantizing (so those weights get a
relatively finer grid) and divides the layer's input channel j by s_j, which leaves y = W x unchanged
in exact arithmetic. Here:

- `scale_groups` finds where 1/s can be folded into the operation that produces the layer's input,
  so that inference costs nothing extra:

  * Llama family (pre-norm; Llama, Mistral, Qwen2, Qwen3), recognised by its module names *and* its norm
    classes (`SCALABLE_NORMS`, which compute weight * normalized(x), so 1/s folds into the weight exactly):
    q/k/v read `input_layernorm` (one s shared
    by the three, searched on their concatenated outputs), gate/up read `post_attention_layernorm`
    (shared s), o_proj reads v_proj through the attention average (rows of v_proj; only without
    grouped-query attention, where v_proj's outputs are o_proj's inputs one to one), down_proj reads
    up_proj through the gating product (rows of up_proj).
  * BERT family (post-norm): only attention.output.dense, through the value rows and bias. The
    LayerNorms of BERT feed both the next linear layers and the residual branch, so folding 1/s into
    them would change the residual: query/key/value and intermediate.dense keep s = 1, and
    output.dense reads GELU(intermediate), which no scale passes through. These layers still get
    the clipping search.
  * Anything else: s = 1 (round-to-nearest plus clipping). That includes blocks laid out like Llama's
    whose norm is another class: Gemma's RMSNorm computes x * (1 + w), so dividing w by s would change
    the model; `unscaled_blocks` lists such blocks with the reason.

- `activation_aware_search` runs one calibration pass (`toolkit.calibration`), then for each group
  tries s = mean|x|^alpha (normalised by sqrt(max(s) * min(s))) for alpha on a grid of 20 in [0, 1)
  and keeps the alpha whose quantized group gives the least output error
  ||X (Q(W diag(s)) diag(s)^-1 - W)^T||^2 on a sample of calibration rows (alpha = 0 is
  round-to-nearest, so the search never does worse on that sample); folds every chosen s; then,
  optionally, searches per (row, group) a clipping ratio of the quantization range among
  1, 0.95, ..., 0.55 by the group's output error (as AWQ's clipping search, which leaves the
  query and key projections unclipped).

- `awq_quantize` is the entry point: the search above, then `toolkit.layers.quantize_model(model, "int4",
  clip_ratios=...)` with the ratios it found.

It does not update weights by
second-order information (GPTQ), search scales layer after layer on the already quantized model's
activations (every statistic comes from one pass over the float model), or quantize activations.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from toolkit.calibration import SAMPLE_ROWS, LinearInputStats, check_statistics, collect_linear_inputs, is_statistics
from toolkit.int4 import check_group_size, int4_dequantize, int4_quantize
from toolkit.layers import quantizable_layers, quantize_model
from toolkit.targets import submodule_at

ALPHA_GRID = tuple(i / 20 for i in range(20))  # AWQ's grid: 20 points in [0, 1)
CLIP_GRID = tuple(1 - i / 20 for i in range(10))  # AWQ's clipping: max shrink 0.5, 20-step grid
NO_CLIP = ("q_proj", "k_proj", "query", "key")  # query and key projections (Llama, BERT names)
# Norm classes computing weight * normalized(x), into whose weight 1/s folds exactly (not Gemma's x * (1 + w)).
SCALABLE_NORMS = frozenset({"LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm"})
# Submodules of a Llama-family decoder block, relative to the block.
_LLAMA_BLOCK = ("input_layernorm", "post_attention_layernorm", "self_attn.q_proj", "self_attn.k_proj",
                "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


@dataclass(frozen=True)
class ScaleGroup:
    """Linear layers that read one tensor, and the operation producing it where 1/s folds.

    Attributes:
        previous: module name of the producer (a norm, or a linear layer whose rows are scaled).
        kind: "norm" (weight, and bias if any, divided by s) or "linear" (rows and bias divided by s).
        layers: names of the linear layers reading the tensor (their columns are multiplied by s).
    """

    previous: str
    kind: str
    layers: tuple[str, ...]


def _llama_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name prefix, block) of every submodule laid out as a Llama-family decoder block (`_LLAMA_BLOCK`)."""
    return [(f"{name}." if name else "", module) for name, module in model.named_modules()
            if all(submodule_at(module, path) is not None for path in _LLAMA_BLOCK)]


def _unscalable_norm(block: nn.Module) -> str | None:
    """The class name of a norm of a Llama-layout `block` that 1/s cannot be folded into, or None."""
    for norm in (block.input_layernorm, block.post_attention_layernorm):
        if type(norm).__name__ not in SCALABLE_NORMS:
            return type(norm).__name__
    return None


def unscaled_blocks(model: nn.Module) -> dict[str, str]:
    """The Llama-layout blocks of `model` that keep s = 1 because of their norm class, with the reason.

    Args:
        model: any model.

    Returns:
        dict from block name to reason (empty for Llama, Mistral, Qwen2, Qwen3 and non-Llama layouts).
    """
    unscaled = {}
    for prefix, block in _llama_blocks(model):
        norm = _unscalable_norm(block)
        if norm is not None:
            unscaled[prefix.rstrip(".")] = (f"{norm} is not known to compute weight * normalized(x): "
                                            "no scale folded into it (s = 1, round-to-nearest plus clipping)")
    return unscaled


def _llama_groups(prefix: str, block: nn.Module) -> list[ScaleGroup]:
    """The scale groups of one Llama-family block whose norms take a folded scale (see the module docstring)."""
    attn = f"{prefix}self_attn."
    groups = [ScaleGroup(f"{prefix}input_layernorm", "norm", (f"{attn}q_proj", f"{attn}k_proj", f"{attn}v_proj"))]
    if block.self_attn.v_proj.out_features == block.self_attn.o_proj.in_features:
        groups.append(ScaleGroup(f"{attn}v_proj", "linear", (f"{attn}o_proj",)))
    groups.append(ScaleGroup(f"{prefix}post_attention_layernorm", "norm",
                             (f"{prefix}mlp.gate_proj", f"{prefix}mlp.up_proj")))
    groups.append(ScaleGroup(f"{prefix}mlp.up_proj", "linear", (f"{prefix}mlp.down_proj",)))
    return groups


def scale_groups(model: nn.Module) -> list[ScaleGroup]:
    """The places of `model` where an input-channel scale can be folded exactly (see the module docstring).

    Args:
        model: a Hugging Face Llama-family or BERT-family model (other models, including Llama-layout
            ones whose norms are not in `SCALABLE_NORMS`, give no group).

    Returns:
        list of `ScaleGroup`, in module order.
    """
    llama = {block: prefix for prefix, block in _llama_blocks(model)}
    groups = []
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        if module in llama:
            if _unscalable_norm(module) is None:
                groups += _llama_groups(prefix, module)
        elif submodule_at(module, "attention.self.value", nn.Linear) is not None \
                and submodule_at(module, "attention.output.dense") is not None:
            groups.append(ScaleGroup(f"{prefix}attention.self.value", "linear",
                                     (f"{prefix}attention.output.dense",)))
    return groups


@torch.no_grad()
def fold_scales(model: nn.Module, group: ScaleGroup, scale: torch.Tensor) -> None:
    """Divide the group's producer by `scale` and multiply its layers' input columns by it, in place.

    The model computes the same function (up to float rounding) afterwards.

    Args:
        model: the model holding the group.
        group: from `scale_groups(model)`.
        scale: positive float tensor (in_features,) of the group's layers.
    """
    previous = model.get_submodule(group.previous)
    s = scale.to(previous.weight.device)
    if group.kind == "norm":
        previous.weight.div_(s.to(previous.weight.dtype))
    else:
        previous.weight.div_(s.to(previous.weight.dtype)[:, None])
    if getattr(previous, "bias", None) is not None:
        previous.bias.div_(s.to(previous.bias.dtype))
    for name in group.layers:
        layer = model.get_submodule(name)
        layer.weight.mul_(s.to(layer.weight.dtype)[None, :])


def _fake_int4(weight: torch.Tensor, group_size: int, clip_ratio: torch.Tensor | None = None) -> torch.Tensor:
    """Q(W): the float32 weight int4 round-to-nearest represents."""
    return int4_dequantize(*int4_quantize(weight, group_size, clip_ratio))


def _output_error(x: torch.Tensor, weight: torch.Tensor, approx: torch.Tensor) -> float:
    """||x (approx - weight)^T||_F^2 in float64, x (n, in), weights (out, in)."""
    return float((x @ (approx - weight).T).double().pow(2).sum())


def search_scale(x: torch.Tensor, mean_abs: torch.Tensor, weight: torch.Tensor, group_size: int,
                 grid: Iterable[float] = ALPHA_GRID) -> tuple[torch.Tensor, float, float, float]:
    """The activation-aware scale of one group of layers sharing an input.

    Args:
        x: float32 (n, in) calibration input rows.
        mean_abs: float32 (in,) mean |x_j| over all calibration tokens.
        weight: float32 (out, in), the group's weights stacked along the outputs.
        group_size: int4 group size.
        grid: the exponents alpha to try.

    Returns:
        (s float32 (in,), best alpha, output error at the best alpha, output error at alpha = 0,
        i.e. round-to-nearest).
    """
    base = mean_abs.float().clamp(min=1e-4)
    best = (None, math.nan, math.inf)
    rtn_error = math.nan
    for alpha in grid:
        s = base.pow(alpha)
        s = s / (s.max() * s.min()).sqrt()
        error = _output_error(x, weight, _fake_int4(weight * s, group_size) / s)
        if alpha == 0:
            rtn_error = error
        if error < best[2]:
            best = (s, alpha, error)
    return best[0], best[1], best[2], rtn_error


def search_clip(x: torch.Tensor, weight: torch.Tensor, group_size: int,
                grid: Iterable[float] = CLIP_GRID) -> torch.Tensor:
    """Per (row, group) clipping ratio of the int4 range minimising that group's output error.

    The error of group g of row o is sum_n (sum_{k in g} x_nk (Q(w)_ok - w_ok))^2 =
    d^T (X_g^T X_g) d, computed with the per-group Gram matrices of `x`.

    Args:
        x: float32 (n, in) input rows; weight: float32 (out, in); group_size: int4 group size.
        grid: the ratios to try (1 = no clipping).

    Returns:
        float32 (out, in // group_size) ratios, to pass as `clip_ratio` to `int4_quantize`.
    """
    out_features, in_features = weight.shape
    groups = in_features // group_size
    xg = x.float().view(-1, groups, group_size)
    gram = torch.einsum("ngk,ngl->gkl", xg, xg)  # (G, gs, gs)
    best_error = torch.full((out_features, groups), math.inf)
    best_ratio = torch.ones(out_features, groups)
    for ratio in grid:
        ratios = torch.full((out_features, groups), ratio)
        diff = (_fake_int4(weight, group_size, ratios) - weight).view(out_features, groups, group_size)
        error = torch.einsum("ogk,gkl,ogl->og", diff, gram, diff)
        better = error < best_error
        best_error = torch.where(better, error, best_error)
        best_ratio = torch.where(better, ratios, best_ratio)
    return best_ratio


@torch.no_grad()
def activation_aware_search(
    model: nn.Module,
    calibration: Iterable | Mapping[str, LinearInputStats],
    layers: Iterable[str],
    group_size: int = 64,
    *,
    clip: bool = True,
    sample_rows: int = SAMPLE_ROWS,
    progress: bool = True,
) -> tuple[dict[str, torch.Tensor], list[dict], dict[str, str]]:
    """Search and fold AWQ scales into the float `model` (in place), then search clipping ratios.

    Args:
        model: a float model (its `nn.Linear` layers not yet replaced).
        calibration: calibration batches for `collect_linear_inputs`, or the dict it returned with a
            row sample for every layer to quantize.
        layers: names (as in `model.named_modules()`) of the linear layers to quantize, e.g.
            `toolkit.layers.linear_targets(model)`; groups touching another layer keep s = 1.
        group_size: int4 group size (must divide the in_features of the layers to quantize).
        clip: also search clipping ratios.
        sample_rows: rows sampled per layer for the error measurements.
        progress: show tqdm bars.

    Returns:
        (clip ratios: layer name -> float32 (out, in // group_size), empty without `clip` and
        absent for the query and key projections;
        one dict per scaled group: 'previous', 'layers', 'alpha', 'error', 'rtn_error';
        `unscaled_blocks(model)`: the blocks left at s = 1 by their norm class, with the reason).

    Raises:
        ValueError: statistics that do not fit the layers (`toolkit.calibration.check_statistics`: missing,
            without a sample, of another width, or no token seen), before any weight changes.
    """
    targets = list(layers)
    linears = {name: model.get_submodule(name) for name in targets}
    if is_statistics(calibration):
        stats = calibration
    else:
        stats = collect_linear_inputs(model, calibration, layers=targets, sample=True, sample_rows=sample_rows,
                                      progress=progress)
    check_statistics(stats, linears, sample=True)
    groups = [g for g in scale_groups(model) if set(g.layers) <= set(targets)]
    input_scale: dict[str, torch.Tensor] = {}
    report, chosen = [], []
    for group in tqdm(groups, desc="AWQ scale search", disable=not progress):
        first = stats[group.layers[0]]
        weight = torch.cat([model.get_submodule(name).weight.detach().float().cpu() for name in group.layers])
        s, alpha, error, rtn_error = search_scale(first.sample, first.mean_abs, weight, group_size)
        chosen.append((group, s))
        report.append({"previous": group.previous, "layers": list(group.layers), "alpha": alpha,
                       "error": error, "rtn_error": rtn_error})
    for group, s in chosen:  # searched on the original weights, as AWQ does within a block; fold after
        fold_scales(model, group, s)
        input_scale.update({name: s for name in group.layers})
    clip_ratios = {}
    if clip:
        # As AWQ: no clipping for query and key, whose error shows in the attention scores, which the
        # per-layer output error does not measure.
        clipped = [name for name in targets if name.rpartition(".")[2] not in NO_CLIP]
        for name in tqdm(clipped, desc="AWQ clipping search", disable=not progress):
            layer = model.get_submodule(name)
            x = stats[name].sample
            if name in input_scale:
                x = x / input_scale[name]  # the layer's input after folding
            ratio = search_clip(x, layer.weight.detach().float().cpu(), group_size)
            clip_ratios[name] = ratio.to(layer.weight.device)
    return clip_ratios, report, unscaled_blocks(model)


def awq_quantize(
    model: nn.Module,
    calibration: Iterable | Mapping[str, LinearInputStats],
    group_size: int = 64,
    skip: str | Iterable[str] | None = None,
    *,
    clip: bool = True,
    verbose: bool = True,
) -> nn.Module:
    """Activation-aware int4: fold the searched scales into `model`, then quantize it with the clipping found.

    Every check runs before a weight changes: the group size against every layer to quantize, and the
    calibration statistics against those layers (`toolkit.calibration.check_statistics`).

    Args:
        model: a float model, changed in place.
        calibration: calibration batches or `collect_linear_inputs(..., sample=True)` statistics.
        group_size: int4 group size, a divisor of every quantized layer's in_features.
        skip: as `toolkit.layers.quantize_model` (None keeps the output head in float).
        clip: also search per-group clipping ratios.
        verbose: progress bars and `quantize_model`'s summary line.

    Returns:
        `model`, its linear layers int4 `QuantizedLinear`; `model.quantization_report` is
        `quantize_model`'s with 'activation_aware' True, 'scaled' (one dict per folded group, see
        `activation_aware_search`) and 'unscaled' ({block: why its layers keep s = 1}).

    Raises:
        ValueError: as `quantize_model` and `activation_aware_search`.
    """
    targets = quantizable_layers(model, skip)
    for name in targets:
        check_group_size(model.get_submodule(name).in_features, group_size)
    clip_ratios, scaled, unscaled = activation_aware_search(model, calibration, targets, group_size, clip=clip,
                                                            progress=verbose)
    quantize_model(model, "int4", skip=skip, verbose=verbose, group_size=group_size, clip_ratios=clip_ratios)
    model.quantization_report.update(activation_aware=True, scaled=scaled, unscaled=unscaled)
    return model
