"""fastwn's DoRA inside PEFT models: ``fastwn.peft.enable(model)``.

PEFT (0.21) runs each DoRA Linear through ``DoraLinearVariant.forward``, which builds
B@A by pushing an [in, in] identity through both LoRA layers, adds it to W0 in an
[out, in] temporary and takes that matrix's row norms on every forward. ``enable`` swaps
the variant of every such layer for one that gets the norm from ``fastwn.dora_norm``
(no [out, in] tensor) and rescales with one fused autograd node. PEFT's modules,
parameters, names, checkpoints, merging and adapter handling are untouched: the swap is
a different variant object in each layer's ``lora_variant`` table, and adapters added later
(``add_adapter``, ``load_adapter``) get it too. ``disable`` puts PEFT's variant back.

Layers fastwn does not cover (quantized base weights, Conv and Embedding DoRA, other
LoRA layer classes) stay on PEFT's path; ``enable`` says which, in one warning.
"""
from __future__ import annotations

import dataclasses
import functools
import warnings

import torch
import torch.nn.functional as F
from torch import nn

try:
    from peft.tuners.lora.layer import Linear as _PeftLinear
    from peft.tuners.lora.layer import LoraLayer as _PeftLoraLayer
    from peft.tuners.lora.variants import DoraLinearVariant as _PeftDora
except ImportError as e:  # no PEFT, or one without the variant API (before 0.15)
    raise ImportError(f"fastwn.peft needs PEFT 0.21 (pip install 'fastwn[peft]'): {e}") from e

from . import HAS_EXTENSION, build_info
from .dora import NormCache, dora_scale

__all__ = ["enable", "disable", "Enabled", "DoraLinearVariant"]

_CACHE_ATTR = "_fastwn_norm_cache"  # on PEFT's DoraLinearLayer (lora_magnitude_vector[adapter])
_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


@functools.cache
def _devices() -> tuple[str, ...]:
    return ("cpu", "cuda") if HAS_EXTENSION and build_info().get("cuda") else ("cpu",)


def _why_not(weight) -> str | None:
    """Why a forward with this base weight cannot take fastwn's path (None: it can).
    Checked on every forward: a weight can be swapped after enable."""
    if type(weight) not in (nn.Parameter, torch.Tensor):
        return f"base weight is a {type(weight).__name__} (quantized or wrapped)"
    if weight.dtype not in _FLOAT_DTYPES or weight.dim() != 2:
        return f"base weight is {weight.dtype} with {weight.dim()} dims"
    if weight.device.type not in _devices():
        return f"no fastwn kernels for {weight.device.type}"
    return None


def _cached_norm(dora_layer, key, weight, lora_A, lora_B, scaling, training: bool) -> torch.Tensor:
    cache = dora_layer.__dict__.get(_CACHE_ATTR)
    if cache is None:
        cache = NormCache()
        dora_layer.__dict__[_CACHE_ATTR] = cache
    return cache.norm(key, weight, lora_A, lora_B, scaling, training)


def _clear_cache(module, adapter: str) -> None:
    cache = module.lora_magnitude_vector[adapter].__dict__.get(_CACHE_ATTR)
    if cache is not None:
        cache.clear()


class DoraLinearVariant(_PeftDora):
    """PEFT's DoRA variant for ``lora.Linear`` with fastwn's forward; merging is PEFT's."""

    @staticmethod
    def forward(module, active_adapter: str, x: torch.Tensor, result: torch.Tensor, **kwargs) -> torch.Tensor:
        base_layer = module.get_base_layer()
        weight = base_layer.weight
        if _why_not(weight) is not None:
            return _PeftDora.forward(module, active_adapter, x, result, **kwargs)
        lora_A = module.lora_A[active_adapter]
        lora_B = module.lora_B[active_adapter]
        dropout = module.lora_dropout[active_adapter]
        scaling = module.scaling[active_adapter]
        dora_layer = module.lora_magnitude_vector[active_adapter]
        w = weight.T if dora_layer.fan_in_fan_out else weight  # [out, in]
        norm = _cached_norm(dora_layer, active_adapter, w, lora_A.weight, lora_B.weight, scaling, module.training)
        # PEFT's result: result + (m/n - 1) * base + (m/n) * s * lora, where base is x W0^T
        # (result without its bias) or, under dropout, a second matmul on dropout(x).
        if isinstance(dropout, nn.Identity) or not module.training:
            base, sub, residual = result, base_layer.bias, base_layer.bias
        else:
            x = dropout(x)
            base = F.linear(x, w.to(x.dtype))
            sub, residual = None, result - base
        lora = lora_B(lora_A(x) * scaling)  # s on the [tokens, r] product: B (s x A^T) = s (x A^T) B^T
        return dora_scale(base, lora, dora_layer.weight, norm, sub, residual)

    # The cache is keyed on the weights' memory and versions; PEFT's merge and unmerge
    # swap base weights with `.data =`, which keeps the version, so they clear it.
    @staticmethod
    def merge_safe(module, active_adapter, orig_weight):
        _clear_cache(module, active_adapter)
        return _PeftDora.merge_safe(module, active_adapter, orig_weight)

    @staticmethod
    def merge_unsafe(module, active_adapter, orig_weight):
        _clear_cache(module, active_adapter)
        return _PeftDora.merge_unsafe(module, active_adapter, orig_weight)

    @staticmethod
    def unmerge(module, active_adapter, orig_weight):
        _clear_cache(module, active_adapter)
        return _PeftDora.unmerge(module, active_adapter, orig_weight)


class _Variants(dict):
    """A lora.Linear's ``lora_variant`` table after ``enable``: PEFT's DoRA variant, when
    PEFT stores it (a new or reloaded adapter), is stored as fastwn's."""

    def __setitem__(self, adapter, variant):
        super().__setitem__(adapter, DoraLinearVariant() if type(variant) is _PeftDora else variant)


@dataclasses.dataclass
class Enabled:
    """What ``enable`` did: the DoRA layers now on fastwn's path and those left on PEFT's
    (module name -> reason), each as ``"<module name>"`` or ``"<module name> [<adapter>]"``."""
    converted: list[str]
    left: dict[str, str]


def enable(model: nn.Module) -> Enabled:
    """Makes every PEFT LoRA ``Linear`` DoRA adapter of ``model`` (a ``PeftModel`` or any
    module holding PEFT layers, also inside DDP) use fastwn's fused DoRA. Idempotent.
    Warns once, listing the DoRA layers that stay on PEFT's path."""
    converted, left = [], {}
    for name, module in model.named_modules():
        if not isinstance(module, _PeftLoraLayer):
            continue
        dora = list(module.lora_magnitude_vector.keys())  # every DoRA adapter has a magnitude, whatever the layer
        if type(module) is not _PeftLinear:
            for adapter in dora:
                left[f"{name} [{adapter}]"] = f"{type(module).__name__} layers are not covered"
            continue
        reason = _why_not(module.get_base_layer().weight)
        for adapter in dora:
            if reason is not None:
                left[f"{name} [{adapter}]"] = reason
            else:
                converted.append(f"{name} [{adapter}]")
        if reason is None and not isinstance(module.lora_variant, _Variants):
            module.lora_variant = _Variants(module.lora_variant)
            for adapter, variant in list(module.lora_variant.items()):
                module.lora_variant[adapter] = variant  # through _Variants: PEFT's DoRA becomes fastwn's
    if left:
        lines = "\n".join(f"  {k}: {v}" for k, v in left.items())
        warnings.warn(f"fastwn.peft.enable: {len(left)} DoRA layer(s) stay on PEFT's path:\n{lines}", stacklevel=2)
    return Enabled(converted, left)


def disable(model: nn.Module) -> None:
    """Puts PEFT's own DoRA forward back in every layer ``enable`` changed."""
    for module in model.modules():
        if isinstance(module, _PeftLoraLayer) and isinstance(module.lora_variant, _Variants):
            module.lora_variant = {a: _PeftDora() if type(v) is DoraLinearVariant else v
                                   for a, v in module.lora_variant.items()}
            for adapter in module.lora_magnitude_vector:
                _clear_cache(module, adapter)
