"""toolkit.qat: fake-quantized layers (STE), their conversion to packed layers, and QAT through distill_model.

Conversion tolerances come from float32 dot-product error bounds: a length-K float dot product is within
gamma_K * sum|x_k w_k| of the exact one (gamma_K = K u / (1 - K u), u = 2**-24), so two ways of computing
the same sum of products (float GEMM of Q(w), or codes then scale, or an exact int32 sum then scale)
differ by at most (2 K + 6) u * (sum|x_k w_k| + |b|), the extra terms for the scalings and the bias.
"""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from distillation import distill_model
from quantization import QuantizedVector
from toolkit.evaluation import load_texts, perplexity, tiny_model, trained_tiny_model
from toolkit.layers import QuantizedLinear, low_bit_quantize, quantize_model
from toolkit.qat import (FakeQuantLinear, convert_qat, fake_quantize_activations, fake_quantize_weight, prepare_qat,
                        qat_batches)
from toolkit.students import IntermediateLoss

U = 2.0**-24
# (format, prepare_qat options): every format and option the packed layer supports.
CASES = [("1.58bit", {}), ("1.58bit", {"per_row": False}), ("1.58bit", {"scale": "absmean"}),
         ("1.58bit", {"activation_bits": 8}),
         ("1bit", {}), ("1bit", {"per_row": False}), ("1bit", {"activation_bits": 8}),
         ("int4", {"group_size": 16}), ("int8", {})]
IDS = [f"{fmt}-{'-'.join(f'{k}={v}' for k, v in opts.items()) or 'default'}" for fmt, opts in CASES]


def mlp(seed: int = 0, width: int = 32) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(width, 48), nn.GELU(), nn.Linear(48, width, bias=False), nn.GELU(),
                         nn.Linear(width, 8))


def conversion_bound(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """(2 K + 6) u (|x| @ |w|^T + |b|) in float64: the largest float32 rounding gap between two
    evaluations of the same sum of products plus bias (module docstring)."""
    k = x.shape[-1]
    magnitude = x.double().abs() @ weight.double().abs().t()
    if bias is not None:
        magnitude = magnitude + bias.double().abs()
    return (2 * k + 6) * U * magnitude


def fake_inputs(layer: FakeQuantLinear, x: torch.Tensor) -> torch.Tensor:
    return fake_quantize_activations(x) if layer.activation_bits == 8 else x


# ---------------------------------------------------------------------------
# The quantizers and the straight-through estimator
# ---------------------------------------------------------------------------

def test_ternary_rule_is_absmean_with_the_lab_scale():
    torch.manual_seed(0)
    w = torch.randn(16, 40)
    codes, scale = low_bit_quantize(w, "1.58bit", per_row=False)
    gamma = 1 / QuantizedVector(w, "1.58bit").alpha  # the lab's per-tensor absmean
    assert torch.allclose(scale.double(), torch.full((16,), gamma, dtype=torch.float64), rtol=8 * U, atol=0)
    ratio = w / scale[:, None]
    expected = torch.where(ratio > 0.5, 1.0, torch.where(ratio < -0.5, -1.0, 0.0))
    assert torch.equal(codes, expected)
    row_codes, row_scale = low_bit_quantize(w, "1.58bit")
    assert torch.allclose(row_scale.double(), w.double().abs().mean(1), rtol=8 * U, atol=0)
    assert torch.equal(fake_quantize_weight(w, "1.58bit", scale="absmean"), row_codes * row_scale[:, None])
    sign_codes, sign_scale = low_bit_quantize(w, "1bit")
    assert torch.equal(sign_codes, torch.where(w < 0, -1.0, 1.0)) and torch.equal(sign_scale, row_scale)


@pytest.mark.parametrize("per_row", [True, False])
def test_fitted_scale_is_the_least_squares_scale_of_the_absmean_codes(per_row):
    torch.manual_seed(5)
    w = torch.randn(12, 64) * torch.rand(12, 1)
    codes, gamma = low_bit_quantize(w, "1.58bit", per_row=per_row)
    fit_codes, fit = low_bit_quantize(w, "1.58bit", per_row=per_row, scale="fit")
    assert torch.equal(fit_codes, codes)  # same codes, another scale
    dims = 1 if per_row else (0, 1)
    w64, c64 = w.double(), codes.double()
    best = ((w64 * c64).sum(dims) / (c64 * c64).sum(dims)).expand(12)  # argmin_s ||w - s c||^2
    assert torch.allclose(fit.double(), best, rtol=64 * 12 * U, atol=0)
    error = lambda s: ((w64 - s.double()[:, None] * c64) ** 2).sum()  # noqa: E731
    assert error(fit) < error(gamma)
    assert torch.equal(fake_quantize_weight(w, "1.58bit", per_row=per_row), fit_codes * fit[:, None])
    sign_fit = low_bit_quantize(w, "1bit", per_row=per_row, scale="fit")[1]  # every code kept: fit = gamma
    assert torch.allclose(sign_fit, low_bit_quantize(w, "1bit", per_row=per_row)[1], rtol=64 * 12 * U, atol=0)
    with pytest.raises(ValueError, match="scale must be one of"):
        low_bit_quantize(w, "1.58bit", scale="max")


def test_int_formats_reuse_the_packed_layers_weights():
    torch.manual_seed(1)
    linear = nn.Linear(64, 12)
    for fmt in ("int4", "int8"):
        packed = QuantizedLinear.from_linear(linear, fmt, None, group_size=32)
        assert torch.equal(fake_quantize_weight(linear.weight, fmt, group_size=32), packed.dequantized_weight())


@pytest.mark.parametrize("fmt,opts", CASES, ids=IDS)
def test_forward_uses_q_of_w_and_backward_is_straight_through(fmt, opts):
    torch.manual_seed(2)
    linear = nn.Linear(32, 8)
    layer = FakeQuantLinear.from_linear(linear, fmt, **opts)
    x = torch.randn(5, 32, requires_grad=True)
    out = layer(x)
    q = fake_quantize_weight(linear.weight, fmt, per_row=opts.get("per_row", True), scale=opts.get("scale", "fit"),
                             group_size=opts.get("group_size", 64))
    xq = fake_quantize_activations(x) if layer.activation_bits == 8 else x
    assert torch.equal(out, F.linear(xq, q, linear.bias))
    # STE: the gradient to the latent weight (and to x) is that of a linear layer holding Q(w).
    reference_w = q.clone().requires_grad_()
    reference_x = x.detach().clone().requires_grad_()
    grad_out = torch.randn_like(out)
    out.backward(grad_out)
    xq_ref = fake_quantize_activations(reference_x) if layer.activation_bits == 8 else reference_x
    F.linear(xq_ref, reference_w, linear.bias).backward(grad_out)
    assert torch.equal(linear.weight.grad, reference_w.grad)
    assert torch.equal(x.grad, reference_x.grad)


@settings(max_examples=30, deadline=None)
@given(rows=st.integers(1, 6), features=st.integers(1, 40), seed=st.integers(0, 2**16), scale=st.floats(1e-3, 1e3))
def test_activation_fake_quantization_is_per_token_absmax_with_identity_gradient(rows, features, seed, scale):
    x = (torch.randn(rows, features, generator=torch.Generator().manual_seed(seed)) * scale).requires_grad_()
    xq = fake_quantize_activations(x)
    absmax = x.detach().abs().amax(1, keepdim=True)
    codes = xq.detach() / (absmax / 127)
    assert torch.equal(codes.round(), codes.round().clamp(-127, 127))
    # each value within half a step of the input (plus the float32 rounding of the product)
    assert bool(((xq - x).abs() <= absmax / 254 * (1 + 4 * U)).all())
    xq.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))


def test_warmup_blends_float_and_quantized_weights_over_training_steps():
    torch.manual_seed(3)
    linear = nn.Linear(16, 4)
    layer = FakeQuantLinear.from_linear(linear, "1.58bit", warmup_steps=4)
    x = torch.randn(3, 16)
    w = linear.weight.detach()
    q = fake_quantize_weight(w, "1.58bit")
    assert torch.equal(layer(x), F.linear(x, w, linear.bias))  # lam = 0: the float layer
    for step in range(1, 6):
        assert layer.step == step and layer.blend == min(1.0, step / 4)
        with torch.no_grad():
            layer.eval()
            expected = F.linear(x, w + layer.blend * (q - w), linear.bias)
            assert torch.allclose(layer(x), expected, rtol=0, atol=1e-6)
            assert layer.step == step  # eval calls do not advance the warm-up
        layer.train()
        layer(x)
    assert torch.equal(layer.quantized_weight().detach(), q)


# ---------------------------------------------------------------------------
# convert_qat
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("fmt,opts", CASES, ids=IDS)
def test_converted_layer_matches_the_fake_quantized_one_within_float_rounding(fmt, opts):
    model = prepare_qat(mlp(), fmt, skip=(), verbose=False, **opts)
    x = torch.randn(2, 7, 32) * 3
    fake = {name: (layer, layer.quantized_weight().detach()) for name, layer in model.named_modules()
            if isinstance(layer, FakeQuantLinear)}
    inputs = {}
    hooks = [layer.register_forward_pre_hook(lambda m, a, n=name: inputs.__setitem__(n, a[0]))
             for name, (layer, _) in fake.items()]
    with torch.no_grad():
        model(x)
    for hook in hooks:
        hook.remove()
    convert_qat(model, verbose=False)
    for name, (layer, weight) in fake.items():
        packed = model.get_submodule(name)
        assert isinstance(packed, QuantizedLinear) and packed.quantization_format == fmt
        assert packed.activation_bits == (8 if opts.get("activation_bits") else None)
        with torch.no_grad():
            xq = fake_inputs(layer, inputs[name])
            expected = F.linear(xq, weight, layer.bias)
            got = packed(inputs[name])
        gap = (got.double() - expected.double()).abs()
        assert bool((gap <= conversion_bound(xq, weight, layer.bias)).all()), float(gap.max())
    assert not any(isinstance(m, FakeQuantLinear) for m in model.modules())


@pytest.mark.parametrize("fmt", ["1.58bit", "1bit"])
def test_w_a8_layer_computes_exact_int32_products_then_scales(fmt):
    torch.manual_seed(4)
    layer = QuantizedLinear.from_linear(nn.Linear(96, 24), fmt, activation_bits=8)
    x = torch.randn(3, 5, 96)
    x_codes = torch.round(x.reshape(-1, 96) * (127 / x.reshape(-1, 96).abs().amax(1, keepdim=True)))
    exact = x_codes.double() @ layer.weight_codes().double().t()  # integers, exact in float64
    scale = (x.reshape(-1, 96).abs().amax(1, keepdim=True).double() / 127) * layer.weight_scale.double()
    expected = (exact * scale + layer.bias.double()).reshape(3, 5, 24)
    # float32: one rounding of the int32 sum, two of the scales, one of the bias sum
    bound = 6 * U * (exact.abs() * scale + layer.bias.double().abs()).reshape(3, 5, 24)
    assert bool(((layer(x).double() - expected).abs() <= bound).all())
    assert "activation_bits=8" in repr(layer)
    with pytest.raises(ValueError, match="activation_bits must be None or 8"):
        QuantizedLinear(8, 4, "int4", activation_bits=8)


def test_converted_state_dict_holds_the_packed_bytes():
    model = convert_qat(prepare_qat(mlp(), "1.58bit", skip=(), verbose=False), verbose=False)
    state = model.state_dict()
    assert state["0.weight_packed"].dtype == torch.uint8 and state["0.weight_packed"].numel() == 48 * 32 // 4
    assert "0.weight" not in state and state["0.weight_scale"].shape == (48,)
    assert model.quantization_report["format"] == "1.58bit" and not hasattr(model, "qat_config")


# ---------------------------------------------------------------------------
# Refusals and edges
# ---------------------------------------------------------------------------

def test_prepare_refuses_quantized_prepared_and_empty_models():
    with pytest.raises(ValueError, match="already quantized"):
        prepare_qat(quantize_model(mlp(), "1.58bit", skip=(), verbose=False), "1.58bit")
    with pytest.raises(ValueError, match="already quantized or prepared"):
        prepare_qat(prepare_qat(mlp(), "1bit", verbose=False), "1bit")
    with pytest.raises(ValueError, match="no target nn.Linear"):
        prepare_qat(nn.Sequential(nn.Conv1d(2, 2, 1)), "1.58bit")
    with pytest.raises(ValueError, match="no target nn.Linear"):
        prepare_qat(mlp(), "1.58bit", skip=["0", "2", "4"])
    with pytest.raises(ValueError, match="Unsupported quantization format"):
        prepare_qat(mlp(), "fp16")
    with pytest.raises(ValueError, match="weight-only"):
        prepare_qat(mlp(), "int4", activation_bits=8)
    with pytest.raises(ValueError, match="warmup_steps"):
        prepare_qat(mlp(), "1.58bit", warmup_steps=-1)
    with pytest.raises(ValueError, match="does not divide"):
        prepare_qat(mlp(), "int4", skip=(), group_size=64)
    with pytest.raises(ValueError, match="reads its .weight directly"):
        prepare_qat(nn.Sequential(nn.MultiheadAttention(8, 2), nn.Linear(8, 8)), "1bit", skip=())


def test_prepare_keeps_the_head_and_parameters_and_shares_tied_layers():
    model, _ = tiny_model("causal")
    names = [name for name, _ in model.named_parameters()]
    prepare_qat(model, "1.58bit", verbose=False)
    assert [name for name, _ in model.named_parameters()] == names
    assert type(model.lm_head) is nn.Linear and "lm_head" not in model.qat_config["prepared"]
    shared = nn.Linear(8, 8)
    net = prepare_qat(nn.ModuleDict({"a": shared, "b": shared}), "1bit", skip=(), verbose=False)
    assert net["a"] is net["b"] and isinstance(net["a"], FakeQuantLinear)


def test_convert_refuses_unprepared_models_and_unfinished_warmup():
    with pytest.raises(ValueError, match="never prepared"):
        convert_qat(mlp())
    model = prepare_qat(mlp(), "1.58bit", warmup_steps=3, verbose=False)
    with pytest.raises(ValueError, match="still in warm-up"):
        convert_qat(model)


# ---------------------------------------------------------------------------
# Training through distill_model
# ---------------------------------------------------------------------------

def lm_batches(tokenizer, n: int, length: int = 32):
    return qat_batches(tokenizer, load_texts("train", source="local", limit=400), n, seq_len=length)


@pytest.fixture(scope="module")
def teacher():
    # The shipped tiny Llama has learned the corpus: ternary weights hurt it, so QAT has a gap to close
    # (a briefly pretrained teacher is near uniform, and its KD loss is noise at 1e-4).
    return trained_tiny_model("causal")


def test_qat_trains_the_quantized_student_and_leaves_the_teacher_bit_identical(teacher):
    model, tokenizer = teacher
    student_hooks = [dict(m._forward_hooks) for m in model.modules()]
    before = {name: p.detach().clone() for name, p in model.state_dict().items()}
    student = prepare_qat(copy.deepcopy(model), "1.58bit", verbose=False)
    student.eval()
    history = []
    texts = load_texts("test", source="local", limit=30)
    score = lambda m: perplexity(m, tokenizer, texts, max_length=64, progress=False)  # noqa: E731
    before_training = score(student)
    distill_model(model, student, lm_batches(tokenizer, 60, length=64), 1.0, 1.0, 2, 3e-4, progress=False,
                  history=history)
    assert all(torch.equal(before[name], p) for name, p in model.state_dict().items())
    assert not student.training  # back in the mode it came in; distill_model leaves the teacher in eval
    assert not model.training and [dict(m._forward_hooks) for m in model.modules()] == student_hooks
    assert all(p.requires_grad for p in student.parameters())
    assert history[1]["kd"] < history[0]["kd"]  # the ternary student moves towards the teacher
    assert score(student) < before_training
    assert all(layer.step == 120 for layer in student.modules() if isinstance(layer, FakeQuantLinear))


def test_hidden_state_terms_come_from_intermediate_loss(teacher):
    model, tokenizer = teacher
    student = prepare_qat(copy.deepcopy(model), "1bit", activation_bits=8, verbose=False)
    extra = IntermediateLoss(model, student, hidden_weight=1.0)
    history = []
    distill_model(model, student, lm_batches(tokenizer, 3), 2.0, 0.5, 1, 1e-4, progress=False,
                  extra_loss=extra, model_kwargs=extra.model_kwargs, history=history)
    assert {"kd", "ce", "hidden"} <= set(history[0]) and history[0]["hidden"] > 0


def test_non_finite_loss_stops_training_with_the_step(teacher):
    model, tokenizer = teacher
    student = prepare_qat(copy.deepcopy(model), "int8", verbose=False)
    batches = lm_batches(tokenizer, 3)
    with torch.no_grad():
        student.lm_head.weight[0, 0] = float("nan")  # the float head: the loss goes NaN
    with pytest.raises(FloatingPointError, match="batch 1"):
        distill_model(model, student, batches, 1.0, 1.0, 1, 3e-4, progress=False)
    assert not student.training


def test_a_non_finite_quantized_weight_is_refused_by_the_lab_quantizer(teacher):
    model, tokenizer = teacher
    student = prepare_qat(copy.deepcopy(model), "int8", verbose=False)
    with torch.no_grad():
        student.model.layers[0].mlp.down_proj.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="not supported"):
        distill_model(model, student, lm_batches(tokenizer, 1), 1.0, 1.0, 1, 3e-4, progress=False)
    assert not student.training


# ---------------------------------------------------------------------------
# distill_model's provided options: optimizer, lr_schedule, max_grad_norm
# ---------------------------------------------------------------------------

def classifier_setup(seed: int = 0):
    torch.manual_seed(seed)
    teacher, student = nn.Linear(6, 3), nn.Linear(6, 3)
    data = [(torch.randn(4, 6), torch.randint(0, 3, (4,))) for _ in range(3)]
    return teacher, student, data


def test_default_optimizer_is_plain_adam_at_the_learning_rate():
    teacher, student, data = classifier_setup()
    other = copy.deepcopy(student)
    distill_model(teacher, student, data, 2.0, 0.5, 2, 1e-2, progress=False)
    distill_model(teacher, other, data, 2.0, 0.5, 2, 1e-2, progress=False, optimizer=torch.optim.Adam,
                  lr_schedule=lambda step: 1.0)
    assert all(torch.equal(a, b) for a, b in zip(student.parameters(), other.parameters()))


def test_optimizer_schedule_and_clipping_give_the_sgd_updates_they_describe():
    teacher, student, data = classifier_setup(1)
    start = copy.deepcopy(student)
    sgd = lambda params, lr: torch.optim.SGD(params, lr)  # noqa: E731
    distill_model(teacher, student, data[:1], 1.0, 1.0, 3, 0.1, progress=False, optimizer=sgd,
                  lr_schedule=lambda step: 0.5 if step == 0 else 0.0, max_grad_norm=1e-3)
    # step 1 at lr 0.05 with a gradient clipped to norm 1e-3; steps 2 and 3 at lr 0
    moved = torch.cat([(p - q).detach().flatten() for p, q in zip(student.parameters(), start.parameters())])
    # each float32 update p - lr * g rounds by at most u |p|; clip_grad_norm_ divides by norm + 1e-6
    size = float(torch.cat([p.detach().flatten() for p in start.parameters()]).norm())
    assert float(moved.norm()) == pytest.approx(0.05 * 1e-3, rel=2e-6, abs=2 * U * size)
    with pytest.raises(ValueError, match="max_grad_norm"):
        distill_model(teacher, student, data, 1.0, 1.0, 1, 0.1, max_grad_norm=0.0)


def test_qat_batches_are_windows_of_text_masked_for_bert():
    _, tokenizer = tiny_model("masked")
    texts = load_texts("train", source="local", limit=200)
    causal = qat_batches(tokenizer, texts, 5, batch_size=3, seq_len=16)
    assert len(causal) == 5 and all(torch.equal(b["input_ids"], b["labels"]) for b in causal)
    assert causal[0]["input_ids"].shape == (3, 16)
    masked = torch.cat([b["input_ids"] for b in qat_batches(tokenizer, texts, 40, seq_len=16, kind="masked")])
    labels = torch.cat([b["labels"] for b in qat_batches(tokenizer, texts, 40, seq_len=16, kind="masked")])
    changed = masked != labels
    assert bool((masked[changed] == tokenizer.mask_token_id).all())
    assert 0.08 < float(changed.float().mean()) < 0.2  # 15% of the 14 ordinary tokens of each 16-token window
    with pytest.raises(ValueError, match="steps must be an int >= 1"):
        qat_batches(tokenizer, texts, 0)
