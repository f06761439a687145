"""Plain-torch references shared by the pruning tests (lab and toolkit), with the tiny models of the test
factory (tests/models.py) re-exported under the names these tests use.
"""
import torch
from torch import nn
from torch.nn.utils import prune

from models import tiny_bert, tiny_distilbert, tiny_llama, toy  # noqa: F401 (the test factory, re-exported)

HIDDEN, HEADS, HEAD_SIZE, WIDTH, LAYERS = 32, 4, 8, 40, 2


def batch() -> dict[str, torch.Tensor]:
    """Two sequences, the second padded, so the attention mask matters."""
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(1, 99, (2, 9), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 6:] = 0
    return {"input_ids": input_ids, "attention_mask": attention_mask}


@torch.no_grad()
def logits(model: nn.Module) -> torch.Tensor:
    return model(**batch()).logits


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def torch_l1(model: nn.Module, layer_type: type, amount: float) -> nn.Module:
    """Reference: torch's unstructured L1 pruning of every `layer_type` weight, made permanent."""
    for module in model.modules():
        if isinstance(module, layer_type):
            prune.l1_unstructured(module, "weight", amount=amount)
            prune.remove(module, "weight")
    return model


def assert_same_state(a: nn.Module, b: nn.Module) -> None:
    """Same names, same values (compared by name: prune.remove re-registers `weight` after `bias`)."""
    state_a, state_b = a.state_dict(), b.state_dict()
    assert state_a.keys() == state_b.keys()
    for name in state_a:
        assert torch.equal(state_a[name], state_b[name]), name


def mlp(seed: int = 0) -> nn.Sequential:
    """13 -> 11 -> 7 -> 3 with ReLUs (`models.toy`)."""
    return toy(13, 11, 7, 3, seed=seed)
