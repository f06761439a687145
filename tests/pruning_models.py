"""Tiny models and plain-torch references shared by the pruning tests (lab and toolkit).

Models are built from configs (no hub) and put in eval mode, so their logits are deterministic.
"""
import torch
from torch import nn
from torch.nn.utils import prune
from transformers import (
    BertConfig,
    BertForMaskedLM,
    DistilBertConfig,
    DistilBertForMaskedLM,
    LlamaConfig,
    LlamaForCausalLM,
)

HIDDEN, HEADS, HEAD_SIZE, WIDTH, LAYERS = 32, 4, 8, 40, 2


def tiny_bert(seed: int = 0) -> BertForMaskedLM:
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=99, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
        intermediate_size=WIDTH, max_position_embeddings=32,
    )
    return BertForMaskedLM(config).eval()


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=99, hidden_size=HIDDEN, intermediate_size=48, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=2, max_position_embeddings=32,
    )
    return LlamaForCausalLM(config).eval()


def tiny_distilbert(seed: int = 0) -> DistilBertForMaskedLM:
    torch.manual_seed(seed)
    config = DistilBertConfig(
        vocab_size=99, dim=HIDDEN, n_layers=LAYERS, n_heads=HEADS, hidden_dim=WIDTH, max_position_embeddings=32
    )
    return DistilBertForMaskedLM(config).eval()


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
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(13, 11), nn.ReLU(), nn.Linear(11, 7), nn.ReLU(), nn.Linear(7, 3))
