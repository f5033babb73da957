"""The fastwn operators' Python parts: fake (meta) implementations and the
differentiable backward that C++ autograd calls for double backward.

The C++ glue checks real tensors; _check_args repeats the checks that fake tensors
(torch.compile, export, opcheck) need, so tracing fails with the same messages.
"""
from __future__ import annotations

import math

import torch
from torch._prims_common import is_non_overlapping_and_dense_or_false

from . import _composite

fwd = torch.ops.fastwn.weight_norm_fwd
dora_norm = torch.ops.fastwn.dora_norm

_FLOAT_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


_FLOAT32_MAX = torch.finfo(torch.float32).max


def _check_args(v: torch.Tensor, g: torch.Tensor, dim: int, eps: float) -> None:
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
    torch._check_value(0 <= eps < float("inf"), lambda: f"fastwn.weight_norm: eps must be finite and >= 0, got {eps}")
    torch._check_value(v.dtype == torch.float64 or eps <= _FLOAT32_MAX,
                       lambda: f"fastwn.weight_norm: eps must fit in float32 (the norm's dtype for {v.dtype}), got {eps}")


def _check_backward_args(grad_w, v, g, norm, dim, eps) -> None:
    _check_args(v, g, dim, eps)
    for name, t in (("grad_w", grad_w), ("norm", norm)):
        torch._check(t.device == v.device, lambda: f"fastwn.weight_norm: {name} is on {t.device} but v is on {v.device}")
    torch._check_value(grad_w.shape == v.shape, lambda: f"fastwn.weight_norm backward: grad_w must have v's shape "
                                                        f"{tuple(v.shape)}, got {tuple(grad_w.shape)}")
    torch._check_type(grad_w.dtype == v.dtype,
                      lambda: f"fastwn.weight_norm backward: grad_w must have v's dtype {v.dtype}, got {grad_w.dtype}")
    nt = _composite.acc_dtype(v.dtype)
    torch._check_type(norm.dtype == nt, lambda: f"fastwn.weight_norm backward: norm must be {nt} for v of dtype "
                                                f"{v.dtype}, got {norm.dtype}")
    torch._check_value(norm.numel() == g.numel(), lambda: f"fastwn.weight_norm backward: norm must have g's "
                                                          f"{g.numel()} elements, got {norm.numel()}")


def _like_v(v: torch.Tensor) -> torch.Tensor:
    """An output laid out as the glue lays it out: in a dense v's own memory order (so
    channels_last and transposed weights stay so), contiguous for any other view, which
    the glue copies to a contiguous tensor before the kernel runs."""
    return torch.empty_like(v if is_non_overlapping_and_dense_or_false(v) else v.contiguous())


@torch.library.register_fake("fastwn::weight_norm_fwd")
def _fwd_fake(v, g, dim, eps=0.0):
    _check_args(v, g, dim, eps)
    return _like_v(v), torch.empty(g.shape, dtype=_composite.acc_dtype(v.dtype), device=v.device)


@torch.library.register_fake("fastwn::weight_norm_bwd")
def _bwd_fake(grad_w, v, g, norm, dim, eps=0.0):
    _check_backward_args(grad_w, v, g, norm, dim, eps)
    return _like_v(v), torch.empty(g.shape, dtype=g.dtype, device=g.device)


def _check_dora_args(weight, lora_A, lora_B, scaling) -> None:
    op = "fastwn.dora_norm"
    torch._check_type(weight.dtype in _FLOAT_DTYPES,
                      lambda: f"{op}: weight must be float32, float64, bfloat16 or float16, got {weight.dtype}")
    torch._check_value(weight.dim() == 2, lambda: f"{op}: weight must be 2-D [out_features, in_features], "
                                                  f"got shape {tuple(weight.shape)}")
    for name, t in (("lora_A", lora_A), ("lora_B", lora_B)):
        torch._check(t.device == weight.device, lambda: f"{op}: {name} is on {t.device} but weight is on {weight.device}")
        torch._check_type(t.dtype in _FLOAT_DTYPES,
                          lambda: f"{op}: {name} must be float32, float64, bfloat16 or float16, got {t.dtype}")
        torch._check_value(t.dim() == 2, lambda: f"{op}: {name} must be 2-D, got shape {tuple(t.shape)}")
    out, inp = weight.shape
    rank = lora_A.size(0)
    torch._check_value(lora_A.size(1) == inp, lambda: f"{op}: lora_A must be [rank, in_features] = [rank, {inp}], "
                                                      f"got {tuple(lora_A.shape)}")
    torch._check_value(tuple(lora_B.shape) == (out, rank),
                       lambda: f"{op}: lora_B must be [out_features, rank] = [{out}, {rank}], got {tuple(lora_B.shape)}")
    torch._check_value(math.isfinite(scaling), lambda: f"{op}: scaling must be finite, got {scaling}")


@torch.library.register_fake("fastwn::dora_norm")
def _dora_norm_fake(weight, lora_A, lora_B, scaling):
    _check_dora_args(weight, lora_A, lora_B, scaling)
    return weight.new_empty((weight.size(0),), dtype=_composite.acc_dtype(weight.dtype))


# Autograd is C++ (csrc/autograd.cpp); its create_graph and grad_g-only paths call this
# op, whose implementation is the differentiable formula: autograd sees through it.
_lib = torch.library.Library("fastwn", "FRAGMENT")  # kept alive: it owns the registration


def _bwd_composite(grad_w, v, g, dim, eps, need_v):
    grad_v, grad_g = _composite.backward(grad_w, v, g, dim, eps, need_v=need_v)
    return [grad_v, grad_g] if need_v else [grad_g]


_lib.impl("weight_norm_bwd_composite", _bwd_composite, "CompositeImplicitAutograd")
