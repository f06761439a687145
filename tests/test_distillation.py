"""Tests for distillation.py: the graded exercises 4-5 and everything beyond them.

Models are tiny and built from configs with dropout off, so every forward pass is
deterministic; the tokenizer is built from a vocab file written here.
"""
import copy
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import (
    BertConfig,
    BertForMaskedLM,
    BertTokenizerFast,
    DataCollatorForLanguageModeling,
    DistilBertConfig,
    DistilBertForMaskedLM,
    LlamaConfig,
    LlamaForCausalLM,
    TrainingArguments,
)

from distillation import compute_distillation_loss, distill_model, distillation_objective
from toolkit.students import (
    DistillationTrainer,
    attention_loss,
    evenly_spaced_layers,
    hidden_state_loss,
    make_student,
)

torch.set_num_threads(1)

WORDS = "the a cat dog bird sat ran flew on over under mat log tree far away and then home".split()
TEXTS = [
    "the cat sat on the mat",
    "a dog ran far away",
    "the birds flew over the tree",
    "a cat ran home and then sat",
    "the dog sat under a log",
    "birds sat on the log",
    "the cats ran away",
    "a dog flew home",
]


# ---------------------------------------------------------------------------
# Builders
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    """A word-piece BertTokenizerFast from a vocab file written here (no hub)."""
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, "##s", "##ed"]
    path = tmp_path_factory.mktemp("tokenizer")
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    return BertTokenizerFast.from_pretrained(str(path))


def tiny_bert(vocab_size, hidden=16, layers=2, heads=2, seed=0):
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=2 * hidden, max_position_embeddings=32,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    return BertForMaskedLM(config)


def tiny_distilbert(layers=3, seed=0):
    torch.manual_seed(seed)
    config = DistilBertConfig(
        vocab_size=40, dim=16, n_layers=layers, n_heads=2, hidden_dim=32, max_position_embeddings=32,
        dropout=0.0, attention_dropout=0.0,
    )
    return DistilBertForMaskedLM(config)


def tiny_llama(layers=3, seed=0):
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=40, hidden_size=16, num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=1,
        intermediate_size=32, max_position_embeddings=32,
    )
    return LlamaForCausalLM(config)


def mlm_batches(tokenizer, texts, batch_size, seed=0):
    """Fixed MLM batches from DataCollatorForLanguageModeling, each with a labelled position."""
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.4, seed=seed)
    batches = [collator([tokenizer(t) for t in texts[i:i + batch_size]]) for i in range(0, len(texts), batch_size)]
    assert all((b["labels"] != -100).any() for b in batches)
    return batches


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


def reference_loss(student_logits, teacher_logits, labels, temperature, alpha):
    """alpha * KD + (1 - alpha) * CE with plain torch, over the rows whose label is not -100."""
    keep = labels != -100
    s, t, y = student_logits[keep], teacher_logits[keep], labels[keep]
    kd = F.kl_div(F.log_softmax(s / temperature, -1), F.softmax(t / temperature, -1), reduction="batchmean")
    return alpha * kd * temperature**2 + (1 - alpha) * F.cross_entropy(s, y)


def states_equal(a, b):
    a, b = a.state_dict(), b.state_dict()
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------
# Exercise 4: compute_distillation_loss
# ---------------------------------------------------------------------------

@pytest.mark.exercise(4, points=2)
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


@pytest.mark.exercise(4, points=1)
@pytest.mark.parametrize("shape", [(5, 7), (2, 3, 11)])
@pytest.mark.parametrize("temperature", [0.5, 1.0, 4.0])
def test_kd_loss_is_exactly_zero_for_identical_logits(shape, temperature):
    torch.manual_seed(0)
    logits = 5 * torch.randn(shape)
    assert compute_distillation_loss(logits, logits.clone(), temperature).item() == 0.0


@pytest.mark.exercise(4, points=1)
def test_kd_loss_scales_with_temperature_squared():
    # softmax(2s / 2T) == softmax(s / T) exactly (scaling by 2 is exact in binary floating point),
    # so only the T**2 factor changes: loss(2s, 2t, 2T) == 4 * loss(s, t, T), bit for bit.
    torch.manual_seed(1)
    student, teacher = torch.randn(6, 5), torch.randn(6, 5)
    for temperature in (1.0, 3.0):
        small = compute_distillation_loss(student, teacher, temperature)
        large = compute_distillation_loss(2 * student, 2 * teacher, 2 * temperature)
        assert small.item() > 0
        assert large.item() == 4 * small.item()


@pytest.mark.exercise(4, points=1)
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
        ([[0.0, 1.0]], torch.zeros(1, 2), 1.0, None, TypeError, "student_logits must be a torch.Tensor, got list"),
        (torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.long), 1.0, None, TypeError,
         "teacher_logits must be a floating-point tensor, got torch.int64"),
        (torch.zeros(3), torch.zeros(3), 1.0, None, ValueError, r"at least 2 dims, got \(3,\)"),
        (torch.zeros(2, 3), torch.zeros(2, 3), 1.0, torch.ones(2, dtype=torch.long), TypeError,
         "mask must be a bool tensor, got torch.int64"),
        (torch.zeros(2, 3), torch.zeros(2, 3), 1.0, torch.ones(3, dtype=torch.bool), ValueError,
         r"mask must have shape \(2,\) .* got \(3,\)"),
        (torch.zeros(2, 3), torch.zeros(2, 3), 1.0, torch.zeros(2, dtype=torch.bool), ValueError,
         "mask selects no position"),
    ],
)
def test_kd_loss_rejects_bad_arguments(student, teacher, temperature, mask, error, match):
    with pytest.raises(error, match=match):
        compute_distillation_loss(student, teacher, temperature, mask=mask)


# ---------------------------------------------------------------------------
# Exercise 5: distill_model on plain modules with tuple batches
# ---------------------------------------------------------------------------

@pytest.mark.exercise(5, points=2)
@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_distill_model_loss_and_step_match_plain_torch(alpha):
    teacher, student, data = linear_setup(num_batches=1)
    inputs, labels = data[0]
    reference = copy.deepcopy(student)
    with torch.no_grad():
        teacher_logits = teacher(inputs)
    expected = reference_loss(reference(inputs), teacher_logits, labels, 2.0, alpha)
    optimizer = torch.optim.Adam(reference.parameters(), lr=0.01)
    expected.backward()
    optimizer.step()

    returned, losses = distill_model(teacher, student, data, 2.0, alpha, 1, 0.01, progress=False)
    assert returned is student
    assert isinstance(losses, list) and len(losses) == 1 and type(losses[0]) is float
    assert losses[0] == pytest.approx(expected.item(), rel=1e-6)
    for got, want in zip(student.parameters(), reference.parameters()):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


@pytest.mark.exercise(5, points=2)
def test_distill_model_loss_decreases_and_teacher_is_frozen():
    teacher, student, data = linear_setup()
    teacher.train()  # distill_model must put it in eval mode
    teacher_before = copy.deepcopy(teacher)
    _, losses = distill_model(teacher, student, data, 2.0, 0.5, 8, 0.05, progress=False)
    assert len(losses) == 8 and all(type(x) is float for x in losses)
    assert losses[-1] < 0.5 * losses[0]
    assert states_equal(teacher, teacher_before)
    assert not teacher.training


@pytest.mark.exercise(5, points=1)
def test_distill_model_runs_teacher_without_gradients():
    teacher, student, data = linear_setup(num_batches=2)
    distill_model(teacher, student, data, 1.0, 0.5, 1, 0.01, progress=False)
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in student.parameters())


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
        ({"alpha": -0.1}, ValueError, r"alpha must be in \[0, 1\], got -0.1"),
        ({"alpha": 1.5}, ValueError, r"alpha must be in \[0, 1\], got 1.5"),
        ({"num_epochs": 0}, ValueError, "num_epochs must be >= 1, got 0"),
        ({"num_epochs": 2.0}, TypeError, "num_epochs must be an int, got float"),
        ({"learning_rate": 0.0}, ValueError, "learning_rate must be a finite number > 0, got 0.0"),
        ({"learning_rate": -1e-3}, ValueError, "learning_rate must be a finite number > 0, got -0.001"),
        ({"hidden_weight": -1.0}, ValueError, "hidden_weight must be a finite number >= 0, got -1.0"),
        ({"attention_weight": math.nan}, ValueError, "attention_weight must be a finite number >= 0, got nan"),
        ({"hidden_kind": "l1"}, ValueError, r"hidden_kind must be one of \('mse', 'cosine'\), got 'l1'"),
        ({"hidden_weight": 1.0}, TypeError, "need Hugging Face models .* teacher_model is a Linear"),
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
    with pytest.raises(ValueError, match="mask selects no position"):
        distillation_objective(torch.zeros(2, 5), torch.zeros(2, 5), torch.full((2,), -100), 1.0, 0.5)
    with pytest.raises(ValueError, match="carry no hidden_states"):
        distillation_objective(torch.zeros(2, 5), torch.zeros(2, 5), torch.zeros(2, dtype=torch.long), 1.0, 0.5,
                               hidden_weight=1.0)


def test_distill_model_on_masked_lm_dict_batches(tokenizer):
    teacher = tiny_bert(len(tokenizer), seed=0)
    student = tiny_bert(len(tokenizer), layers=1, seed=1)
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


def test_distill_model_masked_lm_loss_decreases(tokenizer):
    teacher = tiny_bert(len(tokenizer), seed=0)
    student = make_student(teacher, 1)
    batches = mlm_batches(tokenizer, TEXTS, batch_size=4)
    _, losses = distill_model(teacher, student, batches, 2.0, 0.5, 4, 1e-2, progress=False)
    assert losses[-1] < losses[0]


def test_distill_model_shifts_labels_for_causal_lm():
    teacher, student = tiny_llama(layers=2, seed=0), tiny_llama(layers=1, seed=1)
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
    "bert": (lambda: tiny_bert(40, layers=4), lambda m: m.bert.encoder.layer),
    "distilbert": (lambda: tiny_distilbert(layers=3), lambda m: m.distilbert.transformer.layer),
    "llama": (lambda: tiny_llama(layers=3), lambda m: m.model.layers),
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
    teacher = tiny_bert(40, layers=4)
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
    teacher = tiny_bert(40, layers=2)
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
# distill_model with intermediate losses
# ---------------------------------------------------------------------------

def test_distill_model_hidden_state_loss_decreases(tokenizer):
    teacher = tiny_bert(len(tokenizer), hidden=16, layers=2, heads=4, seed=0)
    student = tiny_bert(len(tokenizer), hidden=8, layers=1, heads=2, seed=1)  # narrower: a projection is learned
    teacher_before = copy.deepcopy(teacher)
    batches = mlm_batches(tokenizer, TEXTS, batch_size=4)
    history = []
    _, losses = distill_model(teacher, student, batches, 2.0, 0.5, 5, 1e-2, progress=False,
                              hidden_weight=1.0, attention_weight=1.0, history=history)
    assert all(h.keys() == {"loss", "kd", "ce", "hidden", "attention"} for h in history)
    assert history[-1]["hidden"] < 0.8 * history[0]["hidden"]
    for h in history:
        expected = 0.5 * h["kd"] + 0.5 * h["ce"] + h["hidden"] + h["attention"]
        assert h["loss"] == pytest.approx(expected, rel=1e-5)
    assert states_equal(teacher, teacher_before)
    # Eager attention was only borrowed for the call.
    assert teacher.config._attn_implementation == "sdpa" and student.config._attn_implementation == "sdpa"


def test_distill_model_layer_map_selects_teacher_layers(tokenizer):
    teacher = tiny_bert(len(tokenizer), layers=2, seed=0)
    student = make_student(teacher, 2)  # the teacher's function, layer for layer
    batch = mlm_batches(tokenizer, TEXTS[:4], batch_size=4)
    default, crossed = [], []
    distill_model(teacher, copy.deepcopy(student), batch, 2.0, 0.5, 1, 1e-3, progress=False,
                  hidden_weight=1.0, attention_weight=1.0, history=default)
    distill_model(teacher, student, batch, 2.0, 0.5, 1, 1e-3, progress=False,
                  hidden_weight=1.0, attention_weight=1.0, layer_map={0: 1, 1: 0}, history=crossed)
    # The epoch's only loss is computed before its step: layer i against teacher layer i is exact.
    assert default[0]["hidden"] == 0.0 and default[0]["attention"] == 0.0 and default[0]["kd"] == 0.0
    assert crossed[0]["hidden"] > 0.0 and crossed[0]["attention"] > 0.0


# ---------------------------------------------------------------------------
# DistillationTrainer
# ---------------------------------------------------------------------------

def _trainer(tokenizer, tmp_path, student=None, **kwargs):
    teacher = tiny_bert(len(tokenizer), seed=0)
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
    narrow = tiny_bert(len(tokenizer), hidden=8, layers=1, heads=2, seed=1)
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
    expected, _ = distillation_objective(student(**inputs), teacher(**inputs), batch["labels"], 3.0, 0.25)
    assert torch.equal(loss, expected)


def test_distillation_trainer_rejects_bad_arguments(tokenizer, tmp_path):
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\], got 2"):
        _trainer(tokenizer, tmp_path, alpha=2)
    with pytest.raises(ValueError, match="temperature must be a finite number > 0, got 0"):
        _trainer(tokenizer, tmp_path, temperature=0)
