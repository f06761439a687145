"""Tests of toolkit/students.py: layer maps, make_student, the hidden-state and attention losses,
distill_intermediate / IntermediateLoss (the lab's distill_model with an extra loss) and DistillationTrainer.

Ungraded. The ones that train call the lab's Exercise 3 (distill_model, distillation_objective): in
the student release they are skipped until it is solved.
"""
import copy
import math

import pytest
import torch
import torch.nn as nn
from transformers import DataCollatorForLanguageModeling, TrainingArguments
from transformers.modeling_outputs import MaskedLMOutput

from distillation import distill_model, distillation_objective
from distillation_models import (
    TEXTS,
    make_tokenizer,
    mlm_batches,
    states_equal,
)
from models import small
from toolkit.students import (
    DistillationTrainer,
    IntermediateLoss,
    attention_loss,
    distill_intermediate,
    evenly_spaced_layers,
    hidden_state_loss,
    make_student,
)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("tokenizer"))


# ---------------------------------------------------------------------------
# make_student
# ---------------------------------------------------------------------------

def test_evenly_spaced_layers():
    assert evenly_spaced_layers(12, 6) == [0, 2, 4, 7, 9, 11]
    assert evenly_spaced_layers(6, 3) == [0, 3, 5]  # 2.5 rounds half up
    assert evenly_spaced_layers(4, 4) == [0, 1, 2, 3]
    assert evenly_spaced_layers(4, 2) == [0, 3]
    assert evenly_spaced_layers(4, 1) == [3]
    with pytest.raises(ValueError, match=r"layer count must be in \[1, 4\] .* got 5"):
        evenly_spaced_layers(4, 5)
    with pytest.raises(ValueError, match="num_teacher_layers must be >= 1, got 0"):
        evenly_spaced_layers(0, 1)
    with pytest.raises(TypeError, match="num_student_layers must be an int, got float"):
        evenly_spaced_layers(4, 2.0)


LAYERS = {
    "bert": (lambda: small("bert", 0, vocab_size=40, num_hidden_layers=4), lambda m: m.bert.encoder.layer),
    "distilbert": (lambda: small("distilbert", 0, n_layers=3), lambda m: m.distilbert.transformer.layer),
    "llama": (lambda: small("llama", 0, num_hidden_layers=3), lambda m: m.model.layers),
}


@pytest.mark.parametrize("arch", LAYERS)
def test_make_student_copies_evenly_spaced_layers(arch):
    build, layers = LAYERS[arch]
    teacher = build()
    teacher_before = copy.deepcopy(teacher)
    student = make_student(teacher, 2)
    mapping = evenly_spaced_layers(len(layers(teacher)), 2)
    assert type(student) is type(teacher) and student.config.num_hidden_layers == 2 and len(layers(student)) == 2
    for i, j in enumerate(mapping):
        assert states_equal(layers(student)[i], layers(teacher)[j])
    # Everything outside the layer list (embeddings, final norm, output head) is the teacher's.
    outside = {k: v for k, v in teacher.state_dict().items() if not any(f".{n}." in k for n in ("layer", "layers"))}
    student_state = student.state_dict()
    assert outside and all(torch.equal(student_state[k], v) for k, v in outside.items())
    assert states_equal(teacher, teacher_before) and teacher.config.num_hidden_layers == len(layers(teacher))


def test_make_student_bert_embeddings_and_head():
    teacher = small("bert", 0, vocab_size=40, num_hidden_layers=4)
    student = make_student(teacher, 2)
    assert states_equal(student.bert.embeddings, teacher.bert.embeddings)
    assert states_equal(student.cls, teacher.cls)


@pytest.mark.parametrize("arch", LAYERS)
def test_make_student_with_all_layers_reproduces_the_teacher(arch):
    build, layers = LAYERS[arch]
    teacher = build().eval()
    student = make_student(teacher, len(layers(teacher)))
    assert not student.training
    input_ids = torch.randint(0, 40, (2, 7))
    with torch.no_grad():
        assert torch.equal(student(input_ids=input_ids).logits, teacher(input_ids=input_ids).logits)


def test_make_student_rejects_bad_arguments():
    teacher = small("bert", 0, vocab_size=40)
    with pytest.raises(ValueError, match=r"layer count must be in \[1, 2\] .* got 0"):
        make_student(teacher, 0)
    with pytest.raises(ValueError, match=r"layer count must be in \[1, 2\] .* got 3"):
        make_student(teacher, 3)
    with pytest.raises(TypeError, match="num_student_layers must be an int, got float"):
        make_student(teacher, 1.0)
    with pytest.raises(TypeError, match=r"supports Hugging Face models of types \['bert', 'distilbert', 'llama'\], got Linear"):
        make_student(nn.Linear(2, 2), 1)


# ---------------------------------------------------------------------------
# hidden_state_loss
# ---------------------------------------------------------------------------

def test_hidden_state_loss_is_zero_when_states_agree():
    torch.manual_seed(8)
    states = [torch.randn(2, 3, 4) for _ in range(3)]
    copies = [s.clone() for s in states]
    assert hidden_state_loss(states, copies, {0: 0, 2: 2}).item() == 0.0
    # 1 - cos(x, x) is zero up to rounding of the norms: a few float32 epsilons.
    assert abs(hidden_state_loss(states, copies, [0, 1, 2], kind="cosine").item()) < 8 * torch.finfo().eps


def test_hidden_state_loss_matches_hand_computed_values():
    student = [torch.tensor([[1.0, 2.0], [3.0, 4.0]])]
    teacher = [torch.tensor([[1.0, 0.0], [3.0, 0.0]])]
    # MSE: position 1 (0 + 4) / 2 = 2, position 2 (0 + 16) / 2 = 8; mean 5.
    assert hidden_state_loss(student, teacher, [0]).item() == 5.0
    # Cosine: 1 - 1/sqrt(5) = 0.5527864 and 1 - 3/5 = 0.4; mean 0.4763932.
    assert hidden_state_loss(student, teacher, [0], kind="cosine").item() == pytest.approx(0.4763932, rel=1e-6)
    # Two mapped layers: the per-layer losses add up.
    assert hidden_state_loss(student * 2, teacher * 2, {0: 0, 1: 1}).item() == 10.0


def test_hidden_state_loss_projection():
    projection = nn.Linear(2, 3, bias=False)
    with torch.no_grad():
        projection.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    student = [torch.tensor([[[1.0, 2.0]]])]  # projected: [1, 2, 3]
    teacher = [torch.tensor([[[1.0, 2.0, 0.0]]])]  # squared error [0, 0, 9], mean 3
    loss = hidden_state_loss(student, teacher, [0], projection=projection)
    assert loss.item() == 3.0
    loss.backward()
    assert projection.weight.grad is not None and projection.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("kind", ["mse", "cosine"])
def test_hidden_state_loss_ignores_padding(kind):
    torch.manual_seed(9)
    student, teacher = [torch.randn(2, 4, 3)], [torch.randn(2, 4, 3)]
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    loss = hidden_state_loss(student, teacher, [0], kind=kind, attention_mask=mask)
    changed_s, changed_t = student[0].clone(), teacher[0].clone()
    changed_s[mask == 0] = 50.0
    changed_t[mask == 0] = -7.0
    assert torch.equal(loss, hidden_state_loss([changed_s], [changed_t], [0], kind=kind, attention_mask=mask))
    real = mask.bool()
    unpadded = hidden_state_loss([student[0][real]], [teacher[0][real]], [0], kind=kind)
    assert loss.item() == pytest.approx(unpadded.item(), rel=1e-6)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"layer_map": {2: 0}}, ValueError, "names student layer 2, but the student has 2 layers"),
        ({"layer_map": [0, 3]}, ValueError, "names teacher layer 3, but the teacher has 3 layers"),
        ({"layer_map": {}}, ValueError, "layer_map is empty"),
        ({"layer_map": "01"}, TypeError, "layer_map must be a dict or a list of ints, got str"),
        ({"layer_map": [0], "kind": "l1"}, ValueError, r"kind must be one of \('mse', 'cosine'\), got 'l1'"),
        ({"layer_map": [0], "attention_mask": torch.ones(2, 5)}, ValueError, r"attention_mask must have shape \(2, 4\)"),
        ({"layer_map": [0], "projection": "linear"}, TypeError, "projection must be an nn.Module"),
    ],
)
def test_hidden_state_loss_rejects_bad_arguments(kwargs, error, match):
    student = [torch.zeros(2, 4, 3), torch.zeros(2, 4, 3)]
    teacher = [torch.zeros(2, 4, 3)] * 3
    with pytest.raises(error, match=match):
        hidden_state_loss(student, teacher, **kwargs)


def test_hidden_state_loss_rejects_mismatched_widths():
    with pytest.raises(ValueError, match="hidden widths differ: student 3 vs teacher 5 .* pass a projection"):
        hidden_state_loss([torch.zeros(2, 4, 3)], [torch.zeros(2, 4, 5)], [0])
    with pytest.raises(ValueError, match="hidden widths differ: student 4 vs teacher 5 .* projection's output width"):
        hidden_state_loss([torch.zeros(2, 4, 3)], [torch.zeros(2, 4, 5)], [0], projection=nn.Linear(3, 4))
    with pytest.raises(ValueError, match="differ in leading shape"):
        hidden_state_loss([torch.zeros(2, 4, 3)], [torch.zeros(2, 5, 3)], [0])


# ---------------------------------------------------------------------------
# attention_loss
# ---------------------------------------------------------------------------

def _maps(*heads):
    """A (1, heads, 2, 2) attention tensor from 2x2 nested lists."""
    return torch.tensor([list(heads)])


EYE, SWAP, HALF, LEFT = [[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [1.0, 0.0]], [[0.5, 0.5], [0.5, 0.5]], [[1.0, 0.0], [1.0, 0.0]]


def test_attention_loss_zero_and_hand_computed():
    torch.manual_seed(10)
    maps = [torch.softmax(torch.randn(2, 2, 3, 3), -1) for _ in range(2)]
    assert attention_loss(maps, [m.clone() for m in maps], [0, 1]).item() == 0.0
    # Squared differences [[0.25, 0.25], [0, 0]]: mean 0.125.
    assert attention_loss([_maps([[1.0, 0.0], [0.5, 0.5]])], [_maps(HALF)], [0]).item() == 0.125


def test_attention_loss_averages_teacher_head_groups():
    # 4 teacher heads onto 2 student heads: groups (EYE, SWAP) -> HALF and (LEFT, LEFT) -> LEFT.
    teacher = [_maps(EYE, SWAP, LEFT, LEFT)]
    assert attention_loss([_maps(HALF, LEFT)], teacher, [0]).item() == 0.0
    # Student (HALF, HALF): head 1 matches, head 2 is 0.5 off everywhere -> (0 + 0.25) / 2.
    # Averaging all 4 teacher heads instead would give 0.0625.
    assert attention_loss([_maps(HALF, HALF)], teacher, [0]).item() == 0.125
    # A 1-head student is compared with the mean of all teacher heads: [[0.75, 0.25], [0.75, 0.25]].
    assert attention_loss([_maps(HALF)], teacher, [0]).item() == 0.0625


def test_attention_loss_averages_all_heads_when_counts_do_not_divide():
    # 3 student heads, 2 teacher heads: both sides averaged over heads (HALF vs HALF, then HALF vs LEFT).
    assert attention_loss([_maps(HALF, EYE, SWAP)], [_maps(EYE, SWAP)], [0]).item() == 0.0
    assert attention_loss([_maps(HALF, EYE, SWAP)], [_maps(LEFT, LEFT)], [0]).item() == 0.25


def test_attention_loss_ignores_padding():
    torch.manual_seed(11)
    student, teacher = torch.softmax(torch.randn(2, 2, 4, 4), -1), torch.softmax(torch.randn(2, 2, 4, 4), -1)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    loss = attention_loss([student], [teacher], [0], attention_mask=mask)
    changed_s, changed_t = student.clone(), teacher.clone()
    changed_s[0, :, 3, :] = 9.0  # padded query row
    changed_t[0, :, :, 3] = -9.0  # padded key column
    assert torch.equal(loss, attention_loss([changed_s], [changed_t], [0], attention_mask=mask))
    assert loss != attention_loss([changed_s], [changed_t], [0])


def test_attention_loss_rejects_bad_arguments():
    maps = [torch.zeros(1, 2, 3, 3)]
    with pytest.raises(ValueError, match="names student layer 1, but the student has 1 layers"):
        attention_loss(maps, maps, {1: 0})
    with pytest.raises(ValueError, match="names teacher layer 4, but the teacher has 1 layers"):
        attention_loss(maps, maps, [4])
    with pytest.raises(ValueError, match=r"must be \(batch, heads, seq, seq\) with equal batch and seq sizes"):
        attention_loss(maps, [torch.zeros(1, 2, 4, 4)], [0])
    with pytest.raises(ValueError, match=r"attention_mask must have shape \(1, 3\)"):
        attention_loss(maps, maps, [0], attention_mask=torch.ones(1, 4))


# ---------------------------------------------------------------------------
# distill_intermediate and IntermediateLoss
# ---------------------------------------------------------------------------

def test_distill_intermediate_hidden_state_loss_decreases(tokenizer):
    teacher = small("bert", 0, vocab_size=len(tokenizer), num_attention_heads=4)
    student = small("bert", 1, vocab_size=len(tokenizer), hidden_size=8, intermediate_size=16,
                    num_hidden_layers=1)  # narrower: a projection is learned
    teacher_before = copy.deepcopy(teacher)
    batches = mlm_batches(tokenizer, TEXTS, batch_size=4)
    history = []
    _, losses = distill_intermediate(teacher, student, batches, 2.0, 0.5, 5, 1e-2, progress=False,
                                     hidden_weight=1.0, attention_weight=1.0, history=history)
    assert all(h.keys() == {"loss", "kd", "ce", "hidden", "attention"} for h in history)
    assert history[-1]["hidden"] < 0.8 * history[0]["hidden"]
    for h in history:
        expected = 0.5 * h["kd"] + 0.5 * h["ce"] + h["hidden"] + h["attention"]
        assert h["loss"] == pytest.approx(expected, rel=1e-5)
    assert states_equal(teacher, teacher_before)
    # Eager attention was only borrowed for the call.
    assert teacher.config._attn_implementation == "sdpa" and student.config._attn_implementation == "sdpa"


def test_distill_intermediate_layer_map_selects_teacher_layers(tokenizer):
    teacher = small("bert", 0, vocab_size=len(tokenizer))
    student = make_student(teacher, 2)  # the teacher's function, layer for layer
    batch = mlm_batches(tokenizer, TEXTS[:4], batch_size=4)
    default, crossed = [], []
    distill_intermediate(teacher, copy.deepcopy(student), batch, 2.0, 0.5, 1, 1e-3, progress=False,
                         hidden_weight=1.0, attention_weight=1.0, history=default)
    distill_intermediate(teacher, student, batch, 2.0, 0.5, 1, 1e-3, progress=False,
                         hidden_weight=1.0, attention_weight=1.0, layer_map={0: 1, 1: 0}, history=crossed)
    # The epoch's only loss is computed before its step: layer i against teacher layer i is exact.
    assert default[0]["hidden"] == 0.0 and default[0]["attention"] == 0.0 and default[0]["kd"] == 0.0
    assert crossed[0]["hidden"] > 0.0 and crossed[0]["attention"] > 0.0



@pytest.mark.parametrize(
    "change, error, match",
    [
        ({"hidden_weight": -1.0}, ValueError, "hidden_weight must be a finite number >= 0, got -1.0"),
        ({"attention_weight": math.nan}, ValueError, "attention_weight must be a finite number >= 0, got nan"),
        ({"hidden_kind": "l1"}, ValueError, r"hidden_kind must be one of \('mse', 'cosine'\), got 'l1'"),
        ({"hidden_weight": 1.0}, TypeError, "need Hugging Face models .* teacher_model is a Linear"),
    ],
)
def test_distill_intermediate_rejects_bad_arguments(change, error, match):
    # Checked before any training: plain linear models and one tuple batch are enough.
    batches = [(torch.randn(8, 4), torch.randint(0, 3, (8,)))]
    with pytest.raises(error, match=match):
        distill_intermediate(nn.Linear(4, 3), nn.Linear(4, 3), batches, 2.0, 0.5, 1, 0.01, progress=False, **change)


def test_intermediate_loss_needs_the_layer_outputs_and_a_weight():
    teacher, student = small("bert", 0, vocab_size=40), small("bert", 1, vocab_size=40, num_hidden_layers=1)
    plain = MaskedLMOutput(logits=torch.zeros(2, 3, 40))  # run without output_hidden_states
    with pytest.raises(ValueError, match="carry no hidden_states: run the model with output_hidden_states=True"):
        IntermediateLoss(teacher, student, hidden_weight=1.0)(plain, plain, {})
    with pytest.raises(ValueError, match="carry no attentions: .* attn_implementation='eager'"):
        IntermediateLoss(teacher, student, attention_weight=1.0)(plain, plain, {})
    with pytest.raises(ValueError, match="needs hidden_weight > 0 or attention_weight > 0"):
        IntermediateLoss(teacher, student)


def test_distilling_a_make_student_student_lowers_the_masked_lm_loss(tokenizer):
    teacher = small("bert", 0, vocab_size=len(tokenizer))
    student = make_student(teacher, 1)
    batches = mlm_batches(tokenizer, TEXTS, batch_size=4)
    _, losses = distill_model(teacher, student, batches, 2.0, 0.5, 4, 1e-2, progress=False)
    assert losses[-1] < losses[0]


# ---------------------------------------------------------------------------
# DistillationTrainer
# ---------------------------------------------------------------------------

def _trainer(tokenizer, tmp_path, student=None, **kwargs):
    teacher = small("bert", 0, vocab_size=len(tokenizer))
    student = make_student(teacher, 1) if student is None else student
    args = TrainingArguments(
        output_dir=str(tmp_path), report_to=[], use_cpu=True, save_strategy="no", num_train_epochs=1,
        per_device_train_batch_size=4, per_device_eval_batch_size=4, logging_steps=1, learning_rate=1e-3,
        disable_tqdm=True,
    )
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.4, seed=0)
    dataset = [dict(tokenizer(t)) for t in TEXTS]
    trainer = DistillationTrainer(model=student, args=args, train_dataset=dataset, eval_dataset=dataset[:4],
                                  data_collator=collator, teacher_model=teacher, **kwargs)
    return trainer, teacher, student


def test_distillation_trainer_runs_one_epoch(tokenizer, tmp_path):
    narrow = small("bert", 1, vocab_size=len(tokenizer), hidden_size=8, intermediate_size=16, num_hidden_layers=1)
    trainer, teacher, student = _trainer(tokenizer, tmp_path, student=narrow, temperature=2.0, alpha=0.5,
                                         hidden_weight=1.0, attention_weight=0.5)
    assert trainer.projection is not None  # widths 8 -> 16
    teacher_before, student_before = copy.deepcopy(teacher), copy.deepcopy(student)
    projection_before = copy.deepcopy(trainer.projection)
    result = trainer.train()
    assert trainer.state.global_step == 2 and math.isfinite(result.training_loss)
    assert states_equal(teacher, teacher_before) and not teacher.training
    assert not states_equal(student, student_before)
    assert not states_equal(trainer.projection, projection_before)  # trained with the student
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert logs and all({"kd", "ce", "hidden", "attention"} <= entry.keys() for entry in logs)
    assert math.isfinite(trainer.evaluate()["eval_loss"])


def test_distillation_trainer_loss_is_the_shared_objective(tokenizer, tmp_path):
    trainer, teacher, student = _trainer(tokenizer, tmp_path, temperature=3.0, alpha=0.25)
    batch = mlm_batches(tokenizer, TEXTS[:4], batch_size=4)[0]
    loss = trainer.compute_loss(student, batch)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    expected, _ = distillation_objective(student(**inputs).logits, teacher(**inputs).logits, batch["labels"],
                                         3.0, 0.25)
    assert torch.equal(loss, expected)


def test_distillation_trainer_rejects_bad_arguments(tokenizer, tmp_path):
    with pytest.raises(ValueError, match=r"alpha must be a finite number in \[0, 1\], got 2"):
        _trainer(tokenizer, tmp_path, alpha=2)
    with pytest.raises(ValueError, match="temperature must be a finite number > 0, got 0"):
        _trainer(tokenizer, tmp_path, temperature=0)
