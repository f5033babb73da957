"""Drop-in weight-norm modules backed by the fused operators.

``weight_norm(module)`` keeps PyTorch's state_dict layout (``parametrizations.<name>.original0``
is g, ``original1`` is v) and loads checkpoints with the legacy ``<name>_g``/``<name>_v``
keys. Unlike torch's parametrizations, a module wrapped here can be pickled and saved
whole with ``torch.save``. ``convert`` swaps any weight norm in a model (PyTorch's
parametrization, its legacy hook, or fastwn's) for fastwn's; ``fold`` bakes the weights
in for inference.
"""
from __future__ import annotations

import dataclasses
import functools

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.weight_norm import WeightNorm as _TorchLegacyWeightNorm  # the legacy hook's class

from .functional import weight_norm as _weight_norm_fn

__all__ = ["WeightNorm", "weight_norm", "remove_weight_norm", "convert", "fold", "is_weight_normalized",
           "Linear", "Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d",
           "MeanOnlyBatchNorm1d", "MeanOnlyBatchNorm2d", "MeanOnlyBatchNorm3d"]

_SPECS = "_fastwn_weight_norms"  # instance attribute: {name: _Spec}


class WeightNorm(nn.Module):
    """g (``original0``) and v (``original1``) of one weight; calling it returns w."""

    def __init__(self, g: nn.Parameter, v: nn.Parameter, dim: int, eps: float = 0.0):
        super().__init__()
        self.original0 = g
        self.original1 = v
        self.dim = dim
        self.eps = eps

    def forward(self) -> torch.Tensor:
        return _weight_norm_fn(self.original1, self.original0, self.dim, self.eps)

    def extra_repr(self) -> str:
        return f"dim={self.dim}" + (f", eps={self.eps}" if self.eps else "")


@dataclasses.dataclass
class _Spec:
    """Where g and v of one weight live: in parametrizations[name] (PyTorch's current
    layout) or, for models converted from the legacy hook API, as <name>_g/<name>_v."""
    name: str
    dim: int
    eps: float
    legacy: bool

    def gv(self, module: nn.Module) -> tuple[nn.Parameter, nn.Parameter]:
        if self.legacy:
            return module._parameters[self.name + "_g"], module._parameters[self.name + "_v"]
        p = module._modules["parametrizations"]._modules[self.name]
        return p.original0, p.original1

    def weight(self, module: nn.Module) -> torch.Tensor:
        g, v = self.gv(module)
        return _weight_norm_fn(v, g, self.dim, self.eps)


def _specs(module: nn.Module) -> dict:
    return module.__dict__.get(_SPECS, {})


def is_weight_normalized(module: nn.Module, name: str = "weight") -> bool:
    """True if `name` of `module` is weight-normalised by fastwn."""
    return name in _specs(module)


def _rebuild(base: type, names: tuple) -> nn.Module:
    # Pickle/deepcopy entry point: an empty instance of the generated class; pickle
    # then restores its __dict__ with nn.Module.__setstate__.
    return object.__new__(_wn_class(base, names))


@functools.lru_cache(maxsize=None)
def _wn_class(base: type, names: tuple) -> type:
    """A subclass of `base` where each of `names` is a property computing w from g and v."""

    def make_property(name):
        def fget(self):
            return _specs(self)[name].weight(self)

        def fset(self, value):  # like torch's parametrizations: re-derive g and v from w
            spec = _specs(self)[name]
            g, v = spec.gv(self)
            with torch.no_grad():
                v.copy_(value)
                g.copy_(torch.norm_except_dim(v, 2, spec.dim).reshape(g.shape))

        return property(fget, fset, doc=f"{name} = g * v / ||v||, from fastwn's fused operators")

    def __setattr__(self, key, value):
        if key in names:  # a Parameter would otherwise be registered next to the property
            return type(self).__dict__[key].fset(self, value)
        return base.__setattr__(self, key, value)

    def __reduce_ex__(self, protocol):
        return _rebuild, (base, names), self.__getstate__()

    attrs = {name: make_property(name) for name in names}
    attrs.update(__setattr__=__setattr__, __reduce_ex__=__reduce_ex__, __module__=base.__module__,
                 _fastwn_base=base)
    prefix = "" if base.__module__ == __name__ else "WeightNorm"
    return type(prefix + base.__name__, (base,), attrs)


def _base_class(module: nn.Module) -> type:
    return type(module).__dict__.get("_fastwn_base", type(module))


def _set_class(module: nn.Module, names: tuple) -> None:
    base = _base_class(module)
    module.__class__ = _wn_class(base, names) if names else base


class _LoadKeys:
    """load_state_dict pre-hook: accepts g/v under either layout (PyTorch's
    parametrizations.<name>.original0/1 or the legacy <name>_g/<name>_v)."""

    def __init__(self, name: str):
        self.name = name

    def __call__(self, module, state_dict, prefix, *args):
        spec = _specs(module).get(self.name)
        if spec is None:
            return
        legacy = (f"{prefix}{self.name}_g", f"{prefix}{self.name}_v")
        modern = (f"{prefix}parametrizations.{self.name}.original0", f"{prefix}parametrizations.{self.name}.original1")
        src, dst = (modern, legacy) if spec.legacy else (legacy, modern)
        if all(k in state_dict for k in src):
            for s, d in zip(src, dst):
                state_dict[d] = state_dict.pop(s)


def _attach(module: nn.Module, name: str, g: nn.Parameter, v: nn.Parameter, dim: int, eps: float,
            legacy: bool) -> nn.Module:
    if legacy:
        module.register_parameter(name + "_g", g)
        module.register_parameter(name + "_v", v)
    else:
        if "parametrizations" not in module._modules:
            module.parametrizations = nn.ModuleDict()
        module.parametrizations[name] = WeightNorm(g, v, dim, eps)
    specs = dict(_specs(module))
    specs[name] = _Spec(name, dim, eps, legacy)
    module.__dict__[_SPECS] = specs
    _set_class(module, tuple(specs))
    module._register_load_state_dict_pre_hook(_LoadKeys(name), with_module=True)
    return module


def _torch_dim(dim: int | None) -> int:
    return -1 if dim is None else dim


def weight_norm(module: nn.Module, name: str = "weight", dim: int | None = 0, eps: float = 0.0) -> nn.Module:
    """Weight-normalises ``module.<name>`` in place with the fused kernels: w = g v / ||v||.

    Same rules as ``torch.nn.utils.parametrizations.weight_norm``: the norm is over every
    axis but ``dim`` (None or -1: the whole tensor; for ConvTranspose weights dim=0 is
    the input-channel axis); g starts as ||w|| and v as w, so the output is unchanged.
    """
    if is_weight_normalized(module, name) or _torch_weight_norm_kind(module, name):
        raise ValueError(f"{type(module).__name__}.{name} is already weight-normalised; use fastwn.nn.convert")
    weight = module._parameters.get(name)
    if not isinstance(weight, nn.Parameter):
        raise ValueError(f"{type(module).__name__} has no parameter named {name!r}")
    d = _torch_dim(dim)
    if d != -1 and not -weight.dim() <= d < weight.dim():
        raise IndexError(f"dim must be None, -1 or in [{-weight.dim()}, {weight.dim()}), got {dim}")
    with torch.no_grad():
        g = nn.Parameter(torch.norm_except_dim(weight, 2, d).clone(), requires_grad=weight.requires_grad)
        v = nn.Parameter(weight.detach().clone(), requires_grad=weight.requires_grad)
    del module._parameters[name]
    return _attach(module, name, g, v, d, eps, legacy=False)


def _torch_weight_norm_kind(module: nn.Module, name: str):
    """'parametrization' or 'legacy' if PyTorch's weight norm is on module.<name>."""
    if parametrize.is_parametrized(module, name):
        plist = module.parametrizations[name]
        if isinstance(plist, parametrize.ParametrizationList) and len(plist) == 1 and \
                type(plist[0]).__name__ == "_WeightNorm":
            return "parametrization"
    for hook in module._forward_pre_hooks.values():
        if isinstance(hook, _TorchLegacyWeightNorm) and hook.name == name:
            return "legacy"
    return None


def _weight_norm_names(module: nn.Module) -> list[tuple[str, str]]:
    """(name, kind) of every weight norm on the module itself, of any of the three kinds."""
    found = [(n, "fastwn") for n in _specs(module)]
    if parametrize.is_parametrized(module) and not _specs(module):
        found += [(n, "parametrization") for n in module.parametrizations
                  if _torch_weight_norm_kind(module, n) == "parametrization"]
    found += [(h.name, "legacy") for h in module._forward_pre_hooks.values()
              if isinstance(h, _TorchLegacyWeightNorm)]
    return found


def remove_weight_norm(module: nn.Module, name: str = "weight") -> nn.Module:
    """Replaces the weight norm on module.<name> (any of the three kinds) by a plain
    Parameter holding the current w; requires_grad follows v."""
    kinds = dict(_weight_norm_names(module))
    kind = kinds.get(name)
    if kind == "parametrization":
        parametrize.remove_parametrizations(module, name, leave_parametrized=True)
    elif kind == "legacy":
        torch.nn.utils.remove_weight_norm(module, name)
    elif kind == "fastwn":
        spec = _specs(module)[name]
        g, v = spec.gv(module)
        with torch.no_grad():
            w = spec.weight(module).detach().clone()
        if spec.legacy:
            del module._parameters[name + "_g"], module._parameters[name + "_v"]
        else:
            del module.parametrizations[name]
            if len(module.parametrizations) == 0:
                del module.parametrizations
        specs = {k: s for k, s in _specs(module).items() if k != name}
        module.__dict__[_SPECS] = specs
        _set_class(module, tuple(specs))
        module.register_parameter(name, nn.Parameter(w, requires_grad=v.requires_grad))
    else:
        raise ValueError(f"{type(module).__name__}.{name} is not weight-normalised")
    return module


def _take_torch_weight_norms(module: nn.Module) -> list[tuple[str, nn.Parameter, nn.Parameter, int]]:
    """Removes PyTorch's weight-norm parametrizations from module, returning (name, g, v,
    dim) for each. When they are all the module has, it returns to the class it had
    before them without deleting anything from the generated class: torch's
    remove_parametrizations deletes the property from that class, which a deepcopy of
    the module shares, and so breaks the copy."""
    names = [n for n, kind in _weight_norm_names(module) if kind == "parametrization"]
    if not names:
        return []
    taken = [(n, module.parametrizations[n].original0, module.parametrizations[n].original1,
              module.parametrizations[n][0].dim) for n in names]
    if len(names) == len(module.parametrizations):
        base = parametrize.type_before_parametrizations(module)
        del module.parametrizations
        module.__class__ = base
    else:  # other parametrizations stay: only torch can take these out
        for n in names:
            parametrize.remove_parametrizations(module, n, leave_parametrized=True)
            del module._parameters[n]
    return taken


def convert(model: nn.Module) -> nn.Module:
    """In place, replaces every weight norm in `model` (PyTorch's parametrization or
    legacy hook) by fastwn's, reusing the same g and v Parameter objects (an optimizer
    built before keeps working), their values, requires_grad and state_dict keys."""
    for module in model.modules():
        for name, g, v, dim in _take_torch_weight_norms(module):
            _attach(module, name, g, v, dim, 0.0, legacy=False)
        for name, kind in _weight_norm_names(module):
            if kind == "legacy":
                hook_id, hook = next((k, h) for k, h in module._forward_pre_hooks.items()
                                     if isinstance(h, _TorchLegacyWeightNorm) and h.name == name)
                g, v = module._parameters.pop(name + "_g"), module._parameters.pop(name + "_v")
                del module._forward_pre_hooks[hook_id]
                module.__dict__.pop(name, None)  # the hook's last computed weight
                _attach(module, name, g, v, hook.dim, 0.0, legacy=True)
    return model


def fold(model: nn.Module) -> nn.Module:
    """In place, bakes every weight norm (any kind) into a plain weight for inference."""
    for module in model.modules():
        for name, _ in _weight_norm_names(module):
            remove_weight_norm(module, name)
    return model


# ---- layers: the torch layers, weight-normalised at construction ----

def _layer(base: type) -> type:
    def __init__(self, *args, dim: int | None = 0, eps: float = 0.0, **kwargs):
        base.__init__(self, *args, **kwargs)
        weight_norm(self, "weight", dim, eps)

    def extra_repr(self) -> str:
        return base.extra_repr(self) + f", weight_norm_dim={_specs(self)['weight'].dim}"

    doc = (f"torch.nn.{base.__name__} with its weight normalised by fastwn (w = g v / ||v||). Same "
           f"arguments, plus dim (the axis that keeps one norm per index; None: whole tensor) and eps.")
    return type(base.__name__, (base,), {"__init__": __init__, "extra_repr": extra_repr, "__doc__": doc,
                                         "__module__": __name__, "__qualname__": base.__name__})


Linear = _layer(nn.Linear)
Conv1d = _layer(nn.Conv1d)
Conv2d = _layer(nn.Conv2d)
Conv3d = _layer(nn.Conv3d)
ConvTranspose1d = _layer(nn.ConvTranspose1d)
ConvTranspose2d = _layer(nn.ConvTranspose2d)
ConvTranspose3d = _layer(nn.ConvTranspose3d)


# ---- mean-only batch normalisation (Salimans & Kingma 2016, section 4) ----

class _MeanOnlyBatchNorm(nn.Module):
    """y = x - mu[x] + b, mu over every axis but the channel axis (1); eval uses the
    running mean. No division by sigma: with weight norm fixing the scale of the
    pre-activations, only their mean is normalised."""

    _ranks: tuple = ()

    def __init__(self, num_features: int, momentum: float = 0.1, device=None, dtype=None):
        super().__init__()
        self.num_features = num_features
        self.momentum = momentum
        self.bias = nn.Parameter(torch.zeros(num_features, device=device, dtype=dtype))
        self.register_buffer("running_mean", torch.zeros(num_features, device=device, dtype=dtype))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long, device=device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() not in self._ranks:
            raise ValueError(f"{type(self).__name__} expects input of rank {' or '.join(map(str, self._ranks))}, "
                             f"got shape {tuple(x.shape)}")
        if x.size(1) != self.num_features:
            raise ValueError(f"{type(self).__name__}: expected {self.num_features} channels (dim 1), got {x.size(1)}")
        shape = [1, -1] + [1] * (x.dim() - 2)
        if self.training:
            mean = x.mean([0] + list(range(2, x.dim())))
            with torch.no_grad():
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), self.momentum)
                self.num_batches_tracked.add_(1)
        else:
            mean = self.running_mean
        return x - mean.reshape(shape) + self.bias.reshape(shape)

    def extra_repr(self) -> str:
        return f"{self.num_features}, momentum={self.momentum}"


class MeanOnlyBatchNorm1d(_MeanOnlyBatchNorm):
    _ranks = (2, 3)


class MeanOnlyBatchNorm2d(_MeanOnlyBatchNorm):
    _ranks = (4,)


class MeanOnlyBatchNorm3d(_MeanOnlyBatchNorm):
    _ranks = (5,)
