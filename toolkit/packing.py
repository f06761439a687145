"""Bit packing: small unsigned fields stored several to a byte.

Used by `quantization.QuantizedLinear` (2-bit ternary and 1-bit sign codes) and by
`pruning.to_sparse_state_dict` (1-bit masks). It packs and unpacks flat tensors of
fields; it does not know what the fields mean (mapping codes to fields is the
caller's job).

Layout: with `bits` bits per field, byte b holds fields b*(8/bits) ... in order,
the first in the lowest bits. The flat input is padded with zero fields to whole
bytes, so n fields take ceil(n * bits / 8) bytes.

Guarantees: for every bool or integer tensor of fields in [0, 2**bits) (any shape,
empty and 0-d included), `unpack_bits(pack_bits(f, bits), bits, f.numel())` equals
`f.flatten()` as uint8. Nothing is truncated or wrapped silently: a `bits` other
than the int 1, 2 or 4 (True included), a field out of range, a `numel` beyond what
`packed` holds or a `packed` that is not 1-d uint8 raise ValueError; non-tensor or
floating fields raise TypeError.
"""
import torch
import torch.nn.functional as F

BIT_WIDTHS = (1, 2, 4)


def _check_bits(bits: int) -> None:
    if type(bits) is not int or bits not in BIT_WIDTHS:  # `type` refuses True (== 1) and 2.0
        raise ValueError(f"bits must be one of {BIT_WIDTHS}, got {bits!r}")


def pack_bits(fields: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack fields of `bits` bits each into bytes.

    Args:
        fields: bool or integer tensor of any shape, values in [0, 2**bits); flattened.
        bits: field width, 1, 2 or 4.

    Returns:
        uint8 tensor (ceil(n * bits / 8),) for n = fields.numel().

    Raises:
        TypeError: `fields` is not a bool or integer tensor.
        ValueError: `bits` is not 1, 2 or 4, or a field is outside [0, 2**bits).
    """
    _check_bits(bits)
    if not isinstance(fields, torch.Tensor) or fields.is_floating_point() or fields.is_complex():
        got = fields.dtype if isinstance(fields, torch.Tensor) else type(fields).__name__
        raise TypeError(f"fields must be a bool or integer tensor, got {got}")
    if fields.numel() and (fields.min() < 0 or fields.max() >= 2**bits):
        raise ValueError(f"fields must lie in [0, {2**bits}) for bits={bits}, "
                         f"got values in [{fields.min().item()}, {fields.max().item()}]")
    per_byte = 8 // bits
    flat = fields.flatten().to(torch.uint8)
    grouped = F.pad(flat, (0, -flat.numel() % per_byte)).view(-1, per_byte)
    shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=fields.device)
    # The shifted fields occupy disjoint bits, so their sum is their bitwise OR.
    return (grouped << shifts).sum(dim=1, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor, bits: int, numel: int) -> torch.Tensor:
    """Inverse of `pack_bits`: the first `numel` fields as a flat uint8 tensor.

    Args:
        packed: uint8 tensor from `pack_bits`.
        bits: the field width it was packed with.
        numel: how many fields to return (the padding is dropped).

    Returns:
        uint8 tensor (numel,).

    Raises:
        ValueError: `bits` is not 1, 2 or 4, `packed` is not a 1-d uint8 tensor, or `numel` is not
            an int in [0, packed.numel() * 8 // bits].
    """
    _check_bits(bits)
    if not isinstance(packed, torch.Tensor) or packed.dtype != torch.uint8 or packed.dim() != 1:
        got = f"{packed.dtype} {tuple(packed.shape)}" if isinstance(packed, torch.Tensor) else type(packed).__name__
        raise ValueError(f"packed must be a 1-d uint8 tensor, got {got}")
    capacity = packed.numel() * (8 // bits)
    if type(numel) is not int or not 0 <= numel <= capacity:
        raise ValueError(f"numel must be an int in [0, {capacity}] ({packed.numel()} bytes of "
                         f"{bits}-bit fields), got {numel!r}")
    shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=packed.device)
    return ((packed[:, None] >> shifts) & (2**bits - 1)).flatten()[:numel]
