"""Knowledge distillation: train a small student to imitate a large teacher.

What it does
- `compute_distillation_loss` (Exercise 4): the soft-target loss of Hinton et al.,
  KL(softmax(teacher / T) || softmax(student / T)) averaged over rows, times T**2.
- `distillation_objective`: the per-batch loss shared by every training loop here,
  alpha * KD + (1 - alpha) * cross-entropy, plus optional intermediate-layer terms.
- `distill_model` (Exercise 5): a plain Adam loop over `(inputs, labels)` tuples or
  Hugging Face dict batches (`input_ids`, `attention_mask`, `labels`).
- `make_student`: a shallower copy of a Hugging Face teacher (BERT, DistilBERT, Llama)
  initialised DistilBERT-style from evenly spaced teacher layers.
- `hidden_state_loss`, `attention_loss`: DistilBERT's cosine and TinyBERT's MSE
  losses on hidden states and attention maps.
- `DistillationTrainer`: the same objective inside `transformers.Trainer`.

What it does not do
- No data loading or evaluation (see `evaluation.py`), no mixed precision, no
  multi-GPU: the loops run on one device.
- Attention maps are compared as probabilities (what Hugging Face returns), not as
  TinyBERT's pre-softmax scores.

Conventions
- Logits are `(..., num_classes)`: every leading position (a sentence of a batch,
  or a token of a sequence) is one row, one distribution over the last dimension.
- Labels equal to -100 (`IGNORE_INDEX`, as `DataCollatorForLanguageModeling` and
  `F.cross_entropy` use it) mark positions left out of both loss terms.
- A layer map sends student layer i to teacher layer `layer_map[i]` (0-based).
"""
from __future__ import annotations

import copy
import math
import numbers
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
import transformers
from tqdm.auto import tqdm
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

IGNORE_INDEX = -100
HIDDEN_KINDS = ("mse", "cosine")

# Where each supported architecture keeps its list of transformer layers, relative
# to its base model (`model.base_model`), keyed by `config.model_type`.
_LAYER_LISTS = {"bert": "encoder.layer", "distilbert": "transformer.layer", "llama": "layers"}


# ---------------------------------------------------------------------------
# Argument checks
# ---------------------------------------------------------------------------

def _check_real(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")


def _check_positive(name: str, value: Any) -> None:
    _check_real(name, value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value}")


def _check_non_negative(name: str, value: Any) -> None:
    _check_real(name, value)
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")


def _check_alpha(alpha: Any) -> None:
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


# ---------------------------------------------------------------------------
# Exercise 4: the soft-target loss
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
    comparable across temperatures. Identical logits give exactly 0.0.

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
        ValueError: shapes differ, fewer than 2 dims, temperature <= 0, a mask of the
            wrong shape or one that selects nothing.
    """
    _check_logits("student_logits", student_logits)
    _check_logits("teacher_logits", teacher_logits)
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student_logits and teacher_logits must have the same shape, "
            f"got {tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}"
        )
    _check_positive("temperature", temperature)
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
    # BEGIN SOLUTION (Exercise 4)
    # TODO: soften both distributions: log_softmax(logits / temperature) over the last dim.
    # TODO: KL(teacher || student) with F.kl_div(student_log_probs, teacher_log_probs,
    #       reduction='batchmean', log_target=True): summed over classes, averaged over rows.
    # TODO: multiply by temperature ** 2.
    student_log_probs = F.log_softmax(student_rows / temperature, dim=-1)
    teacher_log_probs = F.log_softmax(teacher_rows / temperature, dim=-1)
    kl = F.kl_div(student_log_probs, teacher_log_probs, reduction="batchmean", log_target=True)
    return kl * temperature**2
    # END SOLUTION


# ---------------------------------------------------------------------------
# Intermediate-layer losses
# ---------------------------------------------------------------------------

def evenly_spaced_layers(num_teacher_layers: int, num_student_layers: int) -> list[int]:
    """Teacher layer (0-based) for each student layer: evenly spaced, ends included.

    Student layer i takes teacher layer `round(i * (L - 1) / (n - 1))`, rounded half
    up, for n >= 2 student and L teacher layers: the first student layer is the first
    teacher layer, the last is the last. A single student layer takes the teacher's
    last layer (the one the output head was trained on). Example: L=12, n=6 gives
    [0, 2, 4, 7, 9, 11]; n == L gives the identity. `make_student` initialises from
    these layers and `distill_model` uses them as its default `layer_map`.

    Raises:
        TypeError: a count is not an int.
        ValueError: a count is < 1, or the student would have more layers.
    """
    for name, value in (("num_teacher_layers", num_teacher_layers), ("num_student_layers", num_student_layers)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if num_teacher_layers < 1:
        raise ValueError(f"num_teacher_layers must be >= 1, got {num_teacher_layers}")
    if not 1 <= num_student_layers <= num_teacher_layers:
        raise ValueError(
            f"the student's layer count must be in [1, {num_teacher_layers}] (the teacher's), "
            f"got {num_student_layers}"
        )
    if num_student_layers == 1:
        return [num_teacher_layers - 1]
    span, steps = num_teacher_layers - 1, num_student_layers - 1
    # Integer round-half-up of i * span / steps.
    return [(2 * i * span + steps) // (2 * steps) for i in range(num_student_layers)]


def _layer_pairs(layer_map: Mapping[int, int] | Sequence[int], num_student: int, num_teacher: int) -> list[tuple[int, int]]:
    """Validated (student index, teacher index) pairs from a dict or a list."""
    if isinstance(layer_map, Mapping):
        pairs = list(layer_map.items())
    elif isinstance(layer_map, Sequence) and not isinstance(layer_map, str):
        pairs = list(enumerate(layer_map))
    else:
        raise TypeError(f"layer_map must be a dict or a list of ints, got {type(layer_map).__name__}")
    if not pairs:
        raise ValueError("layer_map is empty: name at least one student layer")
    for student, teacher in pairs:
        for index in (student, teacher):
            if isinstance(index, bool) or not isinstance(index, int):
                raise TypeError(f"layer_map entries must be ints, got {student!r}: {teacher!r}")
        if not 0 <= student < num_student:
            raise ValueError(f"layer_map names student layer {student}, but the student has {num_student} layers")
        if not 0 <= teacher < num_teacher:
            raise ValueError(f"layer_map names teacher layer {teacher}, but the teacher has {num_teacher} layers")
    return pairs


def _position_mask(attention_mask: torch.Tensor | None, positions: torch.Size) -> torch.Tensor | None:
    """Bool mask of real (non-padding) positions, checked against the leading shape."""
    if attention_mask is None:
        return None
    if attention_mask.shape != positions:
        raise ValueError(f"attention_mask must have shape {tuple(positions)}, got {tuple(attention_mask.shape)}")
    mask = attention_mask.bool()
    if not mask.any():
        raise ValueError("attention_mask marks no real position")
    return mask


def hidden_state_loss(
    student_hidden: Sequence[torch.Tensor],
    teacher_hidden: Sequence[torch.Tensor],
    layer_map: Mapping[int, int] | Sequence[int],
    projection: nn.Module | None = None,
    kind: str = "mse",
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sum over mapped layers of a hidden-state matching loss (TinyBERT / DistilBERT).

    For each pair `i -> layer_map[i]` the student's `student_hidden[i]` (after
    `projection`, if given) is compared with `teacher_hidden[layer_map[i]]`:
    - 'mse': squared error averaged over the width, then over real positions
      (equals `F.mse_loss` when nothing is padded) - TinyBERT;
    - 'cosine': `1 - cos(student, teacher)` along the width, averaged over real
      positions - DistilBERT's cosine embedding loss.
    The per-layer losses are summed. Indices refer to the sequences as given: pass
    `outputs.hidden_states[1:]` for transformer layers 0..L-1 (index 0 of Hugging
    Face's tuple is the embedding output), or the full tuple to include embeddings.

    Args:
        student_hidden: sequence of `(..., width_s)` tensors (one state per leading position), e.g.
            `(batch, seq, width_s)`.
        teacher_hidden: sequence of tensors with the same leading shape and width `width_t`.
        layer_map: dict `{student index: teacher index}`, or a list whose i-th entry is
            the teacher index of student index i.
        projection: a module (usually a learned `nn.Linear(width_s, width_t)`) applied to
            the student's states; required when the widths differ.
        kind: 'mse' or 'cosine'.
        attention_mask: optional `(batch, seq)` tensor (1/True = real token) matching the
            leading shape; padded positions are left out.

    Returns:
        0-d float tensor, differentiable w.r.t. the student states and the projection.

    Raises:
        TypeError: a bad `layer_map` type or a projection that is not an `nn.Module`.
        ValueError: unknown kind, a layer index outside either sequence, leading shapes
            that differ, widths that differ after the projection, a mask of the wrong shape.
    """
    if kind not in HIDDEN_KINDS:
        raise ValueError(f"kind must be one of {HIDDEN_KINDS}, got {kind!r}")
    if projection is not None and not isinstance(projection, nn.Module):
        raise TypeError(f"projection must be an nn.Module (e.g. nn.Linear), got {type(projection).__name__}")
    total = None
    for student_index, teacher_index in _layer_pairs(layer_map, len(student_hidden), len(teacher_hidden)):
        student, teacher = student_hidden[student_index], teacher_hidden[teacher_index]
        if student.shape[:-1] != teacher.shape[:-1]:
            raise ValueError(
                f"hidden states of student layer {student_index} and teacher layer {teacher_index} differ in "
                f"leading shape: {tuple(student.shape)} vs {tuple(teacher.shape)}"
            )
        if projection is not None:
            student = projection(student)
        if student.shape[-1] != teacher.shape[-1]:
            hint = "the projection's output width" if projection is not None else "pass a projection nn.Linear"
            raise ValueError(
                f"hidden widths differ: student {student.shape[-1]} vs teacher {teacher.shape[-1]} "
                f"(student layer {student_index} -> teacher layer {teacher_index}); check {hint}"
            )
        if kind == "mse":
            per_position = (student - teacher).pow(2).mean(dim=-1)
        else:
            per_position = 1 - F.cosine_similarity(student, teacher, dim=-1)
        mask = _position_mask(attention_mask, per_position.shape)
        layer_loss = per_position.mean() if mask is None else per_position[mask].mean()
        total = layer_loss if total is None else total + layer_loss
    return total


def _match_heads(student: torch.Tensor, teacher: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Bring `(batch, heads, q, k)` maps to a common head count.

    Equal counts: unchanged. Teacher heads a multiple of the student's: consecutive
    groups of teacher heads are averaged (group g = heads g*k .. g*k+k-1). Otherwise
    both sides are averaged over all their heads and compared as one map.
    """
    student_heads, teacher_heads = student.shape[1], teacher.shape[1]
    if student_heads == teacher_heads:
        return student, teacher
    if teacher_heads % student_heads == 0:
        return student, teacher.unflatten(1, (student_heads, teacher_heads // student_heads)).mean(dim=2)
    return student.mean(dim=1, keepdim=True), teacher.mean(dim=1, keepdim=True)


def attention_loss(
    student_attentions: Sequence[torch.Tensor],
    teacher_attentions: Sequence[torch.Tensor],
    layer_map: Mapping[int, int] | Sequence[int],
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sum over mapped layers of the MSE between attention maps (TinyBERT).

    For each pair `i -> layer_map[i]`, the maps `(batch, heads, seq, seq)` are brought
    to a common head count (see below) and the squared difference is averaged over
    heads and over the (query, key) pairs where both tokens are real; the per-layer
    values are summed. Head counts: equal counts compare head by head; when the
    teacher's count is a multiple of the student's, each student head is compared
    with the mean of its group of consecutive teacher heads (a 1-head student gets
    the mean of all teacher heads); otherwise both sides are averaged over all heads.
    Pass Hugging Face's `outputs.attentions` (index i is layer i; they need
    `attn_implementation='eager'`).

    Args:
        student_attentions: sequence of `(batch, heads_s, seq, seq)` tensors.
        teacher_attentions: sequence of `(batch, heads_t, seq, seq)` tensors.
        layer_map: dict `{student layer: teacher layer}` or a list (i-th entry for layer i).
        attention_mask: optional `(batch, seq)` tensor, 1/True = real token.

    Returns:
        0-d float tensor, differentiable w.r.t. the student's maps.

    Raises:
        TypeError: a bad `layer_map` type.
        ValueError: a layer index outside either sequence, maps that are not 4-D or
            whose batch/sequence sizes differ, a mask of the wrong shape.
    """
    total = None
    for student_index, teacher_index in _layer_pairs(layer_map, len(student_attentions), len(teacher_attentions)):
        student, teacher = student_attentions[student_index], teacher_attentions[teacher_index]
        if student.dim() != 4 or teacher.dim() != 4 or (
            (student.shape[0], *student.shape[2:]) != (teacher.shape[0], *teacher.shape[2:])
        ):
            raise ValueError(
                f"attention maps must be (batch, heads, seq, seq) with equal batch and seq sizes, got "
                f"{tuple(student.shape)} (student layer {student_index}) and {tuple(teacher.shape)} "
                f"(teacher layer {teacher_index})"
            )
        student, teacher = _match_heads(student, teacher)
        per_pair = (student - teacher).pow(2).mean(dim=1)  # (batch, query, key)
        mask = _position_mask(attention_mask, per_pair.shape[:2])
        if mask is None:
            layer_loss = per_pair.mean()
        else:
            layer_loss = per_pair[mask[:, :, None] & mask[:, None, :]].mean()
        total = layer_loss if total is None else total + layer_loss
    return total


# ---------------------------------------------------------------------------
# The per-batch objective shared by distill_model and DistillationTrainer
# ---------------------------------------------------------------------------

def _logits(outputs: Any) -> torch.Tensor:
    """Logits of a plain module (a tensor) or of a Hugging Face output (`.logits`)."""
    if isinstance(outputs, torch.Tensor):
        return outputs
    logits = getattr(outputs, "logits", None)
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"model outputs must be a logits tensor or have .logits, got {type(outputs).__name__}")
    return logits


def _layer_outputs(outputs: Any, name: str) -> Sequence[torch.Tensor]:
    """Per-layer `hidden_states` (embedding output dropped) or `attentions` of a HF output."""
    values = getattr(outputs, name, None)
    if not values:
        hint = " (attentions need attn_implementation='eager')" if name == "attentions" else ""
        raise ValueError(f"the model outputs carry no {name}: run the model with output_{name}=True{hint}")
    return values[1:] if name == "hidden_states" else values


def _target_labels(labels: torch.Tensor, shift_labels: bool) -> torch.Tensor:
    """Labels aligned with the logits: a causal LM at position t predicts token t + 1."""
    return labels[..., 1:] if shift_labels else labels


def distillation_objective(
    student_outputs: Any,
    teacher_outputs: Any,
    labels: torch.Tensor,
    temperature: float,
    alpha: float,
    *,
    hidden_weight: float = 0.0,
    attention_weight: float = 0.0,
    layer_map: Mapping[int, int] | Sequence[int] | None = None,
    hidden_kind: str = "mse",
    projection: nn.Module | None = None,
    attention_mask: torch.Tensor | None = None,
    shift_labels: bool = False,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The distillation loss of one batch, used by `distill_model` and `DistillationTrainer`.

    loss = alpha * KD + (1 - alpha) * CE
           + hidden_weight * hidden_state_loss + attention_weight * attention_loss

    KD is `compute_distillation_loss` and CE the student's cross-entropy, both over
    the positions whose label is not -100 (a mean over those positions). The two
    intermediate terms are computed only when their weight is non-zero, over the
    transformer layers (`outputs.hidden_states[1:]`, `outputs.attentions`) with
    padding excluded through `attention_mask`.

    Args:
        student_outputs: the student's output: a logits tensor `(..., classes)` or a
            Hugging Face output with `.logits` (and `.hidden_states` / `.attentions`
            when the matching weight is non-zero).
        teacher_outputs: the teacher's output, same kind and logits shape.
        labels: int64 tensor of shape `logits.shape[:-1]`; -100 marks ignored positions.
        temperature: T > 0 of the KD term.
        alpha: weight in [0, 1] of the KD term; 1 - alpha weighs the CE term.
        hidden_weight, attention_weight: weights >= 0 of the intermediate terms.
        layer_map: student layer -> teacher layer (dict or list); default
            `evenly_spaced_layers(teacher layers, student layers)`.
        hidden_kind: 'mse' (TinyBERT) or 'cosine' (DistilBERT).
        projection: module mapping student hidden width to the teacher's.
        attention_mask: `(batch, seq)`, 1 = real token; used by the intermediate terms.
        shift_labels: True for causal LMs: logits at position t are scored against
            the label at t + 1 (as Hugging Face's causal LM loss does).

    Returns:
        `(loss, terms)`: the 0-d loss tensor to backpropagate, and a dict of detached
        0-d tensors 'kd', 'ce' (and 'hidden', 'attention' when their weights are non-zero).

    Raises:
        ValueError: bad weights, labels whose shape does not match the logits, a batch
            with no labelled position, outputs lacking the requested hidden states or attentions.
    """
    _check_alpha(alpha)
    _check_non_negative("hidden_weight", hidden_weight)
    _check_non_negative("attention_weight", attention_weight)
    student_logits, teacher_logits = _logits(student_outputs), _logits(teacher_outputs)
    labels = _target_labels(labels, shift_labels)
    if shift_labels:
        student_logits, teacher_logits = student_logits[..., :-1, :], teacher_logits[..., :-1, :]
    if labels.shape != student_logits.shape[:-1]:
        raise ValueError(
            f"labels must have shape {tuple(student_logits.shape[:-1])} (the logits without their "
            f"last dim), got {tuple(labels.shape)}"
        )
    mask = labels != IGNORE_INDEX
    # BEGIN SOLUTION (Exercise 5)
    # TODO: the soft-target term: compute_distillation_loss on the labelled positions (mask=mask).
    # TODO: the hard-label term: F.cross_entropy of the student's logits against the labels
    #       at the same positions (student_logits[mask], labels[mask]).
    # TODO: loss = alpha * KD + (1 - alpha) * CE.
    kd = compute_distillation_loss(student_logits, teacher_logits, temperature, mask=mask)
    ce = F.cross_entropy(student_logits[mask], labels[mask])
    loss = alpha * kd + (1 - alpha) * ce
    # END SOLUTION
    terms = {"kd": kd.detach(), "ce": ce.detach()}
    if layer_map is None and (hidden_weight or attention_weight):
        # Layer counts come from the outputs, so the default map needs no model.
        name = "hidden_states" if hidden_weight else "attentions"
        layer_map = evenly_spaced_layers(
            len(_layer_outputs(teacher_outputs, name)), len(_layer_outputs(student_outputs, name))
        )
    if hidden_weight:
        hidden = hidden_state_loss(
            _layer_outputs(student_outputs, "hidden_states"), _layer_outputs(teacher_outputs, "hidden_states"),
            layer_map, projection=projection, kind=hidden_kind, attention_mask=attention_mask,
        )
        loss = loss + hidden_weight * hidden
        terms["hidden"] = hidden.detach()
    if attention_weight:
        attention = attention_loss(
            _layer_outputs(student_outputs, "attentions"), _layer_outputs(teacher_outputs, "attentions"),
            layer_map, attention_mask=attention_mask,
        )
        loss = loss + attention_weight * attention
        terms["attention"] = attention.detach()
    return loss, terms


# ---------------------------------------------------------------------------
# Training-loop scaffolding
# ---------------------------------------------------------------------------

class _Batch(NamedTuple):
    """One batch ready for `model(*args, **kwargs)`, with its labels split off."""

    args: tuple
    kwargs: dict
    labels: torch.Tensor
    attention_mask: torch.Tensor | None


def _prepare_batch(batch: Any, device: torch.device, flags: dict[str, bool]) -> _Batch:
    """Unpack a `(inputs, labels)` tuple or a dict batch and move it to `device`."""
    if isinstance(batch, Mapping):  # dicts and transformers' BatchEncoding
        if "labels" not in batch:
            raise ValueError(f"a dict batch needs a 'labels' entry, got keys {sorted(batch)}")
        moved = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        labels = moved.pop("labels")
        return _Batch((), {**moved, **flags}, labels, moved.get("attention_mask"))
    if isinstance(batch, (tuple, list)) and len(batch) == 2 and all(isinstance(x, torch.Tensor) for x in batch):
        inputs, labels = batch
        return _Batch((inputs.to(device),), dict(flags), labels.to(device), None)
    raise TypeError(
        "each batch must be an (inputs, labels) pair of tensors or a dict with 'labels', "
        f"got {type(batch).__name__}"
    )


def _output_flags(hidden_weight: float, attention_weight: float) -> dict[str, bool]:
    """Model keyword arguments that return what the intermediate terms need."""
    flags = {}
    if hidden_weight:
        flags["output_hidden_states"] = True
    if attention_weight:
        flags["output_attentions"] = True
    return flags


def _use_eager_attention(model: nn.Module) -> str | None:
    """Switch a HF model to eager attention (the only kind that returns maps).

    Returns the previous implementation when it changed, else None.
    """
    previous = model.config._attn_implementation
    if previous == "eager":
        return None
    model.set_attn_implementation("eager")
    return previous


def _width_projection(student: nn.Module, teacher: nn.Module, device: torch.device) -> nn.Linear | None:
    """A learned `nn.Linear(student width, teacher width)` when the hidden widths differ."""
    student_width, teacher_width = student.config.hidden_size, teacher.config.hidden_size
    if student_width == teacher_width:
        return None
    return nn.Linear(student_width, teacher_width, device=device)


def _is_causal_lm(model: nn.Module) -> bool:
    """Whether `model` is a Hugging Face causal LM (its labels are shifted by one)."""
    return type(model).__name__ in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()


def _check_distillation_args(
    teacher_model: Any,
    student_model: Any,
    temperature: Any,
    alpha: Any,
    hidden_weight: Any,
    attention_weight: Any,
    hidden_kind: Any,
) -> None:
    """The argument checks shared by `distill_model` and `DistillationTrainer`."""
    _check_non_negative("hidden_weight", hidden_weight)
    _check_non_negative("attention_weight", attention_weight)
    for name, model in (("teacher_model", teacher_model), ("student_model", student_model)):
        if not isinstance(model, nn.Module):
            raise TypeError(f"{name} must be an nn.Module, got {type(model).__name__}")
        if (hidden_weight or attention_weight) and not isinstance(model, transformers.PreTrainedModel):
            raise TypeError(
                f"hidden_weight/attention_weight need Hugging Face models (hidden states, attentions); "
                f"{name} is a {type(model).__name__}"
            )
    if teacher_model is student_model:
        raise ValueError("teacher_model and student_model are the same object: the teacher would be trained")
    _check_positive("temperature", temperature)
    _check_alpha(alpha)
    if hidden_kind not in HIDDEN_KINDS:
        raise ValueError(f"hidden_kind must be one of {HIDDEN_KINDS}, got {hidden_kind!r}")


def _check_finite(loss: torch.Tensor, epoch: int, num_epochs: int, batch_index: int) -> None:
    """Stop before a non-finite loss reaches the weights."""
    if not torch.isfinite(loss):
        raise FloatingPointError(
            f"distillation loss is {loss.item()} at epoch {epoch + 1}/{num_epochs}, batch {batch_index + 1}; "
            "check the inputs or lower the learning rate"
        )


# ---------------------------------------------------------------------------
# Exercise 5: the training loop
# ---------------------------------------------------------------------------

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
    hidden_weight: float = 0.0,
    attention_weight: float = 0.0,
    layer_map: Mapping[int, int] | Sequence[int] | None = None,
    hidden_kind: str = "mse",
    history: list[dict[str, float]] | None = None,
) -> tuple[nn.Module, list[float]]:
    """Train `student_model` with Adam to match `teacher_model`.

    Each batch: the teacher runs in eval mode under `torch.no_grad()` (its weights
    never change), the student runs with gradients, and one Adam step minimises
    `distillation_objective`: alpha * KD + (1 - alpha) * CE (plus the weighted
    intermediate terms when `hidden_weight` / `attention_weight` are non-zero), over
    the positions whose label is not -100. A batch with no labelled position is
    skipped (no step, not averaged).

    Batches are `(inputs, labels)` tensor pairs for plain modules (`logits = model(inputs)`),
    or Hugging Face dict batches (`input_ids`, `attention_mask`, `labels`, ... as
    `DataCollatorForLanguageModeling` yields them; logits from `.logits`, of shape
    `(batch, seq, vocab)` for language models). For causal LMs the labels are
    shifted by one, as in Hugging Face's own loss.

    With `hidden_weight` > 0 the models run with `output_hidden_states=True`; with
    `attention_weight` > 0 with `output_attentions=True`, switched to eager attention
    for the call and switched back afterwards. When hidden widths differ a learned
    `nn.Linear` projection is created and trained with the student, then discarded.

    Args:
        teacher_model: the trained model to imitate.
        student_model: the model to train, in place.
        train_data: re-iterable (a list, a DataLoader) of batches, iterated once per epoch.
        temperature: KD temperature T > 0.
        alpha: weight in [0, 1] of the KD term.
        num_epochs: number of passes over `train_data`, an int >= 1.
        learning_rate: Adam learning rate > 0.
        device: where to train; default the student's device. Both models are moved there.
        progress: show a tqdm bar per epoch; its postfix shows the running mean of each
            loss term ('loss', 'kd', 'ce', 'hidden', 'attention'), so the finished bar
            is that epoch's log.
        hidden_weight: weight >= 0 of `hidden_state_loss` (Hugging Face models only).
        attention_weight: weight >= 0 of `attention_loss` (Hugging Face models only).
        layer_map: student layer -> teacher layer for the intermediate terms; default
            `evenly_spaced_layers`, the rule `make_student` initialises with.
        hidden_kind: 'mse' (TinyBERT) or 'cosine' (DistilBERT) for the hidden term.
        history: if given, a list that gets one dict per epoch with the mean of each
            term: 'loss', 'kd', 'ce', and 'hidden' / 'attention' when enabled.

    Returns:
        `(student_model, epoch_losses)`: the trained student (same object, back in the
        train/eval mode it came in) and a list of `num_epochs` Python floats, the mean
        total loss of each epoch's batches (each computed before its optimizer step).

    Raises:
        TypeError: a model is not an `nn.Module` (or not a Hugging Face model while an
            intermediate weight is non-zero), a batch is neither a pair nor a dict,
            a hyperparameter has the wrong type.
        ValueError: temperature <= 0, alpha outside [0, 1], num_epochs < 1,
            learning_rate <= 0, a negative weight, an unknown `hidden_kind`, the same
            object as teacher and student, a dict batch without 'labels', an epoch
            without any labelled position.
        FloatingPointError: a NaN or infinite loss, naming the epoch and the batch (1-based).
    """
    _check_distillation_args(
        teacher_model, student_model, temperature, alpha, hidden_weight, attention_weight, hidden_kind
    )
    if isinstance(num_epochs, bool) or not isinstance(num_epochs, int):
        raise TypeError(f"num_epochs must be an int, got {type(num_epochs).__name__}")
    if num_epochs < 1:
        raise ValueError(f"num_epochs must be >= 1, got {num_epochs}")
    _check_positive("learning_rate", learning_rate)

    device = torch.device(device) if device is not None else next(student_model.parameters()).device
    student_model.to(device)
    teacher_model.to(device).eval()
    projection = _width_projection(student_model, teacher_model, device) if hidden_weight else None
    parameters = list(student_model.parameters()) + (list(projection.parameters()) if projection else [])
    optimizer = torch.optim.Adam(parameters, lr=learning_rate)
    flags = _output_flags(hidden_weight, attention_weight)
    shift_labels = _is_causal_lm(student_model)
    options = dict(
        hidden_weight=hidden_weight, attention_weight=attention_weight, layer_map=layer_map,
        hidden_kind=hidden_kind, projection=projection, shift_labels=shift_labels,
    )
    restore = {}
    if attention_weight:
        restore = {model: _use_eager_attention(model) for model in (teacher_model, student_model)}
    was_training = student_model.training
    student_model.train()
    epoch_losses = []
    try:
        for epoch in range(num_epochs):
            sums, count = {}, 0
            bar = tqdm(train_data, desc=f"epoch {epoch + 1}/{num_epochs}", disable=not progress)
            for batch_index, raw_batch in enumerate(bar):
                batch = _prepare_batch(raw_batch, device, flags)
                if not (_target_labels(batch.labels, shift_labels) != IGNORE_INDEX).any():
                    continue
                # BEGIN SOLUTION (Exercise 5)
                # TODO: run the teacher under torch.no_grad(): teacher_model(*batch.args, **batch.kwargs).
                # TODO: run the student the same way, with gradients.
                # TODO: loss, terms = distillation_objective(student_outputs, teacher_outputs, batch.labels,
                #           temperature, alpha, attention_mask=batch.attention_mask, **options)
                with torch.no_grad():
                    teacher_outputs = teacher_model(*batch.args, **batch.kwargs)
                student_outputs = student_model(*batch.args, **batch.kwargs)
                loss, terms = distillation_objective(
                    student_outputs, teacher_outputs, batch.labels, temperature, alpha,
                    attention_mask=batch.attention_mask, **options,
                )
                # END SOLUTION
                _check_finite(loss, epoch, num_epochs, batch_index)
                # BEGIN SOLUTION (Exercise 5)
                # TODO: one Adam step: zero the gradients, backpropagate the loss, step.
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                # END SOLUTION
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
        for model, previous in restore.items():
            if previous is not None:
                model.set_attn_implementation(previous)
    return student_model, epoch_losses


# ---------------------------------------------------------------------------
# Students
# ---------------------------------------------------------------------------

def make_student(teacher: transformers.PreTrainedModel, num_layers: int) -> transformers.PreTrainedModel:
    """A shallower model of the teacher's class, initialised from the teacher (DistilBERT-style).

    The student has the teacher's configuration with `num_layers` transformer layers
    (`config.num_hidden_layers` updated). Its layer i is a copy of teacher layer
    `evenly_spaced_layers(L, num_layers)[i]`; every other weight (embeddings, final
    norm, output head) is copied unchanged. With `num_layers == L` the student
    computes exactly the teacher's function. The student is placed on the teacher's
    device and dtype, in the teacher's train/eval mode; the teacher is not modified.
    Supported: BERT, DistilBERT and Llama models (any head).

    Args:
        teacher: a Hugging Face model of a supported architecture.
        num_layers: the student's layer count, 1 <= num_layers <= the teacher's.

    Returns:
        A new model of `type(teacher)`.

    Raises:
        TypeError: the teacher is not a supported Hugging Face model, or num_layers is not an int.
        ValueError: num_layers < 1 or more than the teacher's.
    """
    model_type = getattr(getattr(teacher, "config", None), "model_type", None)
    if not isinstance(teacher, transformers.PreTrainedModel) or model_type not in _LAYER_LISTS:
        raise TypeError(
            f"make_student supports Hugging Face models of types {sorted(_LAYER_LISTS)}, "
            f"got {type(teacher).__name__}"
        )
    layer_map = evenly_spaced_layers(teacher.config.num_hidden_layers, num_layers)
    config = copy.deepcopy(teacher.config)
    config.num_hidden_layers = num_layers
    if getattr(config, "layer_types", None) is not None:  # per-layer settings follow their layers
        config.layer_types = [config.layer_types[j] for j in layer_map]
    reference = next(teacher.parameters())
    student = type(teacher)(config).to(device=reference.device, dtype=reference.dtype)

    # Copy weights by state-dict key; keys under the layer list are renumbered
    # student index -> teacher index, so per-layer attributes (e.g. Llama's layer_idx)
    # stay those of the student's own layers.
    base = "" if teacher.base_model is teacher else f"{teacher.base_model_prefix}."
    layers = f"{base}{_LAYER_LISTS[model_type]}"
    pattern = re.compile(rf"^{re.escape(layers)}\.(\d+)\.")
    teacher_state = teacher.state_dict()
    student.load_state_dict({
        key: teacher_state[pattern.sub(lambda m: f"{layers}.{layer_map[int(m.group(1))]}.", key)]
        for key in student.state_dict()
    })
    return student.train(teacher.training)


# ---------------------------------------------------------------------------
# The Trainer integration
# ---------------------------------------------------------------------------

class DistillationTrainer(transformers.Trainer):
    """A `transformers.Trainer` whose loss is `distillation_objective` against a frozen teacher.

    Use it like `Trainer` (`TrainingArguments`, evaluation, checkpoints); the model
    being trained is the student. Batches are dicts with 'labels' (e.g. from
    `DataCollatorForLanguageModeling`). The teacher is put in eval mode on the
    student's device and run under `no_grad`; it is never in the optimizer. With
    `attention_weight` > 0 both models are switched to eager attention for good.
    When hidden widths differ, a learned projection (`self.projection`) is added to
    the optimizer; it is not saved in checkpoints. The mean of each loss term since
    the last log ('kd', 'ce', 'hidden', 'attention') is added to the training logs.

    Args:
        *args, **kwargs: passed to `transformers.Trainer` (`model` is the student).
        teacher_model: the trained model to imitate.
        temperature, alpha, hidden_weight, attention_weight, layer_map, hidden_kind:
            as in `distill_model`.

    Raises:
        TypeError, ValueError: as `distill_model` for the distillation arguments.
    """

    # compute_loss returns a per-batch mean: Trainer divides it for gradient accumulation.
    loss_is_scaled_for_ga = False

    def __init__(
        self,
        *args: Any,
        teacher_model: nn.Module,
        temperature: float = 2.0,
        alpha: float = 0.5,
        hidden_weight: float = 0.0,
        attention_weight: float = 0.0,
        layer_map: Mapping[int, int] | Sequence[int] | None = None,
        hidden_kind: str = "mse",
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        _check_distillation_args(
            teacher_model, self.model, temperature, alpha, hidden_weight, attention_weight, hidden_kind
        )
        device = next(self.model.parameters()).device
        self.teacher_model = teacher_model.to(device).eval()
        self.temperature, self.alpha = temperature, alpha
        self.projection = _width_projection(self.model, teacher_model, device) if hidden_weight else None
        if attention_weight:
            _use_eager_attention(self.teacher_model)
            _use_eager_attention(self.model)
        self._flags = _output_flags(hidden_weight, attention_weight)
        self._options = dict(
            hidden_weight=hidden_weight, attention_weight=attention_weight, layer_map=layer_map,
            hidden_kind=hidden_kind, projection=self.projection, shift_labels=_is_causal_lm(self.model),
        )
        self._term_sums: dict[str, torch.Tensor] = {}
        self._term_count = 0

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        """Trainer's optimizer, plus the width projection's parameters when there is one."""
        optimizer = super().create_optimizer(model)
        if self.projection is not None:
            known = {id(p) for group in optimizer.param_groups for p in group["params"]}
            new = [p for p in self.projection.parameters() if id(p) not in known]
            if new:
                optimizer.add_param_group({"params": new, "weight_decay": 0.0})
        return optimizer

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor | Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        """`distillation_objective` of the batch (`num_items_in_batch` is not used: the loss is a batch mean)."""
        batch = _prepare_batch(inputs, next(model.parameters()).device, self._flags)
        with torch.no_grad():
            teacher_outputs = self.teacher_model(*batch.args, **batch.kwargs)
        outputs = model(*batch.args, **batch.kwargs)
        loss, terms = distillation_objective(
            outputs, teacher_outputs, batch.labels, self.temperature, self.alpha,
            attention_mask=batch.attention_mask, **self._options,
        )
        if model.training:
            for name, value in terms.items():
                self._term_sums[name] = self._term_sums.get(name, 0.0) + value
            self._term_count += 1
        if self._flags and return_outputs:
            # Keep evaluation from gathering every layer's states and maps.
            outputs = type(outputs)(logits=outputs.logits)
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the mean of each loss term since the last training log."""
        if "loss" in logs and self._term_count:
            logs.update({name: (total / self._term_count).item() for name, total in self._term_sums.items()})
            self._term_sums, self._term_count = {}, 0
        super().log(logs, start_time)
