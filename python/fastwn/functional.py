"""Autograd-aware functional API."""
from __future__ import annotations

import operator

import torch
from torch.overrides import has_torch_function

from . import _composite

# The forward operator (an OpOverload, resolved once: calling the packet re-resolves the
# overload every call), or None when the extension did not load; set by fastwn/__init__.
_fwd = None
# _C.weight_norm: the same operator called from C++ without boxing its arguments, for
# eager calls (set with _fwd). torch.compile must see the OpOverload to record it, and
# __torch_function__ overrides (tensor subclasses, TorchFunctionMode) are only offered
# the call through the OpOverload.
_eager = None


def _check_tensor(t, arg: str, fn: str = "fastwn.weight_norm") -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{fn}: {arg} must be a Tensor, got {type(t).__name__}")


def _as_dim(dim) -> int:
    """dim as torch._weight_norm takes it: None (the whole tensor) or an integer; like
    PyTorch, floats, strings and bools are a TypeError."""
    if dim is None:
        return _composite.WHOLE
    if isinstance(dim, bool):
        raise TypeError("fastwn.weight_norm: dim must be an int or None, got bool")
    try:
        return operator.index(dim)
    except TypeError:
        raise TypeError(f"fastwn.weight_norm: dim must be an int or None, got {type(dim).__name__}") from None


def check_dim(dim, ndim: int) -> int:
    """dim resolved as the modules store it (-1: the whole tensor), checked against a
    weight of `ndim` dimensions."""
    d = _as_dim(dim)
    if d != _composite.WHOLE and not -ndim <= d < ndim:
        raise IndexError(f"dim must be None, -1 or in [{-ndim}, {ndim}), got {dim}")
    return d


def weight_norm(v: torch.Tensor, g: torch.Tensor, dim: int | None = 0, eps: float = 0.0) -> torch.Tensor:
    """Returns w = g * v / max(||v||, eps), the norm taken over every axis of v except ``dim``.

    ``dim=None`` or ``dim=-1`` takes one norm over the whole tensor (PyTorch's rule; -1
    is not the last axis here); other negative dims wrap. ``g`` may have any shape with
    ``v.size(dim)`` elements (1 for the whole tensor) and v's dtype. ``eps=0`` gives
    ``torch._weight_norm``'s result (README: where bf16/fp16 differ by one rounding);
    ``eps > 0`` guards zero slices.
    """
    _check_tensor(v, "v")
    _check_tensor(g, "g")
    d = _as_dim(dim)
    if _fwd is not None:
        if torch.compiler.is_compiling() or has_torch_function((v, g)):
            return _fwd(v, g, d, float(eps))[0]
        return _eager(v, g, d, float(eps))
    if eps == 0.0 and d != _composite.WHOLE and v.dim() > 0:
        return torch._weight_norm(v, g.reshape(_composite.broadcast_shape(v, d)), d)
    return _composite.forward(v, g, d, float(eps))[0]


@torch.no_grad()
def stored_norm(v: torch.Tensor, dim: int) -> torch.Tensor:
    """||v|| over every axis but dim (-1: all), shaped and typed as torch.norm_except_dim
    returns it (what PyTorch's weight norm stores as g) and valued as the forward
    divides by it, so that weight_norm(v, stored_norm(v, dim), dim) is v bit for bit."""
    if _fwd is None:
        return torch.norm_except_dim(v, 2, dim)
    shape = [] if dim == _composite.WHOLE else _composite.broadcast_shape(v, dim)
    return _fwd(v.detach(), v.new_ones(shape), dim, 0.0)[1].to(v.dtype)
