"""Per-layer sensitivity scan (in the style of MIT 6.5940 Lab 1): how much does compressing one part hurt?

`sensitivity_scan` compresses one target at a time -- one linear layer, or every layer of one kind
(query, key, value, attention output, FFN in, FFN out; `layer_kind` maps BERT and Llama names to
these) -- leaves everything else intact, measures perplexity with `toolkit.evaluation.perplexity`, and
restores the target before the next probe. Probes:

- magnitude pruning at each fraction in `prune`: the lowest |W_ij| of each output row, as
  `toolkit.wanda.apply_magnitude_pruning` (per row, not the lab's per-tensor `apply_weight_pruning`), so
  that its curve compares with Wanda's, which uses the same per-row masks,
- Wanda pruning at the same fractions when `calibration` is given (`toolkit.wanda.prune_layers`, one
  calibration pass shared by all probes),
- quantization to each format in `quantize` ('int8' without outlier threshold, 'int4', '1.58bit', ... of
  `QuantizedLinear`).

`plot_sensitivity` draws perplexity against the compression level, one line per target and method.

It does not choose per-layer budgets from the scan, and it does not compress the model it returns
(the model is unchanged afterwards; its weights are restored bit for bit).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from quantization import check_format
from toolkit.calibration import LinearInputStats, check_statistics, collect_linear_inputs, is_statistics
from toolkit.evaluation.scoring import perplexity
from toolkit.layers import LAYER_FORMATS, QuantizedLinear
from toolkit.targets import linear_targets
from toolkit.wanda import prune_layers

if TYPE_CHECKING:
    from matplotlib.figure import Figure

LAYER_KINDS = ("query", "key", "value", "attention output", "ffn in", "ffn out")
# Suffixes of module names -> kind (BERT family, Llama family); the first match wins.
_KIND_SUFFIXES = (
    ("attention.self.query", "query"), ("self_attn.q_proj", "query"),
    ("attention.self.key", "key"), ("self_attn.k_proj", "key"),
    ("attention.self.value", "value"), ("self_attn.v_proj", "value"),
    ("attention.output.dense", "attention output"), ("self_attn.o_proj", "attention output"),
    ("intermediate.dense", "ffn in"), ("mlp.gate_proj", "ffn in"), ("mlp.up_proj", "ffn in"),
    ("output.dense", "ffn out"), ("mlp.down_proj", "ffn out"),
)
# Kinds whose BERT name is only a bare suffix: they must sit right under a numbered layer ('layer.3.output.dense'),
# so that a cross-attention 'layer.3.crossattention.output.dense' is not taken for the FFN.
_UNDER_LAYER = ("intermediate.dense", "output.dense")
COLUMNS = ("target", "kind", "layers", "method", "level", "perplexity", "ratio")


def layer_kind(name: str) -> str | None:
    """The kind of a linear layer from its module name, e.g. 'bert.encoder.layer.3.intermediate.dense' ->
    'ffn in', 'model.layers.0.self_attn.o_proj' -> 'attention output'; None for other layers, cross-attention
    ones included ('bert.encoder.layer.3.crossattention.output.dense').

    >>> layer_kind("bert.encoder.layer.3.output.dense"), layer_kind("bert.encoder.layer.3.crossattention.output.dense")
    ('ffn out', None)
    """
    for suffix, kind in _KIND_SUFFIXES:
        if name == suffix or name.endswith("." + suffix):
            parent = name.removesuffix(suffix).rstrip(".").rpartition(".")[2]
            if suffix in _UNDER_LAYER and parent and not parent.isdigit():
                return None
            return kind
    return None


def _targets(model: nn.Module, by: str, layers: Iterable[str] | None) -> dict[str, list[str]]:
    """Target name -> the linear layers it compresses: one per kind (by="kind") or per layer (by="layer").

    Raises:
        ValueError: bad `by`, a name in `layers` that is not a kind (by="kind") or a scannable layer
            (by="layer"), or nothing to scan.
    """
    linears = [name for name in linear_targets(model) if layer_kind(name) is not None]
    if by == "kind":
        targets = {kind: [n for n in linears if layer_kind(n) == kind] for kind in LAYER_KINDS}
    elif by == "layer":
        targets = {name: [name] for name in linears}
    else:
        raise ValueError(f"by must be 'kind' or 'layer', got {by!r}")
    if layers is not None:
        wanted = set(layers)
        allowed = set(LAYER_KINDS) if by == "kind" else set(linears)
        unknown = wanted - allowed
        if unknown:
            what = "a layer kind" if by == "kind" else "a scannable nn.Linear of the model (it takes layer names)"
            raise ValueError(f"with by={by!r}, not {what}: {sorted(unknown)}")
    targets = {key: names for key, names in targets.items() if names and (layers is None or key in wanted)}
    if not targets:
        raise ValueError(f"no BERT- or Llama-style linear layer to scan in {type(model).__name__}")
    return targets


def _check_levels(prune: Sequence[float], quantize: Sequence[str]) -> None:
    """Raise ValueError for a fraction outside [0, 1] or a format `QuantizedLinear` does not have."""
    for fraction in prune:
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction <= 1:
            raise ValueError(f"prune fractions must be numbers in [0, 1], got {fraction!r}")
    for fmt in quantize:
        check_format(fmt, LAYER_FORMATS)


@torch.no_grad()
def sensitivity_scan(
    model: nn.Module,
    tokenizer,
    texts: Sequence[str],
    *,
    by: str = "kind",
    layers: Iterable[str] | None = None,
    prune: Sequence[float] = (0.3, 0.5, 0.7, 0.9),
    quantize: Sequence[str] = ("int8", "int4", "1.58bit"),
    calibration: Iterable | Mapping[str, LinearInputStats] | None = None,
    group_size: int = 64,
    progress: bool = True,
    **perplexity_kwargs,
) -> pd.DataFrame:
    """Perplexity with one target compressed at a time, everything else intact.

    Args:
        model: a BERT-family masked LM or Llama-family causal LM (left unchanged).
        tokenizer, texts: what `perplexity` scores (keep the texts short: one evaluation per probe).
        by: "kind" (one target per layer kind, all its layers at once) or "layer" (one per layer).
        layers: restrict to these kinds (with by="kind") or layer names (by="layer"); None: all.
        prune: magnitude (and Wanda) pruning fractions.
        quantize: `QuantizedLinear` formats to probe ('int4' uses `group_size`).
        calibration: batches or `collect_linear_inputs` statistics; adds Wanda probes. None: no Wanda.
        group_size: int4 group size.
        progress: show a bar over the probes.
        **perplexity_kwargs: passed to `toolkit.evaluation.perplexity` (max_length, batch_size, ...).

    Returns:
        DataFrame with columns target, kind, layers (count), method ('baseline', 'magnitude', 'wanda'
        or 'quantize'), level (fraction pruned, or format), perplexity and ratio (to the baseline
        row). The first row is the uncompressed model.

    Raises:
        ValueError: bad `by`, unknown layers (kind names with by="layer" included), bad fractions or
            formats, or precomputed statistics missing a scanned layer.
    """
    targets = _targets(model, by, layers)
    _check_levels(prune, quantize)
    perplexity_kwargs.setdefault("progress", False)
    score = lambda: perplexity(model, tokenizer, texts, **perplexity_kwargs)  # noqa: E731
    norms = None
    if calibration is not None:
        names = sorted({name for group in targets.values() for name in group})
        stats = calibration if is_statistics(calibration) else \
            collect_linear_inputs(model, calibration, layers=names, progress=progress)
        check_statistics(stats, {name: model.get_submodule(name) for name in names})
        norms = {name: stats[name].norm for name in names}
    base = score()
    rows = [dict(target="none", kind="none", layers=0, method="baseline", level="none", perplexity=base, ratio=1.0)]
    probes = [("magnitude", f) for f in prune] + ([("wanda", f) for f in prune] if norms else []) \
        + [("quantize", fmt) for fmt in quantize]
    bar = tqdm(total=len(targets) * len(probes), desc="sensitivity", unit="probe", disable=not progress)
    for target, names in targets.items():
        modules = {name: model.get_submodule(name) for name in names}
        for method, level in probes:
            saved = {name: module.weight.detach().clone() for name, module in modules.items()}
            try:
                if method in ("magnitude", "wanda"):
                    prune_layers(modules, norms if method == "wanda" else None, level)
                else:
                    for name, module in modules.items():
                        parent, _, child = name.rpartition(".")
                        setattr(model.get_submodule(parent), child,
                                QuantizedLinear.from_linear(module, level, None if level == "int8" else 6.0,
                                                            group_size=group_size))
                value = score()
            finally:
                for name, module in modules.items():
                    parent, _, child = name.rpartition(".")
                    setattr(model.get_submodule(parent), child, module)
                    module.weight.copy_(saved[name])
            rows.append(dict(target=target, kind=layer_kind(names[0]), layers=len(names), method=method,
                             level=level, perplexity=value, ratio=value / base))
            bar.update()
    bar.close()
    return pd.DataFrame(rows, columns=list(COLUMNS))


def plot_sensitivity(table: pd.DataFrame, *, log: bool | None = None) -> Figure:
    """Perplexity ratio against the compression level: one panel per method, one line per target.

    Args:
        table: from `sensitivity_scan`.
        log: logarithmic ratio axis; None: when the ratios span more than a factor of 4.

    Returns:
        a matplotlib Figure (not shown; display or save it).
    """
    methods = [m for m in ("magnitude", "wanda", "quantize") if (table["method"] == m).any()]
    if log is None:
        log = bool(table["ratio"].max() > 4 * table["ratio"].min())
    from matplotlib.figure import Figure  # imported when a figure is drawn

    figure = Figure(figsize=(5 * max(len(methods), 1), 4), layout="constrained")
    axes = figure.subplots(1, max(len(methods), 1), squeeze=False)[0]
    for ax, method in zip(axes, methods):
        part = table[table["method"] == method]
        levels = list(dict.fromkeys(part["level"]))
        for target, rows in part.groupby("target", sort=False):
            positions = [levels.index(level) for level in rows["level"]]
            ax.plot(positions, rows["ratio"], marker="o", label=str(target))
        ax.set_xticks(range(len(levels)), [f"{lv:.0%}" if isinstance(lv, float) else str(lv) for lv in levels])
        ax.set_xlabel("fraction pruned" if method != "quantize" else "format")
        ax.set_ylabel("perplexity / uncompressed")
        ax.set_title({"magnitude": "magnitude pruning", "wanda": "Wanda pruning", "quantize": "quantization"}[method])
        if log:
            ax.set_yscale("log")
        ax.axhline(1.0, color="grey", linewidth=0.8)
        ax.grid(alpha=0.3)
    if methods:
        axes[0].legend(fontsize="small")
    return figure
