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
- `trained_tiny_model` loads the tiny BERT and Llama shipped in data/models (trained on the
  shipped corpus by tools/train_tiny_models.py through `pretrain`); `hidden_state_outliers`
  reports how far each layer's largest activation stands out.
- `measure_latency` times forward passes of already tokenized inputs.
- `compare`, `save_rows` and `plot_comparison` put it all in one table and one figure,
  with perplexity or any other quality metric (e.g. accuracy).

One module per concern, every public name re-exported here:

    loading     load_model, load_texts, model_kind, hub_available, ModelNotAvailableError
    smoke       tiny_tokenizer, tiny_model, pretrain, trained_tiny_model (offline smoke models)
    activations hidden_state_outliers (max|h| / median|h| per layer)
    scoring     perplexity, pseudo_perplexity, accuracy, masked_lm_inputs
    footprint   model_size_mb, serialized_size_mb, parameter_count
    latency     measure_latency, latency_batch
    report      compare, save_rows, plot_comparison (the only matplotlib user, imported when drawing)

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
from toolkit.evaluation.activations import hidden_state_outliers
from toolkit.evaluation.footprint import MB, model_size_mb, parameter_count, serialized_size_mb
from toolkit.evaluation.latency import latency_batch, measure_latency
from toolkit.evaluation.loading import (CORPUS_DIR, DATA_DIR, KINDS, MODEL_CLASSES, MODELS_DIR, SPLITS, VOCAB_FILE,
                                        WIKITEXT, ModelNotAvailableError, hub_available, load_model, load_texts,
                                        model_kind)
from toolkit.evaluation.report import COLUMNS, HIGHER_IS_BETTER, compare, plot_comparison, save_rows
from toolkit.evaluation.scoring import IGNORE_INDEX, accuracy, masked_lm_inputs, perplexity, pseudo_perplexity
from toolkit.evaluation.smoke import TRAINED_TINY_MODELS, pretrain, tiny_model, tiny_tokenizer, trained_tiny_model

__all__ = [
    "hidden_state_outliers",
    "MB", "model_size_mb", "parameter_count", "serialized_size_mb",
    "latency_batch", "measure_latency",
    "CORPUS_DIR", "DATA_DIR", "KINDS", "MODEL_CLASSES", "MODELS_DIR", "SPLITS", "VOCAB_FILE", "WIKITEXT",
    "ModelNotAvailableError", "hub_available", "load_model", "load_texts", "model_kind",
    "COLUMNS", "HIGHER_IS_BETTER", "compare", "plot_comparison", "save_rows",
    "IGNORE_INDEX", "accuracy", "masked_lm_inputs", "perplexity", "pseudo_perplexity",
    "TRAINED_TINY_MODELS", "pretrain", "tiny_model", "tiny_tokenizer", "trained_tiny_model",
]
