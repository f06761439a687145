"""Plain-torch references shared by the quantization tests (test_quantization.py, test_layers.py)."""
import torch

EPS32 = 2.0**-24  # unit roundoff of float32


def reference_absmax(x: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The contract's int8 rule: alpha = 127 / max|x| along dim (1 for a zero slice), round(x * alpha)."""
    x = x.float()
    absmax = x.abs().amax(dim=dim, keepdim=True)
    alpha = torch.where(absmax > 0, 127.0 / absmax, torch.ones_like(absmax))
    return torch.round(x * alpha).to(torch.int8), absmax
