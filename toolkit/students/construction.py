"""Students: a shallower copy of a Hugging Face teacher (BERT, DistilBERT, Llama), initialised DistilBERT-style
from evenly spaced teacher layers, and the layer map that picks them (`evenly_spaced_layers`).

It does not train the student (`distillation.distill_model`, `toolkit.students.losses`, `.trainer` do).
"""
from __future__ import annotations

import copy
import re

import transformers



# Where each supported architecture keeps its list of transformer layers, relative
# to its base model (`model.base_model`), keyed by `config.model_type`.
_LAYER_LISTS = {"bert": "encoder.layer", "distilbert": "transformer.layer", "llama": "layers"}


def evenly_spaced_layers(num_teacher_layers: int, num_student_layers: int) -> list[int]:
    """Teacher layer (0-based) for each student layer: evenly spaced, ends included.

    Student layer i takes teacher layer `round(i * (L - 1) / (n - 1))`, rounded half
    up, for n >= 2 student and L teacher layers: the first student layer is the first
    teacher layer, the last is the last. A single student layer takes the teacher's
    last layer (the one the output head was trained on). Example: L=12, n=6 gives
    [0, 2, 4, 7, 9, 11]; n == L gives the identity. `make_student` initialises from
    these layers and `IntermediateLoss` uses them as its default `layer_map`.

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

    >>> from toolkit.evaluation import tiny_model
    >>> teacher, _ = tiny_model("masked", num_layers=4)
    >>> student = make_student(teacher, 2)
    >>> student.config.num_hidden_layers, evenly_spaced_layers(4, 2)
    (2, [0, 3])
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
