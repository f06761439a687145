"""Students and the distillation terms beyond logits, built on the lab's `distillation.py`.

- `make_student`: a shallower copy of a Hugging Face teacher (BERT, DistilBERT, Llama),
  initialised DistilBERT-style from evenly spaced teacher layers (`evenly_spaced_layers`).
- `hidden_state_loss`, `attention_loss`: DistilBERT's cosine and TinyBERT's MSE losses on
  hidden states and attention maps.
- `IntermediateLoss`: both, weighted, as the `extra_loss` of the lab's `distill_model`;
  `distill_intermediate` runs that loop with them.
- `DistillationTrainer`: the lab's `distillation_objective` (plus `IntermediateLoss`)
  inside `transformers.Trainer`.

It does not compare TinyBERT's pre-softmax attention scores: attention maps are compared
as probabilities (what Hugging Face returns). One training loop only: the lab's. Modules: `construction` (make_student, layer maps),
`losses` (the intermediate terms, distill_intermediate), `trainer` (DistillationTrainer).
A layer map sends student layer i to teacher layer `layer_map[i]` (0-based).
"""
from __future__ import annotations

from toolkit.students.construction import evenly_spaced_layers, make_student
from toolkit.students.losses import (HIDDEN_KINDS, IntermediateLoss, attention_loss, distill_intermediate,
                                     eager_attention, hidden_state_loss)
from toolkit.students.trainer import DistillationTrainer

__all__ = ["evenly_spaced_layers", "make_student", "HIDDEN_KINDS", "IntermediateLoss", "attention_loss",
           "distill_intermediate", "eager_attention", "hidden_state_loss", "DistillationTrainer"]
