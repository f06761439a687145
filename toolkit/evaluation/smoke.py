"""Smoke mode: a tokenizer and small models built offline, for runs without the hub (tests, CI, `--smoke`).

`tiny_model` builds fresh models (random, or briefly trained by `pretrain` on the shipped corpus);
`trained_tiny_model` loads the ones shipped in data/models, trained by tools/train_tiny_models.py.
It does not download anything.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm
from transformers import (
    BertConfig,
    BertForMaskedLM,
    BertTokenizerFast,
    LlamaConfig,
    LlamaForCausalLM,
)

from toolkit.evaluation.loading import (KINDS, MODEL_CLASSES, MODELS_DIR, VOCAB_FILE, ModelNotAvailableError,
                                        load_texts, model_kind)
from toolkit.evaluation.scoring import check_positive_int, check_room, joined_ids, masked_lm_inputs

TRAINED_TINY_MODELS = {"masked": "tiny-bert", "causal": "tiny-llama"}  # kind -> folder of MODELS_DIR


def _check_proportion(name: str, value: object) -> None:
    """Raise ValueError unless `value` is a real number (not a bool) in [0, 1)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ValueError(f"{name} must be a number in [0, 1), got {value!r}")


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
    dropout: float | None = None,
    pretrain_steps: int = 0,
) -> tuple[nn.Module, BertTokenizerFast]:
    """A small BertForMaskedLM or LlamaForCausalLM built from a config, with `tiny_tokenizer()`.

    Args:
        kind: "masked" (BERT) or "causal" (Llama).
        seed: seeds the initialisation and the optional pretraining; the global torch RNG
            is left untouched.
        hidden_size, num_layers, num_heads, intermediate_size: the architecture.
        dropout: BERT's hidden and attention dropout, Llama's attention dropout; None keeps the
            configs' defaults (0.1 and 0.0).
        pretrain_steps: steps of `pretrain` with its defaults, so that compression has something
            to damage; 0: random weights. With the default shape, on one CPU core, a step takes
            0.1-0.3 s. For a model that has learned the corpus, see `trained_tiny_model`.

    Returns:
        (model in eval mode, tokenizer).
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be 'masked' or 'causal', got {kind!r}")
    if dropout is not None:
        _check_proportion("dropout", dropout)
    if not isinstance(pretrain_steps, int) or pretrain_steps < 0:
        raise ValueError(f"pretrain_steps must be a non-negative int, got {pretrain_steps!r}")
    tokenizer = tiny_tokenizer()
    shape = dict(vocab_size=len(tokenizer), hidden_size=hidden_size, num_hidden_layers=num_layers,
                 num_attention_heads=num_heads, intermediate_size=intermediate_size, max_position_embeddings=512,
                 pad_token_id=tokenizer.pad_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if kind == "masked":
            rates = {} if dropout is None else dict(hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
            model = BertForMaskedLM(BertConfig(**shape, **rates))
        else:
            rates = {} if dropout is None else dict(attention_dropout=dropout)
            model = LlamaForCausalLM(LlamaConfig(**shape, **rates, num_key_value_heads=num_heads,
                                                 bos_token_id=tokenizer.bos_token_id,
                                                 eos_token_id=tokenizer.eos_token_id))
    if pretrain_steps:
        pretrain(model, tokenizer, pretrain_steps, seed=seed)
    return model.eval(), tokenizer


def pretrain(
    model: nn.Module,
    tokenizer,
    steps: int,
    *,
    seed: int = 0,
    lr: float = 3e-3,
    warmup: int = 0,
    weight_decay: float = 0.01,
    batch_size: int = 16,
    max_length: int = 64,
    mask_prob: float = 0.15,
    label_smoothing: float = 0.0,
    first_steps: int | None = None,
    progress: bool = False,
) -> list[float]:
    """Train a masked or causal LM in place on the shipped train split (data/corpus/train.txt).

    A masked LM sees `batch_size` lines cut to `max_length` tokens with BERT-style masking
    (`masked_lm_inputs(..., replacement="bert")`, a new seed every step), the layout `perplexity`
    scores; a causal LM sees `batch_size` windows of `max_length` tokens at random offsets of the
    joined split, next-token loss; the loss is the cross-entropy with `label_smoothing` (Szegedy et
    al., 2016). AdamW, the rate rising linearly over `warmup` steps, then
    decaying linearly to 0 at `steps`; gradients clipped to norm 1. The data order, the masks and
    dropout all come from `seed` (dropout inside a forked RNG: the global state is untouched), so
    the same arguments give the same losses on the same machine.

    Args:
        model: a BertForMaskedLM- or LlamaForCausalLM-like model (kind from `model_kind`).
        tokenizer: its tokenizer (with a mask token for a masked LM).
        steps: length of the schedule; first_steps: run only its first steps (None: all), e.g. to
            check cheaply that a recipe reproduces the start of a recorded run.
        lr, warmup, weight_decay: peak learning rate, warm-up steps, AdamW's decay.
        batch_size, max_length: lines or windows per step, tokens in each.
        mask_prob: masked LM only: the fraction of tokens masked (BERT: 0.15; small models learn
            faster from more targets per step, Wettig et al., 2023).
        label_smoothing: the weight in [0, 1) of the uniform distribution mixed into the targets. On a
            corpus this small a model soon overfits and puts next to nothing on the words it has not
            seen; smoothing keeps it from being that sure, which is what held-out perplexity rewards.
        progress: a tqdm bar with the running loss.

    Returns:
        The training loss of every step run (Python floats). The model is left in eval mode.

    >>> model, tokenizer = tiny_model("causal", hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32)
    >>> losses = pretrain(model, tokenizer, 30, batch_size=4, max_length=32)
    >>> len(losses), sum(losses[-5:]) < sum(losses[:5])
    (30, True)
    """
    check_positive_int("steps", steps)
    check_positive_int("batch_size", batch_size)
    if not isinstance(warmup, int) or isinstance(warmup, bool) or not 0 <= warmup < steps:
        raise ValueError(f"warmup must be an int in [0, steps={steps}), got {warmup!r}")
    if first_steps is not None:
        check_positive_int("first_steps", first_steps)
    _check_proportion("label_smoothing", label_smoothing)
    kind = model_kind(model)
    if kind == "causal" and max_length < 2:
        raise ValueError(f"max_length must be at least 2 for a causal LM, got {max_length}")
    check_room(tokenizer, max_length)
    texts = load_texts("train", source="local")
    ids = joined_ids(tokenizer, texts) if kind == "causal" else None
    order = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: (step + 1) / warmup if step < warmup else (steps - step) / (steps - warmup))
    losses = []
    bar = tqdm(range(min(steps, first_steps or steps)), desc=f"pretraining ({kind})", disable=not progress)
    model.train()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for step in bar:
            if kind == "masked":
                lines = [texts[i] for i in torch.randint(len(texts), (batch_size,), generator=order).tolist()]
                inputs = masked_lm_inputs(tokenizer, lines, max_length=max_length, mask_prob=mask_prob,
                                          seed=seed + step, replacement="bert")
            else:
                starts = torch.randint(len(ids) - max_length + 1, (batch_size, 1), generator=order)
                window = ids[starts + torch.arange(max_length)]
                inputs = {"input_ids": window, "labels": window}
            labels = inputs.pop("labels")
            logits = model(**inputs).logits
            if kind == "causal":  # position t predicts token t + 1
                logits, labels = logits[:, :-1], labels[:, 1:]
            loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), label_smoothing=label_smoothing)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
    model.eval()
    return losses


def trained_tiny_model(kind: str = "masked") -> tuple[nn.Module, BertTokenizerFast]:
    """The tiny BERT (masked) or Llama (causal) shipped in data/models, trained on the shipped corpus.

    tools/train_tiny_models.py trains them reproducibly (its RECIPES: architecture, seed and
    `pretrain` settings) and writes `data/models/<name>/`: `config.json`, `model.safetensors` and
    `training.json` (the recipe, the weights' sha256, the first steps' losses, the measured
    perplexities and activation-outlier ratios). Unlike a real LM they learn a small templated
    corpus: a low perplexity, but few or no outlier features (see `training.json`).

    Args:
        kind: "masked" (data/models/tiny-bert) or "causal" (data/models/tiny-llama).

    Returns:
        (model in eval mode, `tiny_tokenizer()`).

    Raises:
        ValueError: an unknown kind. ModelNotAvailableError: the folder or its weights are missing.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be 'masked' or 'causal', got {kind!r}")
    folder = MODELS_DIR / TRAINED_TINY_MODELS[kind]
    if not (folder / "model.safetensors").is_file():
        raise ModelNotAvailableError(f"the trained tiny {kind} LM is missing from {folder}: restore it from the "
                                     "repository (git checkout data/models) or retrain it with "
                                     "`python tools/train_tiny_models.py`")
    return MODEL_CLASSES[kind].from_pretrained(folder).eval(), tiny_tokenizer()
