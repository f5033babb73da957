"""Drop-in weight-norm modules backed by the fused operators.

``weight_norm(module)`` keeps PyTorch's state_dict layout (``parametrizations.<name>.original0``
is g, ``original1`` is v) and loads checkpoints with the legacy ``<name>_g``/``<name>_v``
keys. PyTorch's own helpers (``parametrize.is_parametrized``, ``remove_parametrizations``,
``type_before_parametrizations``, ``cached``) work on the modules it wraps, with their
PyTorch meaning. Unlike torch's parametrizations, a module wrapped here can be pickled
and saved whole with ``torch.save``. ``convert`` swaps any weight norm in a model
(PyTorch's parametrization, its legacy hook, or fastwn's) for fastwn's; ``fold`` bakes the
weights in for inference.
"""
from __future__ import annotations

import dataclasses

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.weight_norm import WeightNorm as _TorchLegacyWeightNorm  # the legacy hook's class

from . import functional
from .dora import DoRALinear
from .functional import weight_norm as _weight_norm_fn

__all__ = ["WeightNorm", "AlreadyWeightNormalizedError", "weight_norm", "remove_weight_norm", "convert", "fold",
           "is_weight_normalized", "Linear", "Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d",
           "MeanOnlyBatchNorm1d", "MeanOnlyBatchNorm2d", "MeanOnlyBatchNorm3d", "DoRALinear"]

_LEGACY_SPECS = "_fastwn_legacy_weight_norms"  # instance attribute: {name: _Spec} for the <name>_g/_v layout


class WeightNorm(nn.Module):
    """g (``original0``) and v (``original1``) of one weight; calling it returns w.

    It sits where PyTorch keeps a ``ParametrizationList`` (``module.parametrizations[name]``)
    and answers what PyTorch's helpers ask of one: it holds several tensors, not one."""

    is_tensor = False
    ntensors = 2

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


def _specs(module: nn.Module) -> dict[str, _Spec]:
    """Every fastwn weight norm on the module, read off its structure, so that PyTorch's
    remove_parametrizations (which knows nothing of fastwn) leaves nothing stale."""
    specs = {}
    container = module._modules.get("parametrizations")
    if isinstance(container, nn.ModuleDict):
        specs = {n: _Spec(n, c.dim, c.eps, legacy=False) for n, c in container.items() if isinstance(c, WeightNorm)}
    specs.update(module.__dict__.get(_LEGACY_SPECS, {}))
    return specs


def is_weight_normalized(module: nn.Module, name: str = "weight") -> bool:
    """True if `name` of `module` is weight-normalised by fastwn."""
    return name in _specs(module)


def _rebuild(base: type, names: tuple) -> nn.Module:
    # Pickle/deepcopy entry point: an empty instance of a new generated class; pickle
    # then restores its __dict__ with nn.Module.__setstate__.
    return object.__new__(_wn_class(base, names))


def _compute(module: nn.Module, name: str) -> torch.Tensor:
    container = module._modules.get("parametrizations")
    if container is not None and name in container._modules:
        return container._modules[name]()
    return module.__dict__[_LEGACY_SPECS][name].weight(module)


def _wn_class(base: type, names: tuple) -> type:
    """A new subclass of `base` where each of `names` is a property computing w from g
    and v. Like PyTorch's parametrizations, every module gets a class of its own:
    remove_parametrizations deletes the property from the module's class."""

    def make_property(name):
        def fget(self):
            if parametrize._cache_enabled:  # inside parametrize.cached(): one w per module and name
                key = (id(self), name)
                w = parametrize._cache.get(key)
                if w is None:
                    w = parametrize._cache[key] = _compute(self, name)
                return w
            return _compute(self, name)

        def fset(self, value):  # like torch's parametrizations: re-derive g and v from w
            spec = _specs(self)[name]
            g, v = spec.gv(self)
            with torch.no_grad():
                v.copy_(value)
                g.copy_(functional.stored_norm(v, spec.dim).reshape(g.shape))
            _refresh_rnn(self)

        return property(fget, fset, doc=f"{name} = g * v / ||v||, from fastwn's fused operators")

    def __setattr__(self, key, value):
        # A Parameter would otherwise be registered next to the property.
        if isinstance(type(self).__dict__.get(key), property) and key in _specs(self):
            return type(self).__dict__[key].fset(self, value)
        return base.__setattr__(self, key, value)

    def __reduce_ex__(self, protocol):
        return _rebuild, (base, tuple(_specs(self))), self.__getstate__()

    attrs = {name: make_property(name) for name in names}
    attrs.update(__setattr__=__setattr__, __reduce_ex__=__reduce_ex__, __module__=base.__module__,
                 _fastwn_base=base)
    prefix = "" if base.__module__ == __name__ else "WeightNorm"
    return type(prefix + base.__name__, (base,), attrs)


def _base_class(module: nn.Module) -> type:
    return type(module).__dict__.get("_fastwn_base", type(module))


class AlreadyWeightNormalizedError(RuntimeError, KeyError):
    """Weight norm registered twice on one parameter. A RuntimeError, as PyTorch's legacy
    weight_norm raises for that; also a KeyError, what PyTorch raises when its legacy API
    meets a weight held by a parametrization."""

    __str__ = RuntimeError.__str__  # KeyError's would quote the message


class _Parameters(dict):
    """A fastwn module's _parameters. PyTorch's legacy torch.nn.utils.weight_norm takes a
    weight out with `del module._parameters[name]`; for a weight fastwn normalises that
    raises AlreadyWeightNormalizedError, not a bare KeyError."""

    def __delitem__(self, key):
        if key not in self and key in getattr(self, "weight_normalized", ()):
            raise AlreadyWeightNormalizedError(_already_message(key))
        super().__delitem__(key)


def _set_class(module: nn.Module) -> None:
    names = tuple(_specs(module))
    base = _base_class(module)
    module.__class__ = _wn_class(base, names) if names else base
    params = module.__dict__["_parameters"]
    if names and type(params) is not _Parameters:
        params = module.__dict__["_parameters"] = _Parameters(params)
    if type(params) is _Parameters:
        params.weight_normalized = frozenset(names)


def _refresh_rnn(module: nn.Module) -> None:
    """RNNs keep their weights in a list (_flat_weights) that their own __setattr__ and
    _init_flat_weights maintain; re-read it after a weight changed form."""
    init = getattr(module, "_init_flat_weights", None)
    if callable(init) and hasattr(module, "_flat_weights_names"):
        init()


class _LoadKeys:
    """load_state_dict pre-hook: accepts g/v under either layout (PyTorch's
    parametrizations.<name>.original0/1 or the legacy <name>_g/<name>_v) for every
    fastwn weight norm the module has when it loads."""

    def __call__(self, module, state_dict, prefix, *args):
        for name, spec in _specs(module).items():
            legacy = (f"{prefix}{name}_g", f"{prefix}{name}_v")
            modern = (f"{prefix}parametrizations.{name}.original0", f"{prefix}parametrizations.{name}.original1")
            src, dst = (modern, legacy) if spec.legacy else (legacy, modern)
            if all(k in state_dict for k in src):
                for s, d in zip(src, dst):
                    state_dict[d] = state_dict.pop(s)


def _attach(module: nn.Module, name: str, g: nn.Parameter, v: nn.Parameter, dim: int, eps: float,
            legacy: bool) -> nn.Module:
    if legacy:
        module.register_parameter(name + "_g", g)
        module.register_parameter(name + "_v", v)
        module.__dict__[_LEGACY_SPECS] = {**module.__dict__.get(_LEGACY_SPECS, {}),
                                          name: _Spec(name, dim, eps, legacy=True)}
    else:
        if "parametrizations" not in module._modules:
            module.parametrizations = nn.ModuleDict()
        module.parametrizations[name] = WeightNorm(g, v, dim, eps)
    _set_class(module)
    if not any(isinstance(getattr(h, "hook", h), _LoadKeys) for h in module._load_state_dict_pre_hooks.values()):
        module._register_load_state_dict_pre_hook(_LoadKeys(), with_module=True)
    _refresh_rnn(module)
    return module


def _torch_dim(dim: int | None) -> int:
    return -1 if dim is None else dim


def _already_message(name: str) -> str:
    # PyTorch's legacy weight_norm's words for a second registration, and what to do.
    return (f"Cannot register two weight_norm hooks on the same parameter {name}: it is already "
            "weight-normalised (fastwn.nn.convert turns PyTorch's weight norm into fastwn's; "
            "fastwn.nn.remove_weight_norm takes one off)")


def weight_norm(module: nn.Module, name: str = "weight", dim: int | None = 0, eps: float = 0.0) -> nn.Module:
    """Weight-normalises ``module.<name>`` in place with the fused kernels: w = g v / ||v||.

    Same rules as ``torch.nn.utils.parametrizations.weight_norm``: the norm is over every
    axis but ``dim`` (None or -1: the whole tensor; for ConvTranspose weights dim=0 is
    the input-channel axis); g starts as ||v|| as the kernels compute it and v as w, so
    the layer's weight comes back bit for bit and its output is unchanged.
    """
    if is_weight_normalized(module, name) or _torch_weight_norm_kind(module, name):
        raise AlreadyWeightNormalizedError(_already_message(name))
    weight = module._parameters.get(name)
    if not isinstance(weight, nn.Parameter):
        raise ValueError(f"{type(module).__name__} has no parameter named {name!r}")
    d = functional.check_dim(dim, weight.dim())
    with torch.no_grad():
        g = nn.Parameter(functional.stored_norm(weight, d), requires_grad=weight.requires_grad)
        v = nn.Parameter(weight.detach().clone(), requires_grad=weight.requires_grad)
    delattr(module, name)
    return _attach(module, name, g, v, d, eps, legacy=False)


def _is_torch_compat_hook(hook) -> bool:
    """PyTorch's parametrizations.weight_norm registers a local function as a
    load_state_dict pre-hook (legacy key support): it cannot be pickled."""
    return getattr(getattr(hook, "hook", hook), "__name__", "") == "_weight_norm_compat_hook"


def _drop_torch_compat_hooks(module: nn.Module) -> None:
    for key in [k for k, h in module._load_state_dict_pre_hooks.items() if _is_torch_compat_hook(h)]:
        del module._load_state_dict_pre_hooks[key]


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
    if parametrize.is_parametrized(module):
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
        if not any(k == "parametrization" for _, k in _weight_norm_names(module)):
            _drop_torch_compat_hooks(module)
    elif kind == "legacy":
        torch.nn.utils.remove_weight_norm(module, name)
    elif kind == "fastwn":
        spec = _specs(module)[name]
        g, v = spec.gv(module)
        with torch.no_grad():
            w = spec.weight(module).detach().clone()
        if spec.legacy:
            del module._parameters[name + "_g"], module._parameters[name + "_v"]
            module.__dict__[_LEGACY_SPECS] = {k: s for k, s in module.__dict__[_LEGACY_SPECS].items() if k != name}
        else:
            del module.parametrizations[name]
            if len(module.parametrizations) == 0:
                del module.parametrizations
        _set_class(module)
        setattr(module, name, nn.Parameter(w, requires_grad=v.requires_grad))  # RNNs track weights in __setattr__
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
    _drop_torch_compat_hooks(module)
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
