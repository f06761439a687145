"""The one factory of tiny test models: BERT, Llama and DistilBERT built from configs (no hub), toy MLPs, hook counts.

Every builder seeds torch's global RNG with `seed` before building (so two calls with one seed give the same
weights), takes any config field as a keyword override, and returns the model in eval mode (deterministic
logits; `train=True` for training mode). The defaults are small enough for a test to build dozens.

>>> tiny_bert(num_hidden_layers=1).config.num_hidden_layers
1
"""
import torch
from torch import nn
from transformers import (BertConfig, BertForMaskedLM, BertForSequenceClassification, DistilBertConfig,
                          DistilBertForMaskedLM, LlamaConfig, LlamaForCausalLM)

BERT = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=40,
            max_position_embeddings=32)
LLAMA = dict(vocab_size=99, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=32)
DISTILBERT = dict(vocab_size=99, dim=32, n_layers=2, n_heads=4, hidden_dim=40, max_position_embeddings=32)
# A narrower shape without dropout, for the distillation tests (teacher and student train deterministically).
SMALL_BERT = dict(hidden_size=16, num_attention_heads=2, intermediate_size=32, hidden_dropout_prob=0.0,
                  attention_probs_dropout_prob=0.0)
SMALL_LLAMA = dict(vocab_size=40, hidden_size=16, num_hidden_layers=3, num_attention_heads=2, num_key_value_heads=1,
                   intermediate_size=32)
SMALL_DISTILBERT = dict(vocab_size=40, dim=16, n_layers=3, n_heads=2, hidden_dim=32, dropout=0.0,
                        attention_dropout=0.0)

_ARCHITECTURES = {"bert": (BertConfig, BertForMaskedLM, BERT), "llama": (LlamaConfig, LlamaForCausalLM, LLAMA),
                  "distilbert": (DistilBertConfig, DistilBertForMaskedLM, DISTILBERT),
                  "bert-classifier": (BertConfig, BertForSequenceClassification, BERT)}


def tiny(architecture: str, seed: int = 0, *, train: bool = False, **overrides) -> nn.Module:
    """A tiny 'bert' (BertForMaskedLM), 'llama' (LlamaForCausalLM), 'distilbert' (DistilBertForMaskedLM) or
    'bert-classifier' (BertForSequenceClassification).

    Args:
        architecture: which model; seed: seeds the global RNG before the weights are drawn;
        train: leave the model in training mode; **overrides: config fields replacing the defaults.
    """
    config_class, model_class, defaults = _ARCHITECTURES[architecture]
    torch.manual_seed(seed)
    return model_class(config_class(**{**defaults, **overrides})).train(train)


def tiny_bert(seed: int = 0, **overrides) -> BertForMaskedLM:
    """`tiny("bert", seed, **overrides)`."""
    return tiny("bert", seed, **overrides)


def tiny_llama(seed: int = 0, **overrides) -> LlamaForCausalLM:
    """`tiny("llama", seed, **overrides)`."""
    return tiny("llama", seed, **overrides)


def tiny_distilbert(seed: int = 0, **overrides) -> DistilBertForMaskedLM:
    """`tiny("distilbert", seed, **overrides)`."""
    return tiny("distilbert", seed, **overrides)


def small(architecture: str, seed: int = 0, **overrides) -> nn.Module:
    """The narrower shape without dropout (`SMALL_BERT`, ...) in training mode, as the distillation tests train it."""
    preset = {"bert": SMALL_BERT, "llama": SMALL_LLAMA, "distilbert": SMALL_DISTILBERT}[architecture]
    return tiny(architecture, seed, train=True, **{**preset, **overrides})


def toy(*widths: int, seed: int = 0) -> nn.Sequential:
    """Linear layers of the given widths with ReLUs between them, e.g. `toy(8, 16, 4)`: 8 -> 16 -> 4."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (width_in, width_out) in enumerate(zip(widths, widths[1:])):
        layers += [nn.ReLU()] if i else []
        layers.append(nn.Linear(width_in, width_out))
    return nn.Sequential(*layers)


def hook_count(model: nn.Module) -> int:
    """Forward and forward-pre hooks left on any module of `model` (0 after a method that cleans up)."""
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())
