"""Both paths of `int8_matmul`, and the kernel's edge cases.

Each path is forced in turn (`set_int8_matmul_path`), so a machine whose automatic
choice is 'int_mm' (VNNI/AMX CPU) still checks 'fp32'. 'int_mm' runs where CPU
`torch._int_mm` is exact: on a CPU without int8 dot-product instructions (AVX2) its
int8 kernel adds pairs in int16 and saturates, so forcing it there is refused (tested by
simulating such a CPU) and its tests are skipped. References are int64 matmuls.
"""
from contextlib import contextmanager

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import quantization as q
from quantization import INT8_PATHS, absmax_quantize, int8_matmul, mixed_precision_forward

# The paths this CPU computes exactly: 'fp32' everywhere, 'int_mm' where its int8 kernel is exact.
EXACT_PATHS = [pytest.param(path, marks=pytest.mark.skipif(
    path == "int_mm" and not q._int_mm_exact(), reason="CPU torch._int_mm is not exact here (no VNNI/AMX)"))
    for path in INT8_PATHS]

MAX_K = 131071  # (2**31 - 1) // 128**2: the largest K whose int32 sums cannot overflow


@contextmanager
def forced(path):
    q.set_int8_matmul_path(path)
    try:
        yield
    finally:
        q.set_int8_matmul_path(None)


def reference(a, b):
    return a.long() @ b.long()


def any_layout(t, layout):
    """The same values as `t` in another memory layout: transposed storage or a strided slice."""
    if layout == "transposed":
        return t.t().contiguous().t()
    if layout == "sliced":  # every other column of a wider tensor
        wide = torch.zeros(t.shape[0], 2 * t.shape[1], dtype=t.dtype)
        wide[:, ::2] = t
        return wide[:, ::2]
    return t


def test_the_automatic_path_is_one_of_the_two_and_decided_once(monkeypatch):
    monkeypatch.delenv("LAB_INT8_PATH", raising=False)
    q.set_int8_matmul_path(None)
    path = q.int8_matmul_path()
    assert path in INT8_PATHS and q.int8_matmul_path() == path
    assert q.int8_matmul_path("cuda") == "int_mm"  # a name only: nothing runs on the device


@pytest.mark.skipif(not q._int_mm_exact(), reason="CPU torch._int_mm is not exact here (no VNNI/AMX)")
def test_the_path_can_be_forced_by_call_and_by_environment(monkeypatch):
    for path in INT8_PATHS:
        with forced(path):
            assert q.int8_matmul_path() == q.int8_matmul_path("cuda") == path
        monkeypatch.setenv("LAB_INT8_PATH", path)
        q.set_int8_matmul_path(None)  # decide again: the variable is read on the next call
        assert q.int8_matmul_path() == path
    monkeypatch.undo()  # the variable as it was, and the path decided again from it
    q.set_int8_matmul_path(None)
    with pytest.raises(ValueError, match="path must be one of"):
        q.set_int8_matmul_path("int4")


def test_a_cpu_whose_int_mm_is_inexact_gets_the_fp32_path_and_refuses_int_mm(monkeypatch):
    # Simulate an AVX2 CPU: no int8 dot-product flags, and an _int_mm that saturates like its kernel.
    monkeypatch.delenv("LAB_INT8_PATH", raising=False)
    monkeypatch.setattr(q, "_int_mm_exact", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_vnni_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    q.set_int8_matmul_path(None)
    try:
        assert q.int8_matmul_path() == "fp32" and q.int8_matmul_path("cuda") == "int_mm"
        with pytest.raises(ValueError, match="torch._int_mm is not exact on this CPU"):
            q.set_int8_matmul_path("int_mm")
        monkeypatch.setenv("LAB_INT8_PATH", "int_mm")
        q.set_int8_matmul_path(None)
        with pytest.raises(ValueError, match="torch._int_mm is not exact on this CPU"):
            int8_matmul(torch.ones(2, 2, dtype=torch.int8), torch.ones(2, 2, dtype=torch.int8))
    finally:
        monkeypatch.undo()
        q.set_int8_matmul_path(None)


def test_the_exactness_probe_catches_a_saturating_kernel(monkeypatch):
    def saturating(a, b):  # what an int8 kernel adding pairs in int16 does to the extremes
        products = a.long()[:, :, None] * b.long()[None, :, :]
        pairs = products[:, 0::2] + products[:, 1::2]
        return pairs.clamp(-(2**15), 2**15 - 1).sum(1).int()

    q._int_mm_exact.cache_clear()
    monkeypatch.setattr(torch, "_int_mm", saturating)
    try:
        assert q._int_mm_exact() is False
        monkeypatch.setattr(torch, "_int_mm", lambda a, b: (a.long() @ b.long()).int())
        q._int_mm_exact.cache_clear()
        assert q._int_mm_exact() is True
    finally:
        monkeypatch.undo()
        q._int_mm_exact.cache_clear()


@pytest.mark.parametrize("path", EXACT_PATHS)
@settings(max_examples=40, deadline=None)
@given(m=st.integers(1, 40), k=st.integers(1, 2100), n=st.integers(1, 40),
       layout_a=st.sampled_from(["contiguous", "transposed", "sliced"]),
       layout_b=st.sampled_from(["contiguous", "transposed", "sliced"]), seed=st.integers(0, 2**16))
def test_both_paths_equal_the_integer_product_for_any_shape_and_layout(path, m, k, n, layout_a, layout_b, seed):
    generator = torch.Generator().manual_seed(seed)
    a = torch.randint(-128, 128, (m, k), dtype=torch.int8, generator=generator)
    b = torch.randint(-128, 128, (k, n), dtype=torch.int8, generator=generator)
    a[0, :] = -128  # the extremes, whose pairwise sums overflow int16
    b[:, 0] = -128
    with forced(path):
        out = int8_matmul(any_layout(a, layout_a), any_layout(b, layout_b))
    assert out.dtype == torch.int32 and out.shape == (m, n)
    assert torch.equal(out.long(), reference(a, b))


@pytest.mark.parametrize("path", EXACT_PATHS)
@pytest.mark.parametrize("layout", ["sliced", "transposed"])
def test_a_single_inner_dimension_is_exact_whatever_the_strides(path, layout):
    # At K = 1 a column-major copy of b has strides (1, 1), which CPU _int_mm misreads (found by hypothesis).
    a = torch.tensor([[-128], [3]], dtype=torch.int8)
    b = torch.tensor([[-128, -11, 127]], dtype=torch.int8)
    with forced(path):
        assert torch.equal(int8_matmul(a, any_layout(b, layout)).long(), reference(a, b))


@pytest.mark.parametrize("path", EXACT_PATHS)
def test_both_paths_are_exact_at_the_largest_k(path):
    # Rows and columns of extremes: sums reach -128 * -128 * K = 2**31 - 2**14, the int32 edge.
    a = torch.stack([torch.full((MAX_K,), -128), torch.full((MAX_K,), 127), torch.full((MAX_K,), -128)])
    a[2, 1::2] = 127
    b = a.t().to(torch.int8)
    a = a.to(torch.int8)
    with forced(path):
        out = int8_matmul(a, b)
    assert torch.equal(out.long(), reference(a, b))
    assert out[0, 0] == 128 * 128 * MAX_K
    with forced(path), pytest.raises(ValueError, match="could overflow the int32 accumulator"):
        int8_matmul(torch.zeros(1, MAX_K + 1, dtype=torch.int8), torch.zeros(MAX_K + 1, 1, dtype=torch.int8))


@pytest.mark.parametrize("threshold", [6.0, None])
def test_the_kernel_gives_the_same_result_on_both_paths(threshold):
    from toolkit.layers import QuantizedLinear

    torch.manual_seed(0)
    x = torch.randn(3, 17, 40)
    x[..., 5] = 9.0  # one outlier feature
    weight = torch.randn(40, 24)
    layer = QuantizedLinear.from_linear(torch.nn.Linear(40, 24), "int8", threshold)
    results = []
    for path in [p for p in INT8_PATHS if p == "fp32" or q._int_mm_exact()]:
        with forced(path), torch.no_grad():
            results.append((mixed_precision_forward(x, weight, threshold), layer(x)))
    for kernel, layer_output in results[1:]:  # bit-identical across the paths this CPU has
        assert torch.equal(kernel, results[0][0]) and torch.equal(layer_output, results[0][1])


def test_absmax_quantize_refuses_slices_outside_the_supported_range():
    # 127 / absmax overflows float32 below 3.7e-37: a tiny slice is refused, not given codes that
    # depend on how the formula is written; a zero slice is fine, and a normal slice beside it.
    for x in (torch.tensor([[1e-38, -1e-38, 5e-39]]), torch.tensor([[1e39, 1.0]], dtype=torch.float64),
              torch.tensor([[3e38, -1.0]])):
        with pytest.raises(ValueError, match=r"slice of x has max\|x\| outside \[2\*\*-60, 2\*\*60\]"):
            absmax_quantize(x, dim=1)
    codes, absmax = absmax_quantize(torch.tensor([[0.0, 0.0, 0.0], [1.0, 2.0, 3.0]]), dim=1)
    assert codes.tolist() == [[0, 0, 0], [42, 85, 127]] and absmax.tolist() == [[0.0], [3.0]]


@pytest.mark.parametrize("path", EXACT_PATHS)
def test_a_nan_stays_in_its_row_and_changes_no_other_rows_outliers(path):
    torch.manual_seed(0)
    x = torch.randn(4, 16).clamp_(-3, 3)
    x[2, 5] = 8.0  # row 2 makes column 5 an outlier
    weight = torch.randn(16, 6)
    with forced(path):
        clean = mixed_precision_forward(x, weight, 6.0)
        x[0, 5] = float("nan")  # a NaN in the outlier column, in another row
        with_nan = mixed_precision_forward(x, weight, 6.0)
    assert torch.isnan(with_nan[0]).all()
    assert torch.equal(with_nan[1:], clean[1:])
