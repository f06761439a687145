"""Scores of a language model: perplexity (masked and causal), pseudo-perplexity, accuracy.

Masked LMs are scored on masked positions drawn once from a seed (`masked_lm_inputs`), so every variant
sees the very same masks; causal LMs by the sliding-window method. Both are token-weighted, batched with
dynamic padding, and computed in float32 from the logits, so fp16 and bitsandbytes models are scored
alike. `pseudo_perplexity` masks every token in turn (Salazar et al., 2020). `accuracy` scores sequence
classifiers. The argument checks shared with `toolkit.evaluation.latency` live here too.

Guarantees: `perplexity` and `pseudo_perplexity` never score beyond the model's positions (a larger
`max_length` raises ValueError) and never score only the special tokens the tokenizer adds (texts with
no token to score raise ValueError). It does not change the model (eval mode and inference mode for the
call, the training flag restored).
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from toolkit.evaluation.loading import check_kind, model_kind
from toolkit.targets import model_device

IGNORE_INDEX = -100  # label of positions that are not scored (the Hugging Face convention)


@contextlib.contextmanager
def evaluating(model: nn.Module) -> Iterator[None]:
    """Eval mode (no dropout) and inference mode for the block; the training flag is restored after."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


def check_positive_int(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def check_texts(texts: Sequence[str]) -> list[str]:
    if not isinstance(texts, str):
        texts = list(texts)  # before the checks, so that they do not use up a one-shot iterable
    if isinstance(texts, str) or not all(isinstance(text, str) for text in texts):
        raise TypeError("texts must be a sequence of strings (wrap a single text in a list)")
    if not texts:
        raise ValueError("texts is empty")
    return texts


def check_room(tokenizer, max_length: int) -> None:
    if max_length <= tokenizer.num_special_tokens_to_add():
        raise ValueError(f"max_length={max_length} leaves no room for tokens besides the special tokens")


def _check_positions(model: nn.Module, max_length: int) -> None:
    """Refuse chunks or windows longer than the model's positions (`config.max_position_embeddings`)."""
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if isinstance(limit, int) and max_length > limit:
        raise ValueError(f"max_length={max_length} exceeds the model's {limit} positions "
                         f"(config.max_position_embeddings): pass max_length <= {limit}")


def joined_ids(tokenizer, texts: list[str]) -> torch.Tensor:
    """The texts joined with blank lines, tokenized as one sequence: (n,) int64."""
    return tokenizer("\n\n".join(texts), return_tensors="pt", verbose=False)["input_ids"][0]


def _encode(tokenizer, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
    """Tokenize into chunks of at most `max_length` tokens, right-padded.

    A text longer than `max_length` tokens becomes several chunks, each with its own special
    tokens, so that every token of every text is scored.

    Returns:
        input_ids (N, L) int64, attention_mask (N, L) int64 and scorable (N, L) bool (real,
        non-special tokens) for the N chunks in text order, L the longest chunk.
    """
    check_room(tokenizer, max_length)
    encoded = tokenizer(texts, truncation=True, max_length=max_length, return_overflowing_tokens=True,
                        return_special_tokens_mask=True, padding=True, padding_side="right",
                        return_tensors="pt", return_token_type_ids=False)
    scorable = encoded["attention_mask"].bool() & ~encoded["special_tokens_mask"].bool()
    return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"], "scorable": scorable}


def masked_lm_inputs(
    tokenizer,
    texts: Sequence[str],
    *,
    max_length: int = 128,
    mask_prob: float = 0.15,
    seed: int = 0,
    replacement: str = "mask",
) -> dict[str, torch.Tensor]:
    """The masked inputs on which `perplexity` scores a masked LM (public so they can be checked).

    Masks depend only on the tokenizer, the texts, `max_length` and `seed`, never on a model
    or a batch size, so every variant of a model is scored on the very same positions:

    1. The texts are tokenized into chunks of at most `max_length` tokens (see `_encode`).
    2. One `torch.Generator` seeded with `seed` draws a uniform number u for every real
       token of the corpus, in reading order; padding draws nothing.
    3. A real, non-special token is masked when u < mask_prob. In a chunk where nothing was
       masked, its token with the smallest u is masked, so every chunk with a real token
       has at least one mask. Special tokens and padding are never masked.
    4. replacement="mask" puts [MASK] at every masked position. replacement="bert" draws,
       after step 2, a second uniform r and a random token id (0 <= id < len(tokenizer))
       for every real token: a masked position becomes [MASK] when r < 0.8, the random token
       when 0.8 <= r < 0.9, and keeps its token otherwise (Devlin et al., 2019). The masked
       positions are the same in both modes.

    Args:
        tokenizer: a tokenizer with a mask token (a fast tokenizer: chunking uses its
            overflowing tokens).
        texts: the texts.
        max_length: tokens per chunk, special tokens included.
        mask_prob: probability in (0, 1] that a token is masked.
        seed: seeds the generator.
        replacement: "mask" or "bert".

    Returns:
        input_ids (N, L) int64 (masked), attention_mask (N, L) int64, labels (N, L) int64
        (the original token at masked positions, -100 elsewhere), N chunks, L the longest.
    """
    texts = check_texts(texts)
    check_positive_int("max_length", max_length)
    if not 0 < mask_prob <= 1:
        raise ValueError(f"mask_prob must be in (0, 1], got {mask_prob!r}")
    if replacement not in ("mask", "bert"):
        raise ValueError(f"replacement must be 'mask' or 'bert', got {replacement!r}")
    if tokenizer.mask_token_id is None:
        raise ValueError("the tokenizer has no mask token: masked-LM perplexity needs one")
    encoded = _encode(tokenizer, texts, max_length)
    ids, scorable = encoded["input_ids"], encoded["scorable"]
    real = encoded["attention_mask"].bool()
    generator = torch.Generator().manual_seed(seed)

    def draw(sample, fill):  # one value per real token, in reading order; `fill` at padding
        values = torch.full(ids.shape, fill, dtype=sample.dtype)
        values[real] = sample
        return values

    n_real = int(real.sum())
    u = draw(torch.rand(n_real, generator=generator), 2.0).masked_fill(~scorable, 2.0)
    masked = u < mask_prob
    rows = torch.arange(len(ids))
    smallest = u.argmin(dim=1)
    masked[rows, smallest] |= scorable[rows, smallest]
    inputs = ids.masked_fill(masked, tokenizer.mask_token_id)
    if replacement == "bert":
        r = draw(torch.rand(n_real, generator=generator), 0.0)
        random_ids = draw(torch.randint(len(tokenizer), (n_real,), generator=generator), 0)
        inputs = torch.where(masked & (r >= 0.8) & (r < 0.9), random_ids, inputs)
        inputs = torch.where(masked & (r >= 0.9), ids, inputs)
    return {"input_ids": inputs, "attention_mask": encoded["attention_mask"],
            "labels": ids.masked_fill(~masked, IGNORE_INDEX)}


def _batches(
    inputs: Mapping[str, torch.Tensor], batch_size: int, device: torch.device
) -> Iterator[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    """Rows of right-padded `(N, L)` inputs in batches of similar length, with dynamic padding.

    Rows are sorted by length (`attention_mask` sums), longest first (least padding, early
    OOM), and grouped `batch_size` at a time; each batch is cut to its longest row.

    Yields:
        (rows, batch): the row indices, int64 on the CPU, and every tensor of `inputs` at
        those rows, `(len(rows), width)`, on `device`.
    """
    lengths = inputs["attention_mask"].sum(dim=1)
    for rows in torch.argsort(lengths, descending=True, stable=True).split(batch_size):
        width = int(lengths[rows].max())
        yield rows, {key: value[rows, :width].to(device) for key, value in inputs.items()}


def _nll(model, inputs: dict[str, torch.Tensor], batch_size: int, *, shift: bool, progress: bool,
         unit: str) -> tuple[float, int]:
    """Sum of -log p(label) over the positions whose label is not -100, and their count.

    Rows are batched by length and cut to the longest row of their batch (dynamic padding);
    the loss is computed in float32 from the logits. With `shift` (causal LM) the logits at
    position t are scored against the label at t + 1.
    """
    total, count = 0.0, 0
    with evaluating(model), tqdm(total=len(inputs["input_ids"]), desc="perplexity", unit=unit,
                                  disable=not progress) as bar:
        for rows, batch in _batches(inputs, batch_size, model_device(model)):
            labels = batch.pop("labels")
            logits = model(**batch).logits
            if shift:
                logits, labels = logits[:, :-1], labels[:, 1:]
            scored = labels != IGNORE_INDEX
            total += float(F.cross_entropy(logits[scored].float(), labels[scored], reduction="sum"))
            count += int(scored.sum())
            bar.update(len(rows))
    return total, count


def _causal_windows(ids: torch.Tensor, max_length: int, stride: int) -> dict[str, torch.Tensor]:
    """Sliding windows over one token sequence, as in the Hugging Face perplexity guide.

    Window k starts at k * stride and holds up to `max_length` tokens; windows stop at the first
    one that reaches the end. Window k scores the tokens after the end of window k - 1, so each
    token is scored once, with between max_length - stride and max_length - 1 tokens of context.
    The first token has no context and is never scored; with stride == max_length the first
    token of every window is not scored either.

    Returns:
        input_ids (K, max_length) int64, attention_mask (K, max_length) int64 and labels
        (K, max_length) int64, -100 where not scored; labels[:, t] is predicted at t - 1.
    """
    n = len(ids)
    begins = torch.arange(0, n, stride)
    ends = (begins + max_length).clamp(max=n)
    last = int((ends == n).nonzero()[0])  # stride <= max_length, so some window reaches the end
    begins, ends = begins[: last + 1], ends[: last + 1]
    previous_ends = torch.cat([torch.zeros(1, dtype=ends.dtype), ends[:-1]])
    first_scored = torch.maximum(previous_ends, begins + 1)
    positions = begins[:, None] + torch.arange(max_length)
    real = positions < ends[:, None]
    window_ids = ids[positions.clamp(max=n - 1)].masked_fill(~real, 0)
    scored = real & (positions >= first_scored[:, None])
    return {"input_ids": window_ids, "attention_mask": real.long(),
            "labels": window_ids.masked_fill(~scored, IGNORE_INDEX)}


def perplexity(
    model: nn.Module,
    tokenizer,
    texts: Sequence[str],
    *,
    batch_size: int = 16,
    max_length: int = 128,
    mask_prob: float = 0.15,
    seed: int = 0,
    progress: bool = True,
    kind: str | None = None,
    replacement: str = "mask",
    stride: int | None = None,
) -> float:
    """Token-weighted perplexity, exp(total NLL / number of scored tokens).

    Masked LM: scored on the masked positions of `masked_lm_inputs` (same seed, same masks,
    whatever the model or batch size). Causal LM: the texts are joined with blank lines and
    scored by sliding windows of `max_length` tokens moved by `stride` (see
    `_causal_windows`). The loss is computed in float32 from the logits, so fp16 and
    bitsandbytes models are scored alike; the model runs in eval mode on its own device.

    Args:
        model: a Hugging Face style LM whose output has `.logits` of shape (B, L, vocab).
        tokenizer: its tokenizer.
        texts: the texts (e.g. from `load_texts`).
        batch_size: chunks (masked) or windows (causal) per forward pass.
        max_length: tokens per chunk or window.
        mask_prob, seed, replacement: masking (masked LM only; see `masked_lm_inputs`).
        progress: show a tqdm bar.
        kind: "masked", "causal" or None to detect it (see `model_kind`).
        stride: causal LM only; None means max_length // 2.

    Returns:
        The perplexity (1.0 for a model that puts all its mass on the right tokens).

    Raises:
        ValueError: bad arguments; `max_length` beyond the model's positions
            (`config.max_position_embeddings`: refused, not capped, so that the masks and
            windows never depend on the model); texts with no token to score (e.g. only
            whitespace: the special tokens the tokenizer adds are never all there is to score).

    >>> from toolkit.evaluation import tiny_model
    >>> model, tokenizer = tiny_model("causal")
    >>> value = perplexity(model, tokenizer, ["The cat sat on the mat.", "It rained."], progress=False)
    >>> 1 < value < 10 * len(tokenizer)  # random weights: about the vocabulary size
    True
    """
    texts = check_texts(texts)
    check_kind(kind)
    check_positive_int("batch_size", batch_size)
    check_positive_int("max_length", max_length)
    _check_positions(model, max_length)
    if (kind or model_kind(model)) == "masked":
        inputs = masked_lm_inputs(tokenizer, texts, max_length=max_length, mask_prob=mask_prob, seed=seed,
                                  replacement=replacement)
        total, count = _nll(model, inputs, batch_size, shift=False, progress=progress, unit="chunk")
    else:
        if max_length < 2:
            raise ValueError(f"max_length must be at least 2 for a causal LM, got {max_length}")
        stride = max_length // 2 if stride is None else stride
        if not isinstance(stride, int) or not 1 <= stride <= max_length:
            raise ValueError(f"stride must be an int in [1, max_length={max_length}], got {stride!r}")
        ids = joined_ids(tokenizer, texts)
        # At most the special tokens the tokenizer adds (whitespace-only texts): nothing of the texts.
        if len(ids) <= tokenizer.num_special_tokens_to_add() and not tokenizer(
                "\n\n".join(texts), add_special_tokens=False, verbose=False)["input_ids"]:
            raise ValueError("the texts hold no token to score")
        if len(ids) < 2:
            raise ValueError("the texts hold fewer than two tokens: nothing to predict")
        windows = _causal_windows(ids, max_length, stride)
        total, count = _nll(model, windows, batch_size, shift=True, progress=progress, unit="window")
    if count == 0:
        raise ValueError("the texts hold no token to score")
    return math.exp(total / count)


def pseudo_perplexity(
    model: nn.Module,
    tokenizer,
    texts: Sequence[str],
    *,
    max_length: int = 128,
    batch_size: int = 64,
    progress: bool = True,
) -> float:
    """Pseudo-perplexity of a masked LM (Salazar et al., 2020): every token masked in turn.

    PPPL = exp(-(1/N) sum_t log p(w_t | the chunk with w_t replaced by [MASK])) over all N
    real, non-special tokens of the chunks of `_encode`. It costs one forward pass per token
    (batched), so use it on small subsets.

    Args:
        model: a masked LM whose output has `.logits`.
        tokenizer: its tokenizer (with a mask token).
        texts: the texts.
        max_length: tokens per chunk.
        batch_size: masked copies per forward pass.
        progress: show a tqdm bar.

    Returns:
        The pseudo-perplexity.
    """
    texts = check_texts(texts)
    check_positive_int("max_length", max_length)
    check_positive_int("batch_size", batch_size)
    _check_positions(model, max_length)
    if tokenizer.mask_token_id is None:
        raise ValueError("the tokenizer has no mask token: pseudo-perplexity needs one")
    encoded = _encode(tokenizer, texts, max_length)
    lengths = encoded["attention_mask"].sum(dim=1)
    order = torch.argsort(lengths, descending=True, stable=True)
    ids, attention, lengths = encoded["input_ids"][order], encoded["attention_mask"][order], lengths[order]
    chunk, position = encoded["scorable"][order].nonzero(as_tuple=True)  # one masked copy per token
    if len(chunk) == 0:
        raise ValueError("the texts hold no token to score")
    device = model_device(model)
    total = 0.0
    with evaluating(model), tqdm(total=len(chunk), desc="pseudo-perplexity", unit="token",
                                  disable=not progress) as bar:
        for copies in torch.arange(len(chunk)).split(batch_size):
            rows, cols = chunk[copies], position[copies]
            width = int(lengths[rows].max())
            masked = ids[rows, :width]  # indexing by a tensor of rows already copies
            masked[torch.arange(len(rows)), cols] = tokenizer.mask_token_id
            logits = model(input_ids=masked.to(device), attention_mask=attention[rows, :width].to(device)).logits
            picked = logits[torch.arange(len(rows), device=device), cols.to(device)]
            total += float(F.cross_entropy(picked.float(), ids[rows, cols].to(device), reduction="sum"))
            bar.update(len(rows))
    return math.exp(total / len(chunk))


def accuracy(
    model: nn.Module,
    tokenizer,
    texts: Sequence[str],
    labels: Sequence[int] | torch.Tensor,
    *,
    batch_size: int = 32,
    max_length: int = 128,
    progress: bool = True,
) -> float:
    """Classification accuracy: the fraction of texts whose highest logit is at their label.

    Each text is tokenized once, truncated to `max_length` tokens (special tokens included)
    and right-padded; texts are batched by length and each batch is cut to its longest text
    (dynamic padding), as in `perplexity`. No token_type_ids are passed: single texts need
    none, and DistilBERT-style models accept none. The model runs in eval and inference mode
    on its own device.

    Args:
        model: a sequence classifier whose output has `.logits` of shape (B, num_labels),
            e.g. from `load_model(..., kind="sequence-classification")`.
        tokenizer: its tokenizer.
        texts: N texts.
        labels: N class indices: ints, or an integer tensor of shape (N,).
        batch_size: texts per forward pass.
        max_length: tokens per text.
        progress: show a tqdm bar.

    Returns:
        (number of texts whose argmax of the logits equals the label) / N, in [0, 1]; a tie
        between logits goes to the lowest class index (torch.argmax).
    """
    texts = check_texts(texts)
    labels = torch.as_tensor(labels, device="cpu")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise TypeError(f"labels must be integer class indices, got dtype {labels.dtype}")
    if labels.shape != (len(texts),):
        raise ValueError(f"labels must hold one class index per text ({len(texts)}), got shape "
                         f"{tuple(labels.shape)}")
    check_positive_int("batch_size", batch_size)
    check_positive_int("max_length", max_length)
    check_room(tokenizer, max_length)
    encoded = tokenizer(texts, truncation=True, max_length=max_length, padding=True, padding_side="right",
                        return_tensors="pt", return_token_type_ids=False)
    inputs = {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}
    correct = 0
    with evaluating(model), tqdm(total=len(texts), desc="accuracy", unit="text", disable=not progress) as bar:
        for rows, batch in _batches(inputs, batch_size, model_device(model)):
            logits = model(**batch).logits
            if logits.dim() != 2:
                raise ValueError(f"expected logits of shape (batch, num_labels) from a sequence classifier, got "
                                 f"{tuple(logits.shape)}")
            correct += int((logits.argmax(dim=-1).cpu() == labels[rows]).sum())
            bar.update(len(rows))
    return correct / len(texts)


