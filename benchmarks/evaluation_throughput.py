"""Evaluation throughput: tokens per second of `evaluation.perplexity` against the course's original loop.

Both score the same texts (`evaluation.load_texts`: WikiText-2 test when the hub is reachable,
else the shipped corpus) with the same BERT-base-shaped masked LM (`BertForMaskedLM(BertConfig())`,
random weights) and the same tokenizer (`evaluation.tiny_tokenizer`, offline). Only texts of at
most `max_length` tokens are kept, so that both process exactly the same tokens: the original
truncates longer lines, `perplexity` splits them into chunks. Throughput counts the real
(non-padding) tokens, special tokens included.

The original loop (`original_loop_perplexity`, reimplemented here as the baseline) runs one
line at a time, pads every line to 128 tokens, tokenizes inside the timed loop, masks 15% of
the tokens at random and averages the per-line losses. Its perplexity is not comparable to the
lab's token-weighted one and is shown only to prove both ran; the speed is the point.

Run: `python benchmarks/evaluation_throughput.py [--quick] [--texts N] [--device cpu|cuda]`.
"""
from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the lab modules and `benchmarks` live there

from benchmarks.common import Table, build_parser, header, report, setup, time_calls
from toolkit.evaluation import hub_available, load_texts, perplexity, tiny_tokenizer

COLUMNS = ("method", "texts", "tokens", "batch_size", "median_s", "tokens_per_s", "speedup", "perplexity")


def original_loop_perplexity(model: nn.Module, tokenizer, texts: Sequence[str], *, max_length: int = 128,
                             mask_prob: float = 0.15, seed: int = 0) -> float:
    """The course's original evaluation loop: one line at a time, padded to `max_length`.

    Each line is tokenized with `padding='max_length'`, `mask_prob` of its real tokens (not
    [CLS]/[SEP]/padding) are replaced by [MASK] and become labels, and the model's mean loss
    over them is the line's loss. A line where no token was drawn still runs, as in the
    original, but is left out of the mean (the original got NaN there). Returns
    exp(mean of line losses): a mean over lines, not tokens.
    """
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    losses = []
    with torch.no_grad():
        for text in texts:
            encoded = tokenizer(text, padding="max_length", truncation=True, max_length=max_length,
                                return_tensors="pt", return_special_tokens_mask=True)
            special = encoded.pop("special_tokens_mask").bool() | (encoded["attention_mask"] == 0)
            chosen = (torch.rand(encoded["input_ids"].shape, generator=generator) < mask_prob) & ~special
            labels = torch.where(chosen, encoded["input_ids"], -100)
            encoded["input_ids"] = encoded["input_ids"].masked_fill(chosen, tokenizer.mask_token_id)
            encoded = {key: value.to(device) for key, value in encoded.items()}
            loss = model(**encoded, labels=labels.to(device)).loss.item()
            if chosen.any():
                losses.append(loss)
    return math.exp(sum(losses) / len(losses))


def token_counts(tokenizer, texts: Sequence[str]) -> list[int]:
    """Tokens of each text, special tokens included."""
    return [len(ids) for ids in tokenizer(list(texts))["input_ids"]]


def fitting_texts(tokenizer, texts: Sequence[str], max_length: int, count: int) -> list[str]:
    """The first `count` texts of at most `max_length` tokens."""
    return [text for text, n in zip(texts, token_counts(tokenizer, texts)) if n <= max_length][:count]


def run(device: torch.device, model: nn.Module, tokenizer, texts: Sequence[str], *, batch_size: int = 16,
        max_length: int = 128, runs: int = 1, warmup: int = 1) -> list[Table]:
    """Time both evaluations of `texts` (interleaved, `runs` times after `warmup` calls on 2 texts).

    Every text must fit in `max_length` tokens (see `fitting_texts`), so both do the same tokens.
    """
    counts = token_counts(tokenizer, texts)
    if max(counts) > max_length:
        raise ValueError(f"a text has {max(counts)} tokens, more than max_length={max_length}; "
                         "select texts with fitting_texts")
    tokens = sum(counts)
    model = model.eval().to(device)
    values = {}

    def lab() -> None:
        values["lab"] = perplexity(model, tokenizer, texts, batch_size=batch_size, max_length=max_length,
                                   progress=False)

    def original() -> None:
        values["original"] = original_loop_perplexity(model, tokenizer, texts, max_length=max_length)

    for _ in range(warmup):  # warm the allocator and kernels on a small slice
        perplexity(model, tokenizer, texts[:2], batch_size=batch_size, max_length=max_length, progress=False)
        original_loop_perplexity(model, tokenizer, texts[:2], max_length=max_length)
    timings = time_calls({"original": original, "lab": lab}, runs=runs, warmup=0, device=device)
    table = Table("evaluation_throughput", "Perplexity evaluation throughput (BERT-base-shaped masked LM)", COLUMNS)
    labels = {"original": ("original loop (1 line, padded to 128)", 1),
              "lab": ("evaluation.perplexity (batched, dynamic padding)", batch_size)}
    for key, (name, batch) in labels.items():
        seconds = timings[key].median
        table.add(method=name, texts=len(texts), tokens=tokens, batch_size=batch, median_s=seconds,
                  tokens_per_s=tokens / seconds, speedup=timings["original"].median / seconds,
                  perplexity=values[key])
    table.notes += [
        f"tokens: real tokens of the {len(texts)} texts, each at most {max_length} (the same for both); "
        "the original loop also computes on the padding to 128 and runs batches of one.",
        "perplexity: the original is exp(mean of per-line losses) on its own random masks, the lab's is "
        "token-weighted on seeded masks; with random weights both are near the vocabulary size.",
    ]
    return [table]


def main(argv: Sequence[str] | None = None) -> list[Table]:
    from transformers import BertConfig, BertForMaskedLM

    parser = build_parser(__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=None, help="texts to score (default 64, --quick 32)")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args(argv)
    device = setup(args)
    source = "auto" if hub_available() else "local"  # offline, skip the datasets library's retries
    tokenizer = tiny_tokenizer()  # offline word-piece vocabulary of the shipped corpus
    texts = fitting_texts(tokenizer, load_texts("test", source=source), 128, args.texts or (32 if args.quick else 64))
    config = BertConfig()
    if args.quick:  # a 4-layer, 256-wide BERT: same code path in seconds
        config = BertConfig(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024)
    torch.manual_seed(0)
    model = BertForMaskedLM(config)
    tables = run(device, model, tokenizer, texts, batch_size=args.batch_size,
                 runs=args.runs or 1, warmup=args.warmup if args.warmup is not None else 1)
    tables[0].notes.append(f"texts: load_texts('test', source={source!r}) "
                           f"({'WikiText-2' if source == 'auto' else 'the shipped corpus, offline'}).")
    report("evaluation_throughput", header("Evaluation throughput", device, args), tables, args.out, device)
    return tables


if __name__ == "__main__":
    main()
