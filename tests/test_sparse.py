"""Tests of toolkit/sparse.py: the sparse state dict (values + packed mask) on hand-made layers and a
40%-pruned tiny BERT, saved with safetensors and torch.save."""
import math

import pytest
import torch
from safetensors.torch import load_file, save_file, save_model
from torch import nn

from pruning_models import assert_same_state, logits, mlp, tiny_bert, torch_l1
from toolkit.sparse import from_sparse_state_dict, to_sparse_state_dict


# ---------------------------------------------------------------------------------------------------------
# Sparse state dict
# ---------------------------------------------------------------------------------------------------------

def test_sparse_state_dict_layout_on_a_hand_made_layer():
    layer = nn.Linear(5, 2)
    weight = torch.tensor([[1.5, 0.0, -2.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 3.0]])
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.copy_(torch.tensor([0.5, -0.5]))
    sparse = to_sparse_state_dict(layer)
    # 3 non-zeros of 10: 3 * 4 + 2 mask bytes + 16 shape bytes = 30 < 40 bytes dense. The bias (8 bytes) stays.
    assert sorted(sparse) == ["bias", "weight.sparse_mask", "weight.sparse_shape", "weight.sparse_values"]
    assert torch.equal(sparse["weight.sparse_values"], torch.tensor([1.5, -2.0, 3.0]))
    # non-zero positions 0, 2 and 9: byte 0 = 2**0 + 2**2 = 5, byte 1 = 2**(9 - 8) = 2
    assert torch.equal(sparse["weight.sparse_mask"], torch.tensor([5, 2], dtype=torch.uint8))
    assert torch.equal(sparse["weight.sparse_shape"], torch.tensor([2, 5]))
    assert torch.equal(sparse["bias"], layer.bias.detach())
    restored = from_sparse_state_dict(nn.Linear(5, 2), sparse)
    assert torch.equal(restored.weight, weight) and torch.equal(restored.bias, layer.bias)


def test_sparse_state_dict_of_a_40_percent_pruned_bert_is_smaller_and_reloads_identically(tmp_path):
    model = torch_l1(tiny_bert(), nn.Linear, 0.4)
    sparse = to_sparse_state_dict(model)
    weight = model.bert.encoder.layer[0].intermediate.dense.weight
    mask = sparse["bert.encoder.layer.0.intermediate.dense.weight.sparse_mask"]
    assert mask.dtype == torch.uint8 and mask.numel() == math.ceil(weight.numel() / 8)
    assert "cls.predictions.decoder.weight.sparse_values" not in sparse  # tied to the word embeddings
    assert "bert.embeddings.position_embeddings.weight" in sparse  # not pruned: stays dense

    save_file(sparse, tmp_path / "sparse.safetensors")
    save_model(model, str(tmp_path / "dense.safetensors"))
    torch.save(sparse, tmp_path / "sparse.pt")
    torch.save(model.state_dict(), tmp_path / "dense.pt")
    assert (tmp_path / "sparse.safetensors").stat().st_size < (tmp_path / "dense.safetensors").stat().st_size
    assert (tmp_path / "sparse.pt").stat().st_size < (tmp_path / "dense.pt").stat().st_size

    for stored in (load_file(tmp_path / "sparse.safetensors"), torch.load(tmp_path / "sparse.pt")):
        fresh = tiny_bert(seed=1)
        returned = from_sparse_state_dict(fresh, stored)
        assert returned is fresh
        assert_same_state(fresh, model)
        assert fresh.cls.predictions.decoder.weight is fresh.bert.embeddings.word_embeddings.weight
        assert torch.equal(logits(fresh), logits(model))


def test_sparse_state_dict_restores_negative_zero_as_positive_zero():
    layer = nn.Linear(8, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[-0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 2.0]]))
    restored = from_sparse_state_dict(nn.Linear(8, 1, bias=False), to_sparse_state_dict(layer))
    assert torch.equal(restored.weight, layer.weight)
    assert not torch.signbit(restored.weight).any()


def test_from_sparse_state_dict_without_mask_raises_value_error():
    sparse = to_sparse_state_dict(torch_l1(mlp(), nn.Linear, 0.5))
    del sparse["0.weight.sparse_mask"]
    with pytest.raises(ValueError, match="sparse entry '0.weight' needs '0.weight.sparse_mask'"):
        from_sparse_state_dict(mlp(), sparse)


def test_from_sparse_state_dict_with_wrong_names_raises_value_error():
    sparse = to_sparse_state_dict(torch_l1(mlp(), nn.Linear, 0.5))
    sparse["extra"] = sparse.pop("0.bias")
    with pytest.raises(ValueError, match=r"missing \['0.bias'\], unexpected \['extra'\]"):
        from_sparse_state_dict(mlp(), sparse)
