"""Autograd-aware functional API."""
from __future__ import annotations

import torch

from . import _composite

# The forward operator (an OpOverload, resolved once: calling the packet re-resolves the
# overload every call), or None when the extension did not load; set by fastwn/__init__.
_fwd = None


def weight_norm(v: torch.Tensor, g: torch.Tensor, dim: int | None = 0, eps: float = 0.0) -> torch.Tensor:
    """Returns w = g * v / max(||v||, eps), the norm taken over every axis of v except ``dim``.

    ``dim=None`` or ``dim=-1`` takes one norm over the whole tensor (PyTorch's rule; -1
    is not the last axis here); other negative dims wrap. ``g`` may have any shape with
    ``v.size(dim)`` elements (1 for the whole tensor) and v's dtype. ``eps=0`` gives
    exactly ``torch._weight_norm`` (a zero slice gives NaN); ``eps > 0`` guards zero slices.
    """
    d = _composite.WHOLE if dim is None else int(dim)
    if _fwd is not None:
        return _fwd(v, g, d, float(eps))[0]
    if eps == 0.0 and d != _composite.WHOLE and v.dim() > 0:
        return torch._weight_norm(v, g.reshape(_composite.broadcast_shape(v, d)), d)
    return _composite.forward(v, g, d, float(eps))[0]
