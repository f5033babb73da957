"""DoRA (Liu et al., 2024): weight-decomposed low-rank adaptation, as weight norm.

DoRA writes an adapted weight as ``W' = m * V / ||V||`` with ``V = W0 + s * B @ A``: weight
norm with g = m (the learned magnitude) and v = W0 + s*B@A (the frozen weight plus the LoRA
update), the norm per output row. Following the paper (section 4.3) and PEFT, the norm is
detached: no gradient flows through it, so

    y = (m / n) * (x W0^T + s (x A^T) B^T) + bias,    n = ||W0 + s B@A|| (a constant)

needs no [out, in] matrix at all: ``dora_norm`` computes n in fused kernels, and the rest
is the base and LoRA matmuls that plain LoRA runs plus an elementwise rescale.
"""
from __future__ import annotations

import math
import numbers
import weakref

import torch
import torch.nn.functional as F
from torch import nn

from . import _composite
from .functional import _check_tensor

# The operator (an OpOverload), or None when the extension did not load; set by fastwn/__init__.
_dora_norm_op = None


def _check_scaling(scaling, fn: str) -> float:
    if isinstance(scaling, bool) or not isinstance(scaling, numbers.Real):
        raise TypeError(f"{fn}: scaling must be a real number, got {type(scaling).__name__}")
    if not math.isfinite(scaling):
        raise ValueError(f"{fn}: scaling must be finite, got {scaling}")
    return float(scaling)


def dora_norm(weight: torch.Tensor, lora_A: torch.Tensor, lora_B: torch.Tensor, scaling: float) -> torch.Tensor:
    """The norms of the rows of ``weight + scaling * lora_B @ lora_A``, never forming that matrix.

    ``weight`` is [out, in] (float32, bfloat16, float16 or float64; a transposed view such
    as PEFT's ``fan_in_fan_out`` weight is read in place), ``lora_A`` [r, in] and ``lora_B``
    [out, r] in any of those dtypes (PEFT keeps adapters in float32 on bf16 models).
    Returns [out] in float32 (float64 for float64 weights), detached, as DoRA uses it: no
    gradient flows through it.
    """
    fn = "fastwn.dora_norm"
    for arg, t in (("weight", weight), ("lora_A", lora_A), ("lora_B", lora_B)):
        _check_tensor(t, arg, fn)
    s = _check_scaling(scaling, fn)
    weight, lora_A, lora_B = weight.detach(), lora_A.detach(), lora_B.detach()
    if _dora_norm_op is not None:
        return _dora_norm_op(weight, lora_A, lora_B, s)
    acc = _composite.acc_dtype(weight.dtype)  # no extension: the same result, materialised
    return torch.linalg.vector_norm(weight.to(acc) + s * (lora_B.to(acc) @ lora_A.to(acc)), dim=1)


# Largest [tokens, out] product the magnitude's gradient forms at once: the reduction runs
# over chunks of tokens, so it allocates no activation-sized temporary (on the CPU each
# fresh large tensor costs page faults: about 2 ms per 4 MiB on the benchmark machine).
_REDUCE_CHUNK_ELEMS = 1 << 16


def _token_sums(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """sum over every axis but the last of a * b, accumulated in `dtype`."""
    a2, b2 = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
    step = max(1, _REDUCE_CHUNK_ELEMS // max(a2.shape[1], 1))
    total = torch.zeros(a2.shape[1], dtype=dtype, device=a.device)
    for i in range(0, a2.shape[0], step):
        total += (a2[i:i + step] * b2[i:i + step]).sum(0, dtype=dtype)
    return total


def _inverse(norm: torch.Tensor) -> torch.Tensor:
    """1 / n, and 0 where n = 0: a zero row of W0 + s B@A (Llama-3.1-8B's o_proj has 511
    of them, and DoRA starts with m = n = 0 there) has no direction, and its output is
    its residual (bias) rather than PEFT 0.21's 0/0 = NaN (peft#2049)."""
    return torch.where(norm > 0, norm.reciprocal(), torch.zeros_like(norm))


class _DoraScale(torch.autograd.Function):
    """y = residual + (m / n) * (base - sub + lora), m / n broadcast over the last axis.

    ``lora`` already carries the LoRA scaling s (applied to the small x A^T). Saves
    h = base - sub + lora, the one activation the magnitude's gradient needs (sum over
    tokens of grad_y * h / n); n is a constant (detached); m / n is 0 where n = 0
    (_inverse). base and lora get the same gradient, grad_y * m / n."""

    @staticmethod
    def forward(ctx, base, lora, magnitude, norm, sub, residual):
        if sub is None:
            h = base + lora
        else:  # base - sub is a fresh tensor: add lora into it unless that would demote lora
            h = base - sub
            h = h.add_(lora) if h.dtype == torch.result_type(h, lora) else h + lora
        # The scale in h's dtype: a float32 scale would promote y, and grad_y with it, to
        # float32 activations on bf16 models (measured: +33 MB on an 11008-wide layer).
        inv = _inverse(norm)
        scale = (magnitude.to(norm.dtype) * inv).to(h.dtype)
        y = h * scale if residual is None else torch.addcmul(residual, h, scale)
        ctx.save_for_backward(h, scale, inv)
        ctx.dtypes = (base.dtype, lora.dtype, magnitude.dtype)
        ctx.sub_shape = None if sub is None else sub.shape
        ctx.residual_shape = None if residual is None else residual.shape
        return y

    @staticmethod
    def backward(ctx, grad_y):
        h, scale, inv = ctx.saved_tensors
        base_dtype, lora_dtype, m_dtype = ctx.dtypes
        need_base, need_lora, need_m, _, need_sub, need_residual = ctx.needs_input_grad
        grad_base = grad_lora = grad_m = grad_sub = grad_residual = None
        if need_base or need_lora or need_sub:
            grad_h = grad_y * scale
            grad_base = grad_h.to(base_dtype) if need_base else None
            grad_lora = grad_h.to(lora_dtype) if need_lora else None
            if need_sub:
                grad_sub = -_reduce_to(grad_h, ctx.sub_shape)
        if need_m:
            grad_m = (_token_sums(grad_y, h, inv.dtype) * inv).to(m_dtype)
        if need_residual:
            grad_residual = _reduce_to(grad_y, ctx.residual_shape)
        return grad_base, grad_lora, grad_m, None, grad_sub, grad_residual


def _reduce_to(grad: torch.Tensor, shape) -> torch.Tensor:
    """grad summed down to `shape` (a bias broadcast over tokens)."""
    if grad.shape == shape:
        return grad
    return grad.reshape(-1, grad.shape[-1]).sum(0).reshape(shape)


def dora_scale(base: torch.Tensor, lora: torch.Tensor, magnitude: torch.Tensor, norm: torch.Tensor,
               sub: torch.Tensor | None = None, residual: torch.Tensor | None = None) -> torch.Tensor:
    """``residual + (magnitude / norm) * (base - sub + lora)``, differentiable in every
    argument but norm (a constant). ``lora`` must already carry the LoRA scaling. With no
    gradient to compute it works in place in ``lora``, which the caller must own (a
    temporary, as LoRA's output is): inference allocates nothing the size of the output.
    The result has base's and lora's promoted dtype (and the residual's)."""
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (base, lora, magnitude, sub, residual))
    if needs_grad or torch.compiler.is_compiling():
        return _DoraScale.apply(base, lora, magnitude, norm, sub, residual)
    scale = magnitude.to(norm.dtype) * _inverse(norm)
    out_dtype = torch.result_type(base, lora)  # in-place products round once, from float32
    if lora.dtype != out_dtype:
        lora = lora.to(out_dtype)
    h = lora.add_(base)
    if sub is not None:
        h.sub_(sub)
    return h.mul_(scale) if residual is None else h.mul_(scale).add_(residual)


class NormCache:
    """dora_norm's result, kept while nothing it depends on changes.

    An entry is used only if the same tensor objects are passed, each at the same
    version (every in-place write bumps it: optimizer steps, ``copy_``, ``.data`` writes
    through views) and address (``.data =`` swaps), with the same scaling. Callers use it
    in eval mode only; a training step changes A and B every time."""

    def __init__(self):
        self._entries: dict = {}

    @staticmethod
    def _state(tensors) -> tuple | None:
        try:
            return tuple((t._version, t.data_ptr(), t.dtype, t.device, tuple(t.shape), t.stride()) for t in tensors)
        except RuntimeError:  # inference tensors have no version counter: never cached
            return None

    def norm(self, key, weight, lora_A, lora_B, scaling: float, training: bool) -> torch.Tensor:
        """dora_norm(weight, lora_A, lora_B, scaling), from the entry `key` where it is
        still valid. Training (and tracing) bypasses the cache and empties it."""
        if training or torch.compiler.is_compiling():
            self.clear()
            return dora_norm(weight, lora_A, lora_B, scaling)
        tensors = (weight, lora_A, lora_B)
        state = self._state(tensors)
        entry = self._entries.get(key)
        if (state is not None and entry is not None and entry[2] == state and entry[1] == scaling
                and all(ref() is t for ref, t in zip(entry[0], tensors))):
            return entry[3]
        n = dora_norm(weight, lora_A, lora_B, scaling)
        if state is not None:
            self._entries[key] = (tuple(weakref.ref(t) for t in tensors), scaling, state, n)
        return n

    def clear(self) -> None:
        self._entries.clear()

    # Copies and pickles start empty: an entry refers to the tensors it was computed from.
    def __getstate__(self):
        return {"_entries": {}}

    def __deepcopy__(self, memo):
        return NormCache()

    def __len__(self) -> int:
        return len(self._entries)


class DoRALinear(nn.Module):
    """A Linear layer with a DoRA adapter, fused: no [out, in] temporaries forward or backward.

    ``y = (m / n) * (x W0^T + s * (drop(x) A^T) B^T) + bias`` with W0 (``weight``) and
    ``bias`` frozen, ``lora_A`` [r, in], ``lora_B`` [out, r] and ``magnitude`` [out] trained,
    ``s = lora_alpha / r`` and ``n = dora_norm(W0, A, B, s)`` detached. Dropout applies to
    the LoRA branch's input only (PEFT also runs a second base matmul on the dropped-out
    input, which ``fastwn.peft`` keeps for PEFT models). In eval mode n is cached until
    W0, A, B or s change.
    """

    def __init__(self, in_features: int, out_features: int, r: int = 8, lora_alpha: float = 8.0,
                 lora_dropout: float = 0.0, bias: bool = True, device=None, dtype=None):
        super().__init__()
        if r <= 0:
            raise ValueError(f"fastwn.nn.DoRALinear: r must be positive, got {r}")
        factory = {"device": device, "dtype": dtype}
        self.in_features, self.out_features, self.r = in_features, out_features, r
        self.lora_alpha = lora_alpha
        self.weight = nn.Parameter(torch.empty(out_features, in_features, **factory), requires_grad=False)
        self.bias = nn.Parameter(torch.empty(out_features, **factory), requires_grad=False) if bias else None
        self.lora_A = nn.Parameter(torch.empty(r, in_features, **factory))
        self.lora_B = nn.Parameter(torch.empty(out_features, r, **factory))
        self.magnitude = nn.Parameter(torch.empty(out_features, **factory))
        self.dropout = nn.Dropout(lora_dropout) if lora_dropout > 0 else nn.Identity()
        self._norm_cache = NormCache()
        self.reset_parameters()

    @property
    def scaling(self) -> float:
        return self.lora_alpha / self.r

    def reset_parameters(self) -> None:
        with torch.no_grad():
            nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # nn.Linear's initialisation
            if self.bias is not None:
                bound = 1 / math.sqrt(self.in_features) if self.in_features > 0 else 0
                nn.init.uniform_(self.bias, -bound, bound)
        self.reset_adapter()

    def reset_adapter(self) -> None:
        """A as PEFT initialises it (Kaiming-uniform), B = 0, m = ||W0||: the layer starts as W0."""
        with torch.no_grad():
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
            nn.init.zeros_(self.lora_B)
            self.magnitude.copy_(dora_norm(self.weight, self.lora_A, self.lora_B, self.scaling))

    @classmethod
    def from_linear(cls, linear: nn.Linear, r: int = 8, lora_alpha: float = 8.0,
                    lora_dropout: float = 0.0) -> "DoRALinear":
        """A DoRA layer on an existing Linear: its weight and bias (the same Parameters,
        frozen) are the base; the adapter starts at zero change."""
        layer = cls(linear.in_features, linear.out_features, r, lora_alpha, lora_dropout, bias=False, device="meta")
        layer.weight = linear.weight.requires_grad_(False)
        layer.bias = None if linear.bias is None else linear.bias.requires_grad_(False)
        factory = {"device": linear.weight.device, "dtype": linear.weight.dtype}
        layer.lora_A = nn.Parameter(torch.empty(r, linear.in_features, **factory))
        layer.lora_B = nn.Parameter(torch.empty(linear.out_features, r, **factory))
        layer.magnitude = nn.Parameter(torch.empty(linear.out_features, **factory))
        layer.reset_adapter()
        return layer

    def weight_norm(self) -> torch.Tensor:
        """n = ||W0 + s B@A|| per output row (detached; cached in eval mode)."""
        return self._norm_cache.norm(None, self.weight, self.lora_A, self.lora_B, self.scaling, self.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.weight.dtype)
        base = F.linear(x, self.weight)
        # s scales the [tokens, r] product, not the [tokens, out] one: B (s x A^T) = s (x A^T) B^T.
        lora = F.linear(F.linear(self.dropout(x).to(self.lora_A.dtype), self.lora_A) * self.scaling, self.lora_B)
        return dora_scale(base, lora, self.magnitude, self.weight_norm(), None, self.bias).to(x.dtype)

    def merged_weight(self) -> torch.Tensor:
        """The adapted weight (m / n) * (W0 + s B@A) as one [out, in] tensor, e.g. to fold
        the adapter into a plain Linear for inference."""
        n = self.weight_norm()
        v = self.weight.to(n.dtype) + self.scaling * (self.lora_B.to(n.dtype) @ self.lora_A.to(n.dtype))
        return ((self.magnitude.to(n.dtype) / n).unsqueeze(1) * v).to(self.weight.dtype)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, r={self.r}, "
                f"lora_alpha={self.lora_alpha}, bias={self.bias is not None}")
