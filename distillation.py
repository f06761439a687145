"""Knowledge distillation (Hinton et al., 2015). Exercise 3: `compute_distillation_loss` (KL of the
softened distributions, batchmean, times T**2), `distillation_objective` (alpha * KD + (1 - alpha) * CE),
`teacher_and_student_outputs` and `optimizer_step` (one step, teacher frozen). Provided after them:
`distill_model` (the training loop) and the checks. No data loading, evaluation or student building.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

IGNORE_INDEX = -100


# Exercise 3: the soft-target loss, the objective, one training step

def compute_distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float, *,
                              mask: torch.Tensor | None = None) -> torch.Tensor:
    """Soft-target distillation loss: KL(softmax(t / T) || softmax(s / T)) * T**2, a 0-d tensor.

    `student_logits` and `teacher_logits`: floating `(..., num_classes)` tensors of one shape, every
    leading position one row; `temperature` T > 0; `mask`: optional bool tensor `logits.shape[:-1]`,
    True at the rows to include. The KL is summed over classes and averaged over the rows
    ('batchmean': `batch * seq` rows for `(batch, seq, vocab)` logits, or those `mask` selects), in
    the logits' dtype, differentiable w.r.t. the student's. Identical logits give 0 up to rounding;
    logits must be finite (NaN -> NaN).

    Raises:
        TypeError: non-floating logits, non-bool mask, non-number temperature. ValueError: shapes
            differ, fewer than 2 dims, empty logits, temperature <= 0, a bad or empty mask.
    """
    student_rows, teacher_rows = _selected_rows(student_logits, teacher_logits, temperature, mask)
    # BEGIN SOLUTION (Exercise 3)
    # TODO: student_rows and teacher_rows are (rows, classes). Soften both with the temperature:
    #       log_softmax(student_rows / temperature) and softmax(teacher_rows / temperature), last dim.
    # TODO: return KL(teacher || student), summed over classes and averaged over the rows
    #       (F.kl_div with reduction="batchmean" does both), times temperature ** 2.
    student_log_probs = F.log_softmax(student_rows / temperature, dim=-1)
    teacher_log_probs = F.log_softmax(teacher_rows / temperature, dim=-1)
    kl = F.kl_div(student_log_probs, teacher_log_probs, reduction="batchmean", log_target=True)
    return kl * temperature**2
    # END SOLUTION


def distillation_objective(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                           temperature: float, alpha: float, *,
                           shift_labels: bool = False) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The loss of one batch, alpha * KD + (1 - alpha) * CE over the labelled positions: `(loss, terms)`,
    terms `{'kd': KD, 'ce': CE}`. Logits as in `compute_distillation_loss`; `labels` integer, of shape
    `logits.shape[:-1]`, -100 where ignored; alpha in [0, 1]; `shift_labels` (causal LMs) scores the
    logits at t against the label at t + 1.

    Raises:
        TypeError: float or bool labels. ValueError: alpha outside [0, 1], labels of the wrong
            shape, no labelled position.
    """
    student_logits, teacher_logits, labels = _aligned(student_logits, teacher_logits, labels, alpha, shift_labels)
    mask = labels != IGNORE_INDEX
    # BEGIN SOLUTION (Exercise 3)
    # TODO: KD = compute_distillation_loss on the labelled positions only (mask=mask).
    # TODO: CE = F.cross_entropy of the student's logits against the labels at the same
    #       positions (student_logits[mask], labels[mask]).
    # TODO: return (alpha * KD + (1 - alpha) * CE, {"kd": KD, "ce": CE}).
    kd = compute_distillation_loss(student_logits, teacher_logits, temperature, mask=mask)
    ce = F.cross_entropy(student_logits[mask], labels[mask])
    return alpha * kd + (1 - alpha) * ce, {"kd": kd, "ce": ce}
    # END SOLUTION


def teacher_and_student_outputs(teacher_model: nn.Module, student_model: nn.Module, batch: Batch) -> tuple[Any, Any]:
    """Run both models on one prepared batch (`batch.args`, `batch.kwargs`): the teacher frozen,
    the student with gradients. Returns `(student_outputs, teacher_outputs)`, what the models return."""
    # BEGIN SOLUTION (Exercise 3)
    # TODO: run the teacher under torch.no_grad(): teacher_model(*batch.args, **batch.kwargs).
    # TODO: run the student the same way, with gradients; return (student_outputs, teacher_outputs).
    with torch.no_grad():
        teacher_outputs = teacher_model(*batch.args, **batch.kwargs)
    return student_model(*batch.args, **batch.kwargs), teacher_outputs
    # END SOLUTION


def optimizer_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    """One training step on `loss`: gradients of this loss alone, then one optimizer update."""
    # BEGIN SOLUTION (Exercise 3)
    # TODO: zero the gradients, backpropagate the loss, step the optimizer.
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    # END SOLUTION


# ==================== Provided code: the training loop, batches, argument checks ====================

def distill_model(
    teacher_model: nn.Module, student_model: nn.Module, train_data: Iterable, temperature: float, alpha: float,
    num_epochs: int, learning_rate: float, *, device: torch.device | str | None = None, progress: bool = True,
    extra_loss: Callable[[Any, Any, Any], Mapping[str, torch.Tensor]] | None = None,
    model_kwargs: Mapping[str, Any] | None = None, history: list[dict[str, float]] | None = None,
    optimizer: Callable[[list[nn.Parameter], float], torch.optim.Optimizer] | None = None,
    lr_schedule: Callable[[int], float] | None = None, max_grad_norm: float | None = None,
) -> tuple[nn.Module, list[float]]:
    """Train `student_model` with Adam to match `teacher_model` (in eval mode, never changed).

    Each batch of `train_data` (re-iterable, once per epoch), one step on `distillation_objective` plus
    `extra_loss`'s terms; a batch with no labelled position is skipped. Batches: `(inputs, labels)` tensor pairs
    (`model(inputs)` gives logits) or Hugging Face dict batches with 'labels'; causal LMs' labels shift by one.

    Args:
        device: where to train (both models go there; default the student's); progress: a tqdm bar.
        extra_loss: optional `extra_loss(student_outputs, teacher_outputs, inputs)` -> dict of 0-d tensors
            added to the loss (`inputs`: the input tensor, or the dict batch without labels); a module's parameters train too.
        model_kwargs: keyword arguments for both models' forward, e.g. `output_hidden_states=True`.
        history: if given, a list that gets one dict per epoch with the mean of each term.
        optimizer: `optimizer(parameters, learning_rate)` -> the optimizer (default Adam); lr_schedule:
            `step -> multiplier` of the rate (LambdaLR); max_grad_norm: > 0, clips the gradients' 2-norm.

    Returns `(student_model, epoch_losses)`: the same student, back in its mode; each epoch's mean loss.

    Raises TypeError (not an `nn.Module`, a batch neither pair nor dict, a hyperparameter's type), ValueError
    (a hyperparameter out of range, one object as teacher and student, a dict batch without 'labels', an
    epoch without a labelled position), FloatingPointError (a NaN or infinite loss, with its epoch and batch).
    """
    _check_training_args(teacher_model, student_model, temperature, alpha, num_epochs, learning_rate, max_grad_norm)
    device = torch.device(device) if device is not None else next(student_model.parameters()).device
    student_model.to(device)
    teacher_model.to(device).eval()
    parameters = list(student_model.parameters())
    if isinstance(extra_loss, nn.Module):
        parameters += list(extra_loss.to(device).parameters())
    optimizer = (optimizer or torch.optim.Adam)(parameters, learning_rate)
    if max_grad_norm is not None:  # a step pre-hook runs inside optimizer_step, between backward and step
        optimizer.register_step_pre_hook(lambda *_: _clip(parameters, max_grad_norm))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_schedule) if lr_schedule is not None else None
    shift_labels = is_causal_lm(student_model)
    was_training = student_model.training
    student_model.train()
    epoch_losses = []
    try:
        for epoch in range(num_epochs):
            sums, count = {}, 0
            bar = tqdm(train_data, desc=f"epoch {epoch + 1}/{num_epochs}", disable=not progress)
            for batch_index, raw_batch in enumerate(bar):
                batch = prepare_batch(raw_batch, device, model_kwargs or {})
                if not ((batch.labels[..., 1:] if shift_labels else batch.labels) != IGNORE_INDEX).any():
                    continue
                loss, terms, _ = batch_loss(teacher_model, student_model, batch, temperature, alpha,
                                            shift_labels=shift_labels, extra_loss=extra_loss)
                if not torch.isfinite(loss):  # stop before it reaches the weights
                    raise FloatingPointError(f"distillation loss is {loss.item()} at epoch {epoch + 1}/{num_epochs}, "
                                             f"batch {batch_index + 1}; check the inputs or lower the learning rate")
                optimizer_step(optimizer, loss)
                if scheduler is not None:
                    scheduler.step()
                count += 1
                for name, value in {"loss": loss, **terms}.items():
                    sums[name] = sums.get(name, 0.0) + value.item()
                bar.set_postfix({name: f"{total / count:.4f}" for name, total in sums.items()})
            if count == 0:
                raise ValueError(f"epoch {epoch + 1}: train_data yielded no batch with a labelled position")
            means = {name: total / count for name, total in sums.items()}
            epoch_losses.append(means["loss"])
            if history is not None:
                history.append(means)
    finally:
        student_model.train(was_training)
    return student_model, epoch_losses


def batch_loss(teacher_model: nn.Module, student_model: nn.Module, batch: Batch, temperature: float, alpha: float, *,
               shift_labels: bool = False, extra_loss: Callable[[Any, Any, Any], Mapping[str, torch.Tensor]] | None = None,
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor], Any]:
    """The loss `distill_model` trains on for one prepared batch: `teacher_and_student_outputs`, then
    `distillation_objective` on their logits, plus `extra_loss(student_outputs, teacher_outputs,
    batch.inputs)`. Returns `(loss, terms, student_outputs)`, terms detached ('kd', 'ce', extra's)."""
    student_outputs, teacher_outputs = teacher_and_student_outputs(teacher_model, student_model, batch)
    loss, terms = distillation_objective(
        model_logits(student_outputs), model_logits(teacher_outputs), batch.labels, temperature, alpha,
        shift_labels=shift_labels,
    )
    terms = {name: value.detach() for name, value in terms.items()}
    if extra_loss is not None:
        extra = extra_loss(student_outputs, teacher_outputs, batch.inputs)
        loss = loss + sum(extra.values())
        terms.update({name: value.detach() for name, value in extra.items()})
    return loss, terms, student_outputs


def _clip(parameters: list[nn.Parameter], max_norm: float) -> None:
    torch.nn.utils.clip_grad_norm_(parameters, max_norm)  # returns None: a hook's value replaces step's args


def _check_training_args(teacher_model: nn.Module, student_model: nn.Module, temperature: float, alpha: float,
                         num_epochs: int, learning_rate: float, max_grad_norm: float | None) -> None:
    for name, model in (("teacher_model", teacher_model), ("student_model", student_model)):
        if not isinstance(model, nn.Module):
            raise TypeError(f"{name} must be an nn.Module, got {type(model).__name__}")
    if teacher_model is student_model:
        raise ValueError("teacher_model and student_model are the same object: the teacher would be trained")
    check_positive("temperature", temperature)
    check_alpha(alpha)
    if isinstance(num_epochs, bool) or not isinstance(num_epochs, int):
        raise TypeError(f"num_epochs must be an int, got {type(num_epochs).__name__}")
    if num_epochs < 1:
        raise ValueError(f"num_epochs must be >= 1, got {num_epochs}")
    check_positive("learning_rate", learning_rate)
    if max_grad_norm is not None:
        check_positive("max_grad_norm", max_grad_norm)


def model_logits(outputs: Any) -> torch.Tensor:
    """Logits of a plain module (a tensor) or of a Hugging Face output (`.logits`)."""
    logits = outputs if isinstance(outputs, torch.Tensor) else getattr(outputs, "logits", None)
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"model outputs must be a logits tensor or have .logits, got {type(outputs).__name__}")
    return logits


class Batch(NamedTuple):
    """One batch ready for `model(*args, **kwargs)`, with its labels split off."""
    args: tuple
    kwargs: dict
    labels: torch.Tensor
    inputs: Any  # what extra_loss sees: the input tensor, or the dict batch without labels


def prepare_batch(batch: Any, device: torch.device, model_kwargs: Mapping[str, Any]) -> Batch:
    """Unpack a `(inputs, labels)` tuple or a dict batch and move it to `device`."""
    if isinstance(batch, Mapping):  # dicts and transformers' BatchEncoding
        if "labels" not in batch:
            raise ValueError(f"a dict batch needs a 'labels' entry, got keys {sorted(batch)}")
        moved = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        labels = moved.pop("labels")
        return Batch((), {**moved, **model_kwargs}, labels, moved)
    if isinstance(batch, (tuple, list)) and len(batch) == 2 and all(isinstance(x, torch.Tensor) for x in batch):
        inputs, labels = (x.to(device) for x in batch)
        return Batch((inputs,), dict(model_kwargs), labels, inputs)
    raise TypeError(f"each batch must be an (inputs, labels) pair of tensors or a dict with 'labels', "
                    f"got {type(batch).__name__}")


def is_causal_lm(model: nn.Module) -> bool:  # a Hugging Face causal LM: its labels shift by one
    return type(model).__name__ in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()


def _selected_rows(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
                   mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Check the arguments of `compute_distillation_loss`; the (rows, classes) logits it averages over."""
    _check_logits("student_logits", student_logits)
    _check_logits("teacher_logits", teacher_logits)
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student_logits and teacher_logits must have the same shape, "
                         f"got {tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}")
    check_positive("temperature", temperature)
    num_classes = student_logits.shape[-1]
    student_rows, teacher_rows = student_logits.reshape(-1, num_classes), teacher_logits.reshape(-1, num_classes)
    if mask is None:
        return student_rows, teacher_rows
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor, got {getattr(mask, 'dtype', type(mask).__name__)}")
    if mask.shape != student_logits.shape[:-1] or not mask.any():
        raise ValueError(f"mask must have shape {tuple(student_logits.shape[:-1])} (the logits without their "
                         f"last dim) and select a position, got shape {tuple(mask.shape)}, {int(mask.sum())} selected")
    return student_rows[mask.reshape(-1)], teacher_rows[mask.reshape(-1)]


def _aligned(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, alpha: float,
             shift_labels: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Check the arguments of `distillation_objective`; logits and int64 labels, aligned (shifted for causal LMs)."""
    check_alpha(alpha)
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise TypeError(f"labels must be integer class indices, got {labels.dtype}")
    labels = (labels[..., 1:] if shift_labels else labels).long()  # int32 / uint8 labels too
    if shift_labels:
        student_logits, teacher_logits = student_logits[..., :-1, :], teacher_logits[..., :-1, :]
    if labels.shape != student_logits.shape[:-1]:
        raise ValueError(f"labels must have shape {tuple(student_logits.shape[:-1])} (the logits without their "
                         f"last dim), got {tuple(labels.shape)}")
    if not (labels != IGNORE_INDEX).any():
        raise ValueError("labels hold no labelled position (all are -100): there is nothing to learn from")
    return student_logits, teacher_logits, labels


def _check_number(name: str, value: Any, ok: Callable[[float], bool], bound: str) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    if not (math.isfinite(value) and ok(value)):
        raise ValueError(f"{name} must be a finite number {bound}, got {value}")


def check_positive(name: str, value: Any) -> None:
    """TypeError unless `value` is a real number (not a bool), ValueError unless it is finite and > 0."""
    _check_number(name, value, lambda v: v > 0, "> 0")


def check_non_negative(name: str, value: Any) -> None:
    """As `check_positive`, for >= 0."""
    _check_number(name, value, lambda v: v >= 0, ">= 0")


def check_alpha(alpha: Any) -> None:
    """As `check_positive`, for alpha in [0, 1]."""
    _check_number("alpha", alpha, lambda v: 0 <= v <= 1, "in [0, 1]")


def _check_logits(name: str, logits: Any) -> None:
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {getattr(logits, 'dtype', type(logits).__name__)}")
    if logits.dim() < 2 or logits.numel() == 0:
        raise ValueError(f"{name} must be a non-empty (..., num_classes) tensor of at least 2 dims, "
                         f"got shape {tuple(logits.shape)}: there is nothing to distil")
