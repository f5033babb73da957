"""The fastwn operators: fake (meta) implementations and autograd, next to each other.

The C++ glue checks real tensors; _check_args repeats the checks that fake tensors
(torch.compile, export, opcheck) need, so tracing fails with the same messages.
"""
from __future__ import annotations

import torch

from . import _composite

fwd = torch.ops.fastwn.weight_norm_fwd
bwd = torch.ops.fastwn.weight_norm_bwd.default  # an OpOverload: no per-call overload resolution

_FLOAT_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def _check_args(v: torch.Tensor, g: torch.Tensor, dim: int) -> None:
    torch._check_type(v.dtype in _FLOAT_DTYPES,
                      lambda: f"fastwn.weight_norm: v must be float32, float64, bfloat16 or float16, got {v.dtype}")
    torch._check(g.device == v.device, lambda: f"fastwn.weight_norm: g is on {g.device} but v is on {v.device}")
    torch._check_type(g.dtype == v.dtype, lambda: f"fastwn.weight_norm: g must have v's dtype {v.dtype}, got {g.dtype}")
    if dim != _composite.WHOLE:
        torch._check_index(-v.dim() <= dim < v.dim(),
                           lambda: f"fastwn.weight_norm: dim must be None, -1 or in [{-v.dim()}, {v.dim()}), got {dim}")
    expected = 1 if dim == _composite.WHOLE else v.size(dim)
    torch._check_value(g.numel() == expected,
                       lambda: f"fastwn.weight_norm: g must have {expected} elements, got g of shape {tuple(g.shape)}")


def _dense_like(v: torch.Tensor) -> torch.Tensor:
    # Mirrors the glue: outputs take v's layout (at::empty_like preserves dense layouts).
    return torch.empty_like(v)


@torch.library.register_fake("fastwn::weight_norm_fwd")
def _fwd_fake(v, g, dim, eps=0.0):
    _check_args(v, g, dim)
    return _dense_like(v), g.new_empty(g.shape, dtype=_composite.acc_dtype(v.dtype)).contiguous()


@torch.library.register_fake("fastwn::weight_norm_bwd")
def _bwd_fake(grad_w, v, g, norm, dim, eps=0.0):
    _check_args(v, g, dim)
    torch._check_value(grad_w.shape == v.shape, lambda: "fastwn.weight_norm backward: grad_w must have v's shape")
    return _dense_like(v), torch.empty(g.shape, dtype=g.dtype, device=g.device)


def _setup_context(ctx, inputs, output):
    v, g, dim, eps = inputs
    _, norm = output
    ctx.save_for_backward(v, g, norm)
    ctx.dim, ctx.eps = dim, eps
    ctx.mark_non_differentiable(norm)


def _backward(ctx, grad_w, _grad_norm):
    v, g, norm = ctx.saved_tensors
    need_v, need_g = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    if grad_w is None or not (need_v or need_g):
        return None, None, None, None
    if torch.is_grad_enabled() or not need_v:
        # create_graph=True needs a differentiable graph; grad_g alone needs no grad_v pass.
        grad_v, grad_g = _composite.backward(grad_w, v, g, ctx.dim, ctx.eps, need_v=need_v)
    else:
        grad_v, grad_g = bwd(grad_w, v, g, norm, ctx.dim, ctx.eps)
    return grad_v, grad_g if need_g else None, None, None


torch.library.register_autograd("fastwn::weight_norm_fwd", _backward, setup_context=_setup_context)
