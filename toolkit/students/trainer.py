"""`DistillationTrainer`: the lab's `distillation_objective` (plus `toolkit.students.losses.IntermediateLoss`)
inside `transformers.Trainer`, through the lab's batch step (`distillation.batch_loss`).

It does not run a training loop of its own: `transformers.Trainer` runs it.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn
import transformers

from distillation import (batch_loss, check_alpha, check_positive, is_causal_lm, prepare_batch)


from toolkit.students.losses import IntermediateLoss, check_intermediate_args, use_eager_attention


class DistillationTrainer(transformers.Trainer):
    """A `transformers.Trainer` whose loss is the lab's `distillation_objective` against a frozen teacher.

    Use it like `Trainer` (`TrainingArguments`, evaluation, checkpoints); the model
    being trained is the student. Batches are dicts with 'labels' (e.g. from
    `DataCollatorForLanguageModeling`). The teacher is put in eval mode on the
    student's device and run under `no_grad`; it is never in the optimizer. With a
    non-zero `hidden_weight` / `attention_weight` the `IntermediateLoss` terms are added
    (`self.intermediate`); with `attention_weight` > 0 both models are switched to eager
    attention for good. A width projection is added to the optimizer; it is not saved in
    checkpoints. The mean of each loss term since the last log ('kd', 'ce', 'hidden',
    'attention') is added to the training logs.

    Args:
        *args, **kwargs: passed to `transformers.Trainer` (`model` is the student).
        teacher_model: the trained model to imitate.
        temperature, alpha: as in `distill_model`.
        hidden_weight, attention_weight, layer_map, hidden_kind: as in `IntermediateLoss`.

    Raises:
        TypeError, ValueError: as `distill_model` and `IntermediateLoss`.
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
        if not isinstance(teacher_model, nn.Module):
            raise TypeError(f"teacher_model must be an nn.Module, got {type(teacher_model).__name__}")
        if teacher_model is self.model:
            raise ValueError("teacher_model and the student model are the same object: the teacher would be trained")
        check_intermediate_args(teacher_model, self.model, hidden_weight, attention_weight, hidden_kind)
        check_positive("temperature", temperature)
        check_alpha(alpha)
        device = next(self.model.parameters()).device
        self.teacher_model = teacher_model.to(device).eval()
        self.temperature, self.alpha = temperature, alpha
        self.intermediate = None
        if hidden_weight or attention_weight:
            self.intermediate = IntermediateLoss(
                teacher_model, self.model, hidden_weight=hidden_weight, attention_weight=attention_weight,
                layer_map=layer_map, hidden_kind=hidden_kind,
            )
        if attention_weight:
            use_eager_attention(self.teacher_model)
            use_eager_attention(self.model)
        self._model_kwargs = self.intermediate.model_kwargs if self.intermediate is not None else {}
        self._shift_labels = is_causal_lm(self.model)
        self._term_sums: dict[str, torch.Tensor] = {}
        self._term_count = 0

    @property
    def projection(self) -> nn.Linear | None:
        """The learned width projection of the hidden-state term, or None."""
        return None if self.intermediate is None else self.intermediate.projection

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
        """The distillation loss of the batch (`num_items_in_batch` is not used: the loss is a batch mean)."""
        batch = prepare_batch(inputs, next(model.parameters()).device, self._model_kwargs)
        loss, terms, outputs = batch_loss(self.teacher_model, model, batch, self.temperature, self.alpha,
                                          shift_labels=self._shift_labels, extra_loss=self.intermediate)
        if model.training:
            for name, value in terms.items():
                self._term_sums[name] = self._term_sums.get(name, 0.0) + value
            self._term_count += 1
        if self._model_kwargs and return_outputs:
            # Keep evaluation from gathering every layer's states and maps.
            outputs = type(outputs)(logits=outputs.logits)
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the mean of each loss term since the last training log."""
        if "loss" in logs and self._term_count:
            logs.update({name: (total / self._term_count).item() for name, total in self._term_sums.items()})
            self._term_sums, self._term_count = {}, 0
        super().log(logs, start_time)
