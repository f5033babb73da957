"""A CUDA build on a machine without a GPU (CI): it loads, says what it contains,
registers CUDA kernels for every fastwn operator, and a CUDA call fails clearly."""
import pytest
import torch

import fastwn

pytestmark = pytest.mark.skipif(not fastwn.build_info().get("cuda"), reason="a CPU build of fastwn")


def test_build_info_names_the_cuda_build():
    info = fastwn.build_info()
    assert info["cuda"] is True and info["cuda_version"] == torch.version.cuda
    assert info["cuda_archs"] and all(a.split("-")[0].isdigit() for a in info["cuda_archs"])


@pytest.mark.parametrize("op", ["weight_norm_fwd", "weight_norm_bwd", "dora_norm"])
def test_cuda_kernels_are_registered(op):
    table = torch._C._dispatch_dump(f"fastwn::{op}")
    assert "CUDA: registered" in table and "CPU: registered" in table, table


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_a_cuda_call_without_a_gpu_fails_clearly():
    with pytest.raises(RuntimeError, match="(?i)nvidia driver|cuda"):
        fastwn.weight_norm(torch.randn(3, 4, device="cuda"), torch.randn(3, device="cuda"), 0)
    with pytest.raises(RuntimeError, match="(?i)nvidia driver|cuda"):
        fastwn.dora_norm(torch.randn(3, 4, device="cuda"), torch.randn(2, 4, device="cuda"),
                         torch.randn(3, 2, device="cuda"), 1.0)
