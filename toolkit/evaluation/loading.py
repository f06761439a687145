"""Loading models and texts: Hugging Face models by hub id or path, WikiText-2 with the shipped corpus as fallback.

`load_model` / `load_texts` bring in a Hugging Face model and WikiText-2, and say clearly what to do when
the hub cannot be reached (`ModelNotAvailableError`); `load_texts` falls back to the corpus that ships in
data/corpus. `model_kind` tells a masked LM from a causal one. It does not build models offline
(`toolkit.evaluation.smoke` does) or score them.
"""
from __future__ import annotations

import socket
import warnings
from pathlib import Path
from urllib.parse import urlparse

import huggingface_hub
from huggingface_hub import constants as hub_constants
from huggingface_hub.errors import EntryNotFoundError
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
)
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    MODEL_FOR_MASKED_LM_MAPPING_NAMES,
)


KINDS = ("masked", "causal")  # the language models that `perplexity` scores
MODEL_CLASSES = {"masked": AutoModelForMaskedLM, "causal": AutoModelForCausalLM,
                 "sequence-classification": AutoModelForSequenceClassification}  # what `load_model` loads
SPLITS = ("train", "validation", "test")
DATA_DIR = Path(__file__).resolve().parents[2] / "data"
CORPUS_DIR = DATA_DIR / "corpus"
VOCAB_FILE = DATA_DIR / "vocab.txt"
MODELS_DIR = DATA_DIR / "models"  # the trained tiny models (`smoke.trained_tiny_model`)
WIKITEXT = ("wikitext", "wikitext-2-raw-v1")


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


def check_kind(kind: str | None) -> None:
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
            "  - use smoke mode: `evaluation.trained_tiny_model()` loads the tiny BERT or Llama shipped in "
            "data/models (`tiny_model()` builds fresh ones offline)."
        ) from None
    _keep_stored_4bit_layout(model)
    return model.eval(), tokenizer


def _keep_stored_4bit_layout(model: nn.Module) -> None:
    """Turn off bitsandbytes' CPU repacking of 4-bit weights (`Linear4bit.support_avx512bf16_for_cpu`).

    On a CPU with AVX-512 BF16, bitsandbytes 0.50 repacks a Linear4bit's weight on its first
    forward, and `state_dict()` undoes that only approximately: every later forward is wrong
    (measured on the shipped tiny BERT, nf4: masked-LM perplexity 118 -> 178 after one
    `serialized_size_mb`) and the bytes saved are not the stored format's. Without the repacking
    the layers compute from the stored codes, as they do on every other CPU.
    """
    for module in model.modules():
        if getattr(module, "support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False


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


