"""Data-dependent initialisation of weight-normalised layers (Salimans & Kingma 2016, §3)."""
from __future__ import annotations

import warnings

import torch
import torch.distributed as dist
from torch import nn

from .nn import _specs, is_weight_normalized

__all__ = ["data_dependent_init_"]

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_T = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def _output_channel_dim(module: nn.Module) -> int | None:
    """The weight axis that indexes output channels, or None if g cannot set them one by one."""
    if isinstance(module, nn.Linear) or isinstance(module, _CONV):
        return 0
    if isinstance(module, _CONV_T) and module.groups == 1:  # weight is (in, out, *k)
        return 1
    return None


@torch.no_grad()
def data_dependent_init_(model: nn.Module, batch, init_scale: float = 1.0, eps: float = 1e-6) -> nn.Module:
    """Runs `model(batch)` once; each fastwn-weight-normalised Linear/ConvNd layer, in
    forward order, gets g <- init_scale / sigma[t] and bias <- -mu[t] * init_scale / sigma[t],
    where t = v.x / ||v|| are its pre-activations on the batch (the layer with g = 1, b = 0)
    and the moments are taken per output channel over the batch and spatial axes. Each
    layer's output is then normalised before the next layer sees it, so every layer's
    pre-activations have zero mean and variance init_scale^2 on this batch.

    Under torch.distributed the moments are all-reduced: every rank gets the same values.
    Layers whose weight-norm dim does not index output channels are skipped with a
    warning. `batch` is passed to the model as is (a tuple is unpacked)."""
    done: set[int] = set()

    def hook(module, inputs, output):
        if id(module) in done:  # the re-run below calls this hook again
            return None
        done.add(id(module))
        spec = _specs(module)["weight"]
        out_dim = _output_channel_dim(module)
        has_bias = module._parameters.get("bias") is not None
        weight_rank = spec.gv(module)[1].dim()
        if out_dim is None or spec.dim == -1 or spec.dim % weight_rank != out_dim:
            warnings.warn(f"data_dependent_init_: skipped {type(module).__name__} (weight-norm dim {spec.dim} "
                          "does not index its output channels)", stacklevel=3)
            return None
        g, _ = spec.gv(module)
        g.fill_(1.0)
        if has_bias:
            module.bias.zero_()
        t = module(*inputs)
        channel_axis = t.dim() - 1 if isinstance(module, nn.Linear) else 1
        axes = [a for a in range(t.dim()) if a != channel_axis]
        td = t.to(torch.float64)
        moments = torch.stack([torch.full_like(td.sum(axes), td.numel() / td.size(channel_axis)),
                               td.sum(axes), td.square().sum(axes)])
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(moments)
        count, total, total_sq = moments
        mean = total / count
        std = (total_sq / count - mean.square()).clamp_min(0).add(eps).sqrt()
        scale = init_scale / std
        g.copy_(scale.reshape(g.shape).to(g.dtype))
        if has_bias:
            module.bias.copy_((-mean * scale).to(module.bias.dtype))
        shape = [1] * t.dim()
        shape[channel_axis] = -1
        return ((td - mean.reshape(shape)) * scale.reshape(shape)).to(t.dtype)

    layers = [m for m in model.modules() if is_weight_normalized(m) and (isinstance(m, nn.Linear) or
                                                                        isinstance(m, _CONV + _CONV_T))]
    if not layers:
        raise ValueError("data_dependent_init_: the model has no fastwn weight-normalised Linear/ConvNd layer "
                         "(wrap layers with fastwn.nn.weight_norm, or fastwn.nn.convert the model first)")
    handles = [m.register_forward_hook(hook) for m in layers]
    try:
        model(*batch) if isinstance(batch, tuple) else model(batch)
    finally:
        for h in handles:
            h.remove()
    return model
