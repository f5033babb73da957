"""Forward and backward of the fused operators against the float64 NumPy reference,
on every CPU ISA path (and CUDA where present), every dtype, odd sizes and layouts."""
import math
import zlib

import numpy as np
import pytest
import torch
from conftest import DTYPES, LOW_PRECISION, assert_matches_reference, g_shape, ref_dim, reference, to_np, torch_weight_norm

import fastwn

# (shape, dim): None/-1 whole tensor, first, middle, last (as a positive index: -1 is
# "whole" by PyTorch's rule), negative; odd sizes 1, 7, 33, 1000+; long rows that take
# the split-reduction path; many short columns; 2000 rows of columns that one task sums in
# blocks (csrc/cpu/kernels.cpp, kSumRows); columns whose rows are a multiple of 4 KiB
# apart in every dtype, which the reduction groups fewer at a time (plan_columns);
# channel-like 4-D shapes.
CASES = [
    ((7,), 0), ((1,), None), ((33,), -1),
    ((33, 7), 0), ((33, 7), 1), ((33, 7), None), ((33, 7), -2),
    ((1, 1000), 0), ((1000, 3), 1), ((1031, 17), 1), ((2000, 130), 1), ((70, 2048), 1),
    ((7, 33, 5), 1), ((7, 33, 5), 2), ((7, 33, 5), 0), ((7, 33, 5), -3), ((7, 33, 5), -1),
    ((3, 40001), 0), ((2, 3, 30011), 1), ((40003,), None),
    ((2, 17, 1500), 1), ((200, 9, 31), 2), ((6, 5, 3, 3), 0), ((6, 5, 3, 3), 1), ((6, 5, 3, 3), 3),
]
LAYOUTS = ["contiguous", "transposed", "strided", "unaligned", "channels_last"]


def layout_applies(layout, shape):
    return {"transposed": len(shape) >= 2, "channels_last": len(shape) == 4}.get(layout, True)


CASES_X_LAYOUTS = [(shape, dim, layout) for shape, dim in CASES for layout in LAYOUTS if layout_applies(layout, shape)]


def make(shape, dtype, layout, gen, device="cpu"):
    """A fresh random tensor of `shape` in the requested memory layout."""
    def rand(*s):
        return torch.randn(*s, generator=gen, dtype=torch.float64).to(dtype).to(device)

    if layout == "contiguous":
        return rand(*shape)
    assert layout_applies(layout, shape)
    if layout == "transposed":  # dense, memory order reversed
        return rand(*reversed(shape)).permute(*reversed(range(len(shape))))
    if layout == "strided":  # not dense: every other element of the last axis
        return rand(*shape[:-1], 2 * shape[-1])[..., ::2]
    if layout == "unaligned":  # dense, data pointer one element past an aligned base
        n = int(np.prod(shape))
        return rand(n + 1)[1:].view(shape)
    assert layout == "channels_last"
    return rand(*shape).contiguous(memory_format=torch.channels_last)


def g_for(v, dim, gen):
    return torch.randn(g_shape(tuple(v.shape), dim), generator=gen, dtype=torch.float64).to(v.dtype).to(v.device)


def check_forward_backward(v, g, dim, eps=0.0):
    gen = torch.Generator().manual_seed(7)
    d = -1 if dim is None else dim
    w, norm = torch.ops.fastwn.weight_norm_fwd(v, g, d, eps)
    w_ref, norm_ref = reference.forward(to_np(v), to_np(g), ref_dim(dim), eps)
    assert w.shape == v.shape and w.dtype == v.dtype
    assert norm.shape == g.shape
    assert norm.dtype == (torch.float64 if v.dtype == torch.float64 else torch.float32)
    baseline_w = torch_weight_norm(v, g, dim) if eps == 0 else None
    assert_matches_reference(w, w_ref, baseline_w if baseline_w is not None else w)
    assert_matches_reference(norm, norm_ref, norm)

    grad_w = torch.randn(v.shape, generator=gen, dtype=torch.float64).to(v.dtype).to(v.device)
    grad_v, grad_g = torch.ops.fastwn.weight_norm_bwd(grad_w, v, g, norm, d, eps)
    gv_ref, gg_ref = reference.backward(to_np(grad_w), to_np(v), to_np(g), ref_dim(dim), eps)
    assert grad_v.shape == v.shape and grad_g.shape == g.shape and grad_g.dtype == g.dtype
    base_v = base_g = None
    if eps == 0:
        vt, gt = v.detach().clone().requires_grad_(), g.detach().clone().requires_grad_()
        torch_weight_norm(vt, gt, dim).backward(grad_w)
        base_v, base_g = vt.grad, gt.grad
    # grad_v = a * grad_w + b * v cancels to ~0 where grad_w is nearly parallel to v.
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.nanmax(np.abs(to_np(g) / np.maximum(norm_ref, eps)), initial=0) * np.abs(to_np(grad_w)).max(initial=0)
    assert_matches_reference(grad_v, gv_ref, base_v if base_v is not None else grad_v, scale=terms)
    # grad_g = <grad_w, v> / ||v|| is a sum of terms of both signs: its error scales with the sum of |terms|.
    g_terms = reference.backward(np.abs(to_np(grad_w)), np.abs(to_np(v)), np.ones(g.shape), ref_dim(dim), eps)[1]
    assert_matches_reference(grad_g, gg_ref.reshape(g.shape), base_g if base_g is not None else grad_g,
                             scale=np.nanmax(g_terms, initial=0))
    return w, norm


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape,dim,layout", CASES_X_LAYOUTS, ids=str)
def test_against_reference(isa, device, shape, dim, dtype, layout):
    gen = torch.Generator().manual_seed(zlib.crc32(repr((shape, dim, dtype)).encode()))
    v = make(shape, dtype, layout, gen, device)
    check_forward_backward(v, g_for(v, dim, gen), dim)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_outputs_keep_dense_layouts(isa, device, dtype):
    gen = torch.Generator().manual_seed(0)
    v = make((8, 6, 3, 3), dtype, "channels_last", gen, device)
    w, _ = torch.ops.fastwn.weight_norm_fwd(v, g_for(v, 0, gen), 0, 0.0)
    assert w.stride() == v.stride()  # no copy to contiguous and back
    vt = make((9, 5), dtype, "transposed", gen, device)
    assert torch.ops.fastwn.weight_norm_fwd(vt, g_for(vt, 1, gen), 1, 0.0)[0].stride() == vt.stride()


def test_grad_w_in_another_layout_than_v(isa, device):
    gen = torch.Generator().manual_seed(1)
    v = make((8, 6, 3, 3), torch.float32, "channels_last", gen, device)
    g = g_for(v, 0, gen)
    w, norm = torch.ops.fastwn.weight_norm_fwd(v, g, 0, 0.0)
    grad_w = torch.randn(v.shape, generator=gen).to(device)  # contiguous, v is channels_last
    grad_v, grad_g = torch.ops.fastwn.weight_norm_bwd(grad_w, v, g, norm, 0, 0.0)
    gv_ref, gg_ref = reference.backward(to_np(grad_w), to_np(v), to_np(g), 0)
    assert_matches_reference(grad_v, gv_ref)
    assert_matches_reference(grad_g, gg_ref)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape,dim", [((0, 5), 0), ((0, 5), 1), ((5, 0), 0), ((5, 0), 1), ((0,), None),
                                       ((3, 0, 4), 1), ((3, 0, 4), 2)], ids=str)
def test_empty(isa, device, shape, dim, dtype):
    v = torch.empty(shape, dtype=dtype, device=device)
    g = torch.randn(g_shape(shape, dim), dtype=torch.float64).to(dtype).to(device)
    d = -1 if dim is None else dim
    w, norm = torch.ops.fastwn.weight_norm_fwd(v, g, d, 0.0)
    assert w.shape == v.shape
    assert torch.equal(norm.cpu(), torch.zeros(g.shape, dtype=norm.dtype))  # empty slices have norm 0
    grad_v, grad_g = torch.ops.fastwn.weight_norm_bwd(v, v, g, norm, d, 0.0)
    assert grad_v.shape == v.shape and grad_g.shape == g.shape


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape,dim", [((4, 37), 0), ((37, 4), 1), ((3, 4, 5), 1), ((3, 40001), 0)], ids=str)
def test_zero_slice_matches_torch_without_eps(isa, device, shape, dim, dtype):
    gen = torch.Generator().manual_seed(3)
    v = make(shape, dtype, "contiguous", gen, device)
    v.select(dim, 1).zero_()
    g = g_for(v, dim, gen)
    w, norm = torch.ops.fastwn.weight_norm_fwd(v, g, dim, 0.0)
    assert norm.reshape(-1)[1].item() == 0
    assert torch.isnan(w.select(dim, 1)).all()  # PyTorch's answer: 0 * (g / 0)
    torch.testing.assert_close(w, torch_weight_norm(v, g, dim), equal_nan=True, atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape,dim", [((4, 37), 0), ((37, 4), 1), ((37, 40), 1), ((3, 4, 5), 1), ((3, 40001), 0)],
                         ids=str)
def test_zero_and_tiny_slices_with_eps(isa, device, shape, dim, dtype):
    """The clamped slices among others: (37, 40) columns put them in a full vector of
    the per-slice step (kernels.cpp, finish_slices), (37, 4) in a tail."""
    gen = torch.Generator().manual_seed(4)
    v = make(shape, dtype, "contiguous", gen, device)
    v.select(dim, 1).zero_()
    v.select(dim, 2).mul_(1e-4)  # below eps: clamped
    w, _ = check_forward_backward(v, g_for(v, dim, gen), dim, eps=1e-2)
    assert torch.isfinite(w).all()
    assert (w.select(dim, 1) == 0).all()


@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=str)
@pytest.mark.parametrize("shape", [(3, 12, 37), (2, 12, 64)], ids=str)
def test_rounding_to_half_dtypes_is_torchs_bit_for_bit(isa, shape, dtype):
    """The vector conversions from float: round to nearest even at exact ties and into
    the subnormals, in full vectors and tails. On a middle dim torch and fastwn round the
    scale to the dtype and then both compute v * scale in float32, exactly (significands
    of at most 11 bits each), so every output is that product rounded once and must be
    torch's bits. The slices' g are tiny (subnormal outputs), near 1 and near the
    dtype's largest; half of v has 4-bit significands, whose products often sit exactly
    halfway between two values of the dtype."""
    gen = torch.Generator().manual_seed(10)
    info = torch.finfo(dtype)
    full = torch.randn(shape, generator=gen, dtype=torch.float64)
    short = torch.randint(-15, 16, shape, generator=gen).double() / 8
    v = torch.where(torch.rand(shape, generator=gen) < 0.5, full, short).to(dtype)
    exps = [math.log2(info.smallest_normal) + 2, 0, math.floor(math.log2(info.max)) - 1]
    g = torch.tensor([(-1) ** d * 2.0 ** exps[d % 3] for d in range(shape[1])], dtype=dtype)
    w, _ = torch.ops.fastwn.weight_norm_fwd(v, g, 1, 0.0)
    expected = torch_weight_norm(v, g, 1)
    # The inputs reach what they are for: ties of the rounding among the normal
    # results, and subnormal results.
    product = v.float() * (g.view(1, -1, 1) / torch.norm_except_dim(v, 2, 1)).to(dtype).float()
    dropped = 16 if dtype == torch.bfloat16 else 13  # float32 significand bits the dtype drops
    ties = (product.view(torch.int32) & ((1 << dropped) - 1)) == 1 << (dropped - 1)
    assert (ties & (product.abs() >= info.smallest_normal)).sum() > 10
    assert ((expected != 0) & (expected.abs() < info.smallest_normal)).sum() > 10
    assert torch.equal(w.view(torch.int16), expected.view(torch.int16))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape,dim", [((8, 70), 0), ((2, 8, 70), 1), ((70, 40), 1), ((8, 40001), 0)], ids=str)
def test_nan_and_inf_stay_in_their_slices(isa, device, shape, dim, dtype):
    """NaN or inf in v, g or grad_w: the forward has NaN where PyTorch has it, the
    backward NaN in the slices they reach, in bf16 always as c10's 0x7FC0, and every
    other slice is bit for bit what it was without them. (The kernels store slices whose
    reduction and coefficients are finite without the NaN fix-up of the bf16 rounding:
    kernels.cpp, with_nan_tag.) Covers fused rows, (outer, D, inner) slices, columns and
    long rows."""
    gen = torch.Generator().manual_seed(9)
    v = make(shape, dtype, "contiguous", gen, device)
    g = g_for(v, dim, gen)
    grad_w = make(shape, dtype, "contiguous", gen, device)
    clean, norm = torch.ops.fastwn.weight_norm_fwd(v, g, dim, 0.0)
    clean_grads = torch.ops.fastwn.weight_norm_bwd(grad_w, v, g, norm, dim, 0.0)

    def put(t, d, k, x):  # element k (in the order of a C loop) of slice d
        idx = [int(i) for i in np.unravel_index(k, t.select(dim, d).shape)]
        t[tuple(idx[:dim] + [d] + idx[dim:])] = x

    def assert_c10_nan(t):
        if dtype == torch.bfloat16:
            assert (t.view(torch.int16)[torch.isnan(t)] == 0x7FC0).all()

    # Forward: NaN in v; inf in v (norm inf); inf and NaN in g; 0 * inf (x86's default
    # NaN is negative, 0xFFC0 in bf16 without the fix-up).
    vf, gf = v.clone(), g.clone()
    put(vf, 1, 3, float("nan"))
    put(vf, 2, 0, float("inf"))
    put(vf, 5, 1, 0.0)
    gf.view(-1)[3], gf.view(-1)[4], gf.view(-1)[5] = float("inf"), float("nan"), float("inf")
    w, _ = torch.ops.fastwn.weight_norm_fwd(vf, gf, dim, 0.0)
    expected = torch_weight_norm(vf, gf, dim)
    assert torch.equal(torch.isnan(w), torch.isnan(expected))
    for d in (1, 4, 5):
        assert torch.isnan(w.select(dim, d)).any(), d
    assert torch.isinf(w.select(dim, 3)).all()  # finite v times an infinite scale
    torch.testing.assert_close(w, expected, equal_nan=True, atol=1e-2, rtol=1e-2)
    for d in (0, 6, 7):
        assert torch.equal(w.select(dim, d), clean.select(dim, d)), d
    assert_c10_nan(w)

    # Backward, with the clean norm: NaN in grad_w; inf in grad_w against a 0 in v (dot
    # is 0 * inf); inf in v; inf in g.
    gwb, vb, gb = grad_w.clone(), v.clone(), g.clone()
    put(gwb, 1, 2, float("nan"))
    put(vb, 2, 4, 0.0)
    put(gwb, 2, 4, float("inf"))
    put(vb, 3, 0, float("inf"))
    gb.view(-1)[4] = float("inf")
    grad_v, grad_g = torch.ops.fastwn.weight_norm_bwd(gwb, vb, gb, norm, dim, 0.0)
    for d in (1, 2):
        assert torch.isnan(grad_v.select(dim, d)).all(), d  # dot is NaN: so is b
    for d in (3, 4):  # dot or a infinite: inf, or NaN where two infs meet
        assert not torch.isfinite(grad_v.select(dim, d)).any(), d
    for d in (0, 5, 6, 7):
        assert torch.equal(grad_v.select(dim, d), clean_grads[0].select(dim, d)), d
        assert torch.equal(grad_g.view(-1)[d], clean_grads[1].view(-1)[d]), d
    assert_c10_nan(grad_v)


def test_results_do_not_depend_on_thread_count(isa):
    gen = torch.Generator().manual_seed(5)
    cases = [((512, 700), 0), ((700, 512), 1), ((8200, 130), 1), ((64, 40000), 0), ((3, 200, 700), 1), ((300000,), None)]
    old = torch.get_num_threads()
    try:
        for shape, dim in cases:
            v = torch.randn(shape, generator=gen)
            g = g_for(v, dim, gen)
            gw = torch.randn(shape, generator=gen)
            outs = []
            for threads in (1, 2):
                torch.set_num_threads(threads)
                w, n = torch.ops.fastwn.weight_norm_fwd(v, g, -1 if dim is None else dim, 0.0)
                outs.append((w, n, *torch.ops.fastwn.weight_norm_bwd(gw, v, g, n, -1 if dim is None else dim, 0.0)))
            for a, b in zip(*outs):
                assert torch.equal(a, b), (shape, dim)
    finally:
        torch.set_num_threads(old)


def test_repeated_calls_are_bit_identical(isa, device):
    gen = torch.Generator().manual_seed(6)
    v = torch.randn(257, 1031, generator=gen).to(device)
    g = g_for(v, 1, gen)
    first = torch.ops.fastwn.weight_norm_fwd(v, g, 1, 0.0)
    for _ in range(3):
        again = torch.ops.fastwn.weight_norm_fwd(v, g, 1, 0.0)
        assert all(torch.equal(a, b) for a, b in zip(first, again))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_every_isa_agrees_with_scalar(monkeypatch, dtype):
    """The vector paths against the portable one, on a shape that takes every branch."""
    gen = torch.Generator().manual_seed(8)
    v = torch.randn(37, 1029, generator=gen).to(dtype)
    results = {}
    for isa_name in fastwn.build_info()["cpu_isas"]:
        monkeypatch.setenv("FASTWN_CPU_ISA", isa_name)
        results[isa_name] = [torch.ops.fastwn.weight_norm_fwd(v, g_for(v, d, torch.Generator().manual_seed(1)), d, 0.0)[0]
                             for d in (0, 1, -1)]
    # Summation orders differ by ISA: fp32/fp64 agree to a few ulps of sqrt(n) growth,
    # bf16/fp16 outputs to one rounding step.
    rtol = 2 * torch.finfo(dtype).eps if dtype in LOW_PRECISION else 64 * torch.finfo(dtype).eps
    for name, outs in results.items():
        for a, b in zip(outs, results["scalar"]):
            torch.testing.assert_close(a, b, rtol=rtol, atol=0, msg=name)


def _fwd_bwd_by_isa(monkeypatch, v, dim, gen):
    g = g_for(v, dim, gen)
    gw = torch.randn(v.shape, generator=gen).to(v.dtype)
    out = {}
    for isa_name in ("avx512", "avx2"):
        monkeypatch.setenv("FASTWN_CPU_ISA", isa_name)
        w, n = torch.ops.fastwn.weight_norm_fwd(v, g, dim, 0.0)
        out[isa_name] = (w, n, *torch.ops.fastwn.weight_norm_bwd(gw, v, g, n, dim, 0.0))
    return out


@pytest.mark.skipif("avx512" not in fastwn.build_info().get("cpu_isas", []), reason="needs an AVX-512 CPU")
def test_avx512_hands_some_calls_to_the_avx2_kernels(monkeypatch):
    """kernels.cpp's own(): the AVX-512 set hands fp32 (but for short-row columns) and fp16
    rows in the caches, both directions, to the AVX2 kernels, so the two agree bit for bit
    there. Elsewhere their accumulators of 16 and of 8 lanes sum a row in different orders:
    fp16 rows over 4 MiB differ, so a lost hand-off or one that spread would show.
    (Columns cannot show it: each column's sum runs down its rows in one order at any
    width.)"""
    gen = torch.Generator().manual_seed(9)
    for shape in ((37, 1029), (1100, 2053)):  # in the caches, and over 4 MiB
        fp32 = _fwd_bwd_by_isa(monkeypatch, torch.randn(shape, generator=gen), 0, gen)
        assert all(torch.equal(a, b) for a, b in zip(fp32["avx512"], fp32["avx2"])), shape
    small = _fwd_bwd_by_isa(monkeypatch, torch.randn(37, 1029, generator=gen).half(), 0, gen)
    assert all(torch.equal(a, b) for a, b in zip(small["avx512"], small["avx2"]))
    large = _fwd_bwd_by_isa(monkeypatch, torch.randn(1100, 2053, generator=gen).half(), 0, gen)
    assert not torch.equal(large["avx512"][1], large["avx2"][1])


@pytest.mark.parametrize("layout", ["contiguous", "unaligned"])
@pytest.mark.parametrize("shape,dim", [((2051, 2053), 0), ((700, 4099), 0), ((2051, 2053), 1), ((17000, 130), 1)],
                         ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_large_outputs(isa, device, dtype, shape, dim, layout):
    """Large outputs, odd sizes and an offset view. Rows over 4 MiB run in the order
    kernels.cpp's plan_rows gives them, and with the small cases above every dtype takes
    both: fp32 (2051, 2053) rows one after the other, (700, 4099) overlapped (a row and
    its output overflow the L1); bf16/fp16 the other way round from the small ones.
    (17000, 130) columns are over 4 MiB in every dtype, so the column reduction takes its
    groups of short rows (plan_columns). Outputs this large are often fresh pages from
    glibc, which the kernels populate ahead of the stores.
    That path and the non-temporal stores (which the glue picks only for resident outputs
    larger than 3/4 of the last-level cache for w, 1/4 for grad_v: (17000, 130) fp32's
    grad_v when its block is resident) are tested for certain on the kernels directly:
    test_cpp_kernels.py."""
    gen = torch.Generator().manual_seed(9)
    v = make(shape, dtype, layout, gen, device)
    check_forward_backward(v, g_for(v, dim, gen), dim)


# The CUDA schedules by shape (csrc/cuda/plan.h): one block per row (256 < 16-byte packs
# <= 2048 and D at least the SM count), a warp per row, segments and columns; on the CPU
# they are ordinary shapes.
@pytest.mark.parametrize("shape,dim,dtype", [
    ((512, 2048), 0, torch.float32), ((512, 2047), 0, torch.float32), ((256, 8192), 0, torch.bfloat16),
    ((300, 24), 0, torch.float16), ((3, 100003), 0, torch.float32), ((4099, 7), 1, torch.float64),
    ((14, 164), 0, torch.float64), ((300, 1000), 0, torch.float64), ((300, 1500), 0, torch.float64),
], ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "unaligned"])
def test_gpu_schedules(isa, device, shape, dim, dtype, layout):
    gen = torch.Generator().manual_seed(11)
    v = make(shape, dtype, layout, gen, device)
    check_forward_backward(v, g_for(v, dim, gen), dim)
