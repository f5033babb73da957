"""fastwn.dora_norm and fastwn.nn.DoRALinear against float64 references.

dora_norm: every dtype (and float32 factors on half weights), every CPU ISA, odd shapes,
row-major, fan_in_fan_out (transposed), row-strided, offset and non-dense views, rank 0
and empty, the cancellation case W0 ~ -s B@A, bad input, fake tensors. DoRALinear: the
forward and every gradient, dropout, the eval-mode norm cache, compile, and that no
[out, in] tensor is ever made."""
import copy
import io
import pickle

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import fastwn
from fastwn.dora import NormCache
from fastwn.nn import DoRALinear

from conftest import DEVICES

WEIGHT_DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
SHAPES = [(1, 1, 1), (5, 7, 3), (33, 100, 16), (64, 1031, 8), (9, 4100, 64), (17, 65, 0), (2, 3, 70)]


def ref_norm(weight, a, b, s):
    return (weight.double() + s * b.double() @ a.double()).norm(dim=1)


def layouts(out, inp, dtype, device):
    """The same [out, in] values in each memory layout the glue distinguishes."""
    base = torch.randn(out, inp, dtype=torch.float64, device=device).to(dtype)
    yield "contiguous", base
    yield "fan_in_fan_out", base.t().contiguous().t()
    wide = torch.zeros(out, inp + 5, dtype=dtype, device=device)
    wide[:, 3:3 + inp] = base
    yield "row-strided offset", wide[:, 3:3 + inp]
    spaced = torch.zeros(out, 2 * inp, dtype=dtype, device=device)
    spaced[:, ::2] = base
    yield "non-dense", spaced[:, ::2]


def check_norm(n, weight, a, b, s):
    ref = ref_norm(weight, a, b, s)
    assert n.dtype == (torch.float64 if weight.dtype == torch.float64 else torch.float32)
    assert n.shape == (weight.shape[0],)
    tol = 1e-13 if weight.dtype == torch.float64 else 1e-5  # inputs are exact: only the sums round
    np.testing.assert_allclose(n.double().cpu().numpy(), ref.cpu().numpy(), rtol=tol, atol=1e-30)


@pytest.mark.parametrize("dtype", WEIGHT_DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_dora_norm_matches_float64(isa, device, dtype, shape):
    out, inp, rank = shape
    torch.manual_seed(out * 1000 + inp + rank)
    factor_dtypes = {dtype, torch.float32}
    for name, weight in layouts(out, inp, dtype, device):
        for fdt in factor_dtypes:
            a = torch.randn(rank, inp, device=device).to(fdt)
            b = torch.randn(out, rank, device=device).to(fdt)
            check_norm(fastwn.dora_norm(weight, a, b, 0.37), weight, a, b, 0.37)


@pytest.mark.parametrize("shape", [(0, 5, 2), (4, 0, 3), (0, 0, 0)])
def test_dora_norm_empty(isa, device, shape):
    out, inp, rank = shape
    n = fastwn.dora_norm(torch.randn(out, inp, device=device), torch.randn(rank, inp, device=device),
                         torch.randn(out, rank, device=device), 2.0)
    assert n.shape == (out,) and (n == 0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dora_norm_cancellation(isa, dtype):
    """Rows where W0 ~ -s B@A (a trained adapter cancelling the base): the norm is tiny
    next to the terms. The fused kernel adds W0 + s B@A before squaring, so its error is
    that of the sum itself, as PEFT's float32 temporary's is; the low-rank identity
    ||W0||^2 + 2s<W0, BA> + s^2||BA||^2 would lose every digit here."""
    torch.manual_seed(0)
    out, inp, rank, s = 64, 512, 8, 2.0
    a = torch.randn(rank, inp).to(dtype)
    b = torch.randn(out, rank).to(dtype)
    exact = -s * (b.double() @ a.double())
    weight = (exact + 1e-3 * torch.randn(out, inp, dtype=torch.float64)).to(dtype)
    ref = ref_norm(weight, a, b, s)
    got = fastwn.dora_norm(weight, a, b, s).double()
    peft_style = torch.linalg.vector_norm(weight.float() + s * (b.float() @ a.float()), dim=1).double()
    err = ((got - ref).abs() / ref).max().item()
    peft_err = ((peft_style - ref).abs() / ref).max().item()
    assert err <= 2 * peft_err + 1e-6, (err, peft_err)
    identity = (weight.double().square().sum(1) + 2 * s * (weight.float() @ a.float().T * b.float()).sum(1).double()
                + s * s * (b.float() @ a.float()).double().square().sum(1))
    assert ((identity.clamp_min(0).sqrt() - ref).abs() / ref).max() > 100 * max(err, 1e-7)


def test_dora_norm_thread_count_does_not_change_bits():
    torch.manual_seed(1)
    weight, a, b = torch.randn(300, 2000), torch.randn(16, 2000), torch.randn(300, 16)
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            results.append((fastwn.dora_norm(weight, a, b, 0.5), fastwn.dora_norm(weight.t().contiguous().t(), a, b, 0.5)))
    finally:
        torch.set_num_threads(threads)
    for r in results[1:]:
        assert torch.equal(r[0], results[0][0]) and torch.equal(r[1], results[0][1])


def test_dora_norm_is_detached():
    weight, a, b = torch.randn(6, 5), torch.randn(2, 5, requires_grad=True), torch.randn(6, 2, requires_grad=True)
    n = fastwn.dora_norm(weight, a, b, 1.0)
    assert not n.requires_grad


def bad_dora_calls():
    w, a, b = torch.randn(6, 5), torch.randn(2, 5), torch.randn(6, 2)
    return [
        ((w.long(), a, b, 1.0), TypeError, "weight must be float32"),
        ((w, a.int(), b, 1.0), TypeError, "lora_A must be float32"),
        ((w[0], a, b, 1.0), ValueError, "weight must be 2-D"),
        ((w, a[0], b, 1.0), ValueError, "lora_A must be 2-D"),
        ((w, torch.randn(2, 4), b, 1.0), ValueError, r"lora_A must be \[rank, in_features\]"),
        ((w, a, torch.randn(6, 3), 1.0), ValueError, r"lora_B must be \[out_features, rank\]"),
        ((w, a, torch.randn(5, 2), 1.0), ValueError, r"lora_B must be \[out_features, rank\]"),
        ((w, a, b, float("nan")), ValueError, "scaling must be finite"),
        ((w, a, b, float("inf")), ValueError, "scaling must be finite"),
    ]


@pytest.mark.parametrize("case", range(len(bad_dora_calls())))
def test_dora_norm_bad_input_names_the_argument(case):
    args, exc, msg = bad_dora_calls()[case]
    with pytest.raises(exc, match=msg):
        fastwn.dora_norm(*args)
    if args[3] == args[3]:  # the fake path (compile, export) checks the same; NaN scaling is eager-only
        from torch._subclasses.fake_tensor import FakeTensorMode
        with FakeTensorMode() as mode, pytest.raises(exc, match=msg):
            fake = [mode.from_tensor(t) for t in args[:3]]
            torch.ops.fastwn.dora_norm(*fake, args[3])


def test_dora_norm_device_mismatch_names_the_argument():
    # A meta tensor beside CPU ones: the dispatcher routes to the fake implementation,
    # which checks devices as the glue does for two real devices (test_errors.py, on a GPU).
    with pytest.raises(RuntimeError, match="lora_A is on meta but weight is on cpu"):
        fastwn.dora_norm(torch.randn(3, 4), torch.randn(2, 4, device="meta"), torch.randn(3, 2), 1.0)


def test_dora_norm_python_types():
    w, a, b = torch.randn(6, 5), torch.randn(2, 5), torch.randn(6, 2)
    with pytest.raises(TypeError, match="weight must be a Tensor"):
        fastwn.dora_norm(w.numpy(), a, b, 1.0)
    with pytest.raises(TypeError, match="scaling must be a real number"):
        fastwn.dora_norm(w, a, b, True)
    with pytest.raises(TypeError, match="scaling must be a real number"):
        fastwn.dora_norm(w, a, b, "2")
    assert torch.equal(fastwn.dora_norm(w, a, b, 2), fastwn.dora_norm(w, a, b, 2.0))


def test_dora_norm_opcheck_and_compile():
    from torch.library import opcheck

    w, a, b = torch.randn(20, 37), torch.randn(4, 37), torch.randn(20, 4)
    for weight in (w, w.t().contiguous().t(), w.bfloat16()):
        opcheck(torch.ops.fastwn.dora_norm.default, (weight, a, b, 0.5))
    compiled = torch.compile(lambda *t: fastwn.dora_norm(*t, 0.5), fullgraph=True)
    torch.testing.assert_close(compiled(w, a, b), fastwn.dora_norm(w, a, b, 0.5), rtol=0, atol=0)


# ---- DoRALinear ----

def assert_rel_close(got, ref, rtol, what=""):
    """Max error relative to the largest reference value (gradients have entries near 0)."""
    err = (got.double() - ref.double()).abs().max().item()
    scale = ref.double().abs().max().item()
    assert err <= rtol * scale, f"{what}: error {err:.3g} vs {rtol:g} x {scale:.3g}"


def reference_forward(layer, x):
    """The DoRA formula in float64 with torch autograd: the norm detached."""
    p = {k: v.detach().double().requires_grad_(v.requires_grad) for k, v in layer.named_parameters()}
    v = p["weight"] + layer.scaling * p["lora_B"] @ p["lora_A"]
    n = v.norm(dim=1).detach()
    y = torch.nn.functional.linear(x.double(), (p["magnitude"] / n)[:, None] * v, p.get("bias"))
    return y, p


def trained_layer(inp=40, out=24, r=4, dtype=torch.float32, bias=True, dropout=0.0):
    torch.manual_seed(5)
    layer = DoRALinear(inp, out, r=r, lora_alpha=2 * r, lora_dropout=dropout, bias=bias, dtype=dtype)
    with torch.no_grad():  # away from the zero-change start
        layer.lora_B.normal_()
        layer.magnitude.mul_(torch.rand(out, dtype=dtype) + 0.5)
    return layer


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dora_linear_matches_reference(isa, dtype, bias):
    layer = trained_layer(dtype=dtype, bias=bias)
    x = torch.randn(3, 5, 40, dtype=dtype)
    y = layer(x)
    ref, p = reference_forward(layer, x)
    grad = torch.randn_like(ref)
    y.backward(grad.to(dtype))
    ref.backward(grad)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    assert_rel_close(y, ref.detach(), tol)
    for name in ("lora_A", "lora_B", "magnitude"):
        assert_rel_close(getattr(layer, name).grad, p[name].grad, tol, name)
    assert layer.weight.grad is None and (layer.bias is None or layer.bias.grad is None)


def test_dora_linear_bf16_within_twice_the_composite_error():
    layer = trained_layer(dtype=torch.bfloat16)
    x = torch.randn(64, 40, dtype=torch.bfloat16)
    ref, _ = reference_forward(layer, x)
    y = layer(x)
    # The same formula in bf16 torch ops, materialising W': what PEFT does.
    v = layer.weight + layer.scaling * layer.lora_B @ layer.lora_A
    naive = torch.nn.functional.linear(x, (layer.magnitude / v.norm(dim=1))[:, None] * v, layer.bias)
    err = (y.double() - ref).abs().max().item()
    naive_err = (naive.double() - ref).abs().max().item()
    assert y.dtype == torch.bfloat16 and err <= 2 * naive_err, (err, naive_err)


def test_dora_linear_starts_as_its_base_linear():
    torch.manual_seed(0)
    base = torch.nn.Linear(33, 17)
    layer = DoRALinear.from_linear(base, r=3)
    assert layer.weight is base.weight and not base.weight.requires_grad
    x = torch.randn(8, 33)
    torch.testing.assert_close(layer(x), base(x), rtol=1e-6, atol=1e-6)
    assert [n for n, p in layer.named_parameters() if p.requires_grad] == ["lora_A", "lora_B", "magnitude"]


def test_dora_linear_dropout_only_on_the_lora_branch():
    layer = trained_layer(dropout=0.999999)
    layer.train()
    x = torch.randn(6, 40)
    y = layer(x)  # LoRA input dropped: (m/n) * x W0^T + b
    n = fastwn.dora_norm(layer.weight, layer.lora_A, layer.lora_B, layer.scaling)
    expected = (layer.magnitude / n) * torch.nn.functional.linear(x, layer.weight) + layer.bias
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-6)


def test_dora_linear_merged_weight():
    layer = trained_layer()
    x = torch.randn(7, 40)
    torch.testing.assert_close(torch.nn.functional.linear(x, layer.merged_weight(), layer.bias), layer(x),
                               rtol=1e-5, atol=1e-5)


def test_dora_linear_eval_cache_is_never_stale():
    layer = trained_layer().eval()
    x = torch.randn(4, 40)

    def fresh():
        return fastwn.dora_norm(layer.weight, layer.lora_A, layer.lora_B, layer.scaling)

    n = layer.weight_norm()
    assert layer.weight_norm() is n  # cached
    updates = [
        lambda: layer.lora_A.add_(0.1),
        lambda: layer.lora_B.mul_(1.5),
        lambda: layer.weight.copy_(torch.randn_like(layer.weight)),
        lambda: setattr(layer.weight, "data", torch.randn_like(layer.weight)),
        lambda: setattr(layer, "lora_alpha", layer.lora_alpha * 2),
        lambda: setattr(layer, "lora_A", torch.nn.Parameter(torch.randn_like(layer.lora_A))),
    ]
    for update in updates:
        with torch.no_grad():
            update()
        n_new = layer.weight_norm()
        assert n_new is not n and torch.equal(n_new, fresh())
        assert layer.weight_norm() is n_new
        n = n_new
    y = layer(x)
    with torch.no_grad():
        layer.magnitude.mul_(2)  # m is not in the norm: the output follows at once
    torch.testing.assert_close(layer(x), 2 * y - layer.bias, rtol=1e-5, atol=1e-5)
    layer.train()
    assert layer.weight_norm() is not layer.weight_norm() and len(layer._norm_cache) == 0


def test_norm_cache_survives_copy_and_pickle_empty():
    layer = trained_layer().eval()
    layer.weight_norm()
    for clone in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))):
        assert len(clone._norm_cache) == 0
        torch.testing.assert_close(clone(torch.ones(2, 40)), layer(torch.ones(2, 40)))
    buffer = io.BytesIO()
    torch.save(layer, buffer)
    buffer.seek(0)
    assert len(torch.load(buffer, weights_only=False)._norm_cache) == 0
    assert isinstance(layer._norm_cache, NormCache)


def test_dora_linear_compiles_fullgraph_and_trains():
    layer = trained_layer()
    x = torch.randn(8, 40)
    compiled = torch.compile(layer, fullgraph=True)
    y = compiled(x)
    y.square().sum().backward()
    grads = {k: p.grad.clone() for k, p in layer.named_parameters() if p.grad is not None}
    layer.zero_grad()
    layer(x).square().sum().backward()
    for k, g in grads.items():
        assert_rel_close(g, getattr(layer, k).grad, 1e-5, k)


class LargestTensor(TorchDispatchMode):
    """Records the largest tensor any op allocates (views of its inputs are not new):
    its element count and the op."""

    def __init__(self):
        super().__init__()
        self.largest = (0, None)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in torch.utils._pytree.tree_leaves((args, kwargs))
                  if isinstance(t, torch.Tensor)}
        for t in torch.utils._pytree.tree_leaves(out):
            if (isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs
                    and t.numel() > self.largest[0]):
                self.largest = (t.numel(), func)
        return out


def test_dora_linear_makes_no_out_by_in_tensor():
    """Forward and backward, train and eval: nothing the size of W0 (tokens << in, out)."""
    out, inp, tokens = 96, 128, 8
    layer = trained_layer(inp=inp, out=out, r=4)
    x = torch.randn(tokens, inp, requires_grad=True)
    for mode in (layer.train, layer.eval):
        mode()
        with LargestTensor() as rec:
            layer(x).square().sum().backward()
        assert rec.largest[0] < out * inp // 4, rec.largest
