"""Property-based: random shapes, dims, memory orders, slices and offsets."""
import os

import numpy as np
import torch
from conftest import assert_matches_reference, to_np
from hypothesis import given, settings
from hypothesis import strategies as st

import fastwn
from fastwn import _reference as reference


@st.composite
def problems(draw):
    ndim = draw(st.integers(1, 4))
    shape = draw(st.lists(st.integers(1, 9), min_size=ndim, max_size=ndim))
    dim = draw(st.sampled_from([None, -1] + list(range(-ndim, ndim))))  # -1: whole tensor
    layouts = [(draw(st.permutations(range(ndim))), draw(st.lists(st.integers(1, 3), min_size=ndim, max_size=ndim)),
                draw(st.integers(0, 3))) for _ in range(2)]  # v's and grad_w's
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    isa = draw(st.sampled_from(fastwn.build_info()["cpu_isas"]))
    seed = draw(st.integers(0, 2**31 - 1))
    return shape, dim, layouts, dtype, isa, seed


def build(shape, layout, dtype, seed):
    """A view of `shape` whose memory order is `perm`, strided by `steps`, `offset` in."""
    perm, steps, offset = layout
    gen = torch.Generator().manual_seed(seed)
    big = [shape[p] * steps[p] for p in perm]
    base = torch.randn(int(np.prod(big)) + offset, generator=gen, dtype=torch.float64).to(dtype)
    t = base[offset:].view(big)
    t = t[tuple(slice(None, None, steps[p]) for p in perm)]
    v = t.permute(*np.argsort(perm))
    assert list(v.shape) == list(shape)
    return v


@settings(max_examples=150, deadline=None)
@given(problems())
def test_any_view_matches_reference(problem):
    shape, dim, (v_layout, gw_layout), dtype, isa, seed = problem
    os.environ["FASTWN_CPU_ISA"] = isa  # hypothesis cannot use the function-scoped monkeypatch
    try:
        v = build(shape, v_layout, dtype, seed)
        whole = dim is None or dim == -1
        g = torch.randn(1 if whole else shape[dim], dtype=dtype)
        d = -1 if dim is None else dim
        w, norm = torch.ops.fastwn.weight_norm_fwd(v, g, d, 0.0)
        w_ref, norm_ref = reference.forward(to_np(v), to_np(g), None if whole else dim)
        assert_matches_reference(w, w_ref)
        assert_matches_reference(norm, norm_ref)
        grad_w = build(shape, gw_layout, dtype, seed + 1)
        grad_v, grad_g = torch.ops.fastwn.weight_norm_bwd(grad_w, v, g, norm, d, 0.0)
        gv_ref, gg_ref = reference.backward(to_np(grad_w), to_np(v), to_np(g), None if whole else dim)
        big = float(np.abs(to_np(g)).max() / norm_ref.min() * np.abs(to_np(grad_w)).max())
        assert_matches_reference(grad_v, gv_ref, scale=big)
        terms = reference.backward(np.abs(to_np(grad_w)), np.abs(to_np(v)), np.ones(g.shape), None if whole else dim)[1]
        assert_matches_reference(grad_g, gg_ref, scale=float(terms.max()))
    finally:
        os.environ.pop("FASTWN_CPU_ISA", None)
