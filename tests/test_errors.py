"""Bad input gets a clear Python exception that names the argument, never a crash."""
import subprocess
import sys

import pytest
import torch

import fastwn

fwd = torch.ops.fastwn.weight_norm_fwd
bwd = torch.ops.fastwn.weight_norm_bwd


@pytest.mark.parametrize("call,exc,words", [
    (lambda: fwd(torch.randn(3, 4), torch.randn(4), 0, 0.0), ValueError, ["g must have 3 elements"]),
    (lambda: fwd(torch.randn(3, 4), torch.randn(2), -1, 0.0), ValueError, ["g must have 1 element", "dim=None"]),
    (lambda: fwd(torch.ones(3, 4, dtype=torch.int32), torch.ones(3, dtype=torch.int32), 0, 0.0), TypeError, ["v must be", "Int"]),
    (lambda: fwd(torch.randn(3, 4, dtype=torch.complex64), torch.randn(3, dtype=torch.complex64), 0, 0.0), TypeError, ["v must be", "Complex"]),
    (lambda: fwd(torch.randn(3, 4), torch.randn(3, dtype=torch.float64), 0, 0.0), TypeError, ["g must have v's dtype"]),
    (lambda: fwd(torch.randn(3, 4), torch.randn(3), 2, 0.0), IndexError, ["dim must be", "got 2"]),
    (lambda: fwd(torch.randn(3, 4), torch.randn(3), -3, 0.0), IndexError, ["dim must be", "got -3"]),
    (lambda: fwd(torch.randn(3, 4), torch.randn(3), 0, -1.0), ValueError, ["eps must be"]),
    (lambda: fwd(torch.randn(3, 4), torch.randn(3), 0, float("nan")), ValueError, ["eps must be"]),
    (lambda: bwd(torch.randn(3, 5), torch.randn(3, 4), torch.randn(3), torch.ones(3), 0, 0.0), ValueError, ["grad_w must have v's shape"]),
    (lambda: bwd(torch.randn(3, 4).double(), torch.randn(3, 4), torch.randn(3), torch.ones(3), 0, 0.0), TypeError, ["grad_w must have v's dtype"]),
    (lambda: bwd(torch.randn(3, 4), torch.randn(3, 4), torch.randn(3), torch.ones(3).double(), 0, 0.0), TypeError, ["norm must be"]),
    (lambda: bwd(torch.randn(3, 4), torch.randn(3, 4), torch.randn(3), torch.ones(2), 0, 0.0), ValueError, ["norm must have"]),
    (lambda: fastwn.weight_norm(torch.randn(3, 4), torch.randn(4), dim=0), ValueError, ["g must have 3 elements"]),
])
def test_bad_arguments_are_named(call, exc, words):
    with pytest.raises(exc) as info:
        call()
    for w in words:
        assert w in str(info.value)


def test_v_and_g_on_different_devices():
    # g on the meta device: the dispatcher routes to the fake implementation, which
    # checks devices as the C++ glue does for real tensors of two devices.
    with pytest.raises(RuntimeError, match="g is on meta but v is on cpu"):
        fwd(torch.randn(3, 4), torch.randn(3, device="meta"), 0, 0.0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a second real device")
def test_v_and_g_on_cpu_and_cuda():
    with pytest.raises(RuntimeError, match="g is on cpu but v is on cuda"):
        fwd(torch.randn(3, 4, device="cuda"), torch.randn(3), 0, 0.0)
    # v on the CPU: the dispatcher still picks the CUDA kernel, which must check first.
    with pytest.raises(RuntimeError, match="g is on cuda:0 but v is on cpu"):
        fwd(torch.randn(3, 4), torch.randn(3, device="cuda"), 0, 0.0)
    with pytest.raises(RuntimeError, match="grad_w is on cuda:0 but v is on cpu"):
        bwd(torch.randn(3, 4, device="cuda"), torch.randn(3, 4), torch.randn(3), torch.ones(3), 0, 0.0)
    with pytest.raises(RuntimeError, match="lora_A is on cpu but weight is on cuda"):
        fastwn.dora_norm(torch.randn(3, 4, device="cuda"), torch.randn(2, 4), torch.randn(3, 2, device="cuda"), 1.0)
    with pytest.raises(RuntimeError, match="lora_B is on cuda:0 but weight is on cpu"):
        fastwn.dora_norm(torch.randn(3, 4), torch.randn(2, 4), torch.randn(3, 2, device="cuda"), 1.0)


def test_fake_tensors_get_the_same_checks():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        with pytest.raises(ValueError, match="g must have 3 elements"):
            fwd(torch.randn(3, 4), torch.randn(4), 0, 0.0)
        w, norm = fwd(torch.randn(3, 4, dtype=torch.bfloat16), torch.randn(3, dtype=torch.bfloat16), 0, 0.0)
        assert w.dtype == torch.bfloat16 and norm.dtype == torch.float32 and norm.shape == (3,)


def test_unknown_isa_name(monkeypatch):
    monkeypatch.setenv("FASTWN_CPU_ISA", "sse9")
    with pytest.raises(ValueError, match="FASTWN_CPU_ISA must be one of"):
        fwd(torch.randn(3, 4), torch.randn(3), 0, 0.0)
    with pytest.raises(ValueError, match="FASTWN_CPU_ISA must be one of"):
        fastwn.cpu_isa()


def test_isa_request_is_capped_at_the_cpu(monkeypatch):
    best = fastwn.build_info()["cpu_isas"][-1]
    monkeypatch.setenv("FASTWN_CPU_ISA", "avx512")
    assert fastwn.cpu_isa() == best


_FAKE_MISMATCH = """
import sys, types, warnings
sys.modules['fastwn._build_meta'] = types.SimpleNamespace(TORCH_VERSION='1.0.0', WITH_CUDA=False)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    import fastwn
print('HAS', fastwn.HAS_EXTENSION)
print('WARN', [str(w.message) for w in caught])
import torch
v, g = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
w = fastwn.weight_norm(v, g, 0)
ref = torch._weight_norm(v, g.reshape(5, 1), 0)
print('MATCH', torch.allclose(w, ref))
print('EPS', torch.isfinite(fastwn.weight_norm(torch.zeros(2, 3), torch.ones(2), 0, eps=1e-3)).all().item())
print('INFO', fastwn.build_info()['extension'])
"""


def _run(code, **env):
    import os

    full_env = {k: v for k, v in os.environ.items() if k != "FASTWN_REQUIRE_EXTENSION"}
    full_env.update(env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full_env, timeout=120)


def test_mismatched_torch_falls_back_with_a_warning():
    r = _run(_FAKE_MISMATCH)
    assert r.returncode == 0, r.stderr
    assert "HAS False" in r.stdout
    assert "built against torch 1.0.0" in r.stdout and "falls back to torch._weight_norm" in r.stdout
    assert "MATCH True" in r.stdout and "EPS True" in r.stdout and "INFO False" in r.stdout


def test_require_extension_turns_the_fallback_into_an_error():
    r = _run(_FAKE_MISMATCH, FASTWN_REQUIRE_EXTENSION="1")
    assert r.returncode != 0
    assert "ImportError" in r.stderr and "FASTWN_REQUIRE_EXTENSION=1" in r.stderr


def test_bench_rejects_a_thread_count_below_one(capsys):
    from fastwn import bench

    with pytest.raises(SystemExit) as e:
        bench.main(["--threads", "0"])
    assert e.value.code == 2 and "--threads must be at least 1" in capsys.readouterr().err
