"""Honest measurements of language models: perplexity, size, latency, side by side.

Every compressed variant of a model is measured the same way:

- `load_model` / `load_texts` bring in a Hugging Face model and WikiText-2, and say
  clearly what to do when the hub cannot be reached. `tiny_model` / `tiny_tokenizer`
  build small models and a tokenizer offline (smoke mode), and `load_texts` falls
  back to the corpus that ships in data/corpus.
- `perplexity`: masked LMs are scored on masked positions drawn once from a seed,
  so every variant sees the very same masks; causal LMs by the sliding-window
  method. Both are token-weighted, batched with dynamic padding, and computed in
  float32 from the logits, so fp16 and bitsandbytes models are scored alike.
  `pseudo_perplexity` masks every token in turn (Salazar et al., 2020). `accuracy`
  scores sequence classifiers.
- `model_size_mb` counts the bytes the tensors occupy in memory (tied tensors once,
  packed quantized storage as stored, PyTorch's quantized Linear layers included);
  `serialized_size_mb` the bytes on disk; `parameter_count` the weights.
- `measure_latency` times forward passes of already tokenized inputs.
- `compare`, `save_rows` and `plot_comparison` put it all in one table and one figure,
  with perplexity or any other quality metric (e.g. accuracy).

It does not compress or distil models (quantization.py, pruning.py and
distillation.py do), and it prints nothing but optional progress bars: results are
returned. Sizes are in MB of 2**20 bytes throughout.

Guarantees: `parameter_count` is the same before and after quantization (`quantize_model`,
`quantize_dynamic`, bitsandbytes), except when quantizing unties a tied weight (BERT's MLM
decoder with `quantize_model(..., skip=())`), which then counts twice. `perplexity` and
`pseudo_perplexity` never score beyond the model's positions (a larger `max_length` raises
ValueError) and never score only the special tokens the tokenizer adds (texts with no token to
score raise ValueError).
"""
from __future__ import annotations

import contextlib
import csv
import functools
import math
import socket
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from urllib.parse import urlparse

import huggingface_hub
import numpy as np
import safetensors.torch
import torch
import torch.nn.functional as F
from huggingface_hub import constants as hub_constants
from huggingface_hub.errors import EntryNotFoundError
from matplotlib import ticker
from matplotlib.figure import Figure
from torch import nn
from torch.ao.nn.quantized.modules.linear import LinearPackedParams
from tqdm.auto import tqdm
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertForMaskedLM,
    BertTokenizerFast,
    LlamaConfig,
    LlamaForCausalLM,
)
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    MODEL_FOR_MASKED_LM_MAPPING_NAMES,
)

from toolkit.layers import QuantizedLinear

MB = 2**20
KINDS = ("masked", "causal")  # the language models that `perplexity` scores
# The columns of `compare` besides the quality metric and its ratio.
COLUMNS = ("name", "size_mb", "serialized_mb", "latency_median_ms", "latency_p90_ms", "size_ratio", "speedup")
# Whether a higher value is better, for the metrics `plot_comparison` knows by name.
HIGHER_IS_BETTER = {"perplexity": False, "accuracy": True}
MODEL_CLASSES = {"masked": AutoModelForMaskedLM, "causal": AutoModelForCausalLM,
                 "sequence-classification": AutoModelForSequenceClassification}  # what `load_model` loads
SPLITS = ("train", "validation", "test")
DATA_DIR = Path(__file__).resolve().parents[2] / "data"
CORPUS_DIR = DATA_DIR / "corpus"
VOCAB_FILE = DATA_DIR / "vocab.txt"
WIKITEXT = ("wikitext", "wikitext-2-raw-v1")
IGNORE_INDEX = -100  # label of positions that are not scored (the Hugging Face convention)


# ---------------------------------------------------------------------------
# Loading models and texts


class ModelNotAvailableError(OSError):
    """A model could not be loaded: not a local directory, not cached, and the hub not reachable."""


def hub_available(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub can be reached now.

    Args:
        timeout: seconds to wait for a TCP connection to the hub endpoint.

    Returns:
        False at once when HF_HUB_OFFLINE is set, else whether the connection succeeded.
    """
    if huggingface_hub.is_offline_mode():
        return False
    url = urlparse(hub_constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def model_kind(model_or_config: nn.Module | object) -> str:
    """Tell a masked LM from a causal LM.

    Looks, in order, at the model class name, `config.is_decoder`, `config.architectures`
    (names ending in ForCausalLM / LMHeadModel or ForMaskedLM) and `config.model_type`
    (masked when transformers has a masked-LM class for it, else causal when it has a
    causal-LM class: BERT counts as masked).

    Args:
        model_or_config: a model (anything with a `.config`) or a transformers config.

    Returns:
        "masked" or "causal".

    Raises:
        ValueError: when none of these tells.
    """
    config = getattr(model_or_config, "config", model_or_config)
    names = [type(model_or_config).__name__] if isinstance(model_or_config, nn.Module) else []
    if getattr(config, "is_decoder", False):
        return "causal"
    for name in names + list(getattr(config, "architectures", None) or []):
        if name.endswith(("ForCausalLM", "LMHeadModel")):
            return "causal"
        if name.endswith("ForMaskedLM"):
            return "masked"
    model_type = getattr(config, "model_type", None)
    if model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        return "masked"
    if model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return "causal"
    raise ValueError(
        f"cannot tell whether {type(model_or_config).__name__} (model_type={model_type!r}) is a masked or a "
        "causal language model; pass kind='masked' or kind='causal'"
    )


def _check_kind(kind: str | None) -> None:
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind must be None, 'masked' or 'causal', got {kind!r}")


def load_model(name_or_path: str | Path, kind: str | None = None, **kwargs) -> tuple[nn.Module, object]:
    """Load a Hugging Face masked LM, causal LM or sequence classifier and its tokenizer, in eval mode.

    Args:
        name_or_path: a hub id (e.g. "google-bert/bert-base-uncased") or a local directory
            written by `save_pretrained`.
        kind: "masked" (AutoModelForMaskedLM), "causal" (AutoModelForCausalLM),
            "sequence-classification" (AutoModelForSequenceClassification: a new, randomly
            initialised classifier when the checkpoint has none) or None to detect a masked or
            causal LM from the config (see `model_kind`).
        **kwargs: passed to `from_pretrained`, e.g. `dtype=torch.float16`,
            `quantization_config=BitsAndBytesConfig(...)`, `device_map="auto"`, or for a
            classifier `num_labels=`, `id2label=`, `label2id=`.

    Returns:
        (model, tokenizer).

    Raises:
        ModelNotAvailableError: the files are neither local nor cached and the hub cannot be
            reached (or HF_HUB_OFFLINE is set); the message lists the offline options.
        ValueError: bad `kind`, or a kind that cannot be detected.
    """
    if kind is not None and kind not in MODEL_CLASSES:
        raise ValueError(f"kind must be None, 'masked', 'causal' or 'sequence-classification', got {kind!r}")
    # An unreachable hub makes huggingface_hub retry for tens of seconds per file: when the
    # hub cannot be reached, look in the local cache only and fail fast.
    cache_only = {} if Path(name_or_path).is_dir() or hub_available() else {"local_files_only": True}
    try:
        auto = MODEL_CLASSES[kind or model_kind(AutoConfig.from_pretrained(name_or_path, **cache_only))]
        model = auto.from_pretrained(name_or_path, **cache_only, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, **cache_only)
    except (OSError, EntryNotFoundError) as error:
        # The library's own stack trace says little more than its first line: replace it.
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelNotAvailableError(
            f"Could not load {str(name_or_path)!r}: {reason}\n"
            "Without network access a model must be a local directory or already be in the Hugging Face "
            f"cache ({hub_constants.HF_HUB_CACHE}"
            f"{'; HF_HUB_OFFLINE is set' if huggingface_hub.is_offline_mode() else ''}). Offline options:\n"
            f"  - download it once where the hub is reachable: `hf download {name_or_path}`, then copy the "
            "cache over;\n"
            "  - pass the path of a directory written by `save_pretrained`;\n"
            "  - set HF_HOME to a directory whose cache already holds the model;\n"
            "  - use smoke mode: `evaluation.tiny_model()` builds a small model and tokenizer offline."
        ) from None
    return model.eval(), tokenizer


def _read_corpus(split: str) -> list[str]:
    """The lines of the shipped corpus, newline kept as in the `datasets` WikiText rows."""
    return (CORPUS_DIR / f"{split}.txt").read_text(encoding="utf-8").splitlines(keepends=True)


def load_texts(split: str = "test", limit: int | None = None, *, source: str = "auto") -> list[str]:
    """WikiText-2 (raw) lines without the empty and whitespace-only ones.

    Args:
        split: "train", "validation" or "test".
        limit: keep the first `limit` non-empty lines (None: all).
        source: "auto" loads WikiText-2 through `datasets` and, if that fails because the hub
            cannot be reached or the dataset is not cached, warns and uses the shipped
            corpus; "wikitext" never falls back; "local" uses the shipped corpus
            (data/corpus/<split>.txt, original text written for this lab in the WikiText
            layout: numbers from it are not comparable with published WikiText-2 ones).

    Returns:
        The lines as `datasets` gives them (leading space and trailing newline kept).

    Raises:
        ValueError: bad split, limit or source.
        OSError: source="wikitext" and the dataset cannot be loaded.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 0):
        raise ValueError(f"limit must be None or a non-negative int, got {limit!r}")
    if source not in ("auto", "wikitext", "local"):
        raise ValueError(f"source must be 'auto', 'wikitext' or 'local', got {source!r}")
    if source == "local":
        lines = _read_corpus(split)
    else:
        try:
            import datasets  # imported here: slow to import, and only needed with the hub

            # As in load_model: with the hub unreachable, use the local cache only and fail fast.
            offline = datasets.config.HF_HUB_OFFLINE
            datasets.config.HF_HUB_OFFLINE = offline or not hub_available()
            try:
                lines = datasets.load_dataset(*WIKITEXT, split=split)["text"]
            finally:
                datasets.config.HF_HUB_OFFLINE = offline
        except OSError as error:  # ConnectionError, DatasetNotFoundError, LocalEntryNotFoundError...
            if source == "wikitext":
                raise
            lines = _read_corpus(split)
            warnings.warn(
                f"WikiText-2 could not be loaded ({type(error).__name__}: {str(error).strip()[:200]}); using "
                f"the lab's offline corpus data/corpus/{split}.txt instead. It is not WikiText-2: its "
                "perplexities are not comparable with published ones.",
                stacklevel=2,
            )
    texts = [line for line in lines if line.strip()]
    return texts if limit is None else texts[:limit]


# ---------------------------------------------------------------------------
# Perplexity


@contextlib.contextmanager
def _evaluating(model: nn.Module) -> Iterator[None]:
    """Eval mode (no dropout) and inference mode for the block; the training flag is restored after."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


def _device(model: nn.Module) -> torch.device:
    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    return next(model.parameters(), torch.empty(0)).device


def _check_positive_int(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _check_texts(texts: Sequence[str]) -> list[str]:
    if not isinstance(texts, str):
        texts = list(texts)  # before the checks, so that they do not use up a one-shot iterable
    if isinstance(texts, str) or not all(isinstance(text, str) for text in texts):
        raise TypeError("texts must be a sequence of strings (wrap a single text in a list)")
    if not texts:
        raise ValueError("texts is empty")
    return texts


def _check_room(tokenizer, max_length: int) -> None:
    if max_length <= tokenizer.num_special_tokens_to_add():
        raise ValueError(f"max_length={max_length} leaves no room for tokens besides the special tokens")


def _check_positions(model: nn.Module, max_length: int) -> None:
    """Refuse chunks or windows longer than the model's positions (`config.max_position_embeddings`)."""
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if isinstance(limit, int) and max_length > limit:
        raise ValueError(f"max_length={max_length} exceeds the model's {limit} positions "
                         f"(config.max_position_embeddings): pass max_length <= {limit}")


def _joined_ids(tokenizer, texts: list[str]) -> torch.Tensor:
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
    _check_room(tokenizer, max_length)
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
    texts = _check_texts(texts)
    _check_positive_int("max_length", max_length)
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
    with _evaluating(model), tqdm(total=len(inputs["input_ids"]), desc="perplexity", unit=unit,
                                  disable=not progress) as bar:
        for rows, batch in _batches(inputs, batch_size, _device(model)):
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
    """
    texts = _check_texts(texts)
    _check_kind(kind)
    _check_positive_int("batch_size", batch_size)
    _check_positive_int("max_length", max_length)
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
        ids = _joined_ids(tokenizer, texts)
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
    texts = _check_texts(texts)
    _check_positive_int("max_length", max_length)
    _check_positive_int("batch_size", batch_size)
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
    device = _device(model)
    total = 0.0
    with _evaluating(model), tqdm(total=len(chunk), desc="pseudo-perplexity", unit="token",
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


# ---------------------------------------------------------------------------
# Accuracy


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
    texts = _check_texts(texts)
    labels = torch.as_tensor(labels, device="cpu")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise TypeError(f"labels must be integer class indices, got dtype {labels.dtype}")
    if labels.shape != (len(texts),):
        raise ValueError(f"labels must hold one class index per text ({len(texts)}), got shape "
                         f"{tuple(labels.shape)}")
    _check_positive_int("batch_size", batch_size)
    _check_positive_int("max_length", max_length)
    _check_room(tokenizer, max_length)
    encoded = tokenizer(texts, truncation=True, max_length=max_length, padding=True, padding_side="right",
                        return_tensors="pt", return_token_type_ids=False)
    inputs = {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}
    correct = 0
    with _evaluating(model), tqdm(total=len(texts), desc="accuracy", unit="text", disable=not progress) as bar:
        for rows, batch in _batches(inputs, batch_size, _device(model)):
            logits = model(**batch).logits
            if logits.dim() != 2:
                raise ValueError(f"expected logits of shape (batch, num_labels) from a sequence classifier, got "
                                 f"{tuple(logits.shape)}")
            correct += int((logits.argmax(dim=-1).cpu() == labels[rows]).sum())
            bar.update(len(rows))
    return correct / len(texts)


# ---------------------------------------------------------------------------
# Size


def _view_key(tensor: torch.Tensor) -> tuple:
    """Identifies the memory a tensor covers: two tensors with the same key are one tensor."""
    if tensor.device.type == "meta":  # no memory: only identity tells meta tensors apart
        return ("meta", id(tensor))
    return (tensor.device, tensor.data_ptr(), tensor.dtype, tuple(tensor.shape), tuple(tensor.stride()))


def _quant_state_tensors(param: torch.Tensor) -> Iterator[torch.Tensor]:
    """Tensors that bitsandbytes keeps beside a quantized weight, outside parameters and buffers.

    4-bit (Params4bit.quant_state): absmax per block, the 16-value code, and with double
    quantization the quantized absmax's own absmax, code and offset (quant_state.state2).
    Whatever the state holds now is counted: on CPUs with AVX-512 bf16, bitsandbytes' first
    forward repacks the weight and replaces these by a bf16 absmax (state2 dropped, offset kept).
    LLM.int8 (Int8Params.SCB): one float32 scale per output row.
    """
    states = [getattr(param, "quant_state", None)]
    while states:
        state = states.pop()
        if state is None:
            continue
        for value in vars(state).values():
            if isinstance(value, torch.Tensor):
                yield value
            elif type(value) is type(state):
                states.append(value)
    scale = getattr(param, "SCB", None)
    if isinstance(scale, torch.Tensor):
        yield scale


def _packed_weights(model: nn.Module) -> list[torch.Tensor]:
    """The weights and biases of PyTorch's quantized Linear layers, as they are stored.

    torch.ao.nn.quantized.dynamic.Linear (from `quantize_dynamic`) and the static
    torch.ao.nn.quantized.Linear keep their weight and bias in a LinearPackedParams
    submodule, inside a C++ object that is neither a parameter nor a buffer. Its
    `_weight_bias()` unpacks them: a qint8 weight (a quantized tensor, see `_tensor_bytes`)
    and a float32 bias or None; for dtype=torch.float16 a float32 copy of the float16
    weight, converted back to float16 here to count the bytes stored.
    """
    tensors = []
    for module in model.modules():
        if isinstance(module, LinearPackedParams):
            weight, bias = module._weight_bias()
            tensors += [weight.half() if module.dtype == torch.float16 else weight] + ([] if bias is None else [bias])
    return tensors


def _tensor_bytes(tensor: torch.Tensor) -> int:
    """numel * element_size, plus for a quantized tensor the quantization parameters its quantizer
    stores: one float64 scale and one int64 zero point (16 bytes) for a per-tensor scheme, the
    per-channel scale and zero-point tensors (float64 and int64 from quantize_per_channel: 16
    bytes per channel) for a per-channel scheme."""
    size = tensor.numel() * tensor.element_size()
    if not tensor.is_quantized:
        return size
    if tensor.qscheme() in (torch.per_tensor_affine, torch.per_tensor_symmetric):
        return size + 8 + 8
    scales, zero_points = tensor.q_per_channel_scales(), tensor.q_per_channel_zero_points()
    return size + scales.numel() * scales.element_size() + zero_points.numel() * zero_points.element_size()


def model_size_mb(model: nn.Module | Mapping[str, object], *, include_quant_state: bool = True) -> float:
    """Memory the weights occupy: the bytes of the distinct tensors (`_tensor_bytes`), in MB (2**20 B).

    Parameters and buffers are counted once each even when tied or shared (a tensor that
    is the same view of the same memory counts once), and packed storage counts as stored
    (a 4-bit bitsandbytes weight is a uint8 tensor of half its element count). The weights
    and biases that PyTorch's quantized Linear layers (`quantize_dynamic`, static
    quantization) keep outside parameters and buffers are added (see `_packed_weights`): an
    int8 weight as one byte per element plus its scale and zero point, the bias in float32.
    With `include_quant_state`, the quantization statistics that bitsandbytes keeps outside
    parameters and buffers are added too (see `_quant_state_tensors`); without it, for a
    model without PyTorch quantized layers, the result is exactly
    `model.get_memory_footprint() / 2**20` of transformers, which omits them (and so cannot
    tell nf4 from nf4 with double quantization).

    Args:
        model: a module, or a flat state dict (non-tensor values are ignored).
        include_quant_state: count bitsandbytes quantization statistics.

    Returns:
        The size in MB.
    """
    if isinstance(model, nn.Module):
        params = list(model.parameters())
        tensors = params + list(model.buffers()) + _packed_weights(model)
        if include_quant_state:
            tensors += [t for p in params for t in _quant_state_tensors(p)]
            # After its first forward, bitsandbytes' Linear8bitLt moves the int8 row scales
            # from weight.SCB to module.state.SCB.
            tensors += [m.state.SCB for m in model.modules()
                        if isinstance(getattr(getattr(m, "state", None), "SCB", None), torch.Tensor)]
    elif isinstance(model, Mapping):
        tensors = [t for t in model.values() if isinstance(t, torch.Tensor)]
    else:
        raise TypeError(f"expected an nn.Module or a state dict, got {type(model).__name__}")
    unique = {_view_key(t): t for t in tensors}
    return sum(_tensor_bytes(t) for t in unique.values()) / MB


def parameter_count(model: nn.Module) -> int:
    """Number of weights, whatever their storage.

    Parameters count once even when tied or shared (as in `model_size_mb`), the weights and
    biases packed inside PyTorch's quantized Linear layers count as parameters (see
    `_packed_weights`), and a 4-bit bitsandbytes weight counts the elements of its original
    shape (`quant_state.shape`), not of its packed uint8 storage. A `QuantizedLinear`
    counts the out * in weights and the bias it represents (it stores them as buffers, packed
    or not). Other buffers are not counted.

    Args:
        model: a module.

    Returns:
        The number of weights: the same before and after quantization (`quantize_dynamic`,
        bitsandbytes, `quantize_model`), unless quantizing unties a tied weight (BERT's MLM
        decoder with `skip=()`), which then counts twice.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected an nn.Module, got {type(model).__name__}")
    unique = {_view_key(t): t for t in list(model.parameters()) + _packed_weights(model)}
    stored_as_buffers = sum(m.out_features * m.in_features + (0 if m.bias is None else m.bias.numel())
                            for m in model.modules() if isinstance(m, QuantizedLinear))
    return stored_as_buffers + sum(t.quant_state.shape.numel() if getattr(t, "quant_state", None) is not None
                                   else t.numel() for t in unique.values())


def _for_safetensors(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict that safetensors accepts: tied tensors kept once (as save_pretrained does),
    other tensors sharing memory copied, everything contiguous."""
    out, seen_views, seen_storages = {}, set(), set()
    for name, tensor in state.items():
        key = _view_key(tensor)
        if key in seen_views:
            continue
        seen_views.add(key)
        storage = (tensor.device, tensor.untyped_storage().data_ptr())
        out[name] = (tensor.clone() if storage in seen_storages else tensor).contiguous()
        seen_storages.add(storage)
    return out


def serialized_size_mb(model_or_state_dict: nn.Module | Mapping[str, object]) -> float:
    """Bytes of the saved state dict, in MB (2**20 B).

    A state dict of tensors is written with safetensors (tied tensors once); one with other
    values (e.g. metadata of a sparse format) with torch.save. The file goes to a temporary
    directory that is deleted afterwards.

    Args:
        model_or_state_dict: a module (its `state_dict()` is saved) or a flat dict.

    Returns:
        The file size in MB.
    """
    if isinstance(model_or_state_dict, nn.Module):
        state = model_or_state_dict.state_dict()
    elif isinstance(model_or_state_dict, Mapping):
        state = dict(model_or_state_dict)
    else:
        raise TypeError(f"expected an nn.Module or a state dict, got {type(model_or_state_dict).__name__}")
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "state"
        if all(isinstance(value, torch.Tensor) for value in state.values()):
            safetensors.torch.save_file(_for_safetensors(state), path)
        else:
            torch.save(state, path)
        return path.stat().st_size / MB


# ---------------------------------------------------------------------------
# Latency


def measure_latency(
    model: nn.Module,
    inputs: Mapping[str, torch.Tensor] | torch.Tensor,
    *,
    runs: int = 20,
    warmup: int = 3,
    num_threads: int | None = None,
) -> dict[str, float]:
    """Wall-clock time of one forward pass on an already tokenized batch.

    Tokenization is excluded: `inputs` are moved to the model's device once, before timing.
    The model runs in eval and inference mode with `torch.set_num_threads(num_threads)`
    (restored afterwards); each run is timed with time.perf_counter, with CUDA synchronised
    before and after on a GPU.

    Args:
        model: the model.
        inputs: keyword inputs (e.g. a tokenizer's output with return_tensors="pt") or an
            input_ids tensor (B, L).
        runs: timed runs.
        warmup: untimed runs first.
        num_threads: CPU threads during the measurement; None keeps the current setting.

    Returns:
        median_ms, p90_ms (linear interpolation), mean_ms per batch; runs and threads.
    """
    _check_positive_int("runs", runs)
    if not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be a non-negative int, got {warmup!r}")
    if num_threads is not None:
        _check_positive_int("num_threads", num_threads)
    if isinstance(inputs, torch.Tensor):
        inputs = {"input_ids": inputs}
    elif not isinstance(inputs, Mapping):
        raise TypeError(f"inputs must be a tensor or a mapping of tensors, got {type(inputs).__name__}")
    device = _device(model)
    kwargs = {key: value.to(device) if isinstance(value, torch.Tensor) else value for key, value in inputs.items()}

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    previous_threads = torch.get_num_threads()
    threads = num_threads or previous_threads
    times = []
    torch.set_num_threads(threads)
    try:
        with _evaluating(model):
            for _ in range(warmup):
                model(**kwargs)
            for _ in range(runs):
                sync()
                start = time.perf_counter()
                model(**kwargs)
                sync()
                times.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous_threads)
    ms = np.array(times) * 1e3
    return {"median_ms": float(np.median(ms)), "p90_ms": float(np.percentile(ms, 90)), "mean_ms": float(ms.mean()),
            "runs": runs, "threads": threads}


# ---------------------------------------------------------------------------
# Comparison


def latency_batch(tokenizer, texts: Sequence[str], *, batch_size: int = 16, max_length: int = 128) -> dict:
    """A fixed batch for latency: up to `batch_size` rows of `max_length` tokens of the joined texts.

    The texts are joined with blank lines, tokenized once and cut into full rows, so every
    variant is timed on the same shape whatever its tokenizer's padding (one shorter row when
    the texts hold fewer than `max_length` tokens).

    Returns:
        input_ids (B, L) int64 and attention_mask (B, L) int64 of ones.
    """
    texts = _check_texts(texts)
    _check_positive_int("batch_size", batch_size)
    _check_positive_int("max_length", max_length)
    ids = _joined_ids(tokenizer, texts)
    rows = max(1, min(batch_size, len(ids) // max_length))
    ids = ids[: rows * max_length].reshape(rows, -1)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def compare(
    variants: Mapping[str, nn.Module],
    tokenizer,
    texts: Sequence[str],
    *,
    baseline: str | None = None,
    latency_inputs: Mapping[str, torch.Tensor] | torch.Tensor | None = None,
    metric: Callable[[nn.Module], float] | None = None,
    metric_name: str = "perplexity",
    kind: str | None = None,
    batch_size: int = 16,
    max_length: int = 128,
    mask_prob: float = 0.15,
    seed: int = 0,
    runs: int = 20,
    warmup: int = 3,
    num_threads: int | None = None,
    progress: bool = True,
) -> list[dict]:
    """Measure every variant the same way and relate it to the baseline.

    Args:
        variants: name -> model, all sharing `tokenizer`.
        tokenizer: the tokenizer.
        texts: the evaluation texts.
        baseline: the name the ratios refer to (default: the first variant).
        latency_inputs: the batch to time (default: `latency_batch(tokenizer, texts,
            batch_size=batch_size, max_length=max_length)`).
        metric: the quality measure, called once per variant as `metric(model)` (e.g.
            `lambda model: accuracy(model, tokenizer, texts, labels)`); None: `perplexity`.
        metric_name: the column of the metric's value (and of its ratio,
            `{metric_name}_ratio`); it must name no other column, and without a `metric` it
            must be "perplexity".
        kind, batch_size, max_length, mask_prob, seed, progress: passed to `perplexity`
            (unused with a `metric`, except batch_size and max_length for the default
            latency batch).
        runs, warmup, num_threads: passed to `measure_latency`.

    Returns:
        One dict per variant, in order: name, size_mb (`model_size_mb`), serialized_mb
        (`serialized_size_mb`), the metric (key `metric_name`, "perplexity" by default),
        latency_median_ms, latency_p90_ms, size_ratio (size / baseline size), speedup
        (baseline median latency / median latency) and `{metric_name}_ratio` (value /
        baseline value; NaN when the baseline value is 0).
    """
    if not isinstance(variants, Mapping) or not variants:
        raise ValueError("variants must be a non-empty mapping of name -> model")
    for name, model in variants.items():
        if not isinstance(model, nn.Module):
            raise TypeError(f"variant {name!r} is a {type(model).__name__}, not an nn.Module")
    baseline = next(iter(variants)) if baseline is None else baseline
    if baseline not in variants:
        raise ValueError(f"baseline {baseline!r} is not one of the variants {list(variants)}")
    if metric is None:
        if metric_name != "perplexity":
            raise ValueError(f"metric_name={metric_name!r} needs a metric; without one the column is 'perplexity'")
        metric = functools.partial(perplexity, tokenizer=tokenizer, texts=texts, batch_size=batch_size,
                                   max_length=max_length, mask_prob=mask_prob, seed=seed, progress=progress,
                                   kind=kind)
    elif not callable(metric):
        raise TypeError(f"metric must be a callable model -> float, got {type(metric).__name__}")
    if not isinstance(metric_name, str) or not metric_name or {metric_name, f"{metric_name}_ratio"} & set(COLUMNS):
        raise ValueError(f"metric_name must be a non-empty str that names no other column {COLUMNS}, got "
                         f"{metric_name!r}")
    if latency_inputs is None:
        latency_inputs = latency_batch(tokenizer, texts, batch_size=batch_size, max_length=max_length)
    rows = []
    for name, model in variants.items():
        latency = measure_latency(model, latency_inputs, runs=runs, warmup=warmup, num_threads=num_threads)
        rows.append({
            "name": name,
            "size_mb": model_size_mb(model),
            "serialized_mb": serialized_size_mb(model),
            metric_name: float(metric(model)),
            "latency_median_ms": latency["median_ms"],
            "latency_p90_ms": latency["p90_ms"],
        })
    base = rows[list(variants).index(baseline)]
    for row in rows:
        row["size_ratio"] = row["size_mb"] / base["size_mb"]
        row["speedup"] = base["latency_median_ms"] / row["latency_median_ms"]
        row[f"{metric_name}_ratio"] = row[metric_name] / base[metric_name] if base[metric_name] else math.nan
    return rows


def save_rows(rows: Sequence[Mapping[str, object]], path: str | Path) -> Path:
    """Write rows to CSV: columns in order of first appearance, missing values left empty.

    Args:
        rows: dicts such as those of `compare`.
        path: the CSV file (parent directories are created).

    Returns:
        The path written.
    """
    if not rows:
        raise ValueError("rows is empty")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def plot_comparison(
    rows: Sequence[Mapping[str, object]],
    path: str | Path | None = None,
    *,
    metric: str = "perplexity",
    higher_is_better: bool | None = None,
) -> Figure:
    """Size against a quality metric (one marker per row, with a legend) and median latency bars (p90 whiskers).

    Each row keeps one colour in both panels (and one marker). Rows lacking a value (None or
    absent) are left out of that panel. The metric axis is logarithmic when its values are
    positive and span more than a factor of 10. The figure is built without pyplot, so it
    works under any backend (Agg included) and is shown once in a notebook when it is the
    cell's value.

    Args:
        rows: dicts with name and size_mb, the metric, latency_median_ms, latency_p90_ms (as
            from `compare`).
        path: if given, the figure is also saved there (format from the suffix, 150 dpi).
        metric: the key of the metric in the rows: the y axis of the size panel.
        higher_is_better: said in the y label; None looks the metric up in
            HIGHER_IS_BETTER (perplexity: lower, accuracy: higher).

    Returns:
        The matplotlib Figure.
    """
    if not rows:
        raise ValueError("rows is empty")
    if higher_is_better is None:
        if metric not in HIGHER_IS_BETTER:
            raise ValueError(f"cannot tell whether a higher {metric!r} is better: pass higher_is_better")
        higher_is_better = HIGHER_IS_BETTER[metric]
    names = [str(row["name"]) for row in rows]
    colour = {name: f"C{i % 10}" for i, name in enumerate(names)}
    marker = {name: "osD^vPX*"[i % 8] for i, name in enumerate(names)}  # (colour, marker) unique for 40 rows
    figure = Figure(figsize=(13, 5), layout="constrained")
    size_axes, latency_axes = figure.subplots(1, 2, width_ratios=[1.3, 1])

    points = [r for r in rows if r.get("size_mb") is not None and r.get(metric) is not None]
    for row in points:
        name = str(row["name"])
        size_axes.scatter(row["size_mb"], row[metric], s=50, color=colour[name], marker=marker[name],
                          label=name, zorder=3)
    values = [r[metric] for r in points]
    if values and min(values) > 0 and max(values) > 10 * min(values):
        size_axes.set_yscale("log")
        size_axes.yaxis.set_major_locator(ticker.LogLocator(subs=(1, 2, 5)))
        size_axes.yaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
        size_axes.yaxis.set_minor_formatter(ticker.NullFormatter())
    size_axes.set(xlabel="size in memory (MB)",
                  ylabel=f"{metric} ({'higher' if higher_is_better else 'lower'} is better)",
                  title=f"Size against {metric}")
    size_axes.grid(True, alpha=0.3)
    if points:
        size_axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)

    bars = [r for r in rows if r.get("latency_median_ms") is not None]
    median = np.array([r["latency_median_ms"] for r in bars], dtype=float)
    p90 = np.array([r.get("latency_p90_ms") or r["latency_median_ms"] for r in bars], dtype=float)
    positions = np.arange(len(bars))
    latency_axes.barh(positions, median, xerr=[np.zeros_like(median), p90 - median], capsize=3,
                      color=[colour[str(r["name"])] for r in bars])
    latency_axes.set_yticks(positions, [str(r["name"]) for r in bars], fontsize=8)
    latency_axes.invert_yaxis()
    latency_axes.set(xlabel="latency per batch (ms): median, whisker to p90", title="Latency")
    latency_axes.grid(True, axis="x", alpha=0.3)
    if path is not None:
        figure.savefig(path, dpi=150)
    return figure


# The offline smoke models live in their own module (imported last: it uses load_texts and masked_lm_inputs).
from toolkit.evaluation.smoke import tiny_model, tiny_tokenizer  # noqa: E402,F401
