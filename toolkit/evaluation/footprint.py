"""Sizes of a model: bytes in memory, bytes on disk, number of weights. Sizes are in MB of 2**20 bytes.

`model_size_mb` counts the bytes the tensors occupy in memory (tied tensors once, packed quantized storage
as stored, PyTorch's quantized Linear layers included); `serialized_size_mb` the bytes on disk;
`parameter_count` the weights, the same before and after quantization (`quantize_model`,
`quantize_dynamic`, bitsandbytes), except when quantizing unties a tied weight (BERT's MLM decoder with
`quantize_model(..., skip=())`), which then counts twice. It does not time or score models.
"""
from __future__ import annotations

import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import safetensors.torch
import torch
from torch import nn
from torch.ao.nn.quantized.modules.linear import LinearPackedParams

from toolkit.layers import QuantizedLinear

MB = 2**20


def _view_key(tensor: torch.Tensor) -> tuple:
    """Identifies the memory a tensor covers: two tensors with the same key are one tensor."""
    if tensor.device.type == "meta":  # no memory: only identity tells meta tensors apart
        return ("meta", id(tensor))
    return (tensor.device, tensor.data_ptr(), tensor.dtype, tuple(tensor.shape), tuple(tensor.stride()))


def _quant_state_tensors(param: torch.Tensor) -> Iterator[torch.Tensor]:
    """Tensors that bitsandbytes keeps beside a quantized weight, outside parameters and buffers.

    4-bit (Params4bit.quant_state): absmax per block, the 16-value code, and with double
    quantization the quantized absmax's own absmax, code and offset (quant_state.state2).
    Whatever the state holds now is counted: on CPUs with AVX-512 bf16, bitsandbytes' first
    forward repacks the weight and replaces these by a bf16 absmax (state2 dropped, offset kept).
    LLM.int8 (Int8Params.SCB): one float32 scale per output row.
    """
    states = [getattr(param, "quant_state", None)]
    while states:
        state = states.pop()
        if state is None:
            continue
        for value in vars(state).values():
            if isinstance(value, torch.Tensor):
                yield value
            elif type(value) is type(state):
                states.append(value)
    scale = getattr(param, "SCB", None)
    if isinstance(scale, torch.Tensor):
        yield scale


def _packed_weights(model: nn.Module) -> list[torch.Tensor]:
    """The weights and biases of PyTorch's quantized Linear layers, as they are stored.

    torch.ao.nn.quantized.dynamic.Linear (from `quantize_dynamic`) and the static
    torch.ao.nn.quantized.Linear keep their weight and bias in a LinearPackedParams
    submodule, inside a C++ object that is neither a parameter nor a buffer. Its
    `_weight_bias()` unpacks them: a qint8 weight (a quantized tensor, see `_tensor_bytes`)
    and a float32 bias or None; for dtype=torch.float16 a float32 copy of the float16
    weight, converted back to float16 here to count the bytes stored.
    """
    tensors = []
    for module in model.modules():
        if isinstance(module, LinearPackedParams):
            weight, bias = module._weight_bias()
            tensors += [weight.half() if module.dtype == torch.float16 else weight] + ([] if bias is None else [bias])
    return tensors


def _tensor_bytes(tensor: torch.Tensor) -> int:
    """numel * element_size, plus for a quantized tensor the quantization parameters its quantizer
    stores: one float64 scale and one int64 zero point (16 bytes) for a per-tensor scheme, the
    per-channel scale and zero-point tensors (float64 and int64 from quantize_per_channel: 16
    bytes per channel) for a per-channel scheme."""
    size = tensor.numel() * tensor.element_size()
    if not tensor.is_quantized:
        return size
    if tensor.qscheme() in (torch.per_tensor_affine, torch.per_tensor_symmetric):
        return size + 8 + 8
    scales, zero_points = tensor.q_per_channel_scales(), tensor.q_per_channel_zero_points()
    return size + scales.numel() * scales.element_size() + zero_points.numel() * zero_points.element_size()


def model_size_mb(model: nn.Module | Mapping[str, object], *, include_quant_state: bool = True) -> float:
    """Memory the weights occupy: the bytes of the distinct tensors (`_tensor_bytes`), in MB (2**20 B).

    Parameters and buffers are counted once each even when tied or shared (a tensor that
    is the same view of the same memory counts once), and packed storage counts as stored
    (a 4-bit bitsandbytes weight is a uint8 tensor of half its element count). The weights
    and biases that PyTorch's quantized Linear layers (`quantize_dynamic`, static
    quantization) keep outside parameters and buffers are added (see `_packed_weights`): an
    int8 weight as one byte per element plus its scale and zero point, the bias in float32.
    With `include_quant_state`, the quantization statistics that bitsandbytes keeps outside
    parameters and buffers are added too (see `_quant_state_tensors`); without it, for a
    model without PyTorch quantized layers, the result is exactly
    `model.get_memory_footprint() / 2**20` of transformers, which omits them (and so cannot
    tell nf4 from nf4 with double quantization).

    Args:
        model: a module, or a flat state dict (non-tensor values are ignored).
        include_quant_state: count bitsandbytes quantization statistics.

    Returns:
        The size in MB.
    """
    if isinstance(model, nn.Module):
        params = list(model.parameters())
        tensors = params + list(model.buffers()) + _packed_weights(model)
        if include_quant_state:
            tensors += [t for p in params for t in _quant_state_tensors(p)]
            # After its first forward, bitsandbytes' Linear8bitLt moves the int8 row scales
            # from weight.SCB to module.state.SCB.
            tensors += [m.state.SCB for m in model.modules()
                        if isinstance(getattr(getattr(m, "state", None), "SCB", None), torch.Tensor)]
    elif isinstance(model, Mapping):
        tensors = [t for t in model.values() if isinstance(t, torch.Tensor)]
    else:
        raise TypeError(f"expected an nn.Module or a state dict, got {type(model).__name__}")
    unique = {_view_key(t): t for t in tensors}
    return sum(_tensor_bytes(t) for t in unique.values()) / MB


def parameter_count(model: nn.Module) -> int:
    """Number of weights, whatever their storage.

    Parameters count once even when tied or shared (as in `model_size_mb`), the weights and
    biases packed inside PyTorch's quantized Linear layers count as parameters (see
    `_packed_weights`), and a 4-bit bitsandbytes weight counts the elements of its original
    shape (`quant_state.shape`), not of its packed uint8 storage. A `QuantizedLinear`
    counts the out * in weights and the bias it represents (it stores them as buffers, packed
    or not). Other buffers are not counted.

    Args:
        model: a module.

    Returns:
        The number of weights: the same before and after quantization (`quantize_dynamic`,
        bitsandbytes, `quantize_model`), unless quantizing unties a tied weight (BERT's MLM
        decoder with `skip=()`), which then counts twice.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected an nn.Module, got {type(model).__name__}")
    unique = {_view_key(t): t for t in list(model.parameters()) + _packed_weights(model)}
    stored_as_buffers = sum(m.out_features * m.in_features + (0 if m.bias is None else m.bias.numel())
                            for m in model.modules() if isinstance(m, QuantizedLinear))
    return stored_as_buffers + sum(t.quant_state.shape.numel() if getattr(t, "quant_state", None) is not None
                                   else t.numel() for t in unique.values())


def _for_safetensors(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict that safetensors accepts: tied tensors kept once (as save_pretrained does),
    other tensors sharing memory copied, everything contiguous."""
    out, seen_views, seen_storages = {}, set(), set()
    for name, tensor in state.items():
        key = _view_key(tensor)
        if key in seen_views:
            continue
        seen_views.add(key)
        storage = (tensor.device, tensor.untyped_storage().data_ptr())
        out[name] = (tensor.clone() if storage in seen_storages else tensor).contiguous()
        seen_storages.add(storage)
    return out


def serialized_size_mb(model_or_state_dict: nn.Module | Mapping[str, object]) -> float:
    """Bytes of the saved state dict, in MB (2**20 B).

    A state dict of tensors is written with safetensors (tied tensors once); one with other
    values (e.g. metadata of a sparse format) with torch.save. The file goes to a temporary
    directory that is deleted afterwards.

    Args:
        model_or_state_dict: a module (its `state_dict()` is saved) or a flat dict.

    Returns:
        The file size in MB.
    """
    if isinstance(model_or_state_dict, nn.Module):
        state = model_or_state_dict.state_dict()
    elif isinstance(model_or_state_dict, Mapping):
        state = dict(model_or_state_dict)
    else:
        raise TypeError(f"expected an nn.Module or a state dict, got {type(model_or_state_dict).__name__}")
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "state"
        if all(isinstance(value, torch.Tensor) for value in state.values()):
            safetensors.torch.save_file(_for_safetensors(state), path)
        else:
            torch.save(state, path)
        return path.stat().st_size / MB


