"""Knowledge distillation (Hinton et al., 2015): train a small student to imitate a large teacher.

- `compute_distillation_loss` (Exercise 3a): the soft-target loss,
  KL(softmax(teacher / T) || softmax(student / T)) averaged over rows, times T**2.
- `distillation_objective` (Exercise 3b): alpha * KD + (1 - alpha) * cross-entropy of one batch.
- `distill_model` (Exercise 3b): an Adam loop over `(inputs, labels)` tuples or Hugging Face
  dict batches (`input_ids`, `attention_mask`, `labels`), with an optional extra loss.

It does not load data, evaluate, build students or compare intermediate layers: the toolkit
does (`toolkit.students`: `make_student`, hidden-state and attention losses through
`extra_loss`, `DistillationTrainer`). No mixed precision, one device.

Conventions: logits are `(..., num_classes)`, every leading position is one row (one
distribution over the last dimension); labels equal to -100 (`IGNORE_INDEX`, as
`F.cross_entropy` and `DataCollatorForLanguageModeling` use it) are left out of both terms.
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


# ---------------------------------------------------------------------------
# Argument checks
# ---------------------------------------------------------------------------

def _check_real(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")


def check_positive(name: str, value: Any) -> None:
    _check_real(name, value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value}")


def check_non_negative(name: str, value: Any) -> None:
    _check_real(name, value)
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")


def check_alpha(alpha: Any) -> None:
    _check_real("alpha", alpha)
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")


def _check_logits(name: str, logits: Any) -> None:
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(logits).__name__}")
    if not logits.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {logits.dtype}")
    if logits.dim() < 2:
        raise ValueError(f"{name} must have shape (..., num_classes) with at least 2 dims, got {tuple(logits.shape)}")
    if logits.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(logits.shape)}): there is nothing to distil")


# ---------------------------------------------------------------------------
# Exercise 3: the soft-target loss and the training loop
# ---------------------------------------------------------------------------

def compute_distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float,
    *,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Soft-target distillation loss: KL(softmax(t / T) || softmax(s / T)) * T**2.

    Every leading position is one row (one distribution over the last dimension).
    The KL divergence is summed over classes and averaged over rows ('batchmean'):
    for `(batch, classes)` logits this is exactly `F.kl_div(..., reduction='batchmean')`;
    for `(batch, seq, vocab)` logits the divisor is `batch * seq`, the number of
    positions, not `batch`. With `mask`, only the selected rows count, and the divisor
    is the number of selected rows. The `T**2` factor keeps gradient magnitudes
    comparable across temperatures. Identical logits give exactly 0.0. Guarantees: a teacher
    logit of -inf (probability 0) adds 0, even where the student's is -inf too; a student -inf
    where the teacher has mass gives +inf (the true KL); NaN gives NaN.

    Args:
        student_logits: floating tensor `(..., num_classes)`.
        teacher_logits: tensor of the same shape (usually computed under `no_grad`).
        temperature: softening temperature T, a finite number > 0.
        mask: optional bool tensor of shape `student_logits.shape[:-1]`; True marks
            the positions to include. It must select at least one position.

    Returns:
        0-d tensor in the logits' dtype, differentiable w.r.t. `student_logits`.

    Raises:
        TypeError: non-tensor or non-floating logits, non-bool mask, non-number temperature.
        ValueError: shapes differ, fewer than 2 dims, empty logits, temperature <= 0, a mask
            of the wrong shape or one that selects nothing.
    """
    _check_logits("student_logits", student_logits)
    _check_logits("teacher_logits", teacher_logits)
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student_logits and teacher_logits must have the same shape, "
            f"got {tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}"
        )
    check_positive("temperature", temperature)
    num_classes = student_logits.shape[-1]
    student_rows = student_logits.reshape(-1, num_classes)
    teacher_rows = teacher_logits.reshape(-1, num_classes)
    if mask is not None:
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            raise TypeError(f"mask must be a bool tensor, got {getattr(mask, 'dtype', type(mask).__name__)}")
        if mask.shape != student_logits.shape[:-1]:
            raise ValueError(
                f"mask must have shape {tuple(student_logits.shape[:-1])} (the logits without "
                f"their last dim), got {tuple(mask.shape)}"
            )
        if not mask.any():
            raise ValueError("mask selects no position: there is nothing to distil")
        student_rows = student_rows[mask.reshape(-1)]
        teacher_rows = teacher_rows[mask.reshape(-1)]
    # BEGIN SOLUTION (Exercise 3)
    # TODO: soften both distributions: log_softmax(logits / temperature) over the last dim.
    # TODO: KL(teacher || student) = sum over classes of p * (log p - log q), p the teacher's
    #       probabilities; a class with p == 0 adds 0 (0 * log 0 = 0, even where q == 0).
    # TODO: average over rows, multiply by temperature ** 2.
    student_log_probs = F.log_softmax(student_rows / temperature, dim=-1)
    teacher_log_probs = F.log_softmax(teacher_rows / temperature, dim=-1)
    teacher_probs = teacher_log_probs.exp()
    kl = torch.where(teacher_probs == 0, 0.0, teacher_probs * (teacher_log_probs - student_log_probs))
    return kl.sum() / len(kl) * temperature**2
    # END SOLUTION


def distillation_objective(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    alpha: float,
    *,
    shift_labels: bool = False,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The loss of one batch: alpha * KD + (1 - alpha) * CE, over the labelled positions.

    KD is `compute_distillation_loss` and CE the student's cross-entropy, both averaged
    over the positions whose label is not -100.

    Args:
        student_logits: floating tensor `(..., classes)`.
        teacher_logits: tensor of the same shape.
        labels: integer tensor (int32, int64, uint8, ...) of shape `logits.shape[:-1]`; -100 marks ignored positions.
        temperature: T > 0 of the KD term.
        alpha: weight in [0, 1] of the KD term; 1 - alpha weighs the CE term.
        shift_labels: True for causal LMs: logits at position t are scored against the
            label at t + 1 (as Hugging Face's causal LM loss does).

    Returns:
        `(loss, terms)`: the 0-d loss to backpropagate and detached 0-d 'kd' and 'ce'.

    Raises:
        TypeError: labels that are not integer class indices (float or bool).
        ValueError: alpha outside [0, 1], labels whose shape does not match the logits,
            no labelled position.
    """
    check_alpha(alpha)
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise TypeError(f"labels must be integer class indices, got {labels.dtype}")
    labels = _target_labels(labels, shift_labels).long()  # int32 / uint8 labels too
    if shift_labels:
        student_logits, teacher_logits = student_logits[..., :-1, :], teacher_logits[..., :-1, :]
    if labels.shape != student_logits.shape[:-1]:
        raise ValueError(
            f"labels must have shape {tuple(student_logits.shape[:-1])} (the logits without their "
            f"last dim), got {tuple(labels.shape)}"
        )
    mask = labels != IGNORE_INDEX
    # BEGIN SOLUTION (Exercise 3)
    # TODO: the soft-target term: compute_distillation_loss on the labelled positions (mask=mask).
    # TODO: the hard-label term: F.cross_entropy of the student's logits against the labels
    #       at the same positions (student_logits[mask], labels[mask]).
    # TODO: loss = alpha * KD + (1 - alpha) * CE.
    kd = compute_distillation_loss(student_logits, teacher_logits, temperature, mask=mask)
    ce = F.cross_entropy(student_logits[mask], labels[mask])
    loss = alpha * kd + (1 - alpha) * ce
    # END SOLUTION
    return loss, {"kd": kd.detach(), "ce": ce.detach()}


def model_logits(outputs: Any) -> torch.Tensor:
    """Logits of a plain module (a tensor) or of a Hugging Face output (`.logits`)."""
    if isinstance(outputs, torch.Tensor):
        return outputs
    logits = getattr(outputs, "logits", None)
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"model outputs must be a logits tensor or have .logits, got {type(outputs).__name__}")
    return logits


def _target_labels(labels: torch.Tensor, shift_labels: bool) -> torch.Tensor:
    """Labels aligned with the logits: a causal LM at position t predicts token t + 1."""
    return labels[..., 1:] if shift_labels else labels


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
    raise TypeError(
        "each batch must be an (inputs, labels) pair of tensors or a dict with 'labels', "
        f"got {type(batch).__name__}"
    )


def is_causal_lm(model: nn.Module) -> bool:
    """Whether `model` is a Hugging Face causal LM (its labels are shifted by one)."""
    return type(model).__name__ in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()


def teacher_and_student_outputs(teacher_model: nn.Module, student_model: nn.Module, batch: Batch) -> tuple[Any, Any]:
    """Run both models on one prepared batch: the teacher frozen, the student with gradients.

    Returns:
        `(student_outputs, teacher_outputs)`, whatever the models return (a logits tensor or a
        Hugging Face output); only the student's carry a graph.
    """
    # BEGIN SOLUTION (Exercise 3)
    # TODO: run the teacher under torch.no_grad(): teacher_model(*batch.args, **batch.kwargs).
    # TODO: run the student the same way, with gradients; return (student_outputs, teacher_outputs).
    with torch.no_grad():
        teacher_outputs = teacher_model(*batch.args, **batch.kwargs)
    return student_model(*batch.args, **batch.kwargs), teacher_outputs
    # END SOLUTION


def optimizer_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    """One training step on `loss`: gradients from this loss alone, then one optimizer update."""
    # BEGIN SOLUTION (Exercise 3)
    # TODO: zero the gradients, backpropagate the loss, step the optimizer.
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    # END SOLUTION


def batch_loss(
    teacher_model: nn.Module,
    student_model: nn.Module,
    batch: Batch,
    temperature: float,
    alpha: float,
    *,
    shift_labels: bool = False,
    extra_loss: Callable[[Any, Any, Any], Mapping[str, torch.Tensor]] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor], Any]:
    """The distillation loss of one prepared batch, as `distill_model` trains on it.

    Runs `teacher_and_student_outputs`, then `distillation_objective` on their logits, then adds
    the terms of `extra_loss(student_outputs, teacher_outputs, batch.inputs)` if given.

    Returns:
        `(loss, terms, student_outputs)`: the 0-d loss, the detached 0-d terms ('kd', 'ce' and
        `extra_loss`'s), and the student's outputs.
    """
    student_outputs, teacher_outputs = teacher_and_student_outputs(teacher_model, student_model, batch)
    loss, terms = distillation_objective(
        model_logits(student_outputs), model_logits(teacher_outputs), batch.labels, temperature, alpha,
        shift_labels=shift_labels,
    )
    if extra_loss is not None:
        extra = extra_loss(student_outputs, teacher_outputs, batch.inputs)
        loss = loss + sum(extra.values())
        terms.update({name: value.detach() for name, value in extra.items()})
    return loss, terms, student_outputs


def _check_finite(loss: torch.Tensor, epoch: int, num_epochs: int, batch_index: int) -> None:
    """Stop before a non-finite loss reaches the weights."""
    if not torch.isfinite(loss):
        raise FloatingPointError(
            f"distillation loss is {loss.item()} at epoch {epoch + 1}/{num_epochs}, batch {batch_index + 1}; "
            "check the inputs or lower the learning rate"
        )


def distill_model(
    teacher_model: nn.Module,
    student_model: nn.Module,
    train_data: Iterable,
    temperature: float,
    alpha: float,
    num_epochs: int,
    learning_rate: float,
    *,
    device: torch.device | str | None = None,
    progress: bool = True,
    extra_loss: Callable[[Any, Any, Any], Mapping[str, torch.Tensor]] | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    history: list[dict[str, float]] | None = None,
    optimizer: Callable[[list[nn.Parameter], float], torch.optim.Optimizer] | None = None,
    lr_schedule: Callable[[int], float] | None = None,
    max_grad_norm: float | None = None,
) -> tuple[nn.Module, list[float]]:
    """Train `student_model` with Adam to match `teacher_model`.

    Each batch: the teacher runs in eval mode under `torch.no_grad()` (its weights never
    change), the student with gradients, and one Adam step minimises
    `distillation_objective` plus the terms of `extra_loss`. A batch with no labelled
    position is skipped. Batches are `(inputs, labels)` tensor pairs (`model(inputs)` gives
    logits) or Hugging Face dict batches with 'labels' (logits from `.logits`); causal LMs
    get their labels shifted by one, as in Hugging Face's own loss.

    Args:
        teacher_model: the trained model to imitate.
        student_model: the model to train, in place.
        train_data: re-iterable (a list, a DataLoader) of batches, iterated once per epoch.
        temperature: KD temperature T > 0.
        alpha: weight in [0, 1] of the KD term.
        num_epochs: number of passes over `train_data`, an int >= 1.
        learning_rate: Adam learning rate > 0.
        device: where to train; default the student's device. Both models are moved there.
        progress: show a tqdm bar per epoch with the running mean of each term.
        extra_loss: optional `extra_loss(student_outputs, teacher_outputs, inputs)` returning a
            dict of 0-d tensors added to the loss (`inputs`: the input tensor or the dict batch
            without labels). If it is an `nn.Module`, its parameters are trained too.
        model_kwargs: keyword arguments for both models' forward, e.g. `output_hidden_states=True`.
        history: if given, a list that gets one dict per epoch with the mean of each term.
        optimizer: optional `optimizer(parameters, learning_rate)` -> the optimizer; default plain Adam.
        lr_schedule: optional `lr_schedule(step)` -> multiplier of `learning_rate` (a `LambdaLR`
            stepped after each optimizer step).
        max_grad_norm: optional > 0: the gradients' total 2-norm is clipped to it before each step.

    Returns:
        `(student_model, epoch_losses)`: the trained student (same object, back in the mode it
        came in) and `num_epochs` Python floats, the mean loss of each epoch's batches.

    Raises:
        TypeError: a model is not an `nn.Module`, a batch is neither a pair nor a dict, a
            hyperparameter has the wrong type.
        ValueError: a hyperparameter out of range, the same object as teacher and student, a
            dict batch without 'labels', an epoch without any labelled position.
        FloatingPointError: a NaN or infinite loss, naming the epoch and the batch (1-based).
    """
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

    device = torch.device(device) if device is not None else next(student_model.parameters()).device
    student_model.to(device)
    teacher_model.to(device).eval()
    parameters = list(student_model.parameters())
    if isinstance(extra_loss, nn.Module):
        parameters += list(extra_loss.to(device).parameters())
    optimizer = (optimizer or torch.optim.Adam)(parameters, learning_rate)
    if max_grad_norm is not None:  # the hook runs inside optimizer_step, between backward and step
        def clip_gradients(*_) -> None:
            torch.nn.utils.clip_grad_norm_(parameters, max_grad_norm)
        optimizer.register_step_pre_hook(clip_gradients)
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
                if not (_target_labels(batch.labels, shift_labels) != IGNORE_INDEX).any():
                    continue
                loss, terms, _ = batch_loss(teacher_model, student_model, batch, temperature, alpha,
                                            shift_labels=shift_labels, extra_loss=extra_loss)
                _check_finite(loss, epoch, num_epochs, batch_index)
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
