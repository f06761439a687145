"""The comparison of variants: one table (`compare`, `save_rows`) and one figure (`plot_comparison`).

Every variant is measured by the same calls (`toolkit.evaluation.scoring`, `.footprint`, `.latency`).
matplotlib is imported by `plot_comparison` only, when a figure is drawn.
"""
from __future__ import annotations

import csv
import functools
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from toolkit.evaluation.footprint import model_size_mb, serialized_size_mb
from toolkit.evaluation.latency import latency_batch, measure_latency
from toolkit.evaluation.scoring import perplexity

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# The columns of `compare` besides the quality metric and its ratio.
COLUMNS = ("name", "size_mb", "serialized_mb", "latency_median_ms", "latency_p90_ms", "size_ratio", "speedup")
# Whether a higher value is better, for the metrics `plot_comparison` knows by name.
HIGHER_IS_BETTER = {"perplexity": False, "accuracy": True}


def compare(
    variants: Mapping[str, nn.Module],
    tokenizer,
    texts: Sequence[str],
    *,
    baseline: str | None = None,
    latency_inputs: Mapping[str, torch.Tensor] | torch.Tensor | None = None,
    metric: Callable[[nn.Module], float] | None = None,
    metric_name: str = "perplexity",
    kind: str | None = None,
    batch_size: int = 16,
    max_length: int = 128,
    mask_prob: float = 0.15,
    seed: int = 0,
    runs: int = 20,
    warmup: int = 3,
    num_threads: int | None = None,
    progress: bool = True,
) -> list[dict]:
    """Measure every variant the same way and relate it to the baseline.

    Args:
        variants: name -> model, all sharing `tokenizer`.
        tokenizer: the tokenizer.
        texts: the evaluation texts.
        baseline: the name the ratios refer to (default: the first variant).
        latency_inputs: the batch to time (default: `latency_batch(tokenizer, texts,
            batch_size=batch_size, max_length=max_length)`).
        metric: the quality measure, called once per variant as `metric(model)` (e.g.
            `lambda model: accuracy(model, tokenizer, texts, labels)`); None: `perplexity`.
        metric_name: the column of the metric's value (and of its ratio,
            `{metric_name}_ratio`); it must name no other column, and without a `metric` it
            must be "perplexity".
        kind, batch_size, max_length, mask_prob, seed, progress: passed to `perplexity`
            (unused with a `metric`, except batch_size and max_length for the default
            latency batch).
        runs, warmup, num_threads: passed to `measure_latency`.

    Returns:
        One dict per variant, in order: name, size_mb (`model_size_mb`), serialized_mb
        (`serialized_size_mb`), the metric (key `metric_name`, "perplexity" by default),
        latency_median_ms, latency_p90_ms, size_ratio (size / baseline size), speedup
        (baseline median latency / median latency) and `{metric_name}_ratio` (value /
        baseline value; NaN when the baseline value is 0).

    >>> import copy
    >>> from toolkit.evaluation import tiny_model
    >>> from toolkit.layers import quantize_model
    >>> model, tokenizer = tiny_model("masked")
    >>> int8 = quantize_model(copy.deepcopy(model), "int8", verbose=False)
    >>> rows = compare({"fp32": model, "int8": int8}, tokenizer, ["The cat sat on the mat."] * 4, runs=2,
    ...                warmup=0, progress=False)
    >>> [row["name"] for row in rows], rows[0]["size_ratio"], rows[1]["size_ratio"] < 1
    (['fp32', 'int8'], 1.0, True)
    """
    if not isinstance(variants, Mapping) or not variants:
        raise ValueError("variants must be a non-empty mapping of name -> model")
    for name, model in variants.items():
        if not isinstance(model, nn.Module):
            raise TypeError(f"variant {name!r} is a {type(model).__name__}, not an nn.Module")
    baseline = next(iter(variants)) if baseline is None else baseline
    if baseline not in variants:
        raise ValueError(f"baseline {baseline!r} is not one of the variants {list(variants)}")
    if metric is None:
        if metric_name != "perplexity":
            raise ValueError(f"metric_name={metric_name!r} needs a metric; without one the column is 'perplexity'")
        metric = functools.partial(perplexity, tokenizer=tokenizer, texts=texts, batch_size=batch_size,
                                   max_length=max_length, mask_prob=mask_prob, seed=seed, progress=progress,
                                   kind=kind)
    elif not callable(metric):
        raise TypeError(f"metric must be a callable model -> float, got {type(metric).__name__}")
    if not isinstance(metric_name, str) or not metric_name or {metric_name, f"{metric_name}_ratio"} & set(COLUMNS):
        raise ValueError(f"metric_name must be a non-empty str that names no other column {COLUMNS}, got "
                         f"{metric_name!r}")
    if latency_inputs is None:
        latency_inputs = latency_batch(tokenizer, texts, batch_size=batch_size, max_length=max_length)
    rows = []
    for name, model in variants.items():
        latency = measure_latency(model, latency_inputs, runs=runs, warmup=warmup, num_threads=num_threads)
        rows.append({
            "name": name,
            "size_mb": model_size_mb(model),
            "serialized_mb": serialized_size_mb(model),
            metric_name: float(metric(model)),
            "latency_median_ms": latency["median_ms"],
            "latency_p90_ms": latency["p90_ms"],
        })
    base = rows[list(variants).index(baseline)]
    for row in rows:
        row["size_ratio"] = row["size_mb"] / base["size_mb"]
        row["speedup"] = base["latency_median_ms"] / row["latency_median_ms"]
        row[f"{metric_name}_ratio"] = row[metric_name] / base[metric_name] if base[metric_name] else math.nan
    return rows


def save_rows(rows: Sequence[Mapping[str, object]], path: str | Path) -> Path:
    """Write rows to CSV: columns in order of first appearance, missing values left empty.

    Args:
        rows: dicts such as those of `compare`.
        path: the CSV file (parent directories are created).

    Returns:
        The path written.
    """
    if not rows:
        raise ValueError("rows is empty")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def plot_comparison(
    rows: Sequence[Mapping[str, object]],
    path: str | Path | None = None,
    *,
    metric: str = "perplexity",
    higher_is_better: bool | None = None,
) -> Figure:
    """Size against a quality metric (one marker per row, with a legend) and median latency bars (p90 whiskers).

    Each row keeps one colour in both panels (and one marker). Rows lacking a value (None or
    absent) are left out of that panel. The metric axis is logarithmic when its values are
    positive and span more than a factor of 10. The figure is built without pyplot, so it
    works under any backend (Agg included) and is shown once in a notebook when it is the
    cell's value.

    Args:
        rows: dicts with name and size_mb, the metric, latency_median_ms, latency_p90_ms (as
            from `compare`).
        path: if given, the figure is also saved there (format from the suffix, 150 dpi).
        metric: the key of the metric in the rows: the y axis of the size panel.
        higher_is_better: said in the y label; None looks the metric up in
            HIGHER_IS_BETTER (perplexity: lower, accuracy: higher).

    Returns:
        The matplotlib Figure.
    """
    from matplotlib import ticker  # the toolkit's only matplotlib user, imported when a figure is drawn
    from matplotlib.figure import Figure

    if not rows:
        raise ValueError("rows is empty")
    if higher_is_better is None:
        if metric not in HIGHER_IS_BETTER:
            raise ValueError(f"cannot tell whether a higher {metric!r} is better: pass higher_is_better")
        higher_is_better = HIGHER_IS_BETTER[metric]
    names = [str(row["name"]) for row in rows]
    colour = {name: f"C{i % 10}" for i, name in enumerate(names)}
    marker = {name: "osD^vPX*"[i % 8] for i, name in enumerate(names)}  # (colour, marker) unique for 40 rows
    figure = Figure(figsize=(13, 5), layout="constrained")
    size_axes, latency_axes = figure.subplots(1, 2, width_ratios=[1.3, 1])

    points = [r for r in rows if r.get("size_mb") is not None and r.get(metric) is not None]
    for row in points:
        name = str(row["name"])
        size_axes.scatter(row["size_mb"], row[metric], s=50, color=colour[name], marker=marker[name],
                          label=name, zorder=3)
    values = [r[metric] for r in points]
    if values and min(values) > 0 and max(values) > 10 * min(values):
        size_axes.set_yscale("log")
        size_axes.yaxis.set_major_locator(ticker.LogLocator(subs=(1, 2, 5)))
        size_axes.yaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
        size_axes.yaxis.set_minor_formatter(ticker.NullFormatter())
    size_axes.set(xlabel="size in memory (MB)",
                  ylabel=f"{metric} ({'higher' if higher_is_better else 'lower'} is better)",
                  title=f"Size against {metric}")
    size_axes.grid(True, alpha=0.3)
    if points:
        size_axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)

    bars = [r for r in rows if r.get("latency_median_ms") is not None]
    median = np.array([r["latency_median_ms"] for r in bars], dtype=float)
    p90 = np.array([r.get("latency_p90_ms") or r["latency_median_ms"] for r in bars], dtype=float)
    positions = np.arange(len(bars))
    latency_axes.barh(positions, median, xerr=[np.zeros_like(median), p90 - median], capsize=3,
                      color=[colour[str(r["name"])] for r in bars])
    latency_axes.set_yticks(positions, [str(r["name"]) for r in bars], fontsize=8)
    latency_axes.invert_yaxis()
    latency_axes.set(xlabel="latency per batch (ms): median, whisker to p90", title="Latency")
    latency_axes.grid(True, axis="x", alpha=0.3)
    if path is not None:
        figure.savefig(path, dpi=150)
    return figure
