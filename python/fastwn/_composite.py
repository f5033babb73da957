"""Weight norm written with differentiable torch ops.

Used where the fused kernels cannot be: double backward (create_graph=True), the
fallback when the extension is missing, and the grad_g-only backward. Not a test
reference: that is _reference.py, written with NumPy.
"""
from __future__ import annotations

import torch

WHOLE = -1  # torch._weight_norm's dim for one norm over the whole tensor


def wrap_dim(dim: int, ndim: int) -> int:
    """WHOLE stays WHOLE; other negative dims count from the end."""
    return dim + ndim if dim < WHOLE else dim


def broadcast_shape(v: torch.Tensor, dim: int) -> list[int]:
    """Shape of a per-d quantity that broadcasts against v."""
    dim = wrap_dim(dim, v.dim())
    if dim == WHOLE:
        return [1] * v.dim()
    return [v.size(dim) if i == dim else 1 for i in range(v.dim())]


def reduce_axes(v: torch.Tensor, dim: int) -> list[int]:
    dim = wrap_dim(dim, v.dim())
    return [i for i in range(v.dim()) if dim == WHOLE or i != dim]


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def norm(v: torch.Tensor, dim: int) -> torch.Tensor:
    """||v|| over every axis but dim, in the accumulation dtype, broadcastable to v."""
    va = v.to(acc_dtype(v.dtype))
    axes = reduce_axes(v, dim)
    if not axes:  # 0-dim v or a 1-D v with dim=0: each element is its own slice
        return va.abs()
    return va.pow(2).sum(axes, keepdim=True).sqrt()


_HALF = (torch.bfloat16, torch.float16)


def divisor(n: torch.Tensor, dtype: torch.dtype, eps: float) -> torch.Tensor:
    """max(n, eps), n first rounded to bf16/fp16 v's dtype where that is finite: g = ||v||
    as stored then scales v by exactly 1 (csrc/kernels.h says the same for the kernels)."""
    if dtype in _HALF:
        rounded = n.to(dtype).to(n.dtype)
        n = torch.where(rounded.isfinite(), rounded, n)
    return n.clamp_min(eps)


def torch_rounds_scale(v: torch.Tensor, dim: int) -> bool:
    """Whether torch._weight_norm rounds g / ||v|| to a bf16/fp16 v's dtype (its composite
    path: the whole tensor or a middle dim, as passed; the C++ glue decides the same)."""
    return v.dtype in _HALF and dim != 0 and dim != v.dim() - 1


def forward(v: torch.Tensor, g: torch.Tensor, dim: int, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    n = norm(v, dim)
    gb = g.reshape(broadcast_shape(v, dim)).to(n.dtype)
    scale = gb / divisor(n, v.dtype, eps)
    if torch_rounds_scale(v, dim):
        scale = scale.to(v.dtype).to(n.dtype)
    return (v.to(n.dtype) * scale).to(v.dtype), n.reshape(g.shape)


def backward(grad_w: torch.Tensor, v: torch.Tensor, g: torch.Tensor, dim: int, eps: float,
             need_v: bool = True) -> tuple[torch.Tensor | None, torch.Tensor]:
    """(grad_v, grad_g), differentiable in grad_w, v and g."""
    n = norm(v, dim)
    n_eff = divisor(n, v.dtype, eps)
    va, ga = v.to(n.dtype), grad_w.to(n.dtype)
    axes = reduce_axes(v, dim)
    dot = (ga * va).sum(axes, keepdim=True) if axes else ga * va
    grad_g = (dot / n_eff).reshape(g.shape).to(g.dtype)
    if not need_v:
        return None, grad_g
    a = g.reshape(broadcast_shape(v, dim)).to(n.dtype) / n_eff
    b = torch.where(n >= eps, -a * (dot / n) / n, torch.zeros_like(n))
    return (a * ga + b * va).to(v.dtype), grad_g
