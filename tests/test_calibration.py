"""Tests of toolkit/calibration.py: statistics against direct computation, bounded samples, hooks removed."""
import pytest
import torch
from torch import nn

from models import hook_count, toy
from toolkit.calibration import as_batches, calibration_batches, check_statistics, collect_linear_inputs, is_statistics
from toolkit.evaluation import tiny_model, tiny_tokenizer




def test_statistics_match_direct_computation():
    model = toy(8, 16, 4)
    batches = [torch.randn(3, 5, 8) for _ in range(4)]
    stats = collect_linear_inputs(model, batches, progress=False)
    x = torch.cat([b.reshape(-1, 8) for b in batches]).double()
    assert list(stats) == ["0", "2"]
    assert stats["0"].tokens == 60
    torch.testing.assert_close(stats["0"].sum_squares, x.pow(2).sum(0))
    torch.testing.assert_close(stats["0"].norm, x.pow(2).sum(0).sqrt().float())
    torch.testing.assert_close(stats["0"].mean_abs, x.abs().mean(0).float())
    hidden = torch.relu(model[0](x.float())).double()
    torch.testing.assert_close(stats["2"].sum_squares, hidden.pow(2).sum(0), rtol=1e-5, atol=1e-6)
    assert stats["0"].sample is None and hook_count(model) == 0


def test_sample_is_capped_and_made_of_real_rows():
    model = toy(8, 16, 4)
    batches = [torch.randn(10, 8) for _ in range(5)]
    stats = collect_linear_inputs(model, batches, layers=["0"], sample=True, sample_rows=7, progress=False)
    sample = stats["0"].sample
    assert sample.shape == (7, 8) and sample.dtype == torch.float32
    rows = torch.cat(batches)
    assert all((rows == row).all(dim=1).any() for row in sample)
    assert len({tuple(row.tolist()) for row in sample}) == 7  # without replacement


def test_sample_keeps_the_rows_of_the_largest_keys_over_all_batches():
    # The reservoir keeps the sample_rows rows of largest uniform key among every row seen, whatever the
    # batching: the same keys (one torch.rand per batch, seed 0) select the same rows from the joined input.
    batches = [torch.randn(n, 8, generator=torch.Generator().manual_seed(n)) for n in (3, 12, 5, 9)]
    stats = collect_linear_inputs(toy(8, 16, 4), batches, layers=["0"], sample=True, sample_rows=6, progress=False)
    generator = torch.Generator().manual_seed(0)
    keys = torch.cat([torch.rand(len(batch), generator=generator) for batch in batches])
    expected = torch.cat(batches)[torch.topk(keys, 6).indices.sort().values]
    assert torch.equal(stats["0"].sample, expected)


def test_an_empty_dict_is_neither_statistics_nor_a_batch():
    assert not is_statistics({})
    with pytest.raises(ValueError, match="empty dict"):
        as_batches({})
    with pytest.raises(ValueError, match="empty dict"):
        collect_linear_inputs(toy(8, 16, 4), {}, progress=False)


def test_attention_mask_excludes_padding_and_dict_batches():
    model, tokenizer = tiny_model("masked")
    batch = tokenizer(["a short line", "a much longer line of text than the first"], padding=True,
                      return_tensors="pt")
    name = "bert.encoder.layer.0.attention.self.query"
    stats = collect_linear_inputs(model, [batch], layers=[name], progress=False)
    assert stats[name].tokens == int(batch["attention_mask"].sum())


def test_hooks_removed_and_mode_restored_on_error():
    model = toy(8, 16, 4).train()
    with pytest.raises(TypeError, match="calibration batch"):
        collect_linear_inputs(model, [torch.randn(2, 8), "not a batch"], progress=False)
    assert hook_count(model) == 0 and model.training


@pytest.mark.parametrize("kwargs, message", [
    (dict(layers=["1"]), "not nn.Linear"),
    (dict(layers=[]), "empty"),
    (dict(sample_rows=0), "sample_rows"),
    (dict(layers=["0"], sample=["2"]), "not watched"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        collect_linear_inputs(toy(8, 16, 4), [torch.randn(2, 8)], progress=False, **kwargs)


def test_no_batch_is_an_error():
    with pytest.raises(ValueError, match="empty"):
        collect_linear_inputs(toy(8, 16, 4), [], progress=False)


def test_calibration_batches_shapes():
    tokenizer = tiny_tokenizer()
    texts = ["the cat sat on the mat and looked at the dog"] * 40
    causal = calibration_batches(tokenizer, texts, n_samples=5, seq_len=16, batch_size=2)
    assert [b.shape for b in causal] == [(2, 16), (2, 16), (1, 16)]
    masked = calibration_batches(tokenizer, texts, n_samples=2, seq_len=16, kind="masked")
    assert masked[0].shape == (2, 16)
    assert (masked[0][:, 0] == tokenizer.cls_token_id).all() and (masked[0][:, -1] == tokenizer.sep_token_id).all()
    with pytest.raises(ValueError, match="fewer than one window"):
        calibration_batches(tokenizer, ["cat"], seq_len=16)
    with pytest.raises(ValueError, match="kind"):
        calibration_batches(tokenizer, texts, kind="seq2seq")


def test_calibration_benchmark_table_has_every_method():
    from benchmarks import calibration as bench
    from toolkit.evaluation import load_texts

    model, tokenizer = tiny_model("causal", num_layers=1)
    texts = load_texts("test", source="local")[:4]
    table, targets = bench.run(model, tokenizer, texts, load_texts("train", source="local")[:40], torch.device("cpu"),
                               group_size=32, samples=2, seq_len=32, bnb_folder=None)
    methods = [row["method"] for row in table.rows]
    assert methods == ["fp32", "int4 g32 RTN", "int4 g32 AWQ", "bnb nf4 (block 64)", "magnitude 50% (per row)",
                       "magnitude 50% (lab, per layer)", "Wanda 50%", "magnitude 2:4", "Wanda 2:4"]
    for row in table.rows:
        if row["method"] != "bnb nf4 (block 64)":
            assert row["perplexity"] > 0 and row["ratio_to_fp32"] > 0
    assert targets.rows[-1]["verdict"] == "PASS"  # exactly 2 zeros in every 4


def test_one_tensor_or_one_dict_is_one_batch():
    model, tokenizer = tiny_model("causal")
    batch = tokenizer(["one line of text", "another line"], padding=True, return_tensors="pt")
    ids = batch["input_ids"]
    name = "model.layers.0.self_attn.q_proj"
    as_list = collect_linear_inputs(model, [ids], layers=[name], progress=False)[name]
    for calibration in (ids, dict(batch)):
        alone = collect_linear_inputs(model, calibration, layers=[name], progress=False)[name]
        expected = as_list if calibration is ids else collect_linear_inputs(
            model, [dict(batch)], layers=[name], progress=False)[name]
        assert alone.tokens == expected.tokens
        torch.testing.assert_close(alone.sum_squares, expected.sum_squares, rtol=0, atol=0)
    one_sequence = collect_linear_inputs(model, ids[0], layers=[name], progress=False)[name]
    assert one_sequence.tokens == ids.shape[1]
    assert is_statistics({name: as_list}) and not is_statistics(dict(batch)) and not is_statistics({})
    assert len(as_batches([ids[0], ids])) == 2 and as_batches(ids[0])[0].shape == (1, ids.shape[1])


# ---------------------------------------------------------------------------
# Edges: calibration that holds no token, a bare string, statistics that do not fit

def test_zero_rows_or_zero_length_batches_are_refused_before_the_model_runs():
    model, _ = tiny_model("causal", num_layers=1)
    for empty in (torch.zeros(0, 8, dtype=torch.long), torch.zeros(2, 0, dtype=torch.long),
                  {"input_ids": torch.zeros(1, 0, dtype=torch.long), "attention_mask": torch.zeros(1, 0)}):
        with pytest.raises(ValueError, match="no token"):
            collect_linear_inputs(model, [empty], progress=False)


def test_all_padding_calibration_is_refused():
    model, _ = tiny_model("masked", num_layers=1)
    batch = {"input_ids": torch.randint(5, 100, (2, 6)), "attention_mask": torch.zeros(2, 6, dtype=torch.long)}
    with pytest.raises(ValueError, match="no token"):
        collect_linear_inputs(model, [batch], progress=False)


def test_calibration_batches_refuses_a_bare_string():
    with pytest.raises(TypeError, match="one string"):
        calibration_batches(tiny_tokenizer(), "a single text, joined letter by letter otherwise", seq_len=4)
    with pytest.raises(TypeError, match="strings"):
        calibration_batches(tiny_tokenizer(), ["a text", 3], seq_len=4)


def test_check_statistics_refuses_missing_other_width_and_empty_statistics():
    model = toy(8, 16, 4)
    stats = collect_linear_inputs(model, [torch.randn(3, 8)], progress=False)
    layers = {"0": model[0], "2": model[2]}
    check_statistics(stats, layers)  # fits
    with pytest.raises(ValueError, match="row sample"):
        check_statistics(stats, layers, sample=True)
    with pytest.raises(ValueError, match="lack statistics"):
        check_statistics({"0": stats["0"]}, layers)
    with pytest.raises(ValueError, match=r"do not fit the model.*2 \(16 != 12\)"):
        check_statistics(stats, {"0": model[0], "2": nn.Linear(12, 4)})
    stats["2"].tokens = 0
    with pytest.raises(ValueError, match="saw no token at \\['2'\\]"):
        check_statistics(stats, layers)
