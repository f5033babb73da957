import os

import numpy as np
import pytest
import torch

import fastwn
from fastwn import _reference

# Every CPU kernel set this machine can run; CUDA where present.
ISAS = fastwn.build_info().get("cpu_isas", [])
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() and fastwn.build_info().get("cuda") else [])
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
LOW_PRECISION = (torch.bfloat16, torch.float16)


@pytest.fixture(params=ISAS)
def isa(request, monkeypatch):
    monkeypatch.setenv("FASTWN_CPU_ISA", request.param)
    assert fastwn.cpu_isa() == request.param
    return request.param


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


def ref_dim(dim):
    """fastwn/torch dim -> the reference's (None = whole tensor)."""
    return None if dim is None or dim == -1 else dim


def g_shape(shape, dim):
    return (1,) if ref_dim(dim) is None else (shape[dim],)


def to_np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(torch.float64).cpu().numpy()


def assert_matches_reference(out: torch.Tensor, ref: np.ndarray, baseline: torch.Tensor | None = None,
                             scale: float = 0.0):
    """out vs the float64 reference. fp32/fp64: tight relative bound; bf16/fp16: at most
    twice PyTorch's own error in that dtype (DESIGN.md rule 7), plus one unit of rounding.
    `scale` is the size of the terms that make up out, where they can cancel (grad_v)."""
    got = to_np(out)
    assert got.shape == ref.shape
    finite = np.isfinite(ref)
    assert np.array_equal(np.isnan(got), np.isnan(ref)), "NaNs in different places"
    if not finite.any():
        return
    scale = max(np.abs(ref[finite]).max(), scale, 1e-30)
    err = np.abs(got[finite] - ref[finite]).max()
    if out.dtype in LOW_PRECISION:
        assert baseline is not None
        torch_err = np.abs(to_np(baseline)[finite] - ref[finite]).max()
        ulp = torch.finfo(out.dtype).eps * scale
        assert err <= 2 * torch_err + ulp, f"error {err:.3g} vs torch's {torch_err:.3g} (ulp {ulp:.3g})"
    else:
        tol = 2e-6 if out.dtype == torch.float32 else 1e-13
        assert err <= tol * scale, f"relative error {err / scale:.3g} > {tol}"


def torch_weight_norm(v, g, dim):
    """PyTorch's own result (the parity target) and its autograd function."""
    d = -1 if dim is None else dim
    shape = [1] * v.dim() if d == -1 else [v.size(d) if i == d % v.dim() else 1 for i in range(v.dim())]
    return torch._weight_norm(v, g.reshape(shape), d)


reference = _reference
