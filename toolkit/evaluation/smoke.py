"""Smoke mode: a tokenizer and small models built offline, for runs without the hub (tests, CI, `--smoke`).

It does not download anything; `tiny_model(..., pretrain_steps=n)` trains on the shipped corpus.
"""
from __future__ import annotations

import torch
from torch import nn
from transformers import (
    BertConfig,
    BertForMaskedLM,
    BertTokenizerFast,
    LlamaConfig,
    LlamaForCausalLM,
)

from toolkit.evaluation.loading import KINDS, VOCAB_FILE, load_texts
from toolkit.evaluation.scoring import IGNORE_INDEX, masked_lm_inputs


def tiny_tokenizer() -> BertTokenizerFast:
    """A lower-cased word-piece tokenizer with 1024 tokens, built offline from data/vocab.txt.

    The vocabulary was trained on the shipped corpus (data/make_corpus.py). Special tokens:
    [PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3, [MASK]=4; [CLS] and [SEP] double as the bos and eos
    tokens of the causal smoke model.
    """
    tokens = VOCAB_FILE.read_text(encoding="utf-8").splitlines()
    return BertTokenizerFast(vocab={token: i for i, token in enumerate(tokens)}, bos_token="[CLS]",
                             eos_token="[SEP]", model_max_length=512)


def tiny_model(
    kind: str = "masked",
    seed: int = 0,
    *,
    hidden_size: int = 64,
    num_layers: int = 4,
    num_heads: int = 4,
    intermediate_size: int = 256,
    pretrain_steps: int = 0,
) -> tuple[nn.Module, BertTokenizerFast]:
    """A small BertForMaskedLM or LlamaForCausalLM built from a config, with `tiny_tokenizer()`.

    Args:
        kind: "masked" (BERT) or "causal" (Llama).
        seed: seeds the initialisation and the optional pretraining; the global torch RNG
            is left untouched.
        hidden_size, num_layers, num_heads, intermediate_size: the architecture.
        pretrain_steps: optimisation steps on the shipped train split (batches of 16 lines cut
            to 64 tokens, AdamW from lr 3e-3 decaying linearly to 0; masked LM with 15%
            BERT-style masking, causal LM with next-token loss), so that compression has
            something to damage. 0: random weights. With the default shape, on one CPU core,
            a step takes 0.1-0.3 s, and the perplexity on the shipped test split goes from
            about 1000 to about 320 (masked) and 220 (causal) in 100 steps, 300 and 130 in 200.

    Returns:
        (model in eval mode, tokenizer).
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be 'masked' or 'causal', got {kind!r}")
    if not isinstance(pretrain_steps, int) or pretrain_steps < 0:
        raise ValueError(f"pretrain_steps must be a non-negative int, got {pretrain_steps!r}")
    tokenizer = tiny_tokenizer()
    shape = dict(vocab_size=len(tokenizer), hidden_size=hidden_size, num_hidden_layers=num_layers,
                 num_attention_heads=num_heads, intermediate_size=intermediate_size, max_position_embeddings=512,
                 pad_token_id=tokenizer.pad_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if kind == "masked":
            model = BertForMaskedLM(BertConfig(**shape))
        else:
            model = LlamaForCausalLM(LlamaConfig(**shape, num_key_value_heads=num_heads,
                                                 bos_token_id=tokenizer.bos_token_id,
                                                 eos_token_id=tokenizer.eos_token_id))
        if pretrain_steps:
            _pretrain(model, tokenizer, kind, pretrain_steps, seed)
    return model.eval(), tokenizer


def _pretrain(model: nn.Module, tokenizer, kind: str, steps: int, seed: int) -> None:
    texts = load_texts("train", source="local")
    order = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / steps)  # linear decay to 0
    model.train()
    for step in range(steps):
        batch = [texts[i] for i in torch.randint(len(texts), (16,), generator=order).tolist()]
        if kind == "masked":
            inputs = masked_lm_inputs(tokenizer, batch, max_length=64, seed=seed + step, replacement="bert")
        else:
            inputs = tokenizer(batch, truncation=True, max_length=64, padding=True, return_tensors="pt",
                               return_token_type_ids=False)
            inputs["labels"] = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, IGNORE_INDEX)
        model(**inputs).loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()


