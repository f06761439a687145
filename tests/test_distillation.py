"""Tests for distillation.py: the graded Exercise 3 (the KD loss and the training loop) and the
scaffolding around it (argument checks, the objective's label handling, Hugging Face batches).

Students, intermediate-layer losses and the Trainer: test_students.py.
"""
import copy
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from distillation import compute_distillation_loss, distill_model, distillation_objective
from distillation_models import TEXTS, make_tokenizer, mlm_batches, reference_loss, states_equal
from models import small

EPS32 = 2.0**-24  # unit roundoff of float32


# ---------------------------------------------------------------------------
# Builders
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("tokenizer"))


def linear_setup(num_batches=4, batch_size=8, seed=0):
    """Teacher and student linear classifiers (4 features, 3 classes) and tuple batches.

    The labels are the teacher's predictions, so both loss terms can go to their minimum together.
    """
    torch.manual_seed(seed)
    teacher, student = nn.Linear(4, 3), nn.Linear(4, 3)
    with torch.no_grad():
        teacher.weight.mul_(4)
    inputs = [torch.randn(batch_size, 4) for _ in range(num_batches)]
    with torch.no_grad():
        data = [(x, teacher(x).argmax(-1)) for x in inputs]
    return teacher, student, data


# ---------------------------------------------------------------------------
# Exercise 3a: compute_distillation_loss
# ---------------------------------------------------------------------------

@pytest.mark.exercise(3, points=2)
def test_kd_loss_matches_hand_computed_value():
    # T = 2. Row 1: teacher [2, 0] / 2 = [1, 0] -> p = [e / (1 + e), 1 / (1 + e)] = [0.7310586, 0.2689414];
    # student [0, 0] -> q = [0.5, 0.5]. KL(p || q) = 0.7310586 * ln(1.4621172) + 0.2689414 * ln(0.5378828)
    #   = 0.7310586 * 0.3798855 + 0.2689414 * (-0.6201145) = 0.1109441.
    # Row 2: identical logits, KL = 0. batchmean over 2 rows, times T**2 = 4: 0.1109441 / 2 * 4 = 0.2218881.
    student = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    teacher = torch.tensor([[2.0, 0.0], [1.0, 1.0]])
    loss = compute_distillation_loss(student, teacher, 2.0)
    assert loss.dim() == 0
    assert loss.item() == pytest.approx(0.2218881433, rel=1e-6)


@pytest.mark.exercise(3, points=1)
@pytest.mark.parametrize("shape", [(5, 7), (2, 3, 11)])
@pytest.mark.parametrize("temperature", [0.5, 4.0])
def test_kd_loss_is_zero_up_to_rounding_for_identical_logits(shape, temperature):
    torch.manual_seed(0)
    logits = 5 * torch.randn(shape)
    # Any way of writing the KL rounds: each log-probability is off by at most
    # 4 eps (max|z| + log C + 2) (z = logits / T: the division, the max shift, the log-sum-exp), each
    # p by eps, and a row sums C terms of total weight 1: |KL| <= 2 * 4 eps (max|z| + log C + 2)
    # + (C + 4) eps (log C + 1), times T**2. A wrong formula is off by far more (see the other tests).
    classes = shape[-1]
    z = (logits / temperature).abs().max().item()
    bound = temperature**2 * EPS32 * (8 * (z + math.log(classes) + 2) + (classes + 4) * (math.log(classes) + 1))
    loss = compute_distillation_loss(logits, logits.clone(), temperature)
    assert loss.dim() == 0 and abs(loss.item()) <= bound


@pytest.mark.exercise(3, points=1)
def test_kd_loss_scales_with_temperature_squared():
    # softmax(2s / 2T) == softmax(s / T) exactly (scaling by 2 is exact in binary floating point),
    # so only the T**2 factor changes: loss(2s, 2t, 2T) == 4 * loss(s, t, T), up to float32 rounding.
    torch.manual_seed(1)
    student, teacher = torch.randn(6, 5), torch.randn(6, 5)
    for temperature in (1.0, 3.0):
        small = compute_distillation_loss(student, teacher, temperature)
        large = compute_distillation_loss(2 * student, 2 * teacher, 2 * temperature)
        assert small.item() > 0
        assert large.item() == pytest.approx(4 * small.item(), rel=1e-6)


@pytest.mark.exercise(3, points=1)
def test_kd_loss_gradient_reaches_student_only_through_student_logits():
    torch.manual_seed(2)
    student = torch.randn(3, 4, requires_grad=True)
    teacher = torch.randn(3, 4)
    compute_distillation_loss(student, teacher, 2.0).backward()
    # d/ds [T^2 * KL(p || softmax(s/T))] averaged over 3 rows = T * (q - p) / 3.
    expected = 2.0 * (F.softmax(student.detach() / 2, -1) - F.softmax(teacher / 2, -1)) / 3
    torch.testing.assert_close(student.grad, expected, rtol=1e-5, atol=1e-6)


def test_kd_loss_on_sequences_averages_over_positions():
    torch.manual_seed(3)
    student, teacher = torch.randn(2, 3, 5), torch.randn(2, 3, 5)
    loss = compute_distillation_loss(student, teacher, 1.5)
    flat = compute_distillation_loss(student.reshape(6, 5), teacher.reshape(6, 5), 1.5)
    assert torch.equal(loss, flat)  # divisor: 2 * 3 positions, not the batch size 2
    per_row = [compute_distillation_loss(student.reshape(6, 5)[i:i + 1], teacher.reshape(6, 5)[i:i + 1], 1.5)
               for i in range(6)]
    assert loss.item() == pytest.approx(sum(r.item() for r in per_row) / 6, rel=1e-6)


def test_kd_loss_mask_selects_positions():
    torch.manual_seed(4)
    student, teacher = torch.randn(2, 4, 5), torch.randn(2, 4, 5)
    mask = torch.tensor([[True, False, True, False], [False, False, True, True]])
    loss = compute_distillation_loss(student, teacher, 2.0, mask=mask)
    # Divisor: the 4 selected positions.
    assert torch.equal(loss, compute_distillation_loss(student[mask], teacher[mask], 2.0))
    changed_s, changed_t = student.clone(), teacher.clone()
    changed_s[~mask] = 100.0 * torch.randn_like(changed_s[~mask])
    changed_t[~mask] = -50.0
    assert torch.equal(loss, compute_distillation_loss(changed_s, changed_t, 2.0, mask=mask))


@pytest.mark.parametrize(
    "student, teacher, temperature, mask, error, match",
    [
        (torch.zeros(2, 3), torch.zeros(2, 4), 1.0, None, ValueError, r"same shape, got \(2, 3\) and \(2, 4\)"),
        (torch.zeros(2, 3), torch.zeros(2, 3), 0.0, None, ValueError, "temperature must be a finite number > 0, got 0"),
        (torch.zeros(2, 3), torch.zeros(2, 3), -1.0, None, ValueError, "temperature must be .* > 0, got -1"),
        (torch.zeros(2, 3), torch.zeros(2, 3), math.nan, None, ValueError, "temperature must be .* > 0, got nan"),
        (torch.zeros(2, 3), torch.zeros(2, 3), math.inf, None, ValueError, "temperature must be a finite"),
        (torch.zeros(2, 3), torch.zeros(2, 3), "2", None, TypeError, "temperature must be a real number, got str"),
        ([[0.0, 1.0]], torch.zeros(1, 2), 1.0, None, TypeError, "student_logits must be a floating-point tensor, got list"),
        (torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.long), 1.0, None, TypeError,
         "teacher_logits must be a floating-point tensor, got torch.int64"),
        (torch.zeros(3), torch.zeros(3), 1.0, None, ValueError, r"at least 2 dims, got shape \(3,\)"),
        (torch.zeros(2, 3), torch.zeros(2, 3), 1.0, torch.ones(2, dtype=torch.long), TypeError,
         "mask must be a bool tensor, got torch.int64"),
        (torch.zeros(2, 3), torch.zeros(2, 3), 1.0, torch.ones(3, dtype=torch.bool), ValueError,
         r"mask must have shape \(2,\) .* got shape \(3,\)"),
        (torch.zeros(2, 3), torch.zeros(2, 3), 1.0, torch.zeros(2, dtype=torch.bool), ValueError,
         "select a position, got shape \\(2,\\), 0 selected"),
    ],
)
def test_kd_loss_rejects_bad_arguments(student, teacher, temperature, mask, error, match):
    with pytest.raises(error, match=match):
        compute_distillation_loss(student, teacher, temperature, mask=mask)


# ---------------------------------------------------------------------------
# Exercise 3b: distill_model on plain modules with tuple batches
# ---------------------------------------------------------------------------

@pytest.mark.exercise(3, points=2)
@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_distill_model_loss_and_steps_match_plain_torch(alpha):
    teacher, student, data = linear_setup(num_batches=3)
    reference = copy.deepcopy(student)
    optimizer = torch.optim.Adam(reference.parameters(), lr=0.01)
    expected = []
    for inputs, labels in data:  # one Adam step per batch, each on its own gradients
        with torch.no_grad():
            teacher_logits = teacher(inputs)
        loss = reference_loss(reference(inputs), teacher_logits, labels, 2.0, alpha)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        expected.append(loss.item())

    returned, losses = distill_model(teacher, student, data, 2.0, alpha, 1, 0.01, progress=False)
    assert returned is student
    assert isinstance(losses, list) and len(losses) == 1 and type(losses[0]) is float
    assert losses[0] == pytest.approx(sum(expected) / len(expected), rel=1e-5)
    # Adam's steps are lr * m / (sqrt(v) + eps): rounding differences of the gradients move them by
    # far less than 1e-6 (a step is ~1e-2); a missed zero_grad or a second step moves them by ~1e-2.
    reference_state = dict(reference.named_parameters())
    for name, got in student.named_parameters():
        torch.testing.assert_close(got, reference_state[name], rtol=0, atol=1e-6)


@pytest.mark.exercise(3, points=2)
def test_distill_model_loss_decreases_and_teacher_is_frozen():
    teacher, student, data = linear_setup()
    teacher.train()  # distill_model must put it in eval mode
    teacher_before = copy.deepcopy(teacher)
    _, losses = distill_model(teacher, student, data, 2.0, 0.5, 8, 0.05, progress=False)
    assert len(losses) == 8 and all(type(x) is float for x in losses)
    assert losses[-1] < 0.5 * losses[0]
    assert states_equal(teacher, teacher_before)
    assert not teacher.training


@pytest.mark.exercise(3, points=1)
def test_distill_model_runs_teacher_without_gradients():
    teacher, student, data = linear_setup(num_batches=2)
    before = copy.deepcopy(student)
    distill_model(teacher, student, data, 1.0, 0.5, 1, 0.01, progress=False)
    assert all(p.grad is None for p in teacher.parameters())  # no graph through the teacher
    assert not states_equal(student, before)  # while the student trained


def test_distill_model_history_and_epoch_log(capsys):
    teacher, student, data = linear_setup()
    history = []
    _, losses = distill_model(teacher, student, data, 2.0, 0.25, 2, 0.01, history=history)
    assert [h["loss"] for h in history] == losses
    for h in history:
        assert h.keys() == {"loss", "kd", "ce"}  # the defaults add no intermediate term
        assert h["loss"] == pytest.approx(0.25 * h["kd"] + 0.75 * h["ce"], rel=1e-6)
    log = capsys.readouterr().err  # the tqdm bar is on by default
    assert "epoch 1/2" in log and "epoch 2/2" in log
    assert "kd=" in log and "ce=" in log


def test_distill_model_restores_student_mode():
    teacher, student, data = linear_setup(num_batches=1)
    student.eval()
    distill_model(teacher, student, data, 2.0, 0.5, 1, 0.01, device="cpu", progress=False)
    assert not student.training


def test_distill_model_stops_on_nan_loss_before_the_step():
    teacher, student, data = linear_setup(num_batches=3)
    data[1][0][0, 0] = math.nan
    with pytest.raises(FloatingPointError, match=r"loss is nan at epoch 1/2, batch 2"):
        distill_model(teacher, student, data, 2.0, 0.5, 2, 0.01, progress=False)
    assert all(torch.isfinite(p).all() for p in student.parameters())


def test_distill_model_skips_batches_without_labels():
    teacher, student, data = linear_setup(num_batches=1)
    unlabelled = (torch.randn(8, 4), torch.full((8,), -100))
    twin = copy.deepcopy(student)
    _, losses = distill_model(teacher, student, [unlabelled, data[0]], 2.0, 0.5, 1, 0.01, progress=False)
    _, twin_losses = distill_model(teacher, twin, data, 2.0, 0.5, 1, 0.01, progress=False)
    assert losses == twin_losses
    assert states_equal(student, twin)
    with pytest.raises(ValueError, match="epoch 1: train_data yielded no batch with a labelled position"):
        distill_model(teacher, student, [unlabelled], 2.0, 0.5, 1, 0.01, progress=False)


@pytest.mark.parametrize(
    "change, error, match",
    [
        ({"temperature": 0.0}, ValueError, "temperature must be a finite number > 0, got 0.0"),
        ({"temperature": -2.0}, ValueError, "temperature must be a finite number > 0, got -2.0"),
        ({"alpha": -0.1}, ValueError, r"alpha must be a finite number in \[0, 1\], got -0.1"),
        ({"alpha": 1.5}, ValueError, r"alpha must be a finite number in \[0, 1\], got 1.5"),
        ({"num_epochs": 0}, ValueError, "num_epochs must be >= 1, got 0"),
        ({"num_epochs": 2.0}, TypeError, "num_epochs must be an int, got float"),
        ({"learning_rate": 0.0}, ValueError, "learning_rate must be a finite number > 0, got 0.0"),
        ({"learning_rate": -1e-3}, ValueError, "learning_rate must be a finite number > 0, got -0.001"),
        ({"teacher_model": "bert"}, TypeError, "teacher_model must be an nn.Module, got str"),
        ({"train_data": ["text"]}, TypeError, r"\(inputs, labels\) pair of tensors .* got str"),
        ({"train_data": [{"input_ids": torch.zeros(1, 2)}]}, ValueError, r"needs a 'labels' entry, got keys \['input_ids'\]"),
        ({"train_data": []}, ValueError, "yielded no batch"),
    ],
)
def test_distill_model_rejects_bad_arguments(change, error, match):
    teacher, student, data = linear_setup(num_batches=1)
    arguments = dict(teacher_model=teacher, student_model=student, train_data=data, temperature=2.0, alpha=0.5,
                     num_epochs=1, learning_rate=0.01, progress=False)
    arguments.update(change)
    with pytest.raises(error, match=match):
        distill_model(**arguments)


def test_distill_model_rejects_teacher_as_student():
    teacher, _, data = linear_setup(num_batches=1)
    with pytest.raises(ValueError, match="teacher_model and student_model are the same object"):
        distill_model(teacher, teacher, data, 2.0, 0.5, 1, 0.01, progress=False)


# ---------------------------------------------------------------------------
# The shared objective and Hugging Face batches
# ---------------------------------------------------------------------------

@pytest.mark.exercise(3, points=2)
def test_objective_leaves_out_minus_100_positions():
    torch.manual_seed(5)
    student, teacher = torch.randn(2, 5, 7), torch.randn(2, 5, 7)
    labels = torch.randint(0, 7, (2, 5))
    labels[0, 1:3] = -100
    labels[1, 4] = -100
    loss, terms = distillation_objective(student, teacher, labels, 2.0, 0.4)
    torch.testing.assert_close(loss, reference_loss(student, teacher, labels, 2.0, 0.4), rtol=1e-6, atol=0)
    assert loss.item() == pytest.approx(0.4 * terms["kd"].item() + 0.6 * terms["ce"].item(), rel=1e-6)
    ignored = labels == -100
    changed_s, changed_t = student.clone(), teacher.clone()
    changed_s[ignored] = 30 * torch.randn_like(changed_s[ignored])
    changed_t[ignored] = 0.0
    assert torch.equal(loss, distillation_objective(changed_s, changed_t, labels, 2.0, 0.4)[0])


def test_objective_shifts_labels_for_causal_models():
    torch.manual_seed(6)
    student, teacher = torch.randn(2, 5, 7), torch.randn(2, 5, 7)
    labels = torch.randint(0, 7, (2, 5))
    labels[1, 3:] = -100
    shifted = distillation_objective(student, teacher, labels, 2.0, 0.5, shift_labels=True)[0]
    by_hand = distillation_objective(student[:, :-1], teacher[:, :-1], labels[:, 1:], 2.0, 0.5)[0]
    assert torch.equal(shifted, by_hand)


def test_objective_rejects_bad_labels():
    with pytest.raises(ValueError, match=r"labels must have shape \(2, 3\) .* got \(2, 4\)"):
        distillation_objective(torch.zeros(2, 3, 5), torch.zeros(2, 3, 5), torch.zeros(2, 4, dtype=torch.long), 1.0, 0.5)
    with pytest.raises(ValueError, match="no labelled position"):
        distillation_objective(torch.zeros(2, 5), torch.zeros(2, 5), torch.full((2,), -100), 1.0, 0.5)


def test_distill_model_on_masked_lm_dict_batches(tokenizer):
    teacher = small("bert", 0, vocab_size=len(tokenizer))
    student = small("bert", 1, vocab_size=len(tokenizer), num_hidden_layers=1)
    batch = mlm_batches(tokenizer, TEXTS[:4], batch_size=4)[0]
    assert (batch["labels"] == -100).any() and (batch["attention_mask"] == 0).any()
    with torch.no_grad():
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        teacher_logits = teacher(**inputs).logits
        student_out = student(**batch)  # Hugging Face's own MLM loss: CE over labels != -100
    kd = reference_loss(student_out.logits, teacher_logits, batch["labels"], 2.0, 1.0)
    expected = 0.5 * kd + 0.5 * student_out.loss
    teacher_before = copy.deepcopy(teacher)
    _, losses = distill_model(teacher, student, [batch], 2.0, 0.5, 1, 1e-3, progress=False)
    assert losses[0] == pytest.approx(expected.item(), rel=1e-5)
    assert states_equal(teacher, teacher_before)


def test_distill_model_shifts_labels_for_causal_lm():
    teacher, student = small("llama", 0, num_hidden_layers=2), small("llama", 1, num_hidden_layers=1)
    torch.manual_seed(7)
    input_ids = torch.randint(0, 40, (2, 6))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 4:] = 0
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
    with torch.no_grad():
        teacher_logits = teacher(input_ids=input_ids, attention_mask=attention_mask).logits
        student_out = student(**batch)  # Hugging Face's causal loss shifts the labels
    kd = reference_loss(student_out.logits[:, :-1], teacher_logits[:, :-1], labels[:, 1:], 2.0, 1.0)
    _, losses = distill_model(teacher, student, [batch], 2.0, 0.5, 1, 1e-3, progress=False)
    assert losses[0] == pytest.approx((0.5 * kd + 0.5 * student_out.loss).item(), rel=1e-5)


def test_distill_model_adds_the_extra_loss_and_trains_its_parameters():
    teacher, student, data = linear_setup(num_batches=2)

    class Penalty(nn.Module):
        """An extra term with a parameter of its own, and a record of what it was called with."""

        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.tensor(0.5))
            self.calls = []

        def forward(self, student_outputs, teacher_outputs, inputs):
            self.calls.append((student_outputs, teacher_outputs, inputs))
            return {"penalty": self.scale * student_outputs.pow(2).mean()}

    penalty, history = Penalty(), []
    distill_model(teacher, student, data, 2.0, 0.5, 1, 0.01, progress=False, extra_loss=penalty, history=history)
    assert history[0].keys() == {"loss", "kd", "ce", "penalty"}
    assert history[0]["loss"] == pytest.approx(0.5 * history[0]["kd"] + 0.5 * history[0]["ce"]
                                               + history[0]["penalty"], rel=1e-6)
    assert penalty.scale.item() != 0.5  # an nn.Module extra loss is trained with the student
    (student_out, teacher_out, inputs), _ = penalty.calls
    assert inputs is data[0][0] and student_out.shape == teacher_out.shape == (8, 3)


def test_distill_model_passes_model_kwargs_to_both_models():
    teacher, student, data = linear_setup(num_batches=1)
    seen = []

    class Recorder(nn.Module):
        def __init__(self, linear):
            super().__init__()
            self.linear = linear

        def forward(self, inputs, *, scale):
            seen.append(scale)
            return self.linear(inputs) * scale

    distill_model(Recorder(teacher), Recorder(student), data, 2.0, 0.5, 1, 0.01, progress=False,
                  model_kwargs={"scale": 2.0})
    assert seen == [2.0, 2.0]  # teacher, then student
