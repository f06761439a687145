"""Batches, a tokenizer and plain-torch references shared by the distillation tests (lab and toolkit); their models
come from the test factory (tests/models.py, `small`).

Models are built from configs with dropout off, so every forward pass is deterministic; the
tokenizer is built from a vocab file written by `make_tokenizer` (no hub).
"""
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import (
    BertTokenizerFast,
    DataCollatorForLanguageModeling,
)

WORDS = "the a cat dog bird sat ran flew on over under mat log tree far away and then home".split()
TEXTS = [
    "the cat sat on the mat",
    "a dog ran far away",
    "the birds flew over the tree",
    "a cat ran home and then sat",
    "the dog sat under a log",
    "birds sat on the log",
    "the cats ran away",
    "a dog flew home",
]


def make_tokenizer(folder: Path) -> BertTokenizerFast:
    """A word-piece BertTokenizerFast from a vocab file written into `folder`."""
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, "##s", "##ed"]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    return BertTokenizerFast.from_pretrained(str(folder))


def mlm_batches(tokenizer, texts, batch_size, seed=0):
    """Fixed MLM batches from DataCollatorForLanguageModeling, each with a labelled position."""
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.4, seed=seed)
    batches = [collator([tokenizer(t) for t in texts[i:i + batch_size]]) for i in range(0, len(texts), batch_size)]
    assert all((b["labels"] != -100).any() for b in batches)
    return batches


def reference_loss(student_logits, teacher_logits, labels, temperature, alpha):
    """alpha * KD + (1 - alpha) * CE with plain torch, over the rows whose label is not -100."""
    keep = labels != -100
    s, t, y = student_logits[keep], teacher_logits[keep], labels[keep]
    kd = F.kl_div(F.log_softmax(s / temperature, -1), F.softmax(t / temperature, -1), reduction="batchmean")
    return alpha * kd * temperature**2 + (1 - alpha) * F.cross_entropy(s, y)


def states_equal(a, b):
    a, b = a.state_dict(), b.state_dict()
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
