"""Calibration: run a model on a few batches and record what every linear layer reads.

One pass of `collect_linear_inputs` gives, for each `nn.Linear` it watches, the statistics that the
activation-aware methods of the toolkit need:

- the squared L2 norm of every input channel over all calibration tokens (`sum_squares`; its root
  `norm` is Wanda's ||X_j||_2),
- the mean absolute value of every input channel (`mean_abs`; AWQ's activation scale),
- the number of tokens seen,
- optionally a capped uniform random sample of input rows (`sample`), for methods that measure a
  layer's output error on real activations (AWQ's scale and clipping searches).

Memory stays bounded whatever the number of batches: two float64 vectors per layer, plus at most
`sample_rows` rows per sampled layer (a reservoir: every token seen has the same chance to be kept).
Padding tokens are left out when a batch carries an `attention_mask` of the layer input's leading shape.

`record_linear_inputs` is the accumulation itself (hooks on given layers, for any forward run inside
a `with` statement) and `batch_inputs` turns a batch into call arguments; `toolkit.wanda` uses both
to run one transformer block at a time. `calibration_batches` cuts texts into token windows. Users:
`toolkit.layers.quantize_model` (int4 with `calibration=`), `toolkit.wanda.apply_wanda_pruning` and
`toolkit.sensitivity`.

It does not change the model (hooks are removed even when a batch fails, the training flag is
restored), and it does not record outputs, gradients, or layers other than `nn.Linear`.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from toolkit.targets import model_device

Batch = torch.Tensor | Mapping[str, torch.Tensor]
SAMPLE_ROWS = 512  # default cap of the row samples (AWQ samples 512 tokens for its clipping search)


@dataclass
class LinearInputStats:
    """What one `nn.Linear` read during calibration.

    Attributes:
        in_features: the layer's input width.
        sum_squares: float64 (in_features,), sum over tokens of x_j^2.
        sum_abs: float64 (in_features,), sum over tokens of |x_j|.
        tokens: number of input rows (tokens) seen.
        sample: float32 (k, in_features) with k <= the cap, a uniform random sample of the rows seen
            (without replacement), or None when no sample was asked for this layer.
    """

    in_features: int
    sum_squares: torch.Tensor
    sum_abs: torch.Tensor
    tokens: int = 0
    sample: torch.Tensor | None = None

    @property
    def norm(self) -> torch.Tensor:
        """||X_j||_2 per input channel, float32 (in_features,)."""
        return self.sum_squares.sqrt().float()

    @property
    def mean_abs(self) -> torch.Tensor:
        """mean |x_j| per input channel, float32 (in_features,); zeros before any token."""
        return (self.sum_abs / max(self.tokens, 1)).float()


class _Recorder:
    """The forward hook of one layer: updates its `LinearInputStats` with a reservoir sample."""

    def __init__(self, stats: LinearInputStats, sample_rows: int, generator: torch.Generator,
                 current_mask: list) -> None:
        self.stats = stats
        self.sample_rows = sample_rows
        self.generator = generator
        self.current_mask = current_mask  # one-element list holding the batch's attention mask (or None)
        self.keys: torch.Tensor | None = None  # the random priorities of the sampled rows

    def __call__(self, module: nn.Module, args: tuple) -> None:
        """Add the rows of the layer's input `args[0]` (..., in_features), padding left out, to the statistics."""
        x = args[0].detach()
        mask = self.current_mask[0]
        if mask is not None and tuple(mask.shape) == tuple(x.shape[:-1]):
            x = x[mask.to(device=x.device, dtype=torch.bool)]
        rows = x.reshape(-1, x.shape[-1])
        wide = rows.double()
        stats = self.stats
        stats.sum_squares += wide.pow(2).sum(dim=0).cpu()
        stats.sum_abs += wide.abs().sum(dim=0).cpu()
        stats.tokens += rows.shape[0]
        if self.sample_rows:
            self._sample(rows)

    def _sample(self, rows: torch.Tensor) -> None:
        """Reservoir by random priorities: keep the rows with the `sample_rows` largest uniform keys.

        Only the rows of this batch that survive the selection are copied to the CPU (as float32).
        """
        stats = self.stats
        keys = torch.rand(rows.shape[0], generator=self.generator)
        if rows.shape[0] > self.sample_rows:  # no more than sample_rows of this batch can be kept
            kept = torch.topk(keys, self.sample_rows).indices.sort().values
            keys, rows = keys[kept], rows[kept.to(rows.device)]
        rows = rows.float().cpu()
        if stats.sample is not None:
            keys, rows = torch.cat([self.keys, keys]), torch.cat([stats.sample, rows])
        if rows.shape[0] > self.sample_rows:
            kept = torch.topk(keys, self.sample_rows).indices.sort().values
            keys, rows = keys[kept], rows[kept]
        self.keys, stats.sample = keys, rows.contiguous()


def _check_linear_names(model: nn.Module, names: Iterable[str] | None) -> dict[str, nn.Linear]:
    linears = {name: module for name, module in model.named_modules() if isinstance(module, nn.Linear)}
    if names is None:
        if not linears:
            raise ValueError(f"{type(model).__name__} has no nn.Linear layer to calibrate")
        return linears
    names = list(names)
    unknown = [name for name in names if name not in linears]
    if unknown:
        raise ValueError(f"not nn.Linear layers of {type(model).__name__}: {unknown}")
    if not names:
        raise ValueError("layers is empty: nothing to calibrate")
    return {name: linears[name] for name in names}


def is_statistics(calibration: object) -> bool:
    """Whether `calibration` is the dict `collect_linear_inputs` returned (not batches to run)."""
    return (isinstance(calibration, Mapping) and len(calibration) > 0
            and all(isinstance(value, LinearInputStats) for value in calibration.values()))


def check_statistics(stats: Mapping[str, LinearInputStats], layers: Mapping[str, nn.Linear], *,
                     sample: bool = False) -> None:
    """Refuse statistics that do not fit `layers`, before a method changes any weight.

    Args:
        stats: from `collect_linear_inputs`.
        layers: the layers a method is about to change, by name.
        sample: whether each layer also needs a row sample.

    Raises:
        ValueError: a layer without statistics (or without a sample when `sample`), statistics of
            another width than the layer's in_features (e.g. gathered before the model was shrunk),
            or statistics that saw no token (an all-padding calibration set).
    """
    missing = [name for name in layers if name not in stats or (sample and stats[name].sample is None)]
    if missing:
        what = "a row sample" if sample else "statistics"
        raise ValueError(f"the calibration statistics lack {what} for {missing[:3]}: collect them for every layer "
                         f"changed{' with collect_linear_inputs(..., sample=True)' if sample else ''}, or pass batches")
    wrong = [f"{name} ({stats[name].in_features} != {layer.in_features})" for name, layer in layers.items()
             if stats[name].in_features != layer.in_features]
    if wrong:
        raise ValueError(f"the calibration statistics do not fit the model (statistics width != in_features): "
                         f"{wrong[:3]}; collect them again on the model as it is now")
    empty = [name for name in layers if stats[name].tokens == 0]
    if empty:
        raise ValueError(f"the calibration saw no token at {empty[:3]}: every position was padding "
                         "(attention_mask all zero) or the layer never ran")


def as_batches(calibration: Batch | Iterable[Batch]) -> list[Batch]:
    """Calibration batches as a list: one tensor of input ids or one dict of model inputs is one batch.

    Args:
        calibration: a LongTensor of input ids ((B, L), or (L,) for one sequence), a mapping of model
            inputs, or an iterable of either.

    Returns:
        list of batches, 1-d id tensors made (1, L).

    Raises:
        ValueError: an empty mapping (neither statistics nor a batch of model inputs).
    """
    if isinstance(calibration, Mapping) and not calibration:
        raise ValueError("calibration is an empty dict: pass batches (tensors of input ids or dicts of model "
                         "inputs) or the statistics collect_linear_inputs returned")
    if isinstance(calibration, (torch.Tensor, Mapping)):
        calibration = [calibration]
    return [batch[None] if isinstance(batch, torch.Tensor) and batch.dim() == 1 else batch
            for batch in calibration]


def batch_inputs(batch: Batch, device: torch.device) -> tuple[tuple, dict]:
    """The positional and keyword arguments that run a model on one calibration batch.

    Args:
        batch: a LongTensor of input ids (B, L), called as `model(ids)`, or a mapping of model inputs
            (e.g. input_ids and attention_mask, int64 (B, L)), called as `model(**batch)`.
        device: where the tensors go (non-tensor values are passed as they are).

    Returns:
        (args, kwargs) on `device`; the padding mask of the batch, if any, is `kwargs["attention_mask"]`.

    Raises:
        TypeError: a batch that is neither a tensor nor a mapping.
    """
    if not isinstance(batch, (torch.Tensor, Mapping)):
        raise TypeError(f"a calibration batch must be a tensor of input ids or a dict of model inputs, "
                        f"got {type(batch).__name__}")
    ids = batch if isinstance(batch, torch.Tensor) else batch.get("input_ids", batch.get("inputs_embeds"))
    if isinstance(ids, torch.Tensor) and ids.numel() == 0:
        raise ValueError(f"a calibration batch holds no token (shape {tuple(ids.shape)}): "
                         "every batch needs at least one row of at least one token")
    if isinstance(batch, torch.Tensor):
        return (batch.to(device),), {}
    return (), {key: value.to(device) if isinstance(value, torch.Tensor) else value
                for key, value in batch.items()}


@contextmanager
def record_linear_inputs(
    linears: Mapping[str, nn.Linear],
    current_mask: list,
    *,
    sampled: Iterable[str] = (),
    sample_rows: int = SAMPLE_ROWS,
    seed: int = 0,
) -> Iterator[dict[str, LinearInputStats]]:
    """Accumulate the input statistics of `linears` over every forward run inside the `with` statement.

    Each layer gets a forward pre-hook; the hooks are removed on exit, even on error. Rows whose
    position is 0 in `current_mask[0]` (an attention mask whose shape is the input's leading shape,
    e.g. (B, L) for an input (B, L, in_features)) are left out; None counts every row.

    Args:
        linears: the layers to watch, by name.
        current_mask: a one-element list holding the attention mask of the batch being run (or None);
            the caller updates it before each batch.
        sampled: names of the layers that also keep a row sample of at most `sample_rows` rows.
        sample_rows: the cap of each sample, >= 1.
        seed: seeds the sampling (the global RNG is not touched).

    Yields:
        dict from name to `LinearInputStats` (float64 sums on the CPU), filled in as the layers run.
    """
    generator = torch.Generator().manual_seed(seed)
    stats, handles = {}, []
    try:
        for name, linear in linears.items():
            stats[name] = LinearInputStats(linear.in_features, torch.zeros(linear.in_features, dtype=torch.float64),
                                           torch.zeros(linear.in_features, dtype=torch.float64))
            recorder = _Recorder(stats[name], sample_rows if name in sampled else 0, generator, current_mask)
            handles.append(linear.register_forward_pre_hook(recorder))
        yield stats
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def collect_linear_inputs(
    model: nn.Module,
    batches: Iterable[Batch],
    *,
    layers: Iterable[str] | None = None,
    sample: Iterable[str] | bool = False,
    sample_rows: int = SAMPLE_ROWS,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, LinearInputStats]:
    """Run `model` on `batches` and return the input statistics of its linear layers.

    The model runs in eval mode under `torch.no_grad()`; each batch is moved to the model's device.
    Forward hooks are registered for the pass and always removed afterwards.

    Args:
        model: any module whose `nn.Linear` layers are to be watched (e.g. a Hugging Face model).
        batches: an iterable of batches (or one batch, see `as_batches`), each a LongTensor of input
            ids (B, L) passed as
            `model(ids)`, or a mapping of model inputs passed as `model(**batch)` (its
            `attention_mask`, if any, excludes padding tokens from the statistics).
        layers: names (as in `model.named_modules()`) of the linear layers to watch; None: all.
        sample: True to keep a row sample for every watched layer, or the names of the layers to
            keep one for (a subset of `layers`); False: none.
        sample_rows: the cap of each sample (rows), >= 1.
        seed: seeds the sampling (the global RNG is not touched).
        progress: show a tqdm bar over the batches.

    Returns:
        dict from layer name to `LinearInputStats`, in the model's module order.

    Raises:
        ValueError: a name that is not an `nn.Linear` of the model, no layer to watch, a bad
            `sample_rows`, no batch at all, a batch of zero rows or zero length, or no token at all
            (every attention mask all zero).
        TypeError: a batch that is neither a tensor nor a mapping.
    """
    watched = _check_linear_names(model, layers)
    if not isinstance(sample_rows, int) or isinstance(sample_rows, bool) or sample_rows < 1:
        raise ValueError(f"sample_rows must be a positive int, got {sample_rows!r}")
    if isinstance(sample, bool):
        sampled = set(watched) if sample else set()
    else:
        sampled = set(sample)
        if sampled - set(watched):
            raise ValueError(f"sample names layers that are not watched: {sorted(sampled - set(watched))}")
    current_mask: list = [None]
    device, was_training, seen = model_device(model), model.training, 0
    model.eval()
    try:
        with record_linear_inputs(watched, current_mask, sampled=sampled, sample_rows=sample_rows,
                                  seed=seed) as stats:
            for batch in tqdm(as_batches(batches), desc="calibration", unit="batch", disable=not progress):
                args, kwargs = batch_inputs(batch, device)
                current_mask[0] = kwargs.get("attention_mask")
                model(*args, **kwargs)
                seen += 1
    finally:
        model.train(was_training)
    if seen == 0:
        raise ValueError("batches is empty: calibration needs at least one batch")
    if not any(layer.tokens for layer in stats.values()):
        raise ValueError("the calibration batches hold no token: every attention_mask is all zero")
    return stats


def calibration_batches(
    tokenizer,
    texts: Sequence[str],
    *,
    n_samples: int = 16,
    seq_len: int = 128,
    batch_size: int = 4,
    kind: str = "causal",
) -> list[torch.Tensor]:
    """Cut texts into calibration windows of token ids, the first `n_samples` of them, batched.

    The texts are joined with blank lines and tokenized once, then cut into consecutive windows, as
    the calibration recipes of the papers do: GPTQ and Wanda take 128 windows of 2048 tokens of C4,
    AWQ 128 windows of 512 tokens of the Pile validation set.
    For `kind="masked"` each window is `[CLS] + seq_len - 2 tokens + [SEP]`, as BERT expects.

    Args:
        tokenizer: a Hugging Face tokenizer.
        texts: the texts, e.g. `toolkit.evaluation.load_texts("train")`.
        n_samples: windows to return (fewer if the texts are too short), >= 1.
        seq_len: tokens per window, >= 3.
        batch_size: windows per batch, >= 1.
        kind: "causal" or "masked".

    Returns:
        list of int64 tensors (b, seq_len), b <= batch_size, to pass as `batches`.

    Raises:
        ValueError: bad sizes or kind, or texts too short for one window.
        TypeError: `texts` is a single string (wrap it in a list) or holds something else than strings.
    """
    if isinstance(texts, str):
        raise TypeError("texts must be a sequence of strings, not one string (wrap a single text in a list)")
    texts = list(texts)
    if not all(isinstance(text, str) for text in texts):
        raise TypeError("texts must be a sequence of strings")
    for label, value, low in (("n_samples", n_samples, 1), ("seq_len", seq_len, 3), ("batch_size", batch_size, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"{label} must be an int >= {low}, got {value!r}")
    if kind not in ("causal", "masked"):
        raise ValueError(f"kind must be 'causal' or 'masked', got {kind!r}")
    ids = tokenizer("\n\n".join(texts), add_special_tokens=False, return_tensors="pt",
                    verbose=False)["input_ids"][0]
    body = seq_len - 2 if kind == "masked" else seq_len
    count = min(n_samples, len(ids) // body)
    if count == 0:
        raise ValueError(f"the texts hold {len(ids)} tokens, fewer than one window of {body}")
    windows = ids[: count * body].view(count, body)
    if kind == "masked":
        cls = torch.full((count, 1), tokenizer.cls_token_id, dtype=windows.dtype)
        sep = torch.full((count, 1), tokenizer.sep_token_id, dtype=windows.dtype)
        windows = torch.cat([cls, windows, sep], dim=1)
    return list(windows.split(batch_size))
