"""How far each layer's largest activation stands out: the outlier features that make LLM.int8() necessary.

`hidden_state_outliers` runs one batch with `output_hidden_states=True` and reports, per hidden
state, max|h| / median|h| and how many features reach LLM.int8()'s threshold. It measures; it does
not change or quantize the model.
"""
from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from toolkit.evaluation.scoring import check_texts, evaluating
from toolkit.targets import model_device


def hidden_state_outliers(
    model: nn.Module, tokenizer, texts: Sequence[str], *, max_length: int = 64, threshold: float = 6.0
) -> list[dict]:
    """max|h| / median|h| of every hidden state (embeddings, then each layer's output).

    The texts are tokenized as one padded batch cut to `max_length` tokens and run once; padding
    is left out. Gaussian-like activations of a few thousand values give a ratio of about 6
    (4.5 sigma against 0.67 sigma); the outlier features of large LMs (Dettmers et al., 2022)
    give ratios in the tens to thousands.

    Args:
        model: a Hugging Face model that returns `hidden_states`.
        tokenizer: its tokenizer.
        texts: the texts (one batch).
        max_length: tokens per text.
        threshold: LLM.int8()'s outlier threshold, for the `outlier_features` count.

    Returns:
        One dict per hidden state (layer 0 = embeddings): layer, max_abs, median_abs, ratio
        (max_abs / median_abs) and outlier_features (features with any |h| >= threshold), floats
        and ints.

    >>> from toolkit.evaluation import load_texts, tiny_model
    >>> model, tokenizer = tiny_model("causal", hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32)
    >>> [row["layer"] for row in hidden_state_outliers(model, tokenizer, load_texts("test", 2, source="local"))]
    [0, 1]
    """
    texts = check_texts(texts)
    batch = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt",
                      return_token_type_ids=False).to(model_device(model))
    with evaluating(model):
        states = model(**batch, output_hidden_states=True).hidden_states
    real = batch["attention_mask"].bool()
    rows = []
    for layer, state in enumerate(states):
        values = state[real].float().abs()  # (tokens, hidden)
        max_abs, median_abs = values.max().item(), values.median().item()
        rows.append({"layer": layer, "max_abs": max_abs, "median_abs": median_abs, "ratio": max_abs / median_abs,
                     "outlier_features": int((values >= threshold).any(dim=0).sum())})
    return rows
