"""fastwn: fused weight normalization (w = g * v / ||v||) for PyTorch.

Importing fastwn loads the compiled extension, which registers the operators
``torch.ops.fastwn.weight_norm_fwd`` / ``weight_norm_bwd`` and ``dora_norm`` (DoRA's norm,
fastwn.dora; the PEFT drop-in is fastwn.peft). If it cannot load (built
for another torch, say), fastwn warns and falls back to ``torch._weight_norm``;
``FASTWN_REQUIRE_EXTENSION=1`` turns that into an ImportError.
"""
from __future__ import annotations

import os
import warnings

import torch

__version__ = "0.1.0"


def _release(version: str) -> str:
    return version.split("+", 1)[0]


def _load_extension() -> str | None:
    """Loads fastwn._C; returns why it could not, or None."""
    try:
        from . import _build_meta
    except ImportError:
        return "fastwn's compiled extension is missing (the package was not built)"
    if _release(_build_meta.TORCH_VERSION) != _release(torch.__version__):
        return (f"fastwn was built against torch {_build_meta.TORCH_VERSION} but torch {torch.__version__} "
                "is installed; reinstall fastwn against this torch "
                "(pip install --no-build-isolation --force-reinstall --no-deps fastwn)")
    try:
        from . import _C  # noqa: F401  (registers torch.ops.fastwn.*)
    except ImportError as e:
        return f"fastwn's compiled extension failed to load: {e}"
    return None


_EXTENSION_ERROR = _load_extension()
HAS_EXTENSION = _EXTENSION_ERROR is None
if not HAS_EXTENSION:
    if os.environ.get("FASTWN_REQUIRE_EXTENSION") == "1":
        raise ImportError(f"{_EXTENSION_ERROR} (FASTWN_REQUIRE_EXTENSION=1)")
    warnings.warn(f"{_EXTENSION_ERROR}; fastwn falls back to torch._weight_norm", RuntimeWarning, stacklevel=2)
else:
    from . import _C, _ops, dora, functional  # _ops: fake impls and the composite backward

    functional._fwd = _ops.fwd.default
    functional._eager = _C.weight_norm
    dora._dora_norm_op = _ops.dora_norm.default

from .functional import weight_norm  # noqa: E402
from .dora import dora_norm  # noqa: E402
from . import init, nn  # noqa: E402,F401  (fastwn.nn layers/helpers, fastwn.init)


def build_info() -> dict:
    """What this build contains: versions, CUDA support, the CPU ISAs this machine runs."""
    if not HAS_EXTENSION:
        return {"version": __version__, "extension": False, "error": _EXTENSION_ERROR}
    from . import _C

    return {"extension": True, **_C.build_info()}


def cpu_isa() -> str:
    """The CPU kernel set the next call uses: scalar, avx2 or avx512 (FASTWN_CPU_ISA lowers it)."""
    if not HAS_EXTENSION:
        raise RuntimeError(f"no CPU kernels: {_EXTENSION_ERROR}")
    from . import _C

    return _C.cpu_isa()


__all__ = ["weight_norm", "dora_norm", "nn", "init", "build_info", "cpu_isa", "HAS_EXTENSION", "__version__"]
