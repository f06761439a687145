"""Quantization-aware training (QAT): fake-quantized linears trained by the lab's `distill_model`.

- `prepare_qat(model, format)`: swaps the target linears for `FakeQuantLinear`, which keeps the float
  (latent) weight and computes with its quantized value through a straight-through estimator (STE):
  the forward sees `Q(w)`, the backward treats `Q` as the identity, `w + (Q(w) - w).detach()`.
  Formats: '1.58bit' (absmean ternary codes, least-squares scale), '1bit' (sign * mean|w|), 'int4' (group-wise,
  `toolkit.int4`'s codes), 'int8' (absmax per output row, with int8 activations). Optional 8-bit
  per-token absmax activations (BitNet b1.58) with their own STE, and a warm-up that blends float
  and quantized weights, `w + lam * (Q(w) - w).detach()`, lam from 0 to 1.
- `convert_qat(model)`: replaces each `FakeQuantLinear` with the packed `toolkit.layers.QuantizedLinear`
  of its format, which computes the same outputs up to float rounding.

Training is `distillation.distill_model(teacher, prepare_qat(student, fmt), batches, ...)`: the frozen
fp32 model is the teacher (Polino et al., 2018; TernaryBERT; BitDistill); hidden-state terms come from
`toolkit.students.IntermediateLoss` as its `extra_loss`. There is no second training loop here.

It does not learn scales or clipping ranges (LSQ, PACT), insert extra norms (BitDistill's SubLN), or
quantize embeddings and the output head (skipped, as `quantize_model` skips the head).
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from quantization import absmax_quantize, check_format
from toolkit.calibration import calibration_batches
from toolkit.int4 import check_group_size, int4_dequantize, int4_quantize
from toolkit.layers import LOW_BIT_SCALES, QuantizedLinear, linear_targets, low_bit_quantize

QAT_FORMATS = ("1.58bit", "1bit", "int4", "int8")


def qat_batches(tokenizer, texts: list[str], steps: int, *, batch_size: int = 2, seq_len: int = 128,
                kind: str = "causal", mask_prob: float = 0.15, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """`steps` training batches for `distill_model`: consecutive windows of the texts, cycled if too few.

    Causal: `{'input_ids', 'labels'}` with labels = input_ids (distill_model shifts them). Masked
    (BERT): a seeded `mask_prob` of the non-special tokens become [MASK] in `input_ids`, and `labels`
    hold the original ids everywhere, so the teacher's distribution is distilled at every position.

    Args:
        tokenizer, texts: as `toolkit.calibration.calibration_batches`.
        steps: batches to return (>= 1); batch_size, seq_len: their shape.
        kind: 'causal' or 'masked'.

    Returns:
        list of `steps` dicts of int64 (batch_size, seq_len) tensors.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    windows = torch.cat(calibration_batches(tokenizer, texts, n_samples=steps * batch_size, seq_len=seq_len,
                                            batch_size=batch_size, kind=kind))
    windows = windows.repeat(-(-steps * batch_size // len(windows)), 1)[:steps * batch_size]
    inputs = windows.clone()
    if kind == "masked":
        special = torch.tensor(tokenizer.get_special_tokens_mask(windows.flatten().tolist(),
                                                                 already_has_special_tokens=True)).view_as(windows)
        draw = torch.rand(windows.shape, generator=torch.Generator().manual_seed(seed))
        inputs[(draw < mask_prob) & (special == 0)] = tokenizer.mask_token_id
    return [{"input_ids": x, "labels": y} for x, y in zip(inputs.split(batch_size), windows.split(batch_size))]


def fake_quantize_weight(weight: torch.Tensor, quantization_format: str, *, per_row: bool = True,
                         scale: str = "fit", group_size: int = 64) -> torch.Tensor:
    """Q(w): the float32 weight the packed `QuantizedLinear` of `quantization_format` represents.

    '1.58bit' / '1bit': `low_bit_quantize` codes times their scale ('fit' or 'absmean', per row or tensor);
    'int4': `int4_dequantize(int4_quantize(w, group_size))`; 'int8': absmax codes per row times absmax / 127.

    Args:
        weight: floating tensor (out_features, in_features).

    Returns:
        float32 tensor (out_features, in_features), no gradient.
    """
    with torch.no_grad():
        if quantization_format == "int4":
            return int4_dequantize(*int4_quantize(weight, group_size))
        if quantization_format == "int8":
            codes, absmax = absmax_quantize(weight.detach(), dim=1)
            return codes.float() * (absmax / 127)
        codes, gamma = low_bit_quantize(weight, quantization_format, per_row=per_row, scale=scale)
        return codes * gamma[:, None]


def fake_quantize_activations(x: torch.Tensor) -> torch.Tensor:
    """8-bit absmax per token with an STE: the forward sees `codes * absmax / 127` of each row of
    `x` (..., features) (`quantization.absmax_quantize`), the backward the identity. float32."""
    with torch.no_grad():
        codes, absmax = absmax_quantize(x.reshape(-1, x.shape[-1]), dim=1)
        quantized = (codes.float() * (absmax / 127)).reshape(x.shape)
    return quantized + (x - x.detach())  # exactly the quantized value; gradient 1 to x


class FakeQuantLinear(nn.Linear):
    """An `nn.Linear` whose forward uses its quantized weight through a straight-through estimator.

    `weight` (out, in) stays a float parameter (the latent weight the optimizer updates); the forward
    computes `F.linear(x', w')` with `w' = w + lam * (Q(w) - w).detach()` (`fake_quantize_weight`, Q
    recomputed from the current w on every call) and `x'` = x, or its 8-bit per-token fake quantization
    when `activation_bits == 8`. lam = min(1, step / warmup_steps) (1 without warm-up); `step` counts the
    forward calls made in training mode (one per `distill_model` step), so eval-mode calls leave it.

    Build one with `from_linear`; `convert_qat` turns it into the packed `QuantizedLinear`.
    """

    def __init__(self, in_features: int, out_features: int, quantization_format: str, *, bias: bool = True,
                 per_row: bool = True, scale: str = "fit", group_size: int = 64,
                 activation_bits: int | None = None, warmup_steps: int = 0, device=None, dtype=None) -> None:
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.quantization_format = quantization_format
        self.per_row = per_row
        self.scale = scale
        self.group_size = group_size
        self.activation_bits = activation_bits
        self.warmup_steps = warmup_steps
        self.step = 0

    @classmethod
    def from_linear(cls, linear: nn.Linear, quantization_format: str, **options) -> FakeQuantLinear:
        """A fake-quantized layer sharing `linear`'s weight and bias parameters (options as the constructor)."""
        layer = cls(linear.in_features, linear.out_features, quantization_format, bias=linear.bias is not None,
                    device="meta", **options)
        layer.weight, layer.bias = linear.weight, linear.bias
        return layer

    @property
    def blend(self) -> float:
        """lam: the weight of the quantized value in this step's weight (1.0 once warm-up is over)."""
        return 1.0 if self.step >= self.warmup_steps else self.step / self.warmup_steps

    def quantized_weight(self) -> torch.Tensor:
        """The weight of the forward pass, with the STE's gradient to `weight`; in the weight's dtype."""
        w = self.weight
        q = fake_quantize_weight(w, self.quantization_format, per_row=self.per_row, scale=self.scale,
                                 group_size=self.group_size).to(w.dtype)
        lam = self.blend
        # Q(w) exactly once lam = 1 (w + (Q - w) could round differently); the gradient to w is the identity.
        value = q if lam == 1.0 else w.detach() + lam * (q - w.detach())
        return value + (w - w.detach())

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        weight = self.quantized_weight()
        if self.training and torch.is_grad_enabled():
            self.step += 1
        if self.activation_bits == 8:
            input = fake_quantize_activations(input).to(input.dtype)
        return F.linear(input, weight, self.bias)

    def extra_repr(self) -> str:
        options = f", per_row={self.per_row}, scale={self.scale!r}" if self.quantization_format in ("1.58bit", "1bit") else ""
        if self.quantization_format == "int4":
            options = f", group_size={self.group_size}"
        return (f"{super().extra_repr()}, format={self.quantization_format!r}{options}, "
                f"activation_bits={self.activation_bits}, warmup_steps={self.warmup_steps}, step={self.step}")


def _refuse_quantized(model: nn.Module) -> None:
    """A model that is already quantized, or prepared, cannot be prepared again."""
    for name, module in model.named_modules():
        if isinstance(module, (QuantizedLinear, FakeQuantLinear)):
            raise ValueError(f"{name or 'the model'} is already a {type(module).__name__}: the model is already "
                             "quantized or prepared for QAT; prepare a float copy of it instead")
        if isinstance(module, nn.Linear) and (type(module).__module__.startswith("bitsandbytes")
                                              or not module.weight.is_floating_point()):
            raise ValueError(f"{name} is a {type(module).__name__} with {module.weight.dtype} weights: the model "
                             "is already quantized; prepare_qat needs float nn.Linear layers")
    if getattr(model, "quantization_report", None) is not None or getattr(model, "is_quantized", False):
        raise ValueError("the model is already quantized; prepare_qat needs a float model")


def _check_options(quantization_format: str, activation_bits: int | None, warmup_steps: int) -> int | None:
    check_format(quantization_format, QAT_FORMATS)
    if quantization_format == "int8":
        if activation_bits not in (None, 8):
            raise ValueError("'int8' trains with 8-bit activations (its packed layer quantizes them per token); "
                             f"activation_bits must be None or 8, got {activation_bits!r}")
        activation_bits = 8
    elif activation_bits is not None and (activation_bits != 8 or quantization_format == "int4"):
        raise ValueError(f"activation_bits must be None or 8 ('1.58bit' and '1bit' only: the int4 layer is "
                         f"weight-only), got {activation_bits!r} for {quantization_format!r}")
    if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
        raise ValueError(f"warmup_steps must be an int >= 0, got {warmup_steps!r}")
    return activation_bits


def _parent_reads_weight(model: nn.Module) -> set[nn.Module]:
    """Linears whose `.weight` a parent reads directly (its fake quantization would be bypassed)."""
    found = set()
    for module in model.modules():
        if isinstance(module, nn.MultiheadAttention):
            found.add(module.out_proj)
        if isinstance(module, nn.TransformerEncoderLayer) and module.self_attn.batch_first:
            found.update((module.linear1, module.linear2))
    return found


def _replace(model: nn.Module, old: nn.Module, new: nn.Module) -> list[str]:
    """Put `new` under every name `old` is registered at; returns those names."""
    names = [name for name, module in model.named_modules(remove_duplicate=False) if module is old]
    for name in names:
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, new)
    return names


def prepare_qat(
    model: nn.Module,
    quantization_format: str,
    *,
    skip: str | Iterable[str] | None = None,
    per_row: bool = True,
    scale: str = "fit",
    group_size: int = 64,
    activation_bits: int | None = None,
    warmup_steps: int = 0,
    verbose: bool = True,
) -> nn.Module:
    """Replace the target linears of `model` with `FakeQuantLinear`, in place, ready for QAT.

    The targets are the toolkit's (`toolkit.layers.linear_targets`): every `nn.Linear` but the skipped
    ones (by default the output head). The new layers share the old ones' weight and bias parameters,
    so parameter names, `state_dict` keys and optimizers built afterwards are those of the float model.
    Train with `distill_model(teacher, model, batches, temperature, alpha, epochs, lr)`, the teacher an
    unprepared copy; then `convert_qat(model)` packs it.

    Defaults: the lab's absmean ternary codes with one scale per output row (TernaryBERT's per-row
    ternarization; one per tensor, `per_row=False`, is BitNet b1.58's pretraining rule and the lab's
    `QuantizedVector`), the scale fitted to the codes by least squares (`scale='fit'`: the mean |w| of
    the weights coded +-1, TWN's and TernaryBERT's alpha; BitNet's gamma = mean|w|, `scale='absmean'`,
    shrinks every output by ~25% on Gaussian-like weights, an error QAT would first have to undo), and
    both recomputed from the latent weights at every step; weight-only; no warm-up (a warm-up longer
    than the training run would leave the model partly float).

    Args:
        model: a float model (e.g. a Hugging Face LM), not quantized or prepared before.
        quantization_format: '1.58bit', '1bit', 'int4' or 'int8'.
        skip: layers kept in float, as `linear_targets`: None keeps the output head, `()` keeps none.
        per_row: '1.58bit' / '1bit': one scale per output row (True) or per tensor.
        scale: '1.58bit' / '1bit': 'fit' (least squares for the absmean codes) or 'absmean' (gamma).
        group_size: 'int4': weights per group, must divide every target's in_features.
        activation_bits: None (weight-only) or 8 (absmax per token, BitNet b1.58's A8), for '1.58bit'
            and '1bit'; 'int8' always uses 8 (its packed layer quantizes activations per token).
        warmup_steps: blend float and quantized weights with lam = step / warmup_steps over this many
            training steps (0: fully quantized from the first step).
        verbose: print one line saying how many layers were prepared.

    Returns:
        `model` itself; `model.qat_config` records the format, options and the prepared layer names.

    Raises:
        ValueError: unknown format or option, a model already quantized or prepared, no target linear,
            a target whose `.weight` its parent reads directly (add it to `skip`), or (int4) a
            group_size that does not divide a target's in_features.

    >>> import torch.nn as nn
    >>> net = prepare_qat(nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2)), "1.58bit", verbose=False)
    >>> type(net[0]).__name__, net[0].quantization_format
    ('FakeQuantLinear', '1.58bit')
    """
    activation_bits = _check_options(quantization_format, activation_bits, warmup_steps)
    if scale not in LOW_BIT_SCALES:
        raise ValueError(f"scale must be one of {LOW_BIT_SCALES}, got {scale!r}")
    if isinstance(model, nn.Linear):
        raise ValueError("prepare_qat replaces the layers inside a model; wrap a lone nn.Linear in a module, "
                         "or use FakeQuantLinear.from_linear")
    _refuse_quantized(model)
    targets = linear_targets(model, skip)
    if not targets:
        raise ValueError(f"no target nn.Linear in {type(model).__name__} (all skipped, or none at all): "
                         "there is nothing to quantize")
    bypassed = _parent_reads_weight(model)
    for name, layer in targets.items():
        if layer in bypassed:
            raise ValueError(f"{name}'s parent reads its .weight directly, so its fake quantization would be "
                             f"bypassed; keep it in float with skip=[..., {name!r}]")
        if quantization_format == "int4":
            check_group_size(layer.in_features, group_size)
    options = dict(per_row=per_row, scale=scale, group_size=group_size, activation_bits=activation_bits,
                   warmup_steps=warmup_steps)
    prepared = []
    for layer in targets.values():
        prepared += _replace(model, layer, FakeQuantLinear.from_linear(layer, quantization_format, **options))
    model.qat_config = {"format": quantization_format, **options, "prepared": prepared}
    if verbose:
        print(f"prepare_qat: {len(targets)} nn.Linear layers fake-quantized to {quantization_format}"
              f"{' with 8-bit activations' if activation_bits else ''}")
    return model


def convert_qat(model: nn.Module, *, verbose: bool = True) -> nn.Module:
    """Replace every `FakeQuantLinear` of a prepared `model` with its packed `QuantizedLinear`, in place.

    The codes come from the trained latent weights by the same rule the forward used, so the converted
    model computes the fake-quantized model's outputs up to float rounding ('int4' exactly the same
    weights; '1.58bit' / '1bit' with 8-bit activations as W1.58A8 / W1A8 through the exact int8 GEMM;
    'int8' as the pure-int8 `mixed_precision_forward`, threshold None). Its `state_dict` holds the
    packed codes and scales; `model.quantization_report` replaces `model.qat_config`.

    Args:
        model: a model returned by `prepare_qat` (trained or not), with its warm-up finished.
        verbose: print one line saying how many layers were converted.

    Returns:
        `model` itself.

    Raises:
        ValueError: the model was never prepared (no `FakeQuantLinear`), or a layer is still in warm-up
            (lam < 1: its forward is not the quantized model yet).

    >>> import torch, torch.nn as nn
    >>> net = prepare_qat(nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2)), "1bit", verbose=False)
    >>> x = torch.randn(3, 8)
    >>> fake = net(x)
    >>> packed = convert_qat(net, verbose=False)
    >>> type(packed[0]).__name__, torch.allclose(packed(x), fake, atol=1e-6)
    ('QuantizedLinear', True)
    """
    layers = {module: name for name, module in model.named_modules() if isinstance(module, FakeQuantLinear)}
    if not layers:
        raise ValueError(f"{type(model).__name__} has no FakeQuantLinear: it was never prepared with prepare_qat")
    for layer, name in layers.items():
        if layer.blend < 1.0:
            raise ValueError(f"{name} is still in warm-up (step {layer.step} of {layer.warmup_steps}, lam "
                             f"{layer.blend:.3f} < 1): train at least warmup_steps steps before converting")
    replaced = []
    for layer in layers:
        linear = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None, device="meta")
        linear.weight, linear.bias = layer.weight, layer.bias
        fmt = layer.quantization_format
        packed = QuantizedLinear.from_linear(
            linear, fmt, None if fmt == "int8" else 6.0, group_size=layer.group_size, per_row=layer.per_row,
            scale=layer.scale, activation_bits=layer.activation_bits if fmt in ("1.58bit", "1bit") else None)
        replaced += _replace(model, layer, packed)
    config = getattr(model, "qat_config", {})
    model.__dict__.pop("qat_config", None)
    model.quantization_report = {"format": config.get("format"), "threshold": None, "replaced": replaced,
                                 "skipped": [], "skip_reasons": {}, "qat": config}
    if verbose:
        print(f"convert_qat: {len(layers)} layers packed as QuantizedLinear")
    return model
