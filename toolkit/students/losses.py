"""Distillation terms beyond logits: DistilBERT's cosine and TinyBERT's MSE losses on hidden states and
attention maps (`hidden_state_loss`, `attention_loss`), both weighted in `IntermediateLoss`, the
`extra_loss` of the lab's `distill_model`; `distill_intermediate` runs that loop with them.

It does not compare TinyBERT's pre-softmax attention scores: attention maps are compared as probabilities
(what Hugging Face returns). One training loop only: the lab's. A layer map sends student layer i to
teacher layer `layer_map[i]` (0-based).
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
import transformers

from distillation import (check_non_negative, distill_model)


from toolkit.students.construction import evenly_spaced_layers

HIDDEN_KINDS = ("mse", "cosine")


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
# The intermediate terms as the lab loop's extra loss
# ---------------------------------------------------------------------------

def _layer_outputs(outputs: Any, name: str) -> Sequence[torch.Tensor]:
    """Per-layer `hidden_states` (embedding output dropped) or `attentions` of a HF output."""
    values = getattr(outputs, name, None)
    if not values:
        hint = " (attentions need attn_implementation='eager')" if name == "attentions" else ""
        raise ValueError(f"the model outputs carry no {name}: run the model with output_{name}=True{hint}")
    return values[1:] if name == "hidden_states" else values


class IntermediateLoss(nn.Module):
    """Weighted hidden-state and attention terms: the `extra_loss` of `distillation.distill_model`.

    Called as `terms = loss(student_outputs, teacher_outputs, inputs)` with Hugging Face
    outputs, it returns `{'hidden': hidden_weight * hidden_state_loss(...),
    'attention': attention_weight * attention_loss(...)}` (only the terms whose weight is
    non-zero), over the transformer layers (`hidden_states[1:]`, `attentions`), padding
    excluded through the batch's `attention_mask`. When the hidden widths differ, a learned
    `nn.Linear` projection (`self.projection`) maps the student's states to the teacher's
    width; it is a parameter of this module, so `distill_model` trains it with the student.
    `model_kwargs` are the forward arguments the models need (`output_hidden_states`,
    `output_attentions`); attention maps also need eager attention (`distill_intermediate`
    switches it on).

    Args:
        teacher_model, student_model: Hugging Face models (for their hidden widths).
        hidden_weight: weight >= 0 of `hidden_state_loss`.
        attention_weight: weight >= 0 of `attention_loss`.
        layer_map: student layer -> teacher layer; default `evenly_spaced_layers` of the
            layer counts in the outputs, the rule `make_student` initialises with.
        hidden_kind: 'mse' (TinyBERT) or 'cosine' (DistilBERT).

    Raises:
        TypeError: a model is not a Hugging Face model, a weight is not a number.
        ValueError: a negative weight, both weights zero, an unknown `hidden_kind`.
    """

    def __init__(
        self,
        teacher_model: nn.Module,
        student_model: nn.Module,
        *,
        hidden_weight: float = 0.0,
        attention_weight: float = 0.0,
        layer_map: Mapping[int, int] | Sequence[int] | None = None,
        hidden_kind: str = "mse",
    ) -> None:
        super().__init__()
        check_intermediate_args(teacher_model, student_model, hidden_weight, attention_weight, hidden_kind)
        if not (hidden_weight or attention_weight):
            raise ValueError("IntermediateLoss needs hidden_weight > 0 or attention_weight > 0")
        self.hidden_weight, self.attention_weight = hidden_weight, attention_weight
        self.layer_map, self.hidden_kind = layer_map, hidden_kind
        student_width, teacher_width = student_model.config.hidden_size, teacher_model.config.hidden_size
        self.projection = (
            nn.Linear(student_width, teacher_width, device=next(student_model.parameters()).device)
            if hidden_weight and student_width != teacher_width else None
        )

    @property
    def model_kwargs(self) -> dict[str, bool]:
        """Forward keyword arguments that make the models return what the terms need."""
        flags = {}
        if self.hidden_weight:
            flags["output_hidden_states"] = True
        if self.attention_weight:
            flags["output_attentions"] = True
        return flags

    def forward(self, student_outputs: Any, teacher_outputs: Any, inputs: Any) -> dict[str, torch.Tensor]:
        attention_mask = inputs.get("attention_mask") if isinstance(inputs, Mapping) else None
        layer_map = self.layer_map
        if layer_map is None:  # layer counts come from the outputs, so the default map needs no model
            name = "hidden_states" if self.hidden_weight else "attentions"
            layer_map = evenly_spaced_layers(
                len(_layer_outputs(teacher_outputs, name)), len(_layer_outputs(student_outputs, name))
            )
        terms = {}
        if self.hidden_weight:
            terms["hidden"] = self.hidden_weight * hidden_state_loss(
                _layer_outputs(student_outputs, "hidden_states"), _layer_outputs(teacher_outputs, "hidden_states"),
                layer_map, projection=self.projection, kind=self.hidden_kind, attention_mask=attention_mask,
            )
        if self.attention_weight:
            terms["attention"] = self.attention_weight * attention_loss(
                _layer_outputs(student_outputs, "attentions"), _layer_outputs(teacher_outputs, "attentions"),
                layer_map, attention_mask=attention_mask,
            )
        return terms


def check_intermediate_args(
    teacher_model: Any, student_model: Any, hidden_weight: Any, attention_weight: Any, hidden_kind: Any
) -> None:
    check_non_negative("hidden_weight", hidden_weight)
    check_non_negative("attention_weight", attention_weight)
    if hidden_kind not in HIDDEN_KINDS:
        raise ValueError(f"hidden_kind must be one of {HIDDEN_KINDS}, got {hidden_kind!r}")
    if hidden_weight or attention_weight:
        for name, model in (("teacher_model", teacher_model), ("student_model", student_model)):
            if not isinstance(model, transformers.PreTrainedModel):
                raise TypeError(
                    f"hidden_weight/attention_weight need Hugging Face models (hidden states, attentions); "
                    f"{name} is a {type(model).__name__}"
                )


def use_eager_attention(model: nn.Module) -> str | None:
    """Switch a HF model to eager attention (the only kind that returns maps).

    Returns the previous implementation when it changed, else None.
    """
    previous = model.config._attn_implementation
    if previous == "eager":
        return None
    model.set_attn_implementation("eager")
    return previous


@contextlib.contextmanager
def eager_attention(*models: nn.Module) -> Iterator[None]:
    """Run Hugging Face models with eager attention (the only kind that returns maps), then switch back."""
    restore = {model: use_eager_attention(model) for model in models}
    try:
        yield
    finally:
        for model, previous in restore.items():
            if previous is not None:
                model.set_attn_implementation(previous)


def distill_intermediate(
    teacher_model: nn.Module,
    student_model: nn.Module,
    train_data: Iterable,
    temperature: float,
    alpha: float,
    num_epochs: int,
    learning_rate: float,
    *,
    hidden_weight: float = 0.0,
    attention_weight: float = 0.0,
    layer_map: Mapping[int, int] | Sequence[int] | None = None,
    hidden_kind: str = "mse",
    **kwargs: Any,
) -> tuple[nn.Module, list[float]]:
    """The lab's `distill_model` with the `IntermediateLoss` terms added (TinyBERT / DistilBERT).

    With both weights zero this is `distill_model` itself. With `attention_weight` > 0 both
    models run with eager attention for the call and are switched back afterwards. The
    history (`history=`) gets the weighted 'hidden' / 'attention' terms beside 'kd' and 'ce'.

    Args:
        teacher_model, student_model, train_data, temperature, alpha, num_epochs, learning_rate:
            as in `distill_model`.
        hidden_weight, attention_weight, layer_map, hidden_kind: as in `IntermediateLoss`.
        **kwargs: `distill_model`'s keyword arguments (`device`, `progress`, `history`).

    Returns:
        `(student_model, epoch_losses)`, as `distill_model`.

    Raises:
        TypeError, ValueError: as `distill_model` and `IntermediateLoss`.

    >>> import torch
    >>> from toolkit.evaluation import tiny_model
    >>> from toolkit.students import make_student
    >>> teacher, _ = tiny_model("masked", num_layers=2)
    >>> ids = torch.randint(5, 1000, (2, 8))
    >>> batches = [{"input_ids": ids, "labels": ids}]
    >>> student, losses = distill_intermediate(teacher, make_student(teacher, 1), batches, 2.0, 0.5, 1, 1e-3,
    ...                                        hidden_weight=1.0, progress=False)
    >>> len(losses)  # one mean loss per epoch
    1
    """
    check_intermediate_args(teacher_model, student_model, hidden_weight, attention_weight, hidden_kind)
    if not (hidden_weight or attention_weight):
        return distill_model(teacher_model, student_model, train_data, temperature, alpha, num_epochs,
                             learning_rate, **kwargs)
    extra = IntermediateLoss(teacher_model, student_model, hidden_weight=hidden_weight,
                             attention_weight=attention_weight, layer_map=layer_map, hidden_kind=hidden_kind)
    models = (teacher_model, student_model) if attention_weight else ()
    with eager_attention(*models):
        return distill_model(teacher_model, student_model, train_data, temperature, alpha, num_epochs,
                             learning_rate, extra_loss=extra, model_kwargs=extra.model_kwargs, **kwargs)
