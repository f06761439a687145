"""Tests of toolkit/wanda.py: exact masks, Wanda against magnitude on planted salient inputs, compact 2:4 storage,
sequential (block by block) statistics checked against one-pass statistics of partly pruned models."""
import copy

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from models import hook_count, toy
from toolkit import wanda
from toolkit.calibration import collect_linear_inputs
from toolkit.evaluation import tiny_model, tiny_tokenizer
from toolkit.wanda import (apply_magnitude_pruning, apply_wanda_pruning, from_nm_state_dict, is_nm_sparse,
                           nm_mask, parse_pattern, to_nm_state_dict, to_semi_structured)



def _batches(seed=0, n=3, width=64):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(8, width, generator=generator) for _ in range(n)]


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.77, 1.0])
def test_unstructured_exact_count_per_row(sparsity):
    model = apply_wanda_pruning(toy(64, 32, 16), _batches(), sparsity, progress=False, skip=())
    for layer in (model[0], model[2]):
        zeros = (layer.weight == 0).sum(dim=1)
        assert (zeros == round(sparsity * layer.in_features)).all()


@pytest.mark.parametrize("prune", ["wanda", "magnitude"])
def test_two_four_exact_pattern(prune):
    model = toy(64, 32, 16)
    if prune == "wanda":
        apply_wanda_pruning(model, _batches(), None, "2:4", progress=False, skip=())
    else:
        apply_magnitude_pruning(model, 0.5, "2:4", skip=())
    for layer in (model[0], model[2]):
        blocks = (layer.weight == 0).view(layer.out_features, -1, 4).sum(dim=2)
        assert (blocks == 2).all()
        assert is_nm_sparse(layer.weight)


def test_wanda_scores_weight_times_input_norm():
    model = toy(64, 32, 16)
    batches = _batches()
    norms = collect_linear_inputs(model, batches, progress=False)["0"].norm
    expected = (model[0].weight.abs() * norms).clone()
    apply_wanda_pruning(model, batches, 0.5, skip=("2",), progress=False)
    kept = model[0].weight != 0
    # Every kept score of a row is at least every pruned score of that row.
    low_kept = torch.where(kept, expected, torch.inf).amin(dim=1)
    high_pruned = torch.where(kept, -torch.inf, expected).amax(dim=1)
    assert (low_kept >= high_pruned).all()
    assert (model[2].weight != 0).all()  # skipped


def test_output_head_skipped_by_default_and_stats_reused():
    model, tokenizer = tiny_model("causal")
    head = model.lm_head.weight.clone()
    batches = [torch.randint(5, 1000, (2, 16))]
    stats = collect_linear_inputs(model, batches, progress=False)
    apply_wanda_pruning(model, stats, 0.5)
    assert torch.equal(model.lm_head.weight, head)
    assert (model.model.layers[0].mlp.up_proj.weight == 0).float().mean() == 0.5


def test_wanda_runs_on_bert():
    model, _ = tiny_model("masked")
    apply_wanda_pruning(model, [torch.randint(5, 1000, (2, 16))], None, pattern="2:4", progress=False)
    assert is_nm_sparse(model.bert.encoder.layer[0].intermediate.dense.weight)
    assert not is_nm_sparse(model.cls.predictions.decoder.weight)


def test_wanda_beats_magnitude_on_planted_salient_channels():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(256, 128, generator=generator)
    salient = [3, 40, 77, 100]
    x[:, salient] *= 50
    layer = nn.Linear(128, 64, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(64, 128, generator=generator))
        layer.weight[:, salient] /= 10  # small weights that carry large inputs
    reference = layer(x)
    for pattern, sparsity in ((None, 0.5), ("2:4", None)):
        wanda = apply_wanda_pruning(nn.Sequential(copy.deepcopy(layer)), [x[:128]], sparsity, pattern,
                                    progress=False)
        magnitude = apply_magnitude_pruning(nn.Sequential(copy.deepcopy(layer)), sparsity, pattern)
        with torch.no_grad():
            wanda_error = (wanda(x) - reference).pow(2).sum()
            magnitude_error = (magnitude(x) - reference).pow(2).sum()
        assert wanda_error < 0.5 * magnitude_error, pattern


def test_nm_state_dict_bit_identical_and_compact():
    model, _ = tiny_model("causal")
    apply_magnitude_pruning(model, None, "2:4")
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight[0, :4] = torch.tensor([0.0, -0.0, 0.0, 0.5])  # fewer non-zeros
    compact = to_nm_state_dict(model)
    name = "model.layers.0.mlp.up_proj.weight"
    weight = model.get_submodule(name.removesuffix(".weight")).weight
    out_features, in_features = weight.shape
    assert compact[name + ".nm_values"].shape == (out_features, in_features // 2)
    assert compact[name + ".nm_index"].dtype == torch.uint8
    assert compact[name + ".nm_index"].numel() == out_features * in_features // 2 * 2 // 8
    assert "model.embed_tokens.weight" in compact and "lm_head.weight" in compact  # dense entries
    fresh, _ = tiny_model("causal", seed=7)
    from_nm_state_dict(fresh, compact)
    for key, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    dense_bytes = weight.numel() * 4
    compact_bytes = sum(compact[name + s].numel() * compact[name + s].element_size()
                        for s in (".nm_values", ".nm_index", ".nm_shape"))
    assert compact_bytes == dense_bytes * 17 // 32 + 4 * 8  # values, positions, shape


def test_nm_checkpoint_of_tied_bert_saves_and_reloads_bit_identical(tmp_path):
    # BertForMaskedLM's decoder weight is its word embedding: stored once, the safetensors file can be written.
    model, _ = tiny_model("masked")
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight
    apply_magnitude_pruning(model, None, "2:4")
    compact = to_nm_state_dict(model)
    assert "bert.embeddings.word_embeddings.weight" in compact and "cls.predictions.decoder.weight" not in compact
    save_file(compact, tmp_path / "model.safetensors")
    fresh, _ = tiny_model("masked", seed=7)
    from_nm_state_dict(fresh, load_file(tmp_path / "model.safetensors"))
    expected, restored = model.state_dict(), fresh.state_dict()
    assert restored.keys() == expected.keys()
    for key, value in expected.items():  # float32 bits, a pruned -0.0 coming back as +0.0 (hence the + 0.0)
        if value.is_floating_point():
            assert torch.equal((restored[key] + 0.0).view(torch.int32), (value + 0.0).view(torch.int32)), key
        else:
            assert torch.equal(restored[key], value), key
    assert fresh.cls.predictions.decoder.weight is fresh.bert.embeddings.word_embeddings.weight


def test_nm_checkpoint_missing_a_weight_is_refused():
    model = apply_magnitude_pruning(toy(64, 32, 16), None, "2:4", skip=())
    compact = to_nm_state_dict(model)
    del compact["2.bias"]
    with pytest.raises(ValueError, match=r"missing \['2.bias'\]"):
        from_nm_state_dict(toy(64, 32, 16, seed=1), compact)
    del compact["0.weight.nm_index"]
    with pytest.raises(ValueError, match="N:M entry '0.weight' needs '0.weight.nm_index' and '0.weight.nm_shape'"):
        from_nm_state_dict(toy(64, 32, 16, seed=1), compact)


class _Classifier(nn.Module):
    """An encoder layer and a classification head, named as Hugging Face names them."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.dense = nn.Linear(64, 64)
        self.classifier = nn.Linear(64, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.relu(self.dense(x)))


@pytest.mark.parametrize("prune", [
    lambda m: apply_magnitude_pruning(m, 0.5, skip="classifier"),
    lambda m: apply_wanda_pruning(m, _batches(), 0.5, skip="classifier", progress=False),
    lambda m: apply_wanda_pruning(m, _batches(), None, "2:4", skip="classifier", progress=False),
])
def test_a_string_skip_is_one_name(prune):
    # A string is one layer name, not a set of letters: the classifier stays dense, the rest is pruned.
    model = prune(_Classifier())
    assert (model.classifier.weight != 0).all()
    assert int((model.dense.weight == 0).sum()) == 64 * 32


@pytest.mark.parametrize("call, message", [
    (lambda m: apply_wanda_pruning(m, _batches(), 0.3, "2:4", skip=()), "means sparsity 0.5"),
    (lambda m: apply_wanda_pruning(m, _batches(), 1.5, skip=()), "in \\[0, 1\\]"),
    (lambda m: apply_wanda_pruning(m, _batches(), None, skip=()), "give a sparsity"),
    (lambda m: apply_wanda_pruning(m, _batches(), None, "4:2", skip=()), "0 < N < M"),
    (lambda m: apply_wanda_pruning(m, _batches(), None, "two:four", skip=()), "N:M"),
    (lambda m: apply_magnitude_pruning(m, None, "2:3", skip=()), "divisible by 3"),
    (lambda m: apply_wanda_pruning(m, _batches(), 0.5, skip=("0", "2")), "no nn.Linear"),
    (lambda m: apply_wanda_pruning(m, collect_linear_inputs(m, _batches(), layers=["0"], progress=False), 0.5,
                                   skip=()), "lack"),
])
def test_bad_arguments(call, message):
    with pytest.raises(ValueError, match=message):
        call(toy(64, 32, 16))


@pytest.mark.parametrize("sparsity", ["0.5", True, [0.5]])
def test_a_sparsity_that_is_not_a_number_raises_type_error_as_in_the_lab(sparsity):
    with pytest.raises(TypeError, match="real number"):
        apply_magnitude_pruning(toy(64, 32, 16), sparsity, skip=())
    with pytest.raises(TypeError, match="real number"):
        apply_wanda_pruning(toy(64, 32, 16), _batches(), sparsity, skip=())


def test_wanda_checks_pattern_before_calibrating():
    model = nn.Sequential(nn.Linear(6, 4))
    with pytest.raises(ValueError, match="divisible by 4"):
        apply_wanda_pruning(model, ["never run"], None, "2:4", skip=())


def test_masks_and_cpu_semi_structured_guard():
    assert parse_pattern("2:4") == (2, 4)
    keep = nm_mask(torch.tensor([[1.0, 4.0, 3.0, 2.0, 0.0, -1.0, 5.0, 6.0]]), 2, 4)
    assert keep.tolist() == [[False, True, True, False, False, False, True, True]]
    model = apply_magnitude_pruning(toy(64, 32, 16), None, "2:4", skip=())
    if not torch.cuda.is_available():
        assert to_semi_structured(model, skip=()) == []


# --- Sequential (block by block) Wanda -------------------------------------------------------------

class _Block(nn.Module):
    """A residual MLP block called by keyword that returns a tuple, as some Hugging Face blocks do."""

    def __init__(self) -> None:
        super().__init__()
        self.up, self.down = nn.Linear(16, 32), nn.Linear(32, 16)

    def forward(self, hidden_states: torch.Tensor, scale: float) -> tuple[torch.Tensor, None]:
        return hidden_states + scale * self.down(torch.relu(self.up(hidden_states))), None


class _Stack(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([_Block(), _Block()])
        self.head = nn.Linear(16, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(hidden_states=x, scale=0.5)[0]
        return self.head(x)


def _stack() -> _Stack:
    torch.manual_seed(0)
    return _Stack()


def _spy_norms(monkeypatch) -> dict:
    """Record the input norms every Wanda pruning step scores with, by layer name."""
    seen = {}
    original = wanda.prune_layers

    def spy(layers, norms, sparsity, nm):
        seen.update({name: norm.clone() for name, norm in norms.items()})
        original(layers, norms, sparsity, nm)

    monkeypatch.setattr(wanda, "prune_layers", spy)
    return seen


def _lm_batches() -> list:
    """A padded dict batch (two lines of different lengths) and a plain batch of ids."""
    padded = tiny_tokenizer()(["a short line", "a much longer line of text than the first one"], padding=True,
                       return_tensors="pt")
    assert (padded["attention_mask"] == 0).any()
    return [dict(padded), torch.randint(5, 1000, (2, 12), generator=torch.Generator().manual_seed(0))]


@pytest.mark.parametrize("kind", ["masked", "causal"])
@pytest.mark.parametrize("sparsity, pattern", [(0.5, None), (None, "2:4")])
def test_sequential_exact_counts_and_patterns(kind, sparsity, pattern):
    model, _ = tiny_model(kind, num_layers=2)
    apply_wanda_pruning(model, _lm_batches(), sparsity, pattern, progress=False)
    targets = wanda._targets(model, None)
    assert any(not name.startswith(("bert.encoder.layer.", "model.layers.")) for name in targets) == (kind == "masked")
    for name, layer in targets.items():
        zeros = (layer.weight == 0).view(layer.out_features, -1, 4).sum(dim=2)
        if pattern:
            assert (zeros == 2).all(), name
        else:
            assert (zeros.sum(dim=1) == layer.in_features // 2).all(), name


@pytest.mark.parametrize("kind", ["masked", "causal"])
def test_sequential_statistics_equal_one_pass_when_nothing_changes(kind, monkeypatch):
    model, _ = tiny_model(kind, num_layers=2)
    batches = _lm_batches()
    dense = collect_linear_inputs(model, batches, progress=False)
    seen = _spy_norms(monkeypatch)
    apply_wanda_pruning(model, batches, 0.0, progress=False)
    assert set(seen) == set(wanda._targets(model, None))
    for name, norm in seen.items():
        torch.testing.assert_close(norm, dense[name].norm, msg=name)
    # At 50% the first block still reads the dense model's inputs; the second does not.
    seen.clear()
    apply_wanda_pruning(model, batches, 0.5, progress=False)
    first = wanda.find_blocks(model, seen)[0] + ".0."
    for name, norm in seen.items():
        if name.startswith(first):
            torch.testing.assert_close(norm, dense[name].norm, msg=name)
        else:
            assert not torch.allclose(norm, dense[name].norm), name


@pytest.mark.parametrize("build", ["causal", "stack"])
def test_sequential_second_block_reads_the_pruned_first_block(build, monkeypatch):
    if build == "stack":
        model, batches, head = _stack(), [torch.randn(3, 5, 16), torch.randn(2, 16)], ["head"]
    else:
        model, _ = tiny_model("causal", num_layers=2)
        batches, head = _lm_batches(), ["lm_head"]
    blocks_name, blocks = wanda.find_blocks(model, wanda._targets(model, None))
    block_one = [f"{blocks_name}.1.{name}" for name, m in blocks[1].named_modules() if isinstance(m, nn.Linear)]
    reference = copy.deepcopy(model)
    seen = _spy_norms(monkeypatch)
    apply_wanda_pruning(model, batches, 0.5, progress=False)
    # Independently: prune only block 0 from one dense pass, then one pass over that model.
    apply_wanda_pruning(reference, batches, 0.5, skip=block_one + head, sequential=False, progress=False)
    for name, parameter in reference.named_parameters():
        if f"{blocks_name}.0." in name:
            assert torch.equal(parameter, model.get_parameter(name)), name
    after_block_zero = collect_linear_inputs(reference, batches, layers=block_one, progress=False)
    for name in block_one:
        torch.testing.assert_close(seen[name], after_block_zero[name].norm, msg=name)
    if build == "stack":  # the layer outside the blocks reads the fully pruned blocks
        final = collect_linear_inputs(model, batches, layers=head, progress=False)
        torch.testing.assert_close(seen["head"], final["head"].norm)


def test_find_blocks():
    assert wanda.find_blocks(tiny_model("masked", num_layers=1)[0], ["bert.encoder.layer.0.output.dense"])[0] \
        == "bert.encoder.layer"
    assert wanda.find_blocks(tiny_model("causal", num_layers=1)[0], ["model.layers.0.mlp.up_proj"])[0] == "model.layers"
    assert wanda.find_blocks(toy(64, 32, 16), ["0", "2"]) is None
    experts = nn.Module()
    experts.layers = nn.ModuleList([nn.Module() for _ in range(2)])
    for layer in experts.layers:  # a list of 3 expert MLPs inside each of 2 blocks: the blocks win
        layer.experts = nn.ModuleList([nn.Sequential(nn.Linear(4, 4)) for _ in range(3)])
        layer.heads = nn.ModuleList([nn.Linear(4, 4) for _ in range(5)])
    names = [name for name, m in experts.named_modules() if isinstance(m, nn.Linear)]
    assert wanda.find_blocks(experts, names)[0] == "layers"


@pytest.mark.parametrize("failure", [None, "bad batch", "prune"])
def test_sequential_removes_hooks_and_restores_train_mode(failure, monkeypatch):
    model, _ = tiny_model("causal", num_layers=2)
    model.train()
    hooks = hook_count(model)
    batches = _lm_batches()
    if failure == "bad batch":
        batches.append("not a batch")
    elif failure == "prune":
        def fail(*args):
            raise RuntimeError("pruning failed")

        monkeypatch.setattr(wanda, "prune_layers", fail)
    if failure is None:
        apply_wanda_pruning(model, batches, 0.5, progress=False)
    else:
        with pytest.raises((TypeError, RuntimeError)):
            apply_wanda_pruning(model, batches, 0.5, progress=False)
    assert hook_count(model) == hooks
    assert all(module.training for module in model.modules())


def test_sequential_needs_a_batch():
    with pytest.raises(ValueError, match="empty"):
        apply_wanda_pruning(_stack(), [], 0.5, progress=False)


# ---------------------------------------------------------------------------
# Edges: calibration without a token, statistics that no longer fit the model

@pytest.mark.parametrize("sequential", [True, False])
def test_calibration_without_a_token_prunes_nothing(sequential):
    model, _ = tiny_model("masked", num_layers=2)
    before = copy.deepcopy(model.state_dict())
    padding = {"input_ids": torch.randint(5, 1000, (2, 8)), "attention_mask": torch.zeros(2, 8, dtype=torch.long)}
    for calibration in ([padding], [torch.zeros(2, 0, dtype=torch.long)]):
        with pytest.raises(ValueError, match="no token"):
            apply_wanda_pruning(model, calibration, 0.5, sequential=sequential, progress=False)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, before[name]), name


def test_statistics_taken_before_shrinking_are_refused_before_any_weight_changes():
    from toolkit.shrink import prune_ffn_neurons

    model, _ = tiny_model("masked", num_layers=2)
    stats = collect_linear_inputs(model, [torch.randint(5, 1000, (2, 16))], progress=False)
    prune_ffn_neurons(model, 0.5)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=r"do not fit the model.*output.dense \(256 != 128\)"):
        apply_wanda_pruning(model, stats, 0.5, progress=False)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, before[name]), name
