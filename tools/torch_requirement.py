"""scikit-build-core metadata provider: the wheel requires the torch release it was built with.

The extension links that torch's C++ ABI, so another release cannot load it (fastwn then
falls back to torch._weight_norm with a warning). Used from pyproject.toml.
"""


def dynamic_metadata(field, settings=None):
    if field != "dependencies":
        raise RuntimeError("torch_requirement only provides 'dependencies'")
    import torch

    return [f"torch=={torch.__version__.split('+', 1)[0]}"]
