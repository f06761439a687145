"""Quantized layers and models, built on the lab's `quantization.py`.

- `QuantizedLinear`: an `nn.Linear` replacement that stores the compressed
  weight as buffers (fp16, int8 per output channel, 2-bit packed ternary,
  1-bit packed sign), so `state_dict()` holds the real bytes; int8 computes
  through the lab's `mixed_precision_forward`.
- `quantize_model`: swaps the `nn.Linear` layers of a model for `QuantizedLinear`.

It does not train or fine-tune quantized weights (no straight-through
estimator), nor quantize activations of the 1.58-bit and 1-bit layers (they are
weight-only). Sizes are measured by `toolkit.evaluation.model_size_mb`, which
counts parameters and buffers: honest here because the buffers are the packed codes.
"""
from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from quantization import FORMATS, _check_format, _check_threshold, absmax_quantize, mixed_precision_forward
from toolkit.packing import pack_bits, unpack_bits

# ---------------------------------------------------------------------------
# Beyond the exercises: a quantized layer and a quantized model
# ---------------------------------------------------------------------------

# Bits per packed code: ternary codes take 2 bits (4 per byte), sign codes 1 (8 per byte).
_PACKED_BITS = {"1.58bit": 2, "1bit": 1}


def _pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack codes in {-1, 0, 1} (bits=2) or {-1, 1} (bits=1) into a flat uint8 tensor.

    Field values: 2 bits hold code + 1 (0, 1, 2); 1 bit holds 1 for +1 and 0 for -1.
    Layout as in `bitpack.pack_bits`: ceil(n * bits / 8) bytes.
    """
    return pack_bits(codes + 1 if bits == 2 else codes > 0, bits)


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
        '1.58bit' BitNet b1.58 absmean rule per output channel: gamma = mean|w| of
                  the row, codes = clip(round(w / gamma), -1, 1), w ~ gamma * code.
                  `weight_packed` uint8 (ceil(n / 4),), 4 codes per byte, and
                  `weight_scale` float32 (out,) = gamma. (QuantizedVector's ternary
                  rule, threshold mean|x| and no scale, is the lesson's simpler version.)
        '1bit'    codes = sign(w) (zero -> +1), scale = mean|w| of the row.
                  `weight_packed` uint8 (ceil(n / 8),), 8 codes per byte, and
                  `weight_scale` float32 (out,).
    '1.58bit' and '1bit' are weight-only: `(x @ codes^T) * scale` in the input's dtype.
    `bias` (if any) is a buffer in its original dtype. The output has the input's dtype.

    Build one from a float layer with `from_linear`; the constructor makes an
    empty layer of the right shapes to `load_state_dict` into (give it the same
    format and threshold: they are configuration, not state).

    Args:
        in_features, out_features: layer sizes.
        quantization_format: 'fp16', 'int8', '1.58bit' or '1bit'.
        threshold: outlier threshold of 'int8' (> 0, or None for pure int8); unused otherwise.
        bias: whether the layer has a bias.
        device: device of the buffers.
        dtype: dtype of the bias (default: torch's default dtype).

    Raises:
        ValueError: unknown format, or a threshold that is not positive or None.
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
    ) -> None:
        super().__init__()
        _check_format(quantization_format)
        _check_threshold(threshold)
        self.in_features = in_features
        self.out_features = out_features
        self.quantization_format = quantization_format
        self.threshold = threshold
        if quantization_format in _PACKED_BITS:
            n_bytes = math.ceil(in_features * out_features * _PACKED_BITS[quantization_format] / 8)
            self.register_buffer("weight_packed", torch.zeros(n_bytes, dtype=torch.uint8, device=device))
        else:
            weight_dtype = torch.float16 if quantization_format == "fp16" else torch.int8
            self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=weight_dtype, device=device))
        if quantization_format != "fp16":
            self.register_buffer("weight_scale", torch.zeros(out_features, dtype=torch.float32, device=device))
        bias_tensor = torch.zeros(out_features, dtype=dtype, device=device) if bias else None
        self.register_buffer("bias", bias_tensor)

    @classmethod
    @torch.no_grad()
    def from_linear(
        cls, linear: nn.Linear, quantization_format: str, threshold: float | None = 6.0
    ) -> QuantizedLinear:
        """Quantize a float `nn.Linear` (see the class docstring for the formats).

        Args:
            linear: the layer to quantize; left unchanged.
            quantization_format: 'fp16', 'int8', '1.58bit' or '1bit'.
            threshold: outlier threshold for 'int8' (> 0), None for pure int8.

        Returns:
            A `QuantizedLinear` on `linear`'s device.

        Raises:
            TypeError: `linear` is not an `nn.Linear`.
            ValueError: unknown format or bad threshold.
        """
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        weight, bias = linear.weight.detach(), linear.bias
        layer = cls(linear.in_features, linear.out_features, quantization_format, threshold,
                    bias=bias is not None, device=weight.device,
                    dtype=bias.dtype if bias is not None else weight.dtype)
        if bias is not None:
            layer.bias.copy_(bias.detach())
        if quantization_format == "fp16":
            layer.weight.copy_(weight.half())
            return layer
        w = weight.float()
        if quantization_format == "int8":
            codes, scale = absmax_quantize(w, dim=1)
            layer.weight.copy_(codes)
            layer.weight_scale.copy_(scale.squeeze(1))
            return layer
        scale = w.abs().mean(dim=1, keepdim=True)
        if quantization_format == "1.58bit":
            # A zero row has gamma 0; dividing by 1 instead keeps its codes 0.
            codes = (w / torch.where(scale > 0, scale, 1.0)).round_().clamp_(-1, 1)
        else:
            codes = torch.where(w < 0, -1.0, 1.0)
        layer.weight_packed.copy_(_pack_codes(codes.to(torch.int8), _PACKED_BITS[quantization_format]))
        layer.weight_scale.copy_(scale.squeeze(1))
        return layer

    def weight_codes(self) -> torch.Tensor:
        """The integer weight codes, int8 (out_features, in_features), unpacked if packed.

        Raises:
            ValueError: for 'fp16', which stores no codes.
        """
        if self.quantization_format == "fp16":
            raise ValueError("the 'fp16' format stores float16 weights, not integer codes")
        if self.quantization_format == "int8":
            return self.weight
        bits = _PACKED_BITS[self.quantization_format]
        numel = self.out_features * self.in_features
        return _unpack_codes(self.weight_packed, bits, numel).view(self.out_features, self.in_features)

    def dequantized_weight(self) -> torch.Tensor:
        """The weight the layer represents, float32 (out_features, in_features)."""
        if self.quantization_format == "fp16":
            return self.weight.float()
        scale = self.weight_scale[:, None]
        if self.quantization_format == "int8":
            scale = scale / 127
        return self.weight_codes().float() * scale

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """`input @ W^T + bias`; input (..., in_features) -> (..., out_features), input's dtype."""
        fmt = self.quantization_format
        if fmt == "int8":
            out = mixed_precision_forward(input, self.weight.t(), self.threshold, weight_scale=self.weight_scale)
        elif fmt == "fp16":
            # fp16 inputs compute in fp16; fp32 and bf16 inputs in fp32 (fp16 -> bf16 would round).
            dtype = torch.promote_types(input.dtype, torch.float16)
            out = F.linear(input.to(dtype), self.weight.to(dtype))
        else:
            out = F.linear(input, self.weight_codes().to(input.dtype)) * self.weight_scale.to(input.dtype)
        if self.bias is not None:
            out = out + self.bias
        return out.to(input.dtype)

    def extra_repr(self) -> str:
        threshold = f", threshold={self.threshold}" if self.quantization_format == "int8" else ""
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"format={self.quantization_format!r}{threshold}, bias={self.bias is not None}")


# Linear layers named like these (the last part of the module name) stay in
# float by default: task heads are small and quantizing them costs the most accuracy.
DEFAULT_SKIP = ("lm_head", "classifier", "score")


def _default_skip(model: nn.Module) -> set[str]:
    """Names of the output head: the Hugging Face output embeddings plus `DEFAULT_SKIP` names."""
    skip = set(DEFAULT_SKIP)
    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    if head is not None:
        skip.update(name for name, module in model.named_modules() if module is head)
    return skip


def quantize_model(
    model: nn.Module,
    quantization_format: str,
    threshold: float | None = 6.0,
    skip: Iterable[str] | None = None,
    *,
    verbose: bool = True,
) -> nn.Module:
    """Replace the `nn.Linear` layers of `model` with `QuantizedLinear`, in place.

    By default (`skip=None`) the output head stays in float: the module
    returned by `model.get_output_embeddings()` (BERT's MLM decoder, tied to
    the word embeddings; a causal LM's `lm_head`) and any linear layer named
    'lm_head', 'classifier' or 'score'. Pass `skip=()` to quantize every layer.

    Afterwards `model.quantization_report` is a dict with 'format', 'threshold',
    'replaced' and 'skipped' (lists of module names); with `verbose` one line
    saying how many layers were replaced is printed.

    Args:
        model: any module, e.g. a Hugging Face model.
        quantization_format: 'fp16', 'int8', '1.58bit' or '1bit'.
        threshold: outlier threshold of 'int8' (> 0), None for pure int8.
        skip: module names kept in float; an entry matches a layer's full name
            ('cls.predictions.decoder') or its last part ('classifier').
        verbose: print the summary line.

    Returns:
        `model` itself, its linear layers replaced.

    Raises:
        ValueError: unknown format, bad threshold, `model` is itself an `nn.Linear`
            (use `QuantizedLinear.from_linear`), or no `nn.Linear` left to replace.
    """
    _check_format(quantization_format)
    _check_threshold(threshold)
    if isinstance(model, nn.Linear):
        raise ValueError("quantize_model replaces the layers inside a model; "
                         "quantize a lone nn.Linear with QuantizedLinear.from_linear")
    skip = _default_skip(model) if skip is None else set(skip)
    replaced, skipped = [], []
    for name, module in list(model.named_modules()):
        if not isinstance(module, nn.Linear):
            continue
        parent_name, _, child = name.rpartition(".")
        if name in skip or child in skip:
            skipped.append(name)
            continue
        quantized = QuantizedLinear.from_linear(module, quantization_format, threshold)
        setattr(model.get_submodule(parent_name), child, quantized)
        replaced.append(name)
    if not replaced:
        raise ValueError(f"no nn.Linear left to replace in {type(model).__name__} "
                         f"(kept in float by skip: {skipped or 'none'})")
    model.quantization_report = {"format": quantization_format, "threshold": threshold,
                                 "replaced": replaced, "skipped": skipped}
    if verbose:
        print(f"quantize_model: replaced {len(replaced)} nn.Linear layers with {quantization_format} "
              f"QuantizedLinear; kept in float: {', '.join(skipped) or 'none'}")
    return model
