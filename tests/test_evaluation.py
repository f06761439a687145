"""Tests of toolkit/evaluation.py: perplexities against hand computations, exact sizes, latency, offline loading.

Models are tiny and built from configs; the tokenizer is the offline smoke-mode one.
"""
import copy
import csv
import importlib.util
import io
import math
import sys
import warnings
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import (BertConfig, BertForMaskedLM, BertForSequenceClassification, BitsAndBytesConfig,
                          LlamaForCausalLM)

import toolkit.evaluation as ev
from models import tiny, tiny_bert
from toolkit.evaluation.footprint import _view_key

MB = 2**20


@pytest.fixture(scope="module")
def tokenizer():
    return ev.tiny_tokenizer()


@pytest.fixture(scope="module")
def texts():
    return ev.load_texts("test", limit=10, source="local")


@pytest.fixture(scope="module")
def bert():
    model, _ = ev.tiny_model("masked", seed=0, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)
    return model


@pytest.fixture(scope="module")
def llama():
    model, _ = ev.tiny_model("causal", seed=0, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)
    return model


class Uniform(nn.Module):
    """Logits all zero: every token has probability 1 / vocab_size, so the perplexity is vocab_size."""

    def __init__(self, vocab_size):
        super().__init__()
        self.vocab_size = vocab_size

    def forward(self, input_ids, attention_mask=None):
        return SimpleNamespace(logits=torch.zeros(*input_ids.shape, self.vocab_size))


class MaskedOracle(nn.Module):
    """A perfect masked LM: it knows the original chunks and puts all its mass on the original tokens.

    A batch row is matched to the original chunk of the same length that agrees with it wherever the
    row is not [MASK] (the [MASK] replacement keeps every other token).
    """

    def __init__(self, originals, attention_mask, mask_id, vocab_size):
        super().__init__()
        self.originals, self.lengths = originals, attention_mask.sum(dim=1)
        self.mask_id, self.vocab_size = mask_id, vocab_size

    def forward(self, input_ids, attention_mask):
        width = input_ids.shape[1]
        agree = (input_ids[:, None] == self.originals[None, :, :width]) | (input_ids[:, None] == self.mask_id)
        agree |= attention_mask[:, None] == 0
        match = agree.all(dim=-1) & (self.lengths[None] == attention_mask.sum(dim=1)[:, None])
        assert (match.sum(dim=1) == 1).all(), "each row must match exactly one original chunk"
        original = self.originals[match.float().argmax(dim=1), :width]
        return SimpleNamespace(logits=1000.0 * F.one_hot(original, self.vocab_size).float())


class Bigram(nn.Module):
    """A causal LM whose logits depend on the current token only (a lookup table), so any window scores
    a token exactly as the full sequence does."""

    def __init__(self, table):
        super().__init__()
        self.table = nn.Parameter(table)

    def forward(self, input_ids, attention_mask=None):
        return SimpleNamespace(logits=self.table[input_ids])


def originals(inputs):
    return torch.where(inputs["labels"] != -100, inputs["labels"], inputs["input_ids"])


# ---------------------------------------------------------------------------
# masks


def test_masks_follow_the_documented_draw(tokenizer, texts):
    inputs = ev.masked_lm_inputs(tokenizer, texts, max_length=32, mask_prob=0.15, seed=3, replacement="bert")
    plain = ev.masked_lm_inputs(tokenizer, texts, max_length=32, mask_prob=0.15, seed=3, replacement="mask")
    ids, attention = originals(inputs), inputs["attention_mask"]
    assert len(ids) > len(texts)  # texts longer than 32 tokens were split into chunks, not truncated
    assert attention.sum() == sum(len(tokenizer(t)["input_ids"]) - 2 for t in texts) + 2 * len(ids)
    special = set(tokenizer.all_special_ids)
    # Replay the draw token by token: u, then r, then a random id for every real token in reading order.
    generator = torch.Generator().manual_seed(3)
    n_real = int(attention.sum())
    u, r = torch.rand(n_real, generator=generator), torch.rand(n_real, generator=generator)
    random_ids = torch.randint(len(tokenizer), (n_real,), generator=generator)
    k = 0
    for row in range(len(ids)):
        real = [c for c in range(ids.shape[1]) if attention[row, c]]
        scorable = [c for c in real if int(ids[row, c]) not in special]
        draws = {c: k + i for i, c in enumerate(real)}
        k += len(real)
        masked = {c for c in scorable if u[draws[c]] < 0.15} or {min(scorable, key=lambda c: u[draws[c]])}
        for c in range(ids.shape[1]):
            label, token, plain_token = (int(x[row, c]) for x in (inputs["labels"], inputs["input_ids"],
                                                                  plain["input_ids"]))
            if c not in masked:
                assert label == -100 and token == plain_token == int(ids[row, c])
                continue
            assert label == int(ids[row, c]) and plain_token == tokenizer.mask_token_id
            q = float(r[draws[c]])
            expected = tokenizer.mask_token_id if q < 0.8 else int(random_ids[draws[c]]) if q < 0.9 else label
            assert token == expected
    assert torch.equal(plain["labels"], inputs["labels"])  # same positions whatever the replacement
    n_masked = int((inputs["labels"] != -100).sum())
    n_scorable = sum(int(t) not in special for t in ids[attention.bool()])
    # ~Binomial(n, 0.15) plus at most one forced mask per chunk; 0.05 is beyond 8 standard deviations
    assert abs(n_masked / n_scorable - 0.15) < 0.05


def test_same_seed_same_masks_and_value_other_seed_other_masks(bert, tokenizer, texts):
    a = ev.masked_lm_inputs(tokenizer, texts, seed=0)
    b = ev.masked_lm_inputs(tokenizer, texts, seed=0)
    c = ev.masked_lm_inputs(tokenizer, texts, seed=1)
    assert all(torch.equal(a[key], b[key]) for key in a)
    assert not torch.equal(a["labels"], c["labels"])
    value = ev.perplexity(bert, tokenizer, texts, seed=0, progress=False)
    assert ev.perplexity(bert, tokenizer, texts, seed=0, progress=False) == value
    assert ev.perplexity(bert, tokenizer, texts, seed=1, progress=False) != value


def test_masks_do_not_depend_on_batch_size(bert, tokenizer, texts):
    one = ev.perplexity(bert, tokenizer, texts, batch_size=1, max_length=32, progress=False)
    seven = ev.perplexity(bert, tokenizer, texts, batch_size=7, max_length=32, progress=False)
    # same positions; padding only changes float32 rounding (~1e-6 relative per logit)
    assert seven == pytest.approx(one, rel=1e-4)


# ---------------------------------------------------------------------------
# perplexity


def test_masked_perplexity_is_exp_of_hand_computed_mean_nll(bert, tokenizer, texts):
    inputs = ev.masked_lm_inputs(tokenizer, texts, max_length=32, seed=0)
    nll, count = 0.0, 0
    with torch.no_grad():
        for ids, attention, labels in zip(inputs["input_ids"], inputs["attention_mask"], inputs["labels"]):
            n = int(attention.sum())  # one chunk at a time, unpadded
            log_probs = torch.log_softmax(bert(input_ids=ids[None, :n]).logits[0].double(), dim=-1)
            scored = (labels[:n] != -100).nonzero().flatten()
            nll -= float(log_probs[scored, labels[scored]].sum())
            count += len(scored)
    value = ev.perplexity(bert, tokenizer, texts, batch_size=4, max_length=32, seed=0, progress=False)
    # batched padded float32 against unpadded float64 log-softmax: differences of float32 rounding
    assert value == pytest.approx(math.exp(nll / count), rel=1e-4)
    assert bert.training is False


def test_perfect_masked_model_scores_one_and_uniform_scores_vocab_size(tokenizer, texts):
    paragraphs = [text for text in texts if len(text) > 200]  # headings such as " = = History = = " repeat
    for seed in (0, 5):
        inputs = ev.masked_lm_inputs(tokenizer, paragraphs, max_length=32, seed=seed)
        oracle = MaskedOracle(originals(inputs), inputs["attention_mask"], tokenizer.mask_token_id, len(tokenizer))
        assert ev.perplexity(oracle, tokenizer, paragraphs, max_length=32, seed=seed, kind="masked",
                             batch_size=3, progress=False) == 1.0
    uniform = ev.perplexity(Uniform(len(tokenizer)), tokenizer, texts, kind="masked", progress=False)
    assert uniform == pytest.approx(len(tokenizer), rel=1e-5)  # float32 log(1024)


def test_causal_perplexity_matches_the_sliding_window_by_hand(llama, tokenizer, texts):
    max_length, stride = 16, 6
    ids = tokenizer("\n\n".join(texts[:2]), return_tensors="pt")["input_ids"][0]
    nll, count, previous_end = 0.0, 0, 0
    with torch.no_grad():
        for begin in range(0, len(ids), stride):  # the loop of the Hugging Face perplexity guide
            end = min(begin + max_length, len(ids))
            log_probs = torch.log_softmax(llama(input_ids=ids[None, begin:end]).logits[0].double(), dim=-1)
            for position in range(max(previous_end, begin + 1), end):
                nll -= float(log_probs[position - begin - 1, ids[position]])
                count += 1
            previous_end = end
            if end == len(ids):
                break
    assert count == len(ids) - 1  # every token but the first, once
    value = ev.perplexity(llama, tokenizer, texts[:2], max_length=max_length, stride=stride, batch_size=3,
                          progress=False)
    assert value == pytest.approx(math.exp(nll / count), rel=1e-4)


@pytest.mark.parametrize("stride", [1, 4, 7])
def test_causal_windows_score_every_token_once(tokenizer, texts, stride):
    ids = tokenizer("\n\n".join(texts[:3]), return_tensors="pt")["input_ids"][0]
    bigram = Bigram(torch.randn(len(tokenizer), len(tokenizer), generator=torch.Generator().manual_seed(0)))
    with torch.no_grad():
        full = F.cross_entropy(bigram(ids[:-1]).logits.double(), ids[1:])
    value = ev.perplexity(bigram, tokenizer, texts[:3], max_length=8, stride=stride, kind="causal",
                          progress=False)
    assert value == pytest.approx(math.exp(float(full)), rel=1e-5)


def test_perfect_causal_model_scores_one(tokenizer):
    words = [w for w in tokenizer.get_vocab() if w.isalpha() and len(w) > 3][:40]
    ids = tokenizer(" ".join(words), return_tensors="pt")["input_ids"][0]
    assert len(set(ids.tolist())) == len(ids) == len(words) + 2  # every token distinct: the next one is known
    table = torch.zeros(len(tokenizer), len(tokenizer))
    table[ids[:-1], ids[1:]] = 1000.0
    assert ev.perplexity(Bigram(table), tokenizer, [" ".join(words)], max_length=8, stride=3, kind="causal",
                         progress=False) == 1.0


def test_perplexity_validates_its_arguments(bert, tokenizer, texts):
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        ev.perplexity(bert, tokenizer, texts, batch_size=0)
    with pytest.raises(ValueError, match="mask_prob must be in"):
        ev.perplexity(bert, tokenizer, texts, mask_prob=0.0)
    with pytest.raises(ValueError, match="replacement must be"):
        ev.perplexity(bert, tokenizer, texts, replacement="random")
    with pytest.raises(ValueError, match="kind must be"):
        ev.perplexity(bert, tokenizer, texts, kind="seq2seq")
    with pytest.raises(ValueError, match="stride must be"):
        ev.perplexity(bert, tokenizer, texts, kind="causal", max_length=8, stride=9)
    with pytest.raises(ValueError, match="no room"):
        ev.perplexity(bert, tokenizer, texts, max_length=2)
    with pytest.raises(ValueError, match="texts is empty"):
        ev.perplexity(bert, tokenizer, [])
    with pytest.raises(TypeError, match="wrap a single text"):
        ev.perplexity(bert, tokenizer, "one text")
    with pytest.raises(ValueError, match="no token to score"):
        ev.perplexity(bert, tokenizer, ["   "], progress=False)
    with pytest.raises(ValueError, match="pass kind="):
        ev.perplexity(Uniform(8), tokenizer, texts)


def test_texts_may_be_a_one_shot_iterable(bert, tokenizer, texts):
    # the argument checks must not use up a generator before the texts are tokenized
    assert ev.perplexity(bert, tokenizer, iter(texts), max_length=32, progress=False) == ev.perplexity(
        bert, tokenizer, texts, max_length=32, progress=False)
    one_shot = ev.latency_batch(tokenizer, (text for text in texts), batch_size=2, max_length=16)
    assert torch.equal(one_shot["input_ids"], ev.latency_batch(tokenizer, texts, batch_size=2, max_length=16)["input_ids"])


def test_pseudo_perplexity_by_hand_perfect_and_uniform(bert, tokenizer, texts):
    short = texts[:2]
    encoded = tokenizer(short, truncation=True, max_length=16, return_overflowing_tokens=True)
    special = set(tokenizer.all_special_ids)
    nll, count = 0.0, 0
    with torch.no_grad():
        for chunk in encoded["input_ids"]:
            for position, token in enumerate(chunk):
                if token in special:
                    continue
                masked = torch.tensor([chunk])
                masked[0, position] = tokenizer.mask_token_id
                nll -= float(torch.log_softmax(bert(input_ids=masked).logits[0, position].double(), dim=-1)[token])
                count += 1
    value = ev.pseudo_perplexity(bert, tokenizer, short, max_length=16, batch_size=5, progress=False)
    assert value == pytest.approx(math.exp(nll / count), rel=1e-4)

    inputs = ev.masked_lm_inputs(tokenizer, short, max_length=16)
    oracle = MaskedOracle(originals(inputs), inputs["attention_mask"], tokenizer.mask_token_id, len(tokenizer))
    assert ev.pseudo_perplexity(oracle, tokenizer, short, max_length=16, progress=False) == 1.0
    uniform = ev.pseudo_perplexity(Uniform(len(tokenizer)), tokenizer, short, progress=False)
    assert uniform == pytest.approx(len(tokenizer), rel=1e-5)


# ---------------------------------------------------------------------------
# accuracy


class LengthClassifier(nn.Module):
    """Predicts class (number of real tokens) % num_classes; records what every forward pass saw."""

    def __init__(self, num_classes, zero=False):
        super().__init__()
        self.num_classes, self.zero, self.calls = num_classes, zero, []
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, input_ids, attention_mask):
        self.calls.append(SimpleNamespace(width=input_ids.shape[1], last_column_used=bool(attention_mask[:, -1].any()),
                                          inference=torch.is_inference_mode_enabled(), training=self.training))
        logits = F.one_hot(attention_mask.sum(dim=1) % self.num_classes, self.num_classes).float()
        return SimpleNamespace(logits=self.scale * logits * (not self.zero))


# "the" is one token: the k-th text has k + 2 tokens with [CLS] and [SEP], at most 8 after truncation.
SENTENCES = [" ".join(["the"] * k) for k in range(1, 11)]  # 3, 4, 5, 6, 7, 8, 8, 8, 8, 8 tokens
# predicted 3, 0, 1, 2, 3, 0, 0, 0, 0, 0 (length % 4); right at 0, 2, 3, 5, 6, 8, 9
SENTENCE_LABELS = [3, 1, 1, 2, 0, 0, 0, 3, 0, 0]


@pytest.mark.parametrize("batch_size", [1, 3, 32])
def test_accuracy_of_a_known_classifier_is_exact(tokenizer, batch_size):
    model = LengthClassifier(4).train()
    assert ev.accuracy(model, tokenizer, SENTENCES, SENTENCE_LABELS, batch_size=batch_size, max_length=8,
                       progress=False) == 7 / 10
    assert model.training  # restored
    assert all(call.inference and not call.training for call in model.calls)
    # dynamic padding: every batch is cut to its longest text, never wider than max_length
    assert len(model.calls) == math.ceil(10 / batch_size)
    assert all(call.last_column_used and call.width <= 8 for call in model.calls)
    labels = torch.tensor(SENTENCE_LABELS)
    assert ev.accuracy(model, tokenizer, SENTENCES, labels, batch_size=batch_size, max_length=8,
                       progress=False) == 7 / 10
    # all logits equal: argmax is class 0, right for the 5 texts labelled 0
    assert ev.accuracy(LengthClassifier(4, zero=True), tokenizer, SENTENCES, labels, batch_size=batch_size,
                       max_length=8, progress=False) == 5 / 10


def test_accuracy_of_a_bert_classifier_matches_one_text_at_a_time(tokenizer, texts):
    model = tiny("bert-classifier", vocab_size=len(tokenizer), num_attention_heads=2, intermediate_size=64,
                 max_position_embeddings=64, num_labels=3)
    with torch.inference_mode():  # unpadded, one by one, truncated to 32 tokens
        predicted = [int(model(**tokenizer(text, truncation=True, max_length=32, return_tensors="pt")).logits.argmax())
                     for text in texts]
    labels = [p if i % 2 else (p + 1) % 3 for i, p in enumerate(predicted)]  # right on the odd-numbered texts
    assert ev.accuracy(model, tokenizer, texts, labels, batch_size=4, max_length=32, progress=False) == (
        len(texts) // 2) / len(texts)


def test_accuracy_validates_its_arguments(tokenizer, bert):
    model = LengthClassifier(4)
    for labels, error, message in [
        ([0.0] * 10, TypeError, "labels must be integer class indices, got dtype torch.float32"),
        ([True] * 10, TypeError, "labels must be integer class indices, got dtype torch.bool"),
        ([0] * 9, ValueError, r"labels must hold one class index per text \(10\), got shape \(9,\)"),
    ]:
        with pytest.raises(error, match=message):
            ev.accuracy(model, tokenizer, SENTENCES, labels)
    with pytest.raises(ValueError, match="batch_size must be a positive int, got 0"):
        ev.accuracy(model, tokenizer, SENTENCES, SENTENCE_LABELS, batch_size=0)
    with pytest.raises(ValueError, match="max_length=2 leaves no room"):
        ev.accuracy(model, tokenizer, SENTENCES, SENTENCE_LABELS, max_length=2)
    with pytest.raises(TypeError, match="texts must be a sequence of strings"):
        ev.accuracy(model, tokenizer, "the the", [0])
    with pytest.raises(ValueError, match=r"expected logits of shape \(batch, num_labels\) from a sequence classifier, "
                                         r"got \(10, 12, 1024\)"):
        ev.accuracy(bert, tokenizer, SENTENCES, SENTENCE_LABELS, progress=False)  # a masked LM, not a classifier


# ---------------------------------------------------------------------------
# size


def test_model_size_is_exact_for_known_parameter_counts():
    linear = nn.Linear(10, 20)
    assert ev.model_size_mb(linear) * MB == (200 + 20) * 4
    assert ev.model_size_mb(linear.half()) * MB == (200 + 20) * 2
    assert ev.model_size_mb(linear.state_dict()) * MB == (200 + 20) * 2
    norm = nn.BatchNorm1d(8)  # weight, bias + running mean, var (float32) + num_batches_tracked (int64)
    assert ev.model_size_mb(norm) * MB == 4 * 8 * 4 + 8


def test_tied_and_shared_tensors_are_counted_once():
    tied = nn.Sequential(nn.Linear(10, 10, bias=False), nn.Linear(10, 10, bias=False))
    tied[1].weight = tied[0].weight  # the same Parameter
    assert ev.model_size_mb(tied) * MB == 100 * 4
    shared = nn.Sequential(nn.Linear(10, 10, bias=False), nn.Linear(10, 10, bias=False))
    shared[1].weight = nn.Parameter(shared[0].weight.data)  # another Parameter on the same memory
    assert ev.model_size_mb(shared) * MB == 100 * 4
    bert = tiny_bert(vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=16, max_position_embeddings=16)
    assert bert.cls.predictions.decoder.weight is bert.bert.embeddings.word_embeddings.weight
    params = {id(p): p for p in bert.parameters()}.values()
    buffers = list(bert.buffers())
    expected = sum(p.numel() * 4 for p in params) + sum(b.numel() * b.element_size() for b in buffers)
    assert ev.model_size_mb(bert) * MB == expected == bert.get_memory_footprint()


def quantize_dynamic(model, qconfig_spec=None, dtype=torch.qint8):
    """torch.ao.quantization.quantize_dynamic without its deprecation warnings (torch 2.13)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=r"torch\.quantize_per_(tensor|channel)", category=UserWarning)
        return torch.ao.quantization.quantize_dynamic(model, qconfig_spec or {nn.Linear}, dtype=dtype)


def test_size_of_pytorch_quantized_linear_layers_counts_their_packed_weights():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8), nn.LayerNorm(8), nn.Linear(8, 4, bias=False))
    float_bytes = (16 * 8 + 8 + 8 * 4) * 4 + 2 * 8 * 4  # two Linear layers, LayerNorm weight and bias
    assert ev.model_size_mb(model) * MB == float_bytes
    layer_norm = 2 * 8 * 4  # not quantized: float32
    int8_weights = 16 * 8 + 8 * 4  # one byte per weight
    biases = 8 * 4  # float32; the second layer has none
    # per-tensor: one float64 scale and one int64 zero point per weight
    dynamic = quantize_dynamic(copy.deepcopy(model))
    assert ev.model_size_mb(dynamic) * MB == int8_weights + 2 * 16 + biases + layer_norm < float_bytes
    assert ev.model_size_mb(model) * MB == float_bytes  # the float model is left as it was
    # per-channel: a float64 scale and an int64 zero point per output row (8 + 4 rows)
    per_channel = quantize_dynamic(copy.deepcopy(model), {nn.Linear: torch.ao.quantization.per_channel_dynamic_qconfig})
    assert ev.model_size_mb(per_channel) * MB == int8_weights + (8 + 4) * 16 + biases + layer_norm
    # float16: two bytes per weight, no quantization parameters
    half = quantize_dynamic(copy.deepcopy(model), dtype=torch.float16)
    assert ev.model_size_mb(half) * MB == int8_weights * 2 + biases + layer_norm
    static = torch.ao.nn.quantized.Linear(4, 3)  # static quantization keeps them in the same packed form
    assert ev.model_size_mb(static) * MB == 4 * 3 + 16 + 3 * 4


def test_parameter_count_counts_every_weight_once_whatever_its_storage():
    model = nn.Sequential(nn.Linear(16, 8), nn.LayerNorm(8), nn.Linear(8, 4, bias=False), nn.BatchNorm1d(4))
    expected = 16 * 8 + 8 + 2 * 8 + 8 * 4 + 2 * 4  # BatchNorm's running statistics are buffers, not weights
    assert ev.parameter_count(model) == expected
    assert ev.parameter_count(quantize_dynamic(copy.deepcopy(model))) == expected
    assert ev.parameter_count(quantize_dynamic(copy.deepcopy(model), dtype=torch.float16)) == expected
    shared = nn.Sequential(nn.Linear(10, 10, bias=False), nn.Linear(10, 10, bias=False))
    shared[1].weight = nn.Parameter(shared[0].weight.data)  # another Parameter on the same memory
    assert ev.parameter_count(shared) == 100
    bert = tiny_bert(vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=16, max_position_embeddings=16)
    assert ev.parameter_count(bert) == bert.num_parameters() == sum(p.numel() for p in bert.parameters())
    with pytest.raises(TypeError, match="expected an nn.Module, got OrderedDict"):
        ev.parameter_count(bert.state_dict())


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny_bert")
    model, tokenizer = ev.tiny_model("masked", seed=0, hidden_size=64, num_layers=2, num_heads=2,
                                     intermediate_size=128)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def _bnb_layers(model, name):
    return [m for m in model.modules() if type(m).__name__ == name]


@pytest.mark.parametrize("quantization", ["int8", "nf4", "nf4-double"])
def test_size_of_bitsandbytes_models_agrees_with_get_memory_footprint(tiny_bert_dir, quantization):
    config = {
        "int8": BitsAndBytesConfig(load_in_8bit=True),
        "nf4": BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4"),
        "nf4-double": BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                         bnb_4bit_use_double_quant=True),
    }[quantization]
    model, _ = ev.load_model(tiny_bert_dir, quantization_config=config)
    layers = _bnb_layers(model, "Linear8bitLt" if quantization == "int8" else "Linear4bit")
    assert len(layers) == 2 * 6 + 1  # q, k, v, attention output, intermediate, output per layer; head transform
    assert ev.model_size_mb(model, include_quant_state=False) * MB == model.get_memory_footprint()
    assert ev.model_size_mb(model) * MB == model.get_memory_footprint() + _bnb_statistics_bytes(layers)
    # A forward pass moves LLM.int8's row scales into the layer's state (load_model keeps 4-bit
    # weights in their stored layout): the size follows the state the layers then hold.
    with torch.inference_mode():
        model(input_ids=torch.tensor([[2, 7, 9, 3]]))
    assert ev.model_size_mb(model, include_quant_state=False) * MB == model.get_memory_footprint()
    assert ev.model_size_mb(model) * MB == model.get_memory_footprint() + _bnb_statistics_bytes(layers)


@pytest.mark.parametrize("double_quant", [False, True])
def test_4bit_models_compute_the_same_before_and_after_their_state_dict_is_read(tiny_bert_dir, double_quant):
    # bitsandbytes 0.50 repacks 4-bit weights on the first CPU forward where AVX-512 BF16 exists, and
    # state_dict() unpacks them only approximately: load_model turns the repacking off.
    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=double_quant)
    model, _ = ev.load_model(tiny_bert_dir, quantization_config=config)
    layers = _bnb_layers(model, "Linear4bit")
    assert layers and not any(getattr(layer, "support_avx512bf16_for_cpu", False) for layer in layers)
    fresh = ev.serialized_size_mb(model)
    inputs = torch.tensor([[2, 7, 9, 11, 3]])
    with torch.inference_mode():
        first = model(input_ids=inputs).logits
        assert ev.serialized_size_mb(model) == fresh
        assert torch.equal(model(input_ids=inputs).logits, first)


def _bnb_statistics_bytes(layers):
    """The statistics bitsandbytes keeps outside parameters and buffers, from the layer shapes and the
    dtypes and fields its quantization state holds now (whatever this CPU's backend made of them)."""
    total = 0
    for layer in layers:
        state = getattr(layer.weight, "quant_state", None)
        if state is None:  # LLM.int8: one float32 scale per output row
            total += layer.out_features * 4
            continue
        # 4-bit: an absmax per block (float32; uint8 with double quantization)
        # and a 16-entry float32 code; double quantization adds, per 256 absmax,
        # a float32 absmax, a 256-entry float32 code, and one float32 offset
        blocks = layer.in_features * layer.out_features // state.blocksize
        total += blocks * state.absmax.element_size() + 16 * 4
        if state.nested:
            total += math.ceil(blocks / 256) * 4 + 256 * 4
        if isinstance(state.offset, torch.Tensor):
            total += 4
    return total


def test_quantized_models_are_smaller_and_scored_like_the_original(tiny_bert_dir, texts):
    fp32, tokenizer = ev.load_model(tiny_bert_dir)
    int8, _ = ev.load_model(tiny_bert_dir, quantization_config=BitsAndBytesConfig(load_in_8bit=True))
    nf4, _ = ev.load_model(tiny_bert_dir, quantization_config=BitsAndBytesConfig(load_in_4bit=True))
    assert ev.model_size_mb(nf4) < ev.model_size_mb(int8) < ev.model_size_mb(fp32)
    assert ev.parameter_count(nf4) == ev.parameter_count(int8) == ev.parameter_count(fp32)  # original shapes
    assert ev.serialized_size_mb(nf4) < ev.serialized_size_mb(int8) < ev.serialized_size_mb(fp32)
    # a random model is near uniform (perplexity ~ vocab size); quantization noise moves it by a few percent
    reference = ev.perplexity(fp32, tokenizer, texts, progress=False)
    for model in (int8, nf4):
        assert ev.perplexity(model, tokenizer, texts, progress=False) == pytest.approx(reference, rel=0.1)


def test_serialized_size_is_the_tensors_plus_a_small_header():
    linear = nn.Linear(10, 20)
    header = ev.serialized_size_mb(linear) * MB - (200 + 20) * 4
    # 8-byte length, then JSON entries {"weight":{"dtype":"F32","shape":[20,10],"data_offsets":[0,800]}}
    # of under 80 characters each, padded to a multiple of 8
    assert 8 < header <= 8 + 2 * 80
    bert = tiny_bert(vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=16, max_position_embeddings=16)
    tensors = len({_view_key(t) for t in bert.state_dict().values()})  # tied decoder weight once
    header = (ev.serialized_size_mb(bert) - ev.model_size_mb(bert)) * MB
    assert 8 < header <= 8 + tensors * (80 + 64)  # names of under 64 characters


def test_serialized_size_falls_back_to_torch_save_for_non_tensor_entries():
    state = {"values": torch.zeros(100), "shape": (10, 10)}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    # torch.save prefixes its zip records with the file's name ("archive" in memory): a few bytes each
    assert ev.serialized_size_mb(state) * MB == pytest.approx(len(buffer.getvalue()), abs=64)
    with pytest.raises(TypeError, match="expected an nn.Module or a state dict"):
        ev.serialized_size_mb([torch.zeros(3)])
    with pytest.raises(TypeError, match="expected an nn.Module or a state dict"):
        ev.model_size_mb(torch.zeros(3))


# ---------------------------------------------------------------------------
# latency


def test_measure_latency_reports_positive_times_and_restores_threads(bert, tokenizer, texts):
    inputs = tokenizer(texts[:4], padding=True, return_tensors="pt")
    torch.set_num_threads(1)
    result = ev.measure_latency(bert, inputs, runs=5, warmup=1, num_threads=2)
    assert set(result) == {"median_ms", "p90_ms", "mean_ms", "runs", "threads"}
    assert 0 < result["median_ms"] <= result["p90_ms"]
    assert result["mean_ms"] > 0 and result["runs"] == 5 and result["threads"] == 2
    assert torch.get_num_threads() == 1
    assert ev.measure_latency(bert, inputs["input_ids"], runs=2, warmup=0)["threads"] == 1
    with pytest.raises(ValueError, match="runs must be a positive int"):
        ev.measure_latency(bert, inputs, runs=0)
    with pytest.raises(ValueError, match="warmup must be a non-negative int"):
        ev.measure_latency(bert, inputs, warmup=-1)
    with pytest.raises(TypeError, match="inputs must be a tensor or a mapping"):
        ev.measure_latency(bert, [inputs["input_ids"]])


def test_latency_batch_is_full_rows_of_the_joined_texts(tokenizer, texts):
    ids = tokenizer("\n\n".join(texts), return_tensors="pt")["input_ids"][0]
    batch = ev.latency_batch(tokenizer, texts, batch_size=3, max_length=16)
    assert batch["input_ids"].shape == (3, 16) and batch["attention_mask"].all()
    assert torch.equal(batch["input_ids"].flatten(), ids[:48])
    assert ev.latency_batch(tokenizer, ["a b c"], batch_size=3, max_length=16)["input_ids"].shape == (1, 5)


# ---------------------------------------------------------------------------
# loading


def test_load_model_offline_raises_a_clear_error():
    with pytest.raises(ev.ModelNotAvailableError) as info:
        ev.load_model("nobody-lab/definitely-not-a-model")
    message = str(info.value)
    assert isinstance(info.value, OSError)
    assert "nobody-lab/definitely-not-a-model" in message
    for option in ("hf download", "save_pretrained", "HF_HOME", "tiny_model"):
        assert option in message
    assert info.value.__cause__ is None and info.value.__suppress_context__  # no library stack trace
    with pytest.raises(ev.ModelNotAvailableError, match="nobody-lab/definitely-not-a-model") as info:
        ev.load_model("nobody-lab/definitely-not-a-model", kind="sequence-classification", num_labels=3)
    assert "tiny_model" in str(info.value) and info.value.__cause__ is None
    with pytest.raises(ValueError, match="kind must be None, 'masked', 'causal' or 'sequence-classification', "
                                         "got 'encoder'"):
        ev.load_model("nobody-lab/definitely-not-a-model", kind="encoder")


def test_load_model_from_a_local_directory_detects_the_kind(tmp_path, tiny_bert_dir):
    model, tokenizer = ev.load_model(tiny_bert_dir)
    assert type(model) is BertForMaskedLM and not model.training and len(tokenizer) == 1024
    llama, _ = ev.tiny_model("causal", hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32)
    llama.save_pretrained(tmp_path)
    ev.tiny_tokenizer().save_pretrained(tmp_path)
    assert type(ev.load_model(tmp_path)[0]) is LlamaForCausalLM
    labels = ["no", "yes", "maybe"]
    classifier, tokenizer = ev.load_model(tiny_bert_dir, kind="sequence-classification", num_labels=3,
                                          id2label=dict(enumerate(labels)))
    assert type(classifier) is BertForSequenceClassification and not classifier.training
    masked, _ = ev.load_model(tiny_bert_dir)  # the encoder's weights are the checkpoint's, the head is new
    assert torch.equal(classifier.bert.embeddings.word_embeddings.weight, masked.bert.embeddings.word_embeddings.weight)
    assert classifier.classifier.out_features == 3 and classifier.config.id2label == {0: "no", 1: "yes", 2: "maybe"}
    assert len(tokenizer) == 1024


def test_model_kind():
    assert ev.model_kind(BertConfig()) == "masked"
    assert ev.model_kind(BertConfig(is_decoder=True)) == "causal"
    assert ev.model_kind(SimpleNamespace(architectures=["GPT2LMHeadModel"])) == "causal"
    with pytest.raises(ValueError, match="pass kind='masked' or kind='causal'"):
        ev.model_kind(nn.Linear(2, 2))


def test_load_texts_falls_back_to_the_shipped_corpus_with_a_warning(monkeypatch):
    import datasets

    def unreachable(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'wikitext' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    with pytest.warns(UserWarning, match="offline corpus data/corpus/validation.txt"):
        texts = ev.load_texts("validation")
    assert texts == ev.load_texts("validation", source="local")
    assert len(texts) >= 50 and all(text.strip() for text in texts)
    assert any(text.startswith(" = ") for text in texts) and any(len(text) > 200 for text in texts)
    assert ev.load_texts("validation", limit=7, source="local") == texts[:7]
    with pytest.raises(ConnectionError):
        ev.load_texts("validation", source="wikitext")


def test_load_texts_validates_its_arguments():
    with pytest.raises(ValueError, match="split must be one of"):
        ev.load_texts("dev")
    with pytest.raises(ValueError, match="limit must be None or a non-negative int"):
        ev.load_texts(limit=-1)
    with pytest.raises(ValueError, match="source must be"):
        ev.load_texts(source="web")


def test_shipped_corpus_size():
    lines = sum(len(ev.load_texts(split, source="local")) for split in ev.SPLITS)
    size = sum((ev.CORPUS_DIR / f"{split}.txt").stat().st_size for split in ev.SPLITS)
    assert 1000 <= lines <= 2000 and size < 300_000  # shipped: 1,507 lines, 252 KB


def test_shipped_corpus_is_what_make_corpus_writes(tmp_path, monkeypatch):
    # data/make_corpus.py depends only on its SEED: rerun, it writes the shipped splits byte for byte.
    spec = importlib.util.spec_from_file_location("make_corpus", ev.CORPUS_DIR.parent / "make_corpus.py")
    make_corpus = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_corpus)
    monkeypatch.setattr(make_corpus, "OUT", tmp_path)
    monkeypatch.setattr(sys, "argv", ["make_corpus.py"])  # no --vocab: the vocabulary is not retrained
    make_corpus.main()
    for split in ev.SPLITS:
        assert (tmp_path / f"{split}.txt").read_bytes() == (ev.CORPUS_DIR / f"{split}.txt").read_bytes(), split


def test_hub_is_reported_unavailable_offline():
    assert ev.hub_available() is False  # tests/conftest.py sets HF_HUB_OFFLINE=1


# ---------------------------------------------------------------------------
# smoke-mode models


def test_tiny_model_is_seeded_and_leaves_the_global_generator_alone():
    state = torch.random.get_rng_state()
    a, tokenizer = ev.tiny_model("masked", seed=0, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32)
    b, _ = ev.tiny_model("masked", seed=0, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32)
    c, _ = ev.tiny_model("masked", seed=1, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.bert.embeddings.word_embeddings.weight, c.bert.embeddings.word_embeddings.weight)
    assert (tokenizer.pad_token_id, tokenizer.unk_token_id, tokenizer.cls_token_id, tokenizer.sep_token_id,
            tokenizer.mask_token_id) == (0, 1, 2, 3, 4)
    assert a.config.vocab_size == len(tokenizer) == 1024 and not a.training
    with pytest.raises(ValueError, match="kind must be 'masked' or 'causal'"):
        ev.tiny_model("seq2seq")


def test_tiny_model_pretraining_lowers_perplexity(tokenizer, texts):
    shape = dict(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32)
    for kind in ("masked", "causal"):
        fresh, _ = ev.tiny_model(kind, **shape)
        trained, _ = ev.tiny_model(kind, pretrain_steps=30, **shape)
        assert not trained.training
        assert ev.perplexity(trained, tokenizer, texts, progress=False) < 0.8 * ev.perplexity(
            fresh, tokenizer, texts, progress=False)


# ---------------------------------------------------------------------------
# comparison


def test_compare_save_and_plot(bert, tokenizer, texts, tmp_path):
    half = copy.deepcopy(bert).half()
    rows = ev.compare({"fp32": bert, "fp16": half}, tokenizer, texts, runs=2, warmup=0, batch_size=4,
                      max_length=32, progress=False)
    assert [row["name"] for row in rows] == ["fp32", "fp16"]
    assert list(rows[0]) == ["name", "size_mb", "serialized_mb", "perplexity", "latency_median_ms", "latency_p90_ms",
                             "size_ratio", "speedup", "perplexity_ratio"]
    base, other = rows
    assert base["size_ratio"] == base["speedup"] == base["perplexity_ratio"] == 1.0
    assert other["size_mb"] == ev.model_size_mb(half) and other["serialized_mb"] == ev.serialized_size_mb(half)
    assert other["perplexity"] == ev.perplexity(half, tokenizer, texts, batch_size=4, max_length=32,
                                                progress=False)
    assert other["size_ratio"] == other["size_mb"] / base["size_mb"] < 0.6
    assert other["speedup"] == base["latency_median_ms"] / other["latency_median_ms"]
    assert other["perplexity_ratio"] == pytest.approx(1.0, abs=0.05)  # fp16 rounding of a tiny model

    path = ev.save_rows(rows, tmp_path / "results" / "summary.csv")
    with path.open() as file:
        read = list(csv.DictReader(file))
    assert list(read[0]) == list(rows[0])
    assert [float(r["perplexity"]) for r in read] == [row["perplexity"] for row in rows]

    figure = ev.plot_comparison(rows, path=tmp_path / "comparison.png")
    assert (tmp_path / "comparison.png").stat().st_size > 0
    scatter, bars = figure.axes
    assert [t.get_text() for t in scatter.get_legend().get_texts()] == ["fp32", "fp16"]
    assert scatter.get_ylabel() == "perplexity (lower is better)" and scatter.get_title() == "Size against perplexity"
    assert [t.get_text() for t in bars.get_yticklabels()] == ["fp32", "fp16"]

    with pytest.raises(ValueError, match="baseline 'int8' is not one of the variants"):
        ev.compare({"fp32": bert}, tokenizer, texts, baseline="int8")
    with pytest.raises(TypeError, match="variant 'x' is a dict, not an nn.Module"):
        ev.compare({"x": {}}, tokenizer, texts)
    with pytest.raises(ValueError, match="non-empty mapping"):
        ev.compare({}, tokenizer, texts)


def test_compare_with_another_metric(bert, tokenizer, texts):
    half = copy.deepcopy(bert).half()
    scores = {id(bert): 0.8, id(half): 0.6}
    batch = ev.latency_batch(tokenizer, texts, batch_size=2, max_length=16)
    rows = ev.compare({"fp32": bert, "fp16": half}, tokenizer, texts, latency_inputs=batch, runs=2, warmup=0,
                      metric=lambda model: scores[id(model)], metric_name="accuracy")
    assert list(rows[0]) == ["name", "size_mb", "serialized_mb", "accuracy", "latency_median_ms", "latency_p90_ms",
                             "size_ratio", "speedup", "accuracy_ratio"]
    assert [(row["accuracy"], row["accuracy_ratio"]) for row in rows] == [(0.8, 1.0), (0.6, 0.6 / 0.8)]
    assert rows[1]["size_mb"] == ev.model_size_mb(half) and rows[1]["size_ratio"] < 0.6
    rows = ev.compare({"fp32": bert, "fp16": half}, tokenizer, texts, latency_inputs=batch, runs=2, warmup=0,
                      baseline="fp16", metric=lambda model: 0.0 if model is half else 0.5, metric_name="accuracy")
    assert math.isnan(rows[0]["accuracy_ratio"]) and math.isnan(rows[1]["accuracy_ratio"])  # baseline value 0

    for kwargs, error, message in [
        ({"metric_name": "accuracy"}, ValueError, "metric_name='accuracy' needs a metric"),
        ({"metric": 0.5, "metric_name": "accuracy"}, TypeError, "metric must be a callable model -> float, got float"),
        ({"metric": len, "metric_name": "speedup"}, ValueError, "metric_name must be a non-empty str that names no "
                                                                "other column"),
        ({"metric": len, "metric_name": "size"}, ValueError, "names no other column .* got 'size'"),  # size_ratio
        ({"metric": len, "metric_name": ""}, ValueError, "metric_name must be a non-empty str"),
    ]:
        with pytest.raises(error, match=message):
            ev.compare({"fp32": bert}, tokenizer, texts, latency_inputs=batch, **kwargs)


def test_plot_comparison_of_another_metric():
    rows = [{"name": "teacher", "size_mb": 4.0, "accuracy": 0.9, "latency_median_ms": 2.0, "latency_p90_ms": 3.0},
            {"name": "student", "size_mb": 2.0, "accuracy": 0.05, "latency_median_ms": 1.0, "latency_p90_ms": 1.5},
            {"name": "broken", "size_mb": 1.0, "accuracy": 0.0, "latency_median_ms": None}]
    scatter, bars = ev.plot_comparison(rows, metric="accuracy").axes
    assert scatter.get_ylabel() == "accuracy (higher is better)" and scatter.get_title() == "Size against accuracy"
    assert scatter.get_yscale() == "linear"  # a zero cannot go on a log axis, even though 0.9 > 10 * 0.05
    assert [tuple(c.get_offsets()[0]) for c in scatter.collections] == [(4.0, 0.9), (2.0, 0.05), (1.0, 0.0)]
    assert [t.get_text() for t in bars.get_yticklabels()] == ["teacher", "student"]
    scatter, _ = ev.plot_comparison(rows[:2], metric="accuracy").axes
    assert scatter.get_yscale() == "log"  # positive values spanning more than 10x
    scatter, _ = ev.plot_comparison(rows[:1] * 2, metric="accuracy").axes
    assert scatter.get_yscale() == "linear"
    for row in rows:
        row["f1"] = row["accuracy"]
    assert ev.plot_comparison(rows, metric="f1", higher_is_better=True).axes[0].get_ylabel() == "f1 (higher is better)"
    assert ev.plot_comparison(rows, metric="f1", higher_is_better=False).axes[0].get_ylabel() == "f1 (lower is better)"
    with pytest.raises(ValueError, match="cannot tell whether a higher 'f1' is better: pass higher_is_better"):
        ev.plot_comparison(rows, metric="f1")
    perplexity_rows = [{"name": "a", "size_mb": 1.0, "perplexity": 10.0},
                       {"name": "b", "size_mb": 1.0, "perplexity": 101.0}]
    assert ev.plot_comparison(perplexity_rows).axes[0].get_yscale() == "log"
    assert ev.plot_comparison(perplexity_rows[:1]).axes[0].get_yscale() == "linear"
