"""Bit packing: small unsigned fields stored several to a byte.

Used by `quantization.QuantizedLinear` (2-bit ternary and 1-bit sign codes) and by
`pruning.to_sparse_state_dict` (1-bit masks). It packs and unpacks flat tensors of
fields; it does not know what the fields mean (mapping codes to fields is the
caller's job).

Layout: with `bits` bits per field, byte b holds fields b*(8/bits) ... in order,
the first in the lowest bits. The flat input is padded with zero fields to whole
bytes, so n fields take ceil(n * bits / 8) bytes.
"""
import torch
import torch.nn.functional as F

BIT_WIDTHS = (1, 2, 4)


def _check_bits(bits: int) -> None:
    if bits not in BIT_WIDTHS:
        raise ValueError(f"bits must be one of {BIT_WIDTHS}, got {bits!r}")


def pack_bits(fields: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack fields of `bits` bits each into bytes.

    Args:
        fields: bool or integer tensor of any shape, values in [0, 2**bits); flattened.
        bits: field width, 1, 2 or 4.

    Returns:
        uint8 tensor (ceil(n * bits / 8),) for n = fields.numel().

    Raises:
        ValueError: `bits` is not 1, 2 or 4.
    """
    _check_bits(bits)
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
        ValueError: `bits` is not 1, 2 or 4.
    """
    _check_bits(bits)
    shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=packed.device)
    return ((packed[:, None] >> shifts) & (2**bits - 1)).flatten()[:numel]
