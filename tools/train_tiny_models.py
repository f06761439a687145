"""Train the tiny smoke-mode language models on the shipped corpus and write them to data/models.

    python tools/train_tiny_models.py [NAME ...] [--out DIR]

Smoke mode (no hub: CI, offline readers) runs the notebooks on a tiny BERT masked LM and a tiny
Llama causal LM. Random or briefly trained weights make every compressed variant score the same,
so these two are trained until they know the lab's corpus (data/corpus, tokenizer
`evaluation.tiny_tokenizer`) and shipped; `evaluation.trained_tiny_model(kind)` loads them.

Each entry of RECIPES fixes everything a run depends on: the architecture and seed
(`evaluation.tiny_model`) and the training settings (`evaluation.pretrain`: data order, masks,
dropout and schedule all come from the seed). The script writes `OUT/<name>/config.json` and
`model.safetensors` (`save_pretrained`) and `training.json`: the recipe, the sha256 of the
weights, the losses of the first RECORDED_STEPS steps (tests/test_smoke_models.py replays them),
the perplexities on the validation and test splits (measured as in EVALUATION) and the per-layer
activation-outlier ratios (`evaluation.hidden_state_outliers`).

Runs are deterministic on one machine with one thread; another CPU class (AVX2 against AVX-512)
sums in another order, so its weights differ in the last bits and its perplexities by well under
a percent. The shipped files are the reference: retrain only when a recipe changes. One thread,
about 13 minutes for the BERT and 1 for the Llama on a 2-core EPYC.

It does not download anything, and it does not compress models.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
import time
from pathlib import Path

import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from toolkit.evaluation import (  # noqa: E402  (the repository root goes on the path first)
    MODELS_DIR,
    TRAINED_TINY_MODELS,
    hidden_state_outliers,
    load_texts,
    perplexity,
    pretrain,
    tiny_model,
)

SHAPE = dict(hidden_size=64, num_layers=4, num_heads=4, intermediate_size=256)
# The masked LM learns slower from its 40% of targets, so it is wider: on the first corpus (21k training tokens)
# test perplexity 173 at hidden 64, 123 at 128. It overfit there, sure of wrong words at new names; weight decay
# 0.3 and label smoothing 0.2 kept it less sure (57). Three times the articles (66k tokens) bring it to 9.6.
BERT_SHAPE = dict(hidden_size=128, num_layers=4, num_heads=4, intermediate_size=512)
RECIPES = {
    TRAINED_TINY_MODELS["masked"]: dict(kind="masked", seed=0, shape=BERT_SHAPE,
                                        train=dict(steps=2000, lr=2e-3, warmup=100, batch_size=32, max_length=64,
                                                   mask_prob=0.4, weight_decay=0.3, label_smoothing=0.2)),
    TRAINED_TINY_MODELS["causal"]: dict(kind="causal", seed=0, shape=SHAPE,
                                        train=dict(steps=1000, lr=3e-3, warmup=50, batch_size=16, max_length=64)),
}
RECORDED_STEPS = 20  # losses of the first steps written to training.json
EVALUATION = dict(batch_size=16, max_length=64, seed=0)  # the perplexity settings of the notebook's smoke mode
OUTLIER_TEXTS = 16  # test lines of the one batch that `hidden_state_outliers` measures


def build(name: str) -> tuple[torch.nn.Module, object]:
    """The untrained model of a recipe: `tiny_model(kind, seed, **shape)`."""
    recipe = RECIPES[name]
    return tiny_model(recipe["kind"], recipe["seed"], **recipe["shape"])


def measure(model: torch.nn.Module, tokenizer) -> dict:
    """Perplexity on the whole validation and test splits (EVALUATION) and the outlier ratios."""
    scores = {split: perplexity(model, tokenizer, load_texts(split, source="local"), progress=False, **EVALUATION)
              for split in ("validation", "test")}
    outliers = hidden_state_outliers(model, tokenizer, load_texts("test", source="local")[:OUTLIER_TEXTS],
                                     max_length=EVALUATION["max_length"])
    return {"perplexity": scores, "outliers": outliers}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def train(name: str, out: Path) -> dict:
    """Train one recipe, save it to `out/name` and return what training.json records."""
    recipe = RECIPES[name]
    model, tokenizer = build(name)
    start = time.perf_counter()
    losses = pretrain(model, tokenizer, seed=recipe["seed"], progress=True, **recipe["train"])
    seconds = time.perf_counter() - start
    folder = out / name
    model.save_pretrained(folder)
    record = {
        "recipe": recipe,
        "sha256": sha256(folder / "model.safetensors"),
        "first_losses": losses[:RECORDED_STEPS],
        "final_loss": sum(losses[-50:]) / len(losses[-50:]),
        "evaluation": EVALUATION,
        **measure(model, tokenizer),
        "trained_on": {"cpu": platform.processor() or platform.machine(),
                       "capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
                       "torch": torch.__version__, "transformers": transformers.__version__,
                       "seconds": round(seconds)},
    }
    (folder / "training.json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", choices=[[], *RECIPES], default=[],
                        help=f"recipes to train (default: all of {', '.join(RECIPES)})")
    parser.add_argument("--out", type=Path, default=MODELS_DIR, help="destination folder (default: data/models)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # one thread: the recorded losses are those of a sequential run
    for name in args.names or RECIPES:
        record = train(name, args.out)
        ratios = ", ".join(f"{row['ratio']:.1f}" for row in record["outliers"])
        print(f"{name}: perplexity validation {record['perplexity']['validation']:.2f}, test "
              f"{record['perplexity']['test']:.2f}; max|h| / median|h| per layer (0 = embeddings): {ratios}; "
              f"{record['trained_on']['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
