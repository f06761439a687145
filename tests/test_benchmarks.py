"""Smoke tests of benchmarks/: each script's smallest configuration yields the expected table.

They check table shape, labels and finite values, never timings (CONTRIBUTING: speed is
measured by `make bench`, not asserted). The models run on tiny BERT configs.
"""
import math

import pytest
import torch

from benchmarks import common, kernel
from benchmarks.naive_reference import naive_mixed_precision_forward
from quantization import int8_matmul_path, mixed_precision_forward

CPU = torch.device("cpu")


def finite(table: common.Table, columns) -> bool:
    return all(math.isfinite(row[c]) for row in table.rows for c in columns)


def test_table_rejects_rows_that_miss_columns():
    table = common.Table("t", "title", ("a", "b"))
    with pytest.raises(ValueError, match=r"row keys \['a'\] differ from the columns"):
        table.add(a=1)


def test_report_writes_csv_and_markdown(tmp_path):
    table = common.Table("unit", "Unit", ("name", "value"))
    table.add(name="x", value=0.5)
    paths = common.report("unit_script", "# head", [table], tmp_path)
    assert [p.name for p in paths] == ["bench_unit.csv", "bench_unit_script.md"]
    assert table.notes[-1].startswith("machine: cpu capability") and "int8_matmul path" in table.notes[-1]
    assert (tmp_path / "bench_unit.csv").read_text().splitlines() == ["name,value", "x,0.5"]
    assert "| x | 0.5 |" in (tmp_path / "bench_unit_script.md").read_text()


def test_timing_statistics_and_verdicts():
    timing = common.Timing((4.0, 1.0, 3.0, 2.0, 5.0))
    assert timing.median == 3.0
    assert timing.p90 == pytest.approx(4.6)  # 0.9 * 4 = 3.6 -> 4 + 0.6 * (5 - 4)
    assert common.verdict(1.5, 1.5) == "PASS" and common.verdict(1.51, 1.5) == "MISS"
    assert common.verdict(1.25, 1.25, at_most=False) == "PASS" and common.verdict(math.nan, 1.0) == "MISS"
    with pytest.raises(ValueError, match="need runs >= 1"):
        common.time_call(lambda: None, runs=0, warmup=0)


def test_resolve_device_rejects_unknown_names():
    assert common.resolve_device("cpu") == CPU
    with pytest.raises(ValueError, match="--device must be cpu, cuda"):
        common.resolve_device("meta")


def test_activations_have_exactly_the_planted_outlier_columns():
    generator = torch.Generator().manual_seed(0)
    x = kernel.make_activations(64, 200, 0.01, generator)
    assert kernel.outlier_columns(x) == 2
    outliers = (x.abs() >= kernel.THRESHOLD).any(0)
    assert bool((x[:, outliers].abs() >= 6).all()) and float(x[:, ~outliers].abs().max()) <= 5.5
    assert kernel.outlier_columns(kernel.make_activations(64, 200, 0.0, generator)) == 0


def test_naive_reference_agrees_with_the_vectorised_kernel():
    generator = torch.Generator().manual_seed(1)
    x = kernel.make_activations(5, 48, 0.05, generator)
    w = torch.randn(48, 24, generator=generator) * 0.02
    expected = mixed_precision_forward(x, w, 6.0)
    # Same int32 products, same fp16-rounded outlier operands: only fp32 rounding of the
    # rescale and of the float sums differs (a few ulps of the largest output).
    torch.testing.assert_close(naive_mixed_precision_forward(x, w, 6.0), expected,
                               rtol=1e-5, atol=1e-5 * float(expected.abs().max()))


def test_kernel_tables_have_every_method_and_configuration():
    tables = kernel.run(CPU, shapes=((32, 64), (64, 32)), rows_list=(8, 16), fractions=(0.0, 0.05),
                        runs=1, warmup=0, naive_rows=4)
    results, targets, naive = tables
    assert [t.name for t in tables] == ["kernel", "kernel_targets", "kernel_naive"]
    methods = ["torch.matmul fp32", "lab mixed_precision_forward (t=6)", "lab QuantizedLinear int8 (t=6)",
               "lab QuantizedLinear int8 (pure)", "bnb Linear8bitLt (t=6)", "torch quantize_dynamic int8"]
    assert [row["method"] for row in results.rows] == methods * 8
    assert {(r["shape"], r["rows"], r["outlier_cols"]) for r in results.rows} == {
        (shape, rows, cols) for shape, k in (("32x64", 32), ("64x32", 64)) for rows in (8, 16)
        for cols in (0, round(0.05 * k))}
    assert finite(results, ("median_ms", "ratio_to_fp32", "rel_error"))
    fp32 = [row for row in results.rows if row["method"] == "torch.matmul fp32"]
    assert all(row["ratio_to_fp32"] == 1.0 and row["rel_error"] == 0.0 for row in fp32)
    # int8 with one scale per row and column: error of a few quantization steps, not garbage.
    assert all(0 < row["rel_error"] < 0.1 for row in results.rows if row["method"] != "torch.matmul fp32")
    # On either int8 path: 0 outliers, two fp32 targets and the bnb one; 5% outliers (beyond the 1%), bnb only.
    assert len(targets.rows) == 4 * (2 + 1) + 4 * 1 and {row["verdict"] for row in targets.rows} <= {"PASS", "MISS"}
    assert targets.title.endswith(f"int8_matmul path {int8_matmul_path()}")
    assert [(r["rows"], r["source"]) for r in naive.rows] == [(8, "extrapolated"), (16, "extrapolated")] * 2
    assert finite(naive, ("naive_ms", "vectorised_ms", "speedup", "max_abs_diff"))
    assert all(row["max_abs_diff"] < 1e-4 for row in naive.rows)


def test_naive_rows_equal_to_the_size_are_measured_not_extrapolated():
    naive = kernel.run(CPU, shapes=((16, 24),), rows_list=(4,), fractions=(0.0,), runs=1, warmup=0,
                       naive_rows=4)[2]
    assert [(r["rows"], r["rows_timed"], r["source"]) for r in naive.rows] == [(4, 4, "measured")]


def test_models_table_has_every_variant_and_sizes_follow_the_storage_rules():
    from transformers import BertConfig

    from benchmarks import models

    config = BertConfig(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=128, max_position_embeddings=32)
    table, targets = models.run(CPU, config=config, batch=2, seq=8, runs=1, warmup=0, fp16_cpu_batch=1)
    assert [row["variant"] for row in table.rows] == [
        "fp32", "fp16", "bnb LLM.int8 (t=6)", "bnb fp4", "bnb nf4", "lab quantize_model int8",
        "lab quantize_model LLM.int8 (t=6)", "lab quantize_model 1.58bit", "lab quantize_model 1bit",
        "unstructured 40% (dense in memory)", "unstructured 40% (sparse state dict)", "prune_ffn_neurons 40%",
        "prune_attention_heads 25%", "make_student (1 layers)"]
    timed = [row for row in table.rows if row["timed_on"] != "-"]
    assert len(timed) == 13 and finite(common.Table("t", "", (), timed), ("median_ms", "speedup_vs_fp32"))
    assert table.rows[1]["timed_on"] in ("1x8, x2", "2x8")  # fp16 on CPU: if slow, one sequence scaled
    assert finite(table, ("size_mb", "size_ratio", "expected_size_ratio"))
    # Sizes are deterministic: each measured ratio matches the rule computed from parameter counts.
    assert [row["variant"] for row in table.rows if row["size_check"] != "PASS"] == []
    assert [row["target"] for row in targets.rows] == [
        "quantize_model int8 latency / fp32", "quantize_model int8 latency / bnb int8",
        "fp32 latency / prune_ffn_neurons 40%", "size ratios equal the storage rules (within 1%)"]
    assert targets.rows[-1]["verdict"] == "PASS"


def test_evaluation_throughput_counts_the_same_tokens_for_both_loops():
    from benchmarks import evaluation_throughput
    from toolkit.evaluation import load_texts, tiny_model

    model, tokenizer = tiny_model("masked", hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
    texts = evaluation_throughput.fitting_texts(tokenizer, load_texts("test", source="local"), 64, 6)
    assert len(texts) == 6
    (table,) = evaluation_throughput.run(CPU, model, tokenizer, texts, batch_size=4, max_length=64, runs=1, warmup=0)
    assert [row["batch_size"] for row in table.rows] == [1, 4]
    assert {row["tokens"] for row in table.rows} == {sum(evaluation_throughput.token_counts(tokenizer, texts))}
    assert finite(table, ("median_s", "tokens_per_s", "speedup", "perplexity"))
    with pytest.raises(ValueError, match="more than max_length=4"):
        evaluation_throughput.run(CPU, model, tokenizer, texts, max_length=4)


def test_run_all_reports_a_failing_script_and_exits_1(tmp_path, capsys):
    from benchmarks import run_all

    assert run_all.main(["--only", "kernel", "--device", "meta", "--out", str(tmp_path)]) == 1
    assert "0/1 scripts ok" in capsys.readouterr().out
    assert "failed: kernel" in (tmp_path / "bench_all.md").read_text()


@pytest.mark.parametrize("fmt", ["1.58bit", "int4"])
def test_qat_tables_have_every_method_and_the_format_targets(fmt):
    from benchmarks import qat
    from toolkit.evaluation import load_texts, tiny_model

    model, tokenizer = tiny_model("causal", hidden_size=64, num_layers=1, num_heads=2, intermediate_size=128)
    batch = {"input_ids": torch.randint(5, 100, (2, 16)), "labels": torch.randint(5, 100, (2, 16))}
    table, times, targets = qat.run(model, tokenizer, load_texts("test", source="local", limit=4),
                                    load_texts("train", source="local", limit=20), CPU, fmt=fmt, steps=2, lr=3e-4,
                                    batch_size=2, seq_len=32, timing=("tiny", model, batch), runs=1, warmup=0)
    assert [row["method"] for row in table.rows] == ["fp32", f"{fmt} post-training", f"{fmt} QAT 2 steps"]
    assert finite(table, ("perplexity", "ratio_to_fp32", "seconds_per_step")) and table.rows[0]["ratio_to_fp32"] == 1
    assert len(times.rows) == 1 and finite(times, ("fp32_forward_backward_s", "qat_step_s", "ratio"))
    expected = {"1.58bit": ["1.58bit QAT / fp32", "1.58bit QAT / post-training"],
                "int4": ["int4 QAT: share of RTN's gap to fp32 recovered"]}[fmt]
    assert sorted(row["target"] for row in targets.rows) == sorted(expected + [f"{fmt} QAT step / fp32 forward+backward"])
