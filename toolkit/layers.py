"""Quantized layers and models, built on the lab's `quantization.py`.

- `QuantizedLinear`: an `nn.Linear` replacement that stores the compressed
  weight as buffers (fp16, int8 per output channel, 2-bit packed ternary,
  1-bit packed sign), so `state_dict()` holds the real bytes; int8 computes
  through the lab's `mixed_precision_forward`.
- `quantize_model`: swaps the `nn.Linear` layers of a model for `QuantizedLinear`.
- 'int4': group-wise asymmetric 4-bit weights (`toolkit.int4.int4_quantize`), round-to-nearest with
  optional per-group clipping ratios. The activation-aware search that finds them is a method of its
  own, `toolkit.awq.awq_quantize` (`quantize_model(..., calibration=batches)` is its shortcut).
- The skip rule and `linear_targets` live in `toolkit.targets` (re-exported here).

It does not train or fine-tune quantized weights (`toolkit.qat` does, and converts to these
layers). The 1.58-bit and 1-bit layers are weight-only unless built with `activation_bits=8`
(W1.58A8 / W1A8: int8 activation codes times the weight codes, exact in int32). Sizes are measured by `toolkit.evaluation.model_size_mb`, which
counts parameters and buffers: honest here because the buffers are the packed codes.

Guarantees:
- `QuantizedLinear` accepts floating inputs only: integer or bool inputs raise the ValueError
  of the int8 kernel in every format. Float casts of a module (`.to(dtype)`, `.half()`,
  `.float()`) keep the storage dtypes (fp16 weight, int8/uint8 codes, scales) bit for bit;
  only the bias follows, and the compute dtype always follows the input.
- `quantize_model` leaves the model's forward working: a single string `skip` is one name;
  a layer registered under several names becomes one quantized layer under all of them;
  layers whose `.weight` a parent reads directly (`nn.MultiheadAttention.out_proj`, the
  linears of a batch_first `nn.TransformerEncoderLayer`) stay in float, with the reason in
  `quantization_report['skip_reasons']`.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from quantization import (FORMATS, absmax_quantize, check_format, check_threshold, int8_matmul,
                          mixed_precision_forward)
from toolkit.int4 import check_group_size, int4_dequantize, int4_quantize
from toolkit.packing import pack_bits, unpack_bits
from toolkit.targets import DEFAULT_SKIP, is_skipped, linear_targets, skip_names  # noqa: F401 (the skip rule, re-exported)

# ---------------------------------------------------------------------------
# Beyond the exercises: a quantized layer and a quantized model
# ---------------------------------------------------------------------------

# Bits per packed code: ternary codes take 2 bits (4 per byte), sign codes 1 (8 per byte).
_PACKED_BITS = {"1.58bit": 2, "1bit": 1}
# The formats of QuantizedLinear: the lab's, plus group-wise 4-bit (weight-only, toolkit only).
LAYER_FORMATS = (*FORMATS, "int4")
# The integer dtype of each element size: float storage travels through casts as these (`_apply`).
_SAME_SIZE_INT = {2: torch.int16, 4: torch.int32, 8: torch.int64}


def _pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack codes in {-1, 0, 1} (bits=2) or {-1, 1} (bits=1) into a flat uint8 tensor.

    Field values: 2 bits hold code + 1 (0, 1, 2); 1 bit holds 1 for +1 and 0 for -1.
    Layout as in `toolkit.packing.pack_bits`: ceil(n * bits / 8) bytes.
    """
    return pack_bits(codes + 1 if bits == 2 else codes > 0, bits)


LOW_BIT_SCALES = ("absmean", "fit")


def low_bit_quantize(weight: torch.Tensor, quantization_format: str, *, per_row: bool = True,
                     scale: str = "absmean") -> tuple[torch.Tensor, torch.Tensor]:
    """The absmean codes of the '1.58bit' and '1bit' formats, and their scale, `w ~ scale * code`.

    gamma = mean|w| of each output row (`per_row`) or of the whole tensor (BitNet b1.58's one scale);
    '1.58bit': codes = clip(round(w / gamma), -1, 1); '1bit': codes = sign(w), zero -> +1.
    A zero row (or tensor) has gamma 0 and ternary codes 0. The scale is gamma ('absmean', BitNet's),
    or 'fit': the least-squares scale of these codes, sum |w| |code| / sum |code| = the mean |w| of
    the weights coded +-1 (TWN's and TernaryBERT's alpha; for '1bit' it equals gamma). For Gaussian
    weights the kept ones average about 1.34 gamma, so 'absmean' shrinks every output by about 25%.

    Args:
        weight: floating tensor (out_features, in_features); the arithmetic runs in float32.
        quantization_format: '1.58bit' or '1bit'.
        per_row: one scale per output row (default) or one for the tensor, repeated per row.
        scale: 'absmean' (default) or 'fit'.

    Returns:
        (codes float32 (out, in) in {-1, 0, 1}, scale float32 (out,)).

    Raises:
        ValueError: another format or scale, or a weight that is not 2-d.
    """
    check_format(quantization_format, tuple(_PACKED_BITS))
    if scale not in LOW_BIT_SCALES:
        raise ValueError(f"scale must be one of {LOW_BIT_SCALES}, got {scale!r}")
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-d (out_features, in_features), got shape {tuple(weight.shape)}")
    w = weight.detach().float()
    gamma = w.abs().mean(dim=1, keepdim=True) if per_row else w.abs().mean().expand(w.shape[0], 1)
    if quantization_format == "1.58bit":
        # A zero row has gamma 0; dividing by 1 instead keeps its codes 0.
        codes = (w / torch.where(gamma > 0, gamma, 1.0)).round_().clamp_(-1, 1)
    else:
        codes = torch.where(w < 0, -1.0, 1.0)
    if scale == "fit":
        kept = codes.abs()
        dims = (1,) if per_row else (0, 1)
        fitted = (w.abs() * kept).sum(dims, keepdim=True) / kept.sum(dims, keepdim=True).clamp(min=1)
        gamma = fitted.expand(w.shape[0], 1)
    return codes, gamma.squeeze(1).contiguous()


def _unpack_codes(packed: torch.Tensor, bits: int, numel: int) -> torch.Tensor:
    """Inverse of `_pack_codes`: the first `numel` codes as a flat int8 tensor."""
    fields = unpack_bits(packed, bits, numel).to(torch.int8)
    return fields - 1 if bits == 2 else fields * 2 - 1


class QuantizedLinear(nn.Module):
    """A linear layer whose weight is stored quantized; `y = x W^T + b`.

    Formats and buffers (W is (out_features, in_features), n = its numel):
        'fp16'    `weight` float16 (out, in).
        'int8'    `weight` int8 codes (out, in), absmax per output channel, and
                  `weight_scale` float32 (out,), each row's absmax. Activations are
                  quantized per row at run time by `mixed_precision_forward`;
                  input features with |x| >= threshold go through fp16;
                  `threshold=None` is pure int8.
        '1.58bit' a per-output-channel variant of the BitNet b1.58 absmean rule (the
                  paper's gamma is one per tensor): gamma = mean|w| of the row,
                  codes = clip(round(w / gamma), -1, 1), w ~ gamma * code.
                  `weight_packed` uint8 (ceil(n / 4),), 4 codes per byte, and
                  `weight_scale` float32 (out,) = gamma. (QuantizedVector's ternary
                  rule, threshold mean|x| and no scale, is the lesson's simpler version.)
        '1bit'    codes = sign(w) (zero -> +1), scale = mean|w| of the row.
                  `weight_packed` uint8 (ceil(n / 8),), 8 codes per byte, and
                  `weight_scale` float32 (out,).
        'int4'    group-wise asymmetric 4-bit (`toolkit.int4.int4_quantize`), G = in / group_size groups
                  per row: `weight_packed` uint8 (n / 2,), 2 codes per byte, `weight_scale`
                  float16 (out, G) and `weight_zero` uint8 (out, G): 4 + 24 / group_size bits
                  per weight (4.375 at group 64). Weight-only: the codes are dequantized to
                  the input's dtype on each call (nothing cached) and go through F.linear.
    '1.58bit' and '1bit' are weight-only, `(x @ codes^T) * scale` in the input's dtype, unless
    `activation_bits=8`: then each input row (token) is absmax-quantized to int8
    (`absmax_quantize`), multiplied by the codes exactly in int32 (`int8_matmul`, the machine's
    fastest exact path) and scaled, `(cx / 127) * scale` (W1.58A8 / W1A8, as BitNet b1.58).
    `from_linear(..., per_row=False)` gives them one scale for the tensor (stored per row).
    `bias` (if any) is a buffer in its original dtype. The output has the input's dtype.
    Float casts (`.to(dtype)`, `.half()`, `.float()`) keep the storage dtypes above and
    convert only the bias; the input must be floating point, (..., in_features) (else ValueError).

    Build one from a float layer with `from_linear`; the constructor makes an
    empty layer of the right shapes to `load_state_dict` into (give it the same
    format and threshold: they are configuration, not state).

    Args:
        in_features, out_features: layer sizes.
        quantization_format: 'fp16', 'int8', '1.58bit', '1bit' or 'int4'.
        threshold: outlier threshold of 'int8' (> 0, or None for pure int8); unused otherwise.
        bias: whether the layer has a bias.
        device: device of the buffers.
        dtype: dtype of the bias (default: torch's default dtype).
        group_size: weights per scale of 'int4' (must divide in_features); unused otherwise.
        activation_bits: '1.58bit' and '1bit' only: None (weight-only) or 8 (int8 activations).

    Raises:
        ValueError: unknown format, a threshold that is not positive or None, (int4) a
            group_size that does not divide in_features, or activation_bits other than None
            or 8, or given to another format.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        quantization_format: str,
        threshold: float | None = 6.0,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        group_size: int = 64,
        activation_bits: int | None = None,
    ) -> None:
        super().__init__()
        check_format(quantization_format, LAYER_FORMATS)
        check_threshold(threshold)
        if activation_bits is not None and (activation_bits != 8 or quantization_format not in _PACKED_BITS):
            raise ValueError(f"activation_bits must be None or 8, and only for '1.58bit' and '1bit' "
                             f"(got {activation_bits!r} for {quantization_format!r}; 'int8' always quantizes "
                             f"its activations)")
        self.activation_bits = activation_bits
        if quantization_format == "int4":
            check_group_size(in_features, group_size)
        self.group_size = group_size
        self.in_features = in_features
        self.out_features = out_features
        self.quantization_format = quantization_format
        self.threshold = threshold
        if quantization_format == "int4":
            groups = (out_features, in_features // group_size)
            self.register_buffer("weight_packed", torch.zeros(math.ceil(in_features * out_features / 2),
                                                              dtype=torch.uint8, device=device))
            self.register_buffer("weight_scale", torch.zeros(groups, dtype=torch.float16, device=device))
            self.register_buffer("weight_zero", torch.zeros(groups, dtype=torch.uint8, device=device))
        elif quantization_format in _PACKED_BITS:
            n_bytes = math.ceil(in_features * out_features * _PACKED_BITS[quantization_format] / 8)
            self.register_buffer("weight_packed", torch.zeros(n_bytes, dtype=torch.uint8, device=device))
        else:
            weight_dtype = torch.float16 if quantization_format == "fp16" else torch.int8
            self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=weight_dtype, device=device))
        if quantization_format not in ("fp16", "int4"):
            self.register_buffer("weight_scale", torch.zeros(out_features, dtype=torch.float32, device=device))
        bias_tensor = torch.zeros(out_features, dtype=dtype, device=device) if bias else None
        self.register_buffer("bias", bias_tensor)

    @classmethod
    @torch.no_grad()
    def from_linear(
        cls, linear: nn.Linear, quantization_format: str, threshold: float | None = 6.0, *,
        group_size: int = 64, clip_ratio: torch.Tensor | None = None, per_row: bool = True,
        scale: str = "absmean", activation_bits: int | None = None,
    ) -> QuantizedLinear:
        """Quantize a float `nn.Linear` (see the class docstring for the formats).

        Args:
            linear: the layer to quantize; left unchanged.
            quantization_format: 'fp16', 'int8', '1.58bit', '1bit' or 'int4'.
            threshold: outlier threshold for 'int8' (> 0), None for pure int8.
            group_size: 'int4' only: weights per group (a divisor of in_features).
            clip_ratio: 'int4' only: optional (out, in // group_size) range shrink factors in
                (0, 1], e.g. from the activation-aware clipping search (`toolkit.int4.int4_quantize`).
            per_row: '1.58bit' and '1bit': one absmean scale per output row (default) or one per
                tensor (`low_bit_quantize`).
            scale: '1.58bit' and '1bit': 'absmean' (default) or 'fit', the codes' least-squares scale.
            activation_bits: '1.58bit' and '1bit': None (weight-only) or 8 (W1.58A8 / W1A8).

        Returns:
            A `QuantizedLinear` on `linear`'s device.

        Raises:
            TypeError: `linear` is not an `nn.Linear`.
            ValueError: unknown format or bad threshold; 'int4': a group_size that is not a positive
                divisor of in_features, or a clip_ratio of another shape or with a value outside (0, 1].
        """
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        weight, bias = linear.weight.detach(), linear.bias
        layer = cls(linear.in_features, linear.out_features, quantization_format, threshold,
                    bias=bias is not None, device=weight.device,
                    dtype=bias.dtype if bias is not None else weight.dtype, group_size=group_size,
                    activation_bits=activation_bits)
        if bias is not None:
            layer.bias.copy_(bias.detach())
        if quantization_format == "fp16":
            layer.weight.copy_(weight.half())
            return layer
        if quantization_format == "int4":
            codes, scale, zero = int4_quantize(weight, group_size, clip_ratio)
            layer.weight_packed.copy_(pack_bits(codes, 4))
            layer.weight_scale.copy_(scale)
            layer.weight_zero.copy_(zero)
            return layer
        w = weight.float()
        if quantization_format == "int8":
            codes, scale = absmax_quantize(w, dim=1)
            layer.weight.copy_(codes)
            layer.weight_scale.copy_(scale.squeeze(1))
            return layer
        codes, gamma = low_bit_quantize(w, quantization_format, per_row=per_row, scale=scale)
        layer.weight_packed.copy_(_pack_codes(codes.to(torch.int8), _PACKED_BITS[quantization_format]))
        layer.weight_scale.copy_(gamma)
        return layer

    def weight_codes(self) -> torch.Tensor:
        """The integer weight codes, int8 (out_features, in_features), unpacked if packed
        ('int4': uint8 codes in [0, 15], to read with `weight_zero` and `weight_scale`).

        Raises:
            ValueError: for 'fp16', which stores no codes.
        """
        if self.quantization_format == "fp16":
            raise ValueError("the 'fp16' format stores float16 weights, not integer codes")
        if self.quantization_format == "int8":
            return self.weight
        if self.quantization_format == "int4":
            numel = self.out_features * self.in_features
            return unpack_bits(self.weight_packed, 4, numel).view(self.out_features, self.in_features)
        bits = _PACKED_BITS[self.quantization_format]
        numel = self.out_features * self.in_features
        return _unpack_codes(self.weight_packed, bits, numel).view(self.out_features, self.in_features)

    def dequantized_weight(self) -> torch.Tensor:
        """The weight the layer represents, float32 (out_features, in_features)."""
        if self.quantization_format == "fp16":
            return self.weight.float()
        if self.quantization_format == "int4":
            return int4_dequantize(self.weight_codes(), self.weight_scale, self.weight_zero)
        scale = self.weight_scale[:, None]
        if self.quantization_format == "int8":
            scale = scale / 127
        return self.weight_codes().float() * scale

    def _apply(self, fn, recurse=True):
        # The storage dtypes are the format. Float casts (`.to(dtype)`, `.half()`, `.float()`) skip
        # non-floating tensors, so the float storage goes through them as a same-size integer view:
        # moved between devices, never re-encoded. The bias is not storage: it follows the cast.
        stored = {name: buf.dtype for name, buf in self._buffers.items()
                  if name != "bias" and buf is not None and buf.is_floating_point()}
        for name, dtype in stored.items():
            self._buffers[name] = self._buffers[name].view(_SAME_SIZE_INT[dtype.itemsize])
        try:
            return super()._apply(fn, recurse)
        finally:
            for name, dtype in stored.items():
                if self._buffers[name].dtype == _SAME_SIZE_INT[dtype.itemsize]:
                    self._buffers[name] = self._buffers[name].view(dtype)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """`input @ W^T + bias`; input (..., in_features) -> (..., out_features), input's dtype."""
        if not isinstance(input, torch.Tensor):
            raise TypeError(f"input must be a torch.Tensor, got {type(input).__name__}")
        if not input.is_floating_point():  # the int8 kernel's messages, for every format
            raise ValueError(f"input must be floating point (fp16, bf16 or fp32), got {input.dtype}")
        if input.dim() == 0 or input.shape[-1] != self.in_features:
            raise ValueError(f"input's last dimension must be in_features={self.in_features}, "
                             f"got shape {tuple(input.shape)}")
        fmt = self.quantization_format
        if fmt == "int8":
            out = mixed_precision_forward(input, self.weight.t(), self.threshold, weight_scale=self.weight_scale)
        elif fmt == "int4":
            # Weight-only: dequantize in the input's dtype for this call only (no cached float weight).
            codes = self.weight_codes()
            out = F.linear(input, int4_dequantize(codes, self.weight_scale, self.weight_zero, input.dtype))
        elif fmt == "fp16":
            # fp16 inputs compute in fp16; fp32 and bf16 inputs in fp32 (fp16 -> bf16 would round).
            dtype = torch.promote_types(input.dtype, torch.float16)
            out = F.linear(input.to(dtype), self.weight.to(dtype))
        elif self.activation_bits == 8:
            x_codes, x_absmax = absmax_quantize(input.reshape(-1, self.in_features), dim=1)
            products = int8_matmul(x_codes, self.weight_codes().t())  # exact int32 (tokens, out)
            out = (products.float() * (x_absmax / 127) * self.weight_scale).reshape(*input.shape[:-1], -1)
        else:
            out = F.linear(input, self.weight_codes().to(input.dtype)) * self.weight_scale.to(input.dtype)
        if self.bias is not None:
            out = out + self.bias
        return out.to(input.dtype)

    def extra_repr(self) -> str:
        threshold = f", threshold={self.threshold}" if self.quantization_format == "int8" else ""
        if self.quantization_format == "int4":
            threshold = f", group_size={self.group_size}"
        if self.activation_bits is not None:
            threshold = f", activation_bits={self.activation_bits}"
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"format={self.quantization_format!r}{threshold}, bias={self.bias is not None}")


def _linear_plan(model: nn.Module, skip: set[str]) -> dict[nn.Linear, tuple[list[str], str | None]]:
    """Every nn.Linear of `model`: all the names it is registered under, and why it stays in
    float (None: it is replaced). Besides `skip`, layers whose `.weight` a parent reads directly,
    bypassing their forward, stay in float: replacing them would break the parent's forward."""
    kept = {}
    for module in model.modules():
        if isinstance(module, nn.MultiheadAttention):
            kept[module.out_proj] = "nn.MultiheadAttention reads out_proj.weight directly"
        if isinstance(module, nn.TransformerEncoderLayer) and module.self_attn.batch_first:
            kept[module.linear1] = kept[module.linear2] = ("the fast path of a batch_first "
                                                           "nn.TransformerEncoderLayer reads its .weight directly")
    plan = {}
    for name, module in model.named_modules(remove_duplicate=False):
        if isinstance(module, nn.Linear):
            names, reason = plan.get(module, ([], kept.get(module)))
            if reason is None and is_skipped(name, skip):
                reason = "in skip"
            plan[module] = (names + [name], reason)
    return plan


def quantizable_layers(model: nn.Module, skip: str | Iterable[str] | None = None) -> list[str]:
    """The names of the layers `quantize_model(model, ..., skip=skip)` replaces (a layer registered under
    several names, under its first), in module order; a method that prepares them (`toolkit.awq`) reads it.

    Raises:
        ValueError: a `skip` name that matches no linear layer.
    """
    return [names[0] for names, reason in _linear_plan(model, skip_names(model, skip)).values() if reason is None]


def quantize_model(
    model: nn.Module,
    quantization_format: str,
    threshold: float | None = 6.0,
    skip: Iterable[str] | None = None,
    *,
    verbose: bool = True,
    group_size: int = 64,
    clip_ratios: Mapping[str, torch.Tensor] | None = None,
    calibration: Iterable | Mapping | None = None,
    clip: bool = True,
) -> nn.Module:
    """Replace the `nn.Linear` layers of `model` with `QuantizedLinear`, in place.

    'int4' rounds to nearest, each group's range optionally shrunk by `clip_ratios`.
    `calibration=` is a shortcut for `toolkit.awq.awq_quantize(model, calibration, group_size, skip,
    clip=clip)`: the activation-aware scale and clipping search, then this function with the
    clipping ratios it found.

    By default (`skip=None`) the output head stays in float: the module
    returned by `model.get_output_embeddings()` (BERT's MLM decoder, tied to
    the word embeddings; a causal LM's `lm_head`) and any linear layer named
    'lm_head', 'classifier' or 'score'. Pass `skip=()` to quantize every layer.

    Afterwards `model.quantization_report` is a dict with 'format', 'threshold',
    'replaced' and 'skipped' (lists of module names; a layer registered under two
    names is replaced under both, by one layer) and 'skip_reasons' ({skipped name:
    why}); 'int4' adds 'group_size' and 'activation_aware' (False here; `awq_quantize` adds
    'scaled' and 'unscaled'); with `verbose` one line saying how
    many layers were replaced is printed. A linear layer whose `.weight` its parent
    reads directly (the `out_proj` of `nn.MultiheadAttention`, linear1/linear2 of a
    batch_first `nn.TransformerEncoderLayer`) is always kept in float, so the forward
    still works.

    Args:
        model: any module, e.g. a Hugging Face model.
        quantization_format: 'fp16', 'int8', '1.58bit', '1bit' or 'int4'.
        threshold: outlier threshold of 'int8' (> 0), None for pure int8.
        skip: module names kept in float (one string is one name); an entry matches a
            layer's full name ('cls.predictions.decoder') or its last part ('classifier').
        verbose: print the summary line.
        group_size: 'int4' only: weights per scale, must divide every replaced layer's in_features.
        clip_ratios: 'int4' only: {layer name: float (out, in // group_size) ratios in (0, 1]}
            (`QuantizedLinear.from_linear`'s `clip_ratio`); layers not named are not clipped.
        calibration, clip: 'int4' only: the shortcut to `toolkit.awq.awq_quantize` (see above).

    Returns:
        `model` itself, its linear layers replaced.

    Raises:
        ValueError: unknown format, bad threshold, `model` is itself an `nn.Linear`
            (use `QuantizedLinear.from_linear`), no `nn.Linear` left to replace, `clip_ratios`
            or `calibration` with a format other than 'int4', a `clip_ratios` name that is not a
            replaced layer, a `skip` name matching no linear layer, or a group_size that does not
            divide a layer's width. Nothing is replaced when it raises.

    >>> from torch import nn
    >>> model = quantize_model(nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2)), "int8", verbose=False)
    >>> model.quantization_report["replaced"]
    ['0', '2']
    >>> model[0]
    QuantizedLinear(in_features=64, out_features=64, format='int8', threshold=6.0, bias=True)
    """
    check_format(quantization_format, LAYER_FORMATS)
    check_threshold(threshold)
    if isinstance(model, nn.Linear):
        raise ValueError("quantize_model replaces the layers inside a model; "
                         "quantize a lone nn.Linear with QuantizedLinear.from_linear")
    for label, value in (("clip_ratios", clip_ratios), ("calibration", calibration)):
        if value is not None and quantization_format != "int4":
            raise ValueError(f"{label} is used by the 'int4' format only, not {quantization_format!r}")
    if calibration is not None:
        from toolkit.awq import awq_quantize  # the documented shortcut; the search lives with the method

        return awq_quantize(model, calibration, group_size, skip, clip=clip, verbose=verbose)
    plan = _linear_plan(model, skip_names(model, skip))
    replaceable = {names[0] for names, reason in plan.values() if reason is None}
    if quantization_format == "int4":
        for module, (_, reason) in plan.items():
            if reason is None:
                check_group_size(module.in_features, group_size)
    clip_ratios = dict(clip_ratios or {})
    if set(clip_ratios) - replaceable:
        raise ValueError(f"clip_ratios names layers that are not replaced: {sorted(set(clip_ratios) - replaceable)}")
    replaced, skipped, reasons = [], [], {}
    for module, (names, reason) in plan.items():
        if reason is not None:
            skipped += names
            reasons.update(dict.fromkeys(names, reason))
            continue
        quantized = QuantizedLinear.from_linear(module, quantization_format, threshold, group_size=group_size,
                                                clip_ratio=clip_ratios.get(names[0]))
        for name in names:  # a layer registered under several names stays one (quantized) layer
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name), child, quantized)
        replaced += names
    if not replaced:
        raise ValueError(f"no nn.Linear left to replace in {type(model).__name__} "
                         f"(kept in float by skip: {skipped or 'none'})")
    model.quantization_report = {"format": quantization_format, "threshold": threshold,
                                 "replaced": replaced, "skipped": skipped, "skip_reasons": reasons}
    if quantization_format == "int4":
        model.quantization_report.update(group_size=group_size, activation_aware=False)
    if verbose:
        print(f"quantize_model: replaced {len(replaceable)} nn.Linear layers with {quantization_format} "
              f"QuantizedLinear; kept in float: "
              f"{', '.join(n if reasons[n] == 'in skip' else f'{n} ({reasons[n]})' for n in skipped) or 'none'}")
    return model
